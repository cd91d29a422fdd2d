//! The `conveyor` binary: parse the command line, load and validate the
//! config (exit 64 when it is bad), then hand over to the library.

use clap::Parser;
use conveyor::cli::{Cli, Command, DlqCommand, EXIT_FAILURE, EXIT_USAGE, MigrateCommand};
use conveyor::commands::dlq::{self as tools, Filter, RedriveOptions};
use conveyor::commands::migrate as migrate_cmd;
use conveyor::config;
use std::process::ExitCode;

fn main() -> ExitCode {
    conveyor::runtime::install_tls_provider();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check(a) => match load_checked(&a.config, a.previous.as_deref()) {
            Ok(l) => {
                for w in &l.warnings {
                    eprintln!("warning: {w}");
                }
                if !a.offline {
                    for w in conveyor::commands::check::brokers(&l.config) {
                        eprintln!("warning: {w}");
                    }
                }
                let c = &l.config;
                println!(
                    "{}: ok ({} transports, {} entities, {} sources, {} workers)",
                    a.config.display(),
                    c.transports.len(),
                    c.entities.len(),
                    c.sources.len(),
                    c.workers.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Run(a) => {
            let loaded = match config::load_file(&a.config) {
                Ok(l) => l,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            conveyor::telemetry::init(&loaded.config.service.log);
            for w in &loaded.warnings {
                tracing::warn!(warning = %w, "config warning");
            }
            let rt = match conveyor::runtime::executor() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            let r = rt.block_on(conveyor::daemon::run(&a.config, &loaded.config, loaded.hash));
            // the drain is over (or its grace ran out): blocking calls still
            // running (a stuck broker's close) do not hold the exit
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "conveyor stopped with an error");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Tail(a) => tail(a),
        Command::Produce(a) => produce(a),
        Command::Dlq(cmd) => dlq(cmd),
        Command::Migrate(cmd) => migrate(cmd),
        Command::Graph { config: path, format } => match config::load_file(&path) {
            Ok(l) => match format.as_str() {
                "mermaid" => {
                    print!("{}", conveyor::commands::graph::mermaid(&l.config));
                    ExitCode::SUCCESS
                }
                "dot" => {
                    print!("{}", conveyor::commands::graph::dot(&l.config));
                    ExitCode::SUCCESS
                }
                other => {
                    eprintln!("unknown format {other:?}: use mermaid or dot");
                    ExitCode::from(EXIT_USAGE)
                }
            },
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        #[cfg(feature = "eventhubs")]
        Command::Dev(conveyor::cli::DevCommand::Eventhubs(args)) => {
            conveyor::telemetry::init(&config::LogConfig { format: config::LogFormat::Text, level: "info".into() });
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build();
            match rt.map(|rt| rt.block_on(conveyor_eh_broker::serve(args))) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) | Err(e) => {
                    eprintln!("conveyor dev eventhubs: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Bench(args) => match conveyor::bench::main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench failed: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}

/// What a tool command needs: the config at `path` (bad: exit 64), warn-level
/// text logs, and a single-threaded async runtime.
fn tool(path: &std::path::Path) -> Result<(config::Loaded, tokio::runtime::Runtime), ExitCode> {
    let loaded = config::load_file(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    conveyor::telemetry::init(&config::LogConfig { format: config::LogFormat::Text, level: "warn".into() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("cannot start the async runtime: {e}");
        ExitCode::from(EXIT_FAILURE)
    })?;
    Ok((loaded, rt))
}

fn tail(a: conveyor::cli::TailArgs) -> ExitCode {
    use conveyor::commands::tail::{Start, TailOptions};
    let (loaded, rt) = match tool(&a.config) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let o = TailOptions {
        entity: a.entity,
        start: if a.from_beginning { Start::Beginning } else { Start::Last(a.last.unwrap_or(10)) },
        follow: a.follow,
        partition: a.partition,
        format: a.format,
    };
    let mut out = std::io::stdout();
    let r = rt.block_on(async {
        tokio::select! {
            r = conveyor::commands::tail::tail(&loaded.config, &o, &mut out) => r.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    });
    match r {
        Ok(_) => ExitCode::SUCCESS,
        // the reader of our output went away (`| head`)
        Err(conveyor::commands::ToolError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn produce(a: conveyor::cli::ProduceArgs) -> ExitCode {
    use conveyor::commands::produce::ProduceOptions;
    use std::io::Read;
    let (loaded, rt) = match tool(&a.config) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("error: cannot read standard input: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let o = ProduceOptions {
        entity: a.entity,
        key: a.key,
        headers: a.headers,
        ndjson: a.ndjson,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let mut out = std::io::stdout();
    match rt.block_on(conveyor::commands::produce::produce(&loaded.config, &o, input.into(), &mut out)) {
        Ok(n) => {
            eprintln!("{n} message(s) written to {} and acknowledged", o.entity);
            ExitCode::SUCCESS
        }
        Err(e @ conveyor::commands::ToolError::Input(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Loads `path`; with `previous`, as the config that replaces it.
fn load_checked(
    path: &std::path::Path,
    previous: Option<&std::path::Path>,
) -> Result<config::Loaded, config::ConfigError> {
    match previous {
        None => config::load_file(path),
        Some(p) => {
            let prev = config::load_file(p)?;
            config::load_file_after(path, &prev.config)
        }
    }
}

fn migrate(cmd: MigrateCommand) -> ExitCode {
    let (path, format) = match &cmd {
        MigrateCommand::Verify { config, format, .. } | MigrateCommand::Status { config, format } => {
            (config.clone(), format.clone())
        }
    };
    if format != "text" && format != "json" {
        eprintln!("unknown format {format:?}: use text or json");
        return ExitCode::from(EXIT_USAGE);
    }
    let (loaded, rt) = match tool(&path) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let cfg = &loaded.config;
    let json = format == "json";
    match cmd {
        MigrateCommand::Verify { entity, .. } => {
            let progress = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
            match rt.block_on(migrate_cmd::verify(cfg, &entity, progress)) {
                Ok(v) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    } else {
                        print!("{}", v.text());
                    }
                    ExitCode::from(v.exit_code())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        MigrateCommand::Status { .. } => match rt.block_on(migrate_cmd::status(cfg)) {
            Ok(s) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                } else {
                    print!("{}", migrate_cmd::status_text(&s));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

fn dlq(cmd: DlqCommand) -> ExitCode {
    let path = match &cmd {
        DlqCommand::Inspect { config, .. } | DlqCommand::Redrive { config, .. } => config.clone(),
    };
    let (loaded, rt) = match tool(&path) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let cfg = &loaded.config;
    let result = match cmd {
        DlqCommand::Inspect { entity, limit, json, .. } => {
            rt.block_on(tools::inspect(cfg, &entity, limit, json)).map(|_| ())
        }
        DlqCommand::Redrive { from, to, filter, rate, dry_run, group, .. } => {
            let parsed = match Filter::parse(&filter) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let rate = match conveyor::redrive::check_rate(rate) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let o = RedriveOptions { from, to, filter: parsed, rate, dry_run, group, progress: true };
            rt.block_on(tools::redrive(cfg, &o, &filter)).map(|r| {
                let verb = if dry_run { "would redrive" } else { "redrove" };
                println!(
                    "{verb} {} of {} envelope(s) ({} not matching, {} unreadable, {} trimmed without payload)",
                    r.redriven, r.examined, r.skipped, r.unreadable, r.trimmed
                );
                for (t, n) in &r.by_target {
                    println!("  {n} -> {t}");
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
