//! Workers: consume an entity, run the stage on each message, produce the
//! outputs, commit.
//!
//! One task per assigned partition (a *lane*) keeps partition order; lanes of
//! different partitions run in parallel. A lane repeats:
//!
//! 1. fetch a batch (up to `batch_size`) — the only point where it stops on
//!    cancellation, so a drain always finishes the batch in hand;
//! 2. run the stage on each message (`concurrency` at a time, results kept in
//!    partition order); a panicking stage is caught and counts as a
//!    `Permanent` failure of that message;
//! 3. produce every output and every dead-letter envelope of the batch and
//!    wait until all are acknowledged;
//! 4. only then commit the batch's last position.
//!
//! A failure in step 3 or 4 ends the worker with an error; the supervisor
//! restarts it and the uncommitted batch is delivered again (at least once).
//!
//! Failed messages, by category (see `classify`):
//! - `Permanent`: dead-lettered at once; without `dead_letter`, retried with
//!   backoff forever (the partition waits: nothing is skipped silently);
//! - `Transient`/`Throttling`: with `retry:`, sent to the retry entity with
//!   its attempt count and due time (see `retry`), and dead-lettered once
//!   `max_attempts` is reached; without it, retried in place with exponential
//!   backoff up to `IN_PLACE_ATTEMPTS` times, then dead-lettered (or retried
//!   on without a dead-letter entity). Throttling also slows the lane down
//!   before its next fetch;
//! - `Auth`: never dead-lettered: the worker reports `paused` on `/readyz`
//!   and retries with backoff until it succeeds.
//!
//! A drain that arrives while a message is waiting to be retried abandons the
//! batch uncommitted: it is redelivered on the next start.
//!
//! With `dead_letter_limit:` a batch whose dead letters would exceed the
//! limit is abandoned before anything is written: the worker reports
//! `paused` with the reason, waits the cool-down, and restarts (the batch is
//! delivered again). Messages carrying another worker's retry headers (a
//! retry entity shared by workers on one input) are skipped and committed.

mod breaker;
mod lane;

pub use breaker::Breaker;

use crate::classify::ErrorCategory;
use crate::health::{TaskHealth, TaskState};
use crate::metrics::WorkerMetrics;
use crate::stages::Stage;
use crate::transport::{Assignment, Producer, StartPosition, Transport, TransportError};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Attempts of a transiently failing message before it is dead-lettered.
pub const IN_PLACE_ATTEMPTS: u32 = 5;

/// Everything a worker needs, resolved from the config.
pub struct WorkerSpec {
    pub name: String,
    /// Input entity (config key) and its name on the transport.
    pub input: String,
    pub input_physical: String,
    pub transport: Arc<dyn Transport>,
    pub group: String,
    pub start: StartPosition,
    pub stage: Arc<dyn Stage>,
    /// Indexed like the stage's `Outputs`.
    pub outputs: Vec<OutputTarget>,
    /// `tee`: the `default` output's index and the outputs that get a copy.
    pub tee: Option<(usize, Vec<usize>)>,
    pub dead_letter: Option<OutputTarget>,
    pub concurrency: usize,
    pub batch_size: usize,
    pub metrics: WorkerMetrics,
    /// Backoff between in-place retries of one message.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Delayed retries through a retry entity (`retry:`).
    pub retry: Option<RetrySpec>,
    /// The dead-letter circuit breaker (`dead_letter_limit:`).
    pub breaker: Option<std::sync::Mutex<Breaker>>,
}

/// A worker's `retry:` policy, resolved.
pub struct RetrySpec {
    pub via: OutputTarget,
    pub schedule: Vec<Duration>,
    pub max_attempts: u32,
    pub scheduled: Counter,
}

/// A resolved output.
pub struct OutputTarget {
    pub entity: String,
    pub physical: String,
    pub producer: Arc<dyn Producer>,
    pub produced: Counter,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot join consumer group {group:?} on {entity:?}: {source}")]
    Subscribe { entity: String, group: String, source: TransportError },
    #[error("reading {entity:?} partition {partition}: {source}")]
    Fetch { entity: String, partition: u32, source: TransportError },
    #[error("writing to {entity:?}: {source}")]
    Produce { entity: String, source: TransportError },
    #[error("committing {entity:?} partition {partition} at position {position}: {source}")]
    Commit { entity: String, partition: u32, position: i64, source: TransportError },
    #[error("a partition task panicked: {0}")]
    Panic(String),
    #[error("dead-letter limit exceeded: {0}")]
    DeadLetterLimit(String),
    #[error("stage flush failed (the batch is delivered again): {0}")]
    Flush(crate::stages::StageError),
}

