//! The systemd watchdog, tied to real progress.
//!
//! When systemd sets `WATCHDOG_USEC` (`WatchdogSec=` in the unit), Conveyor
//! sends `WATCHDOG=1` every half interval — but only while no consumer loop
//! has been stuck on one batch for longer than `service.watchdog_stall`.
//! Loops waiting for messages, or waiting out a planned retry, count as
//! healthy. A stuck loop stops the pings and systemd restarts the service.
//! `STATUS=` carries a one-line summary (tasks ready, messages/s).

use super::notify;
use crate::health::{Health, TaskState};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub fn spawn(
    health: Arc<Health>,
    consumed: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
    stall: Duration,
) {
    let interval = notify::watchdog_interval();
    tokio::spawn(async move {
        let mut last = (std::time::Instant::now(), consumed.load(std::sync::atomic::Ordering::Relaxed));
        let mut rate = 0.0f64;
        let tick = interval.map(|i| i / 2).unwrap_or(Duration::from_secs(1)).max(Duration::from_millis(50));
        let mut told_ready = false;
        let mut was_stalled = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
            let r = health.report();
            if r.ready && !told_ready {
                told_ready = true;
                notify::ready();
                tracing::info!(tasks = r.workers.len(), "all workers ready");
            }
            let stalled = health.stalled(stall);
            let now = (std::time::Instant::now(), consumed.load(std::sync::atomic::Ordering::Relaxed));
            let dt = now.0.duration_since(last.0).as_secs_f64();
            if dt >= 1.0 {
                rate = (now.1 - last.1) as f64 / dt;
                last = now;
            }
            let ready = r.workers.values().filter(|w| w.state == TaskState::Ready).count();
            if stalled.is_empty() {
                if interval.is_some() {
                    notify::watchdog();
                }
                if was_stalled {
                    tracing::info!("consumer loops make progress again; watchdog pings resume");
                }
                notify::status(&format!("{ready}/{} tasks ready, {rate:.0} msgs/s", r.workers.len()));
            } else {
                if !was_stalled {
                    tracing::error!(tasks = ?stalled, stall = ?stall, "consumer loop stuck: watchdog pings stop");
                }
                notify::status(&format!(
                    "{ready}/{} tasks ready, {rate:.0} msgs/s; stuck: {}",
                    r.workers.len(),
                    stalled.join(", ")
                ));
            }
            was_stalled = !stalled.is_empty();
        }
    });
}
