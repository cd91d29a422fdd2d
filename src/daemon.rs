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
