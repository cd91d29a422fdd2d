//! Scaling signals: every 10 s, `conveyor_recommended_replicas` per worker,
//! from its throughput, its lag and the lag's trend — enough processes to
//! keep up and clear the backlog within 5 minutes, at least 1, at most the
//! input's partition count. The decision is [`recommended_replicas`], a pure
//! function; [`signals`] feeds it and sets the gauge.

use crate::config::Config;
use crate::metrics::{Metrics, WorkerLabel};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the signal is computed.
pub const EVERY: Duration = Duration::from_secs(10);

/// Sets `conveyor_recommended_replicas` for every worker of the config
/// `current` returns, every [`EVERY`], until `stop`.
pub async fn signals(current: impl Fn() -> Option<Config>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut last: HashMap<String, (u64, f64)> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let Some(cfg) = current() else { continue };
        for (name, w) in &cfg.workers {
            let partitions = cfg.entities.get(&w.input).map_or(1, |e| e.partitions);
            let worker_metrics = metrics.worker(name, &w.input);
            let consumed = worker_metrics.consumed.get();
            let lag: f64 = (0..partitions).map(|p| worker_metrics.lag(p).get().max(0) as f64).sum();
            let Some((c0, l0)) = last.insert(name.clone(), (consumed, lag)) else { continue };
            let rate = consumed.saturating_sub(c0) as f64 / EVERY.as_secs_f64();
            let trend = (lag - l0) / EVERY.as_secs_f64();
            let rec = recommended_replicas(rate, lag, trend, partitions);
            metrics.recommended_replicas.get_or_create(&WorkerLabel { worker: name.clone() }).set(rec as i64);
        }
    }
}

/// Processes needed for throughput `rate` (msgs/s of this process), backlog
/// `lag` and its `trend` (msgs/s), capped at `partitions`.
pub fn recommended_replicas(rate: f64, lag: f64, trend: f64, partitions: u32) -> u32 {
    let want = if rate > 0.0 {
        ((rate + trend.max(0.0) + lag / 300.0) / rate).ceil()
    } else if lag > 0.0 {
        2.0 // a backlog and no progress: one process is not enough (or is stuck)
    } else {
        1.0
    };
    (want as u32).clamp(1, partitions.max(1))
}

#[cfg(test)]
mod tests {
    use super::recommended_replicas;

    #[test]
    fn replicas_follow_lag_and_its_trend() {
        assert_eq!(recommended_replicas(1000.0, 0.0, 0.0, 8), 1, "keeping up");
        assert_eq!(recommended_replicas(1000.0, 0.0, 1000.0, 8), 2, "lag grows as fast as we consume");
        assert_eq!(recommended_replicas(1000.0, 600_000.0, 0.0, 8), 3, "clear 600k in 5 min at 1000/s each");
        assert_eq!(recommended_replicas(1000.0, 0.0, 50_000.0, 8), 8, "capped at the partition count");
        assert_eq!(recommended_replicas(0.0, 10.0, 0.0, 4), 2);
        assert_eq!(recommended_replicas(0.0, 0.0, 0.0, 4), 1);
    }
}
