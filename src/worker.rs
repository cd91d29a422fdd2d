//! Workers: consume an entity, run the stage on each message, produce the
//! outputs, commit.
//!
//! A worker is a set of lanes on the partition host (`consume`): one lane
//! per assigned partition keeps partition order; lanes of different
//! partitions run in parallel. A lane repeats:
//!
//! 1. fetch a batch (up to `batch_size`) — the only point where it stops on
//!    cancellation, so a drain always finishes the batch in hand;
//! 2. run the stage on each message (`concurrency` at a time, results kept in
//!    partition order); a panicking stage is caught and counts as a
//!    `Permanent` failure of that message; what then happens to a failed
//!    message is decided by the failure policy ([`policy::decide`]);
//! 3. deliver: produce every output, retry and dead-letter write of the
//!    batch and wait until all are acknowledged ([`deliver`]);
//! 4. let the stage make its effects durable (a sink fsyncs), then commit
//!    the batch's last position.
//!
//! A transport failure in step 3 or 4 ends the worker with an error; the
//! supervisor restarts it and the uncommitted batch is delivered again (at
//! least once). A message an output refuses for good (too large, a header
//! it cannot carry) is dead-lettered instead, with a trimmed envelope when
//! the envelope is too large itself; when nothing can take it, the lane
//! pauses (unready, `conveyor_undeliverable_messages`) and tries again,
//! holding the batch uncommitted.
//!
//! A drain that arrives while a message waits for a retry or a pause
//! abandons the batch uncommitted: it is delivered again on the next start.
//!
//! With `dead_letter_limit:` a batch whose dead letters trip the breaker is
//! abandoned before anything is written: the lane pauses for the cool-down
//! (a paused lane does not stop the systemd watchdog) and the worker
//! restarts. While the breaker is open, every lane's dead letters wait.
//!
//! Messages carrying retry headers are this worker's unless they name
//! another worker on the same input ([`policy::retry_owner`]); a retry for a
//! worker that no longer exists (renamed, removed) is taken over, or
//! dead-lettered when several workers share the input — never skipped
//! silently.

mod breaker;
mod deliver;
mod lane;
pub mod policy;

pub use breaker::Breaker;
pub use policy::{IN_PLACE_ATTEMPTS, RetryPolicy};

use crate::classify::ErrorCategory;
use crate::consume::{self, ConsumeError, Host, Lanes};
use crate::metrics::WorkerMetrics;
use crate::stages::{Stage, StageError};
use crate::transport::{PartitionReader, Producer};
use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything a worker needs, resolved from the config.
pub struct WorkerSpec {
    pub name: String,
    /// Its consumer group on its input.
    pub host: Host,
    pub stage: Arc<dyn Stage>,
    /// Indexed like the stage's `Outputs`.
    pub outputs: Vec<OutputTarget>,
    /// `tee`: the `default` output's index and the outputs that get a copy.
    pub tee: Option<(usize, Vec<usize>)>,
    pub dead_letter: Option<OutputTarget>,
    pub concurrency: usize,
    pub batch_size: usize,
    pub metrics: WorkerMetrics,
    /// What failures lead to.
    pub policy: RetryPolicy,
    /// Delayed retries through a retry entity (`retry:`).
    pub retry: Option<RetrySpec>,
    /// The dead-letter circuit breaker (`dead_letter_limit:`).
    pub breaker: Option<std::sync::Mutex<Breaker>>,
    /// Every worker consuming the same input, this one included.
    pub input_workers: Vec<String>,
    /// Whether retry headers on consumed messages are this worker's
    /// bookkeeping (every worker but a migration mirror, which copies
    /// messages exactly as they are).
    pub retry_headers: bool,
}

/// Where a worker's delayed retries go.
pub struct RetrySpec {
    pub via: OutputTarget,
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
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    #[error("dead-letter limit exceeded: {0}")]
    DeadLetterLimit(String),
    #[error("stage flush failed (the batch is delivered again): {0}")]
    Flush(StageError),
}

impl WorkerError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            WorkerError::Consume(e) => e.category(),
            WorkerError::DeadLetterLimit(_) => ErrorCategory::Transient,
            WorkerError::Flush(e) => e.category(),
        }
    }
}

impl Lanes for WorkerSpec {
    type Error = WorkerError;

    fn lane(
        self: Arc<Self>,
        reader: Box<dyn PartitionReader>,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<(), WorkerError>> + Send + 'static {
        lane::run(self, reader, cancel)
    }
}

/// Runs a worker until `cancel`, then drains: stops fetching, finishes and
/// commits the batches in hand (within the grace period).
pub async fn run(spec: Arc<WorkerSpec>, cancel: CancellationToken) -> Result<(), WorkerError> {
    consume::run(&spec.host, spec.clone(), cancel).await
}
