//! One partition's processing loop (see the `worker` module docs).

use super::{IN_PLACE_ATTEMPTS, WorkerError, WorkerSpec};
use crate::classify::ErrorCategory;
use crate::dlq::{Context, Envelope, Failure};
use crate::health::{TaskHealth, TaskState};
use crate::stages::{Emit, StageError};
use crate::supervisor::panic_text;
use crate::transport::{OutboundMessage, PartitionReader, PipelineMessage};
use futures::FutureExt;
use futures::StreamExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// What became of one message.
enum Outcome {
    /// Processed; its emits are in the batch's emit list.
    Done,
    /// Failed for good: write this envelope to the dead-letter entity.
    Dead(OutboundMessage, ErrorCategory),
    /// A drain arrived while the message waited for a retry.
    Abandoned,
}

/// Decrements the in-flight gauge however the batch ends.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge, i64);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec_by(self.1);
    }
}

pub(super) async fn run(
    spec: Arc<WorkerSpec>,
    mut reader: Box<dyn PartitionReader>,
    health: Arc<TaskHealth>,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    let p = reader.partition();
    let lag = spec.metrics.lag(p);
    let mut batch: Vec<PipelineMessage> = Vec::with_capacity(spec.batch_size);
    let mut emits: Vec<Emit> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(spec.batch_size);
    let mut per_output: Vec<Vec<OutboundMessage>> = spec.outputs.iter().map(|_| Vec::new()).collect();
    let mut dead: Vec<(OutboundMessage, ErrorCategory)> = Vec::new();
    if let Some(l) = reader.lag() {
        lag.set(l as i64);
    }
    loop {
        batch.clear();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            r = reader.fetch(spec.batch_size, &mut batch) => r.map_err(|source| WorkerError::Fetch {
                entity: spec.input.clone(), partition: p, source,
            })?,
        }
        let n = batch.len();
        spec.metrics.consumed.inc_by(n as u64);
        spec.metrics.in_flight.inc_by(n as i64);
        let _guard = InFlight(&spec.metrics.in_flight, n as i64);

        // 2. process, in partition order
        emits.clear();
        outcomes.clear();
        if spec.concurrency <= 1 {
            for msg in &batch {
                outcomes.push(process(&spec, msg, &mut emits, &health, &cancel).await);
            }
        } else {
            // at most `concurrency` messages at once, results in partition order
            let mut running = futures::stream::FuturesOrdered::new();
            let mut next = 0;
            loop {
                while running.len() < spec.concurrency && next < batch.len() {
                    running.push_back(process_own(&spec, &batch[next], &health, &cancel));
                    next += 1;
                }
                match running.next().await {
                    Some((o, own)) => {
                        outcomes.push(o);
                        emits.extend(own);
                    }
                    None => break,
                }
            }
        }
        if outcomes.iter().any(|o| matches!(o, Outcome::Abandoned)) {
            // drain during a retry wait: nothing of this batch is produced or
            // committed; it is delivered again next time
            return Ok(());
        }

        // 3. produce everything and wait for the acknowledgements
        for e in emits.drain(..) {
            per_output[e.output].push(e.message);
        }
        dead.clear();
        for o in outcomes.drain(..) {
            if let Outcome::Dead(m, c) = o {
                dead.push((m, c));
            }
        }
        let mut sends = Vec::new();
        for (i, msgs) in per_output.iter_mut().enumerate() {
            if msgs.is_empty() {
                continue;
            }
            let target = &spec.outputs[i];
            let msgs = std::mem::take(msgs);
            let count = msgs.len() as u64;
            sends.push(async move {
                target
                    .producer
                    .send(&target.physical, msgs)
                    .await
                    .map(|_| target.produced.inc_by(count))
                    .map_err(|source| WorkerError::Produce { entity: target.entity.clone(), source })
            });
        }
        let dead_send = async {
            if dead.is_empty() {
                return Ok(());
            }
            let target = spec.dead_letter.as_ref().expect("dead outcomes exist only with a dead-letter entity");
            let cats: Vec<ErrorCategory> = dead.iter().map(|d| d.1).collect();
            let msgs: Vec<OutboundMessage> = dead.drain(..).map(|d| d.0).collect();
            target
                .producer
                .send(&target.physical, msgs)
                .await
                .map_err(|source| WorkerError::Produce { entity: target.entity.clone(), source })?;
            target.produced.inc_by(cats.len() as u64);
            for c in cats {
                spec.metrics.dead_lettered(c).inc();
            }
            Ok(())
        };
        let (outs, dl) = futures::future::join(futures::future::join_all(sends), dead_send).await;
        for r in outs {
            r?;
        }
        dl?;

        // 4. commit
        let last = batch.last().expect("fetch returns at least one message");
        reader.commit(last).await.map_err(|source| WorkerError::Commit {
            entity: spec.input.clone(),
            partition: p,
            position: last.position,
            source,
        })?;
        if let Some(l) = reader.lag() {
            lag.set(l as i64);
        }
    }
}

