//! The daemon: a [`Pipeline`] on a config file, until SIGTERM or SIGINT.
//!
//! - **Reloads** come from SIGHUP, from a change of the file (debounced, see
//!   `watch`) and from `POST /-/reload`. They run one at a time on a task
//!   of their own, never in the signal loop: a reload that waits for a moved
//!   entity to drain does not delay a shutdown. Triggers that arrive while a
//!   reload runs are folded into one more reload. An invalid file keeps the
//!   running topology (and says why on `/readyz` and in the log).
//! - **Shutdown** (SIGTERM, SIGINT) starts at once, whatever a reload is
//!   doing: the pipeline drains within `service.shutdown_grace` in all, and
//!   the process exits — `0` when everything drained and was committed,
//!   non-zero when the grace ran out (nothing unfinished is committed; it is
//!   delivered again on the next start).
//! - The systemd watchdog is fed while the consumer loops make progress
//!   (see `systemd::watchdog`).

use crate::admin::{ReloadAnswer, ReloadRequest};
use crate::config::Config;
use crate::runtime::{Options, Pipeline, RuntimeError};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the daemon on the config file `path` (already loaded as `cfg`, with
/// `hash`) until SIGTERM or SIGINT, then drains.
pub async fn run(path: &Path, cfg: &Config, hash: u64) -> Result<(), DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(DaemonError::Signals)?;
    let pipeline = Arc::new(Pipeline::start(cfg, hash, Options::default()).await?);
    for line in summary(cfg, path, pipeline.http_addr) {
        tracing::info!("{line}");
    }
    crate::systemd::watchdog::spawn(
        pipeline.health.clone(),
        pipeline.metrics.consumed_all.clone(),
        pipeline.token().clone(),
        cfg.service.watchdog_stall.get(),
    );
    let (hup_tx, hup_rx) = mpsc::channel(1);
    let http = pipeline.take_reload_requests();
    let reloader = tokio::spawn(reloads(pipeline.clone(), path.to_path_buf(), hup_rx, http));
    while let Some(sig) = signals.next().await {
        if sig == SIGHUP {
            tracing::info!("SIGHUP: reloading the config");
            // full: a reload is already queued, and it reads the file afresh
            let _ = hup_tx.try_send(());
        } else {
            tracing::info!(signal = sig, "shutdown requested");
            break;
        }
    }
    signals.handle().close();
    let result = pipeline.shutdown().await;
    reloader.abort();
    Ok(result?)
}

/// What the first lines of the log tell a person: what runs, where
/// `/metrics` is, where results and dead letters go, and how to stop.
pub fn summary(cfg: &Config, path: &Path, http: std::net::SocketAddr) -> Vec<String> {
    use std::collections::BTreeSet;
    let mut kinds: Vec<&str> = cfg.transports.values().map(|t| t.kind()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut out = vec![format!(
        "conveyor {} runs {:?}: {} source(s), {} worker(s) over {} ({})",
        env!("CARGO_PKG_VERSION"),
        cfg.service.name,
        cfg.sources.len(),
        cfg.workers.len(),
        cfg.transports.len(),
        kinds.join(", ")
    )];
    out.push(format!("metrics: http://{http}/metrics  readiness: http://{http}/readyz"));
    for (name, s) in &cfg.sources {
        if let crate::config::SourceConfig::Http(h) = s {
            let at = h.listen.map_or(http.to_string(), |l| l.to_string());
            let scheme = if h.tls.is_some() { "https" } else { "http" };
            out.push(format!("ingest {name:?}: POST {scheme}://{at}{} -> {}", h.path, h.entity));
        }
    }
    let consumed: BTreeSet<&str> = cfg.workers.values().map(|w| w.input.as_str()).collect();
    let dead: BTreeSet<&str> = cfg.workers.values().filter_map(|w| w.dead_letter.as_deref()).collect();
    let retry: BTreeSet<&str> = cfg.workers.values().filter_map(|w| w.retry.as_ref().map(|r| r.via.as_str())).collect();
    let results: BTreeSet<&str> = cfg
        .workers
        .values()
        .flat_map(|w| w.outputs.values().map(String::as_str))
        .filter(|e| !consumed.contains(e) && !dead.contains(e) && !retry.contains(e))
        .collect();
    let file = path.display();
    if !results.is_empty() {
        let list: Vec<&str> = results.iter().copied().collect();
        out.push(format!(
            "results: {} (read with: conveyor tail --config {file} --entity {})",
            list.join(", "),
            list[0]
        ));
    }
    if !dead.is_empty() {
        let list: Vec<&str> = dead.iter().copied().collect();
        out.push(format!(
            "dead letters: {} (read with: conveyor dlq inspect --config {file} --entity {})",
            list.join(", "),
            list[0]
        ));
    }
    out.push(format!(
        "stop: Ctrl-C or SIGTERM (drains within {}); reload: SIGHUP or save {file}",
        cfg.service.shutdown_grace
    ));
    out
}

/// Applies reloads one at a time until the pipeline drains.
async fn reloads(
    pipeline: Arc<Pipeline>,
    path: PathBuf,
    mut hups: mpsc::Receiver<()>,
    http: Option<mpsc::Receiver<ReloadRequest>>,
) {
    let mut file_changes = crate::watch::watch(&path);
    let mut http = http.unwrap_or_else(|| mpsc::channel(1).1);
    let stop = pipeline.token().clone();
    loop {
        let reply = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = hups.recv() => None,
            Some(()) = file_changes.recv() => {
                tracing::info!(file = %path.display(), "config file changed: reloading");
                None
            }
            Some(req) = http.recv() => Some(req.reply),
        };
        // what arrived meanwhile is served by this reload (it reads the file afresh)
        while hups.try_recv().is_ok() || file_changes.try_recv().is_ok() {}
        let r = pipeline.reload_file(&path).await;
        if let Some(reply) = reply {
            let answer = match r {
                Ok(report) => ReloadAnswer::Applied(serde_json::to_value(report).unwrap_or_default()),
                Err(e) => ReloadAnswer::Refused(e.to_string()),
            };
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_what_runs_where_results_and_dead_letters_go_and_how_to_stop() {
        let yaml = r#"
service: { name: claims }
transports: { mem: { type: embedded } }
entities:
  inbox: { transport: mem }
  done: { transport: mem }
  dead: { transport: mem }
  later: { transport: mem }
sources:
  web: { type: http, entity: inbox, path: /in }
workers:
  w:
    input: inbox
    outputs: { default: done }
    dead_letter: dead
    retry: { via: later }
"#;
        let cfg = crate::config::load_str(yaml, Path::new("c.yaml"), |_| None).unwrap().config;
        let lines = summary(&cfg, Path::new("c.yaml"), "127.0.0.1:9000".parse().unwrap());
        let all = lines.join("\n");
        assert!(lines[0].contains("\"claims\": 1 source(s), 1 worker(s) over 1 (embedded)"), "{all}");
        assert!(all.contains("metrics: http://127.0.0.1:9000/metrics"), "{all}");
        assert!(all.contains("ingest \"web\": POST http://127.0.0.1:9000/in -> inbox"), "{all}");
        assert!(all.contains("results: done (read with: conveyor tail --config c.yaml --entity done)"), "{all}");
        assert!(all.contains("dead letters: dead (read with: conveyor dlq inspect"), "{all}");
        assert!(!all.contains("later"), "a retry entity is no result: {all}");
        assert!(all.contains("stop: Ctrl-C or SIGTERM"), "{all}");
    }
}
