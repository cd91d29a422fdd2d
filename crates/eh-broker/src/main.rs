//! `conveyor-eh-broker`: a local Azure Event Hubs test broker (see the library docs).

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "conveyor-eh-broker", version, about = "Local Azure Event Hubs test broker (plain AMQP)")]
struct Cli {
    #[command(flatten)]
    args: conveyor_eh_broker::Args,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match conveyor_eh_broker::serve(cli.args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conveyor-eh-broker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