/// [`process`] with its own emit list (for concurrent processing).
async fn process_own(
    spec: &WorkerSpec,
    msg: &PipelineMessage,
    health: &TaskHealth,
    cancel: &CancellationToken,
) -> (Outcome, Vec<Emit>) {
    let mut own = Vec::new();
    let o = process(spec, msg, &mut own, health, cancel).await;
    (o, own)
}

/// Runs the stage on one message, retrying in place as its failures ask.
async fn process(
    spec: &WorkerSpec,
    msg: &PipelineMessage,
    out: &mut Vec<Emit>,
    health: &TaskHealth,
    cancel: &CancellationToken,
) -> Outcome {
    let mut attempts: u32 = 0;
    let mut first_failure: Option<SystemTime> = None;
    let mut paused = false;
    loop {
        attempts += 1;
        let start = out.len();
        let t0 = Instant::now();
        let r = AssertUnwindSafe(spec.stage.process(msg, out)).catch_unwind().await;
        spec.metrics.handler.observe(t0.elapsed().as_secs_f64());
        let err = match r {
            Ok(Ok(())) => {
                if paused {
                    health.set(TaskState::Ready);
                    spec.metrics.ready.set(1);
                }
                return Outcome::Done;
            }
            Ok(Err(e)) => e,
            Err(panic) => StageError::Panic(panic_text(&*panic)),
        };
        out.truncate(start);
        let category = err.category();
        let now = SystemTime::now();
        first_failure.get_or_insert(now);
        spec.metrics.failed(category).inc();
        health.record_error(category, err.to_string());
        let give_up = match category {
            ErrorCategory::Permanent => true,
            ErrorCategory::Transient | ErrorCategory::Throttling => attempts >= IN_PLACE_ATTEMPTS,
            ErrorCategory::Auth => false,
        };
        if give_up {
            if let Some(dl) = &spec.dead_letter {
                tracing::warn!(
                    worker = %spec.name,
                    message_topic = %msg.entity,
                    message_partition = msg.partition,
                    message_offset = msg.position,
                    message_consumer_group = %spec.group,
                    error_category = %category,
                    error_type = err.kind(),
                    error = %err,
                    attempts,
                    dead_letter = %dl.entity,
                    "message dead-lettered"
                );
                let f = Failure {
                    category,
                    kind: err.kind(),
                    message: &err.to_string(),
                    first_failure: first_failure.unwrap_or(now),
                    last_failure: now,
                    attempts,
                };
                let cx = Context { transport: spec.transport.kind(), consumer_group: &spec.group, worker: &spec.name };
                return Outcome::Dead(Envelope::new(msg, &f, &cx).to_message(msg.key.clone()), category);
            }
        }
        if category == ErrorCategory::Auth && !paused {
            paused = true;
            health.set_with(TaskState::Paused, format!("auth failure: {err}"));
            spec.metrics.ready.set(0);
        }
        let exp = attempts.saturating_sub(1).min(16);
        let mut delay = spec.retry_base.saturating_mul(1 << exp).min(spec.retry_max);
        if category == ErrorCategory::Throttling {
            delay = delay.saturating_mul(2).min(spec.retry_max);
        }
        let delay = crate::supervisor::jitter(delay);
        tracing::warn!(
            worker = %spec.name,
            message_topic = %msg.entity,
            message_partition = msg.partition,
            message_offset = msg.position,
            message_consumer_group = %spec.group,
            error_category = %category,
            error_type = err.kind(),
            error = %err,
            attempts,
            retry_in_ms = delay.as_millis() as u64,
            "message failed; retrying in place"
        );
        tokio::select! {
            _ = cancel.cancelled() => return Outcome::Abandoned,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