impl WorkerError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            WorkerError::Subscribe { source, .. }
            | WorkerError::Fetch { source, .. }
            | WorkerError::Produce { source, .. }
            | WorkerError::Commit { source, .. } => source.category(),
            WorkerError::Panic(_) | WorkerError::DeadLetterLimit(_) => ErrorCategory::Transient,
            WorkerError::Flush(e) => e.category(),
        }
    }
}

/// Runs a worker until `cancel`, then drains: stops fetching, finishes and
/// commits the batches in hand.
pub async fn run(spec: Arc<WorkerSpec>, health: Arc<TaskHealth>, cancel: CancellationToken) -> Result<(), WorkerError> {
    health.set(TaskState::Starting);
    spec.metrics.ready.set(0);
    let sub = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        s = spec.transport.subscribe(&spec.input_physical, &spec.group, spec.start) => s,
    };
    let mut sub =
        sub.map_err(|source| WorkerError::Subscribe { entity: spec.input.clone(), group: spec.group.clone(), source })?;
    let mut lanes: JoinSet<Result<(), WorkerError>> = JoinSet::new();
    let mut lane_stops: HashMap<u32, (CancellationToken, oneshot::Receiver<()>)> = HashMap::new();
    let mut result = Ok(());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            a = sub.next() => match a {
                Ok(Assignment::Assigned(reader)) => {
                    let p = reader.partition();
                    let token = cancel.child_token();
                    let (fin_tx, fin_rx) = oneshot::channel();
                    lane_stops.insert(p, (token.clone(), fin_rx));
                    let (s2, h2) = (spec.clone(), health.clone());
                    lanes.spawn(async move {
                        let r = lane::run(s2, reader, h2, token).await;
                        let _ = fin_tx.send(());
                        r
                    });
                    health.set(TaskState::Ready);
                    spec.metrics.ready.set(1);
                    spec.metrics.connected.set(1);
                }
                Ok(Assignment::Health(Some(e))) => {
                    health.record_error(e.category(), e.to_string());
                    health.set_with(TaskState::Paused, format!("{} error from the transport: {e}", e.category()));
                    spec.metrics.ready.set(0);
                    spec.metrics.connected.set(0);
                    tracing::warn!(worker = %spec.name, message_topic = %spec.input, error_category = %e.category(), error = %e, "transport degraded");
                }
                Ok(Assignment::Health(None)) => {
                    spec.metrics.connected.set(1);
                    if !lane_stops.is_empty() {
                        health.set(TaskState::Ready);
                        spec.metrics.ready.set(1);
                        tracing::info!(worker = %spec.name, message_topic = %spec.input, "transport healthy again");
                    }
                }
                Ok(Assignment::Revoked { partition, done }) => {
                    if let Some((token, fin)) = lane_stops.remove(&partition) {
                        token.cancel();
                        let _ = fin.await;
                    }
                    let _ = done.send(());
                }
                Err(source) => {
                    result = Err(WorkerError::Subscribe { entity: spec.input.clone(), group: spec.group.clone(), source });
                    break;
                }
            },
            Some(done) = lanes.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => { result = Err(e); break; }
                Err(j) => { result = Err(WorkerError::Panic(panic_message(j))); break; }
            },
        }
    }
    // drain: every lane finishes the batch in hand and commits it
    for (token, _) in lane_stops.values() {
        token.cancel();
    }
    while let Some(done) = lanes.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(j) => {
                if result.is_ok() {
                    result = Err(WorkerError::Panic(panic_message(j)));
                }
            }
        }
    }
    drop(sub);
    spec.metrics.ready.set(0);
    if result.is_ok() {
        health.set(TaskState::Stopped);
    }
    result
}

fn panic_message(j: tokio::task::JoinError) -> String {
    if j.is_panic() {
        let p = j.into_panic();
        crate::supervisor::panic_text(&*p)
    } else {
        "task was cancelled".into()
    }
}
