//! One partition's processing loop (see the `worker` module docs).

use super::{IN_PLACE_ATTEMPTS, WorkerError, WorkerSpec};
use crate::classify::ErrorCategory;
use crate::dlq::{Context, Envelope, Failure};
use crate::health::{TaskHealth, TaskState};
use crate::retry::{self, RetryState};
use crate::stages::{Emit, StageError};
use crate::supervisor::{jitter, panic_text};
use crate::transport::{OutboundMessage, PartitionReader, PipelineMessage};
use futures::FutureExt;
use futures::StreamExt;
use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// What became of one message.
enum Outcome {
    /// Processed; its emits are in the batch's emit list.
    Done,
    /// Failed for good: write this envelope to the dead-letter entity.
    Dead(OutboundMessage, ErrorCategory),
    /// Failed for now: write this to the retry entity.
    Retry(OutboundMessage, ErrorCategory),
    /// A retry addressed to another worker on the same input.
    Skipped,
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

/// However a lane ends, it no longer counts as busy for the watchdog, and
/// its partition's lag series go away (another process may own it now).
struct IdleOnDrop<'a>(&'a TaskHealth, &'a WorkerSpec, u32);
impl Drop for IdleOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lane_idle(self.2);
        self.1.metrics.forget_partition(self.2);
    }
}

pub(super) async fn run(
    spec: Arc<WorkerSpec>,
    mut reader: Box<dyn PartitionReader>,
    health: Arc<TaskHealth>,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    let p = reader.partition();
    let _idle_on_exit = IdleOnDrop(&health, &spec, p);
    let lag = spec.metrics.lag(p);
    let lag_seconds = spec.metrics.lag_seconds(p);
    let mut batch: Vec<PipelineMessage> = Vec::with_capacity(spec.batch_size);
    let mut emits: Vec<Emit> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(spec.batch_size);
    let mut per_output: Vec<Vec<OutboundMessage>> = spec.outputs.iter().map(|_| Vec::new()).collect();
    let mut throttle: Option<Duration> = None;
    let mut handler = spec.metrics.handler.local();
    if let Some(l) = reader.lag() {
        lag.set(l as i64);
    }
    loop {
        // throttling: slow down before the next fetch
        if let Some(d) = throttle {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(d) => {}
            }
        }
        batch.clear();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            r = reader.fetch(spec.batch_size, &mut batch) => r.map_err(|source| WorkerError::Fetch {
                entity: spec.input.clone(), partition: p, source,
            })?,
        }
        health.lane_busy(p);
        let n = batch.len();
        // the first message of the batch is the oldest not yet processed
        lag_seconds.set(((crate::transport::now_ms() - batch[0].timestamp_ms).max(0) as f64) / 1000.0);
        spec.metrics.consumed.inc_by(n as u64);
        spec.metrics.consumed_all.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        spec.metrics.in_flight.inc_by(n as i64);
        let _guard = InFlight(&spec.metrics.in_flight, n as i64);

        // 2. process, in partition order
        emits.clear();
        outcomes.clear();
        if spec.concurrency <= 1 {
            // one clock read per message: each message's end is the next one's start
            let mut clock = Instant::now();
            for msg in &batch {
                outcomes.push(process(&spec, msg, &mut emits, &health, &cancel, &mut handler, &mut clock).await);
            }
            handler.flush();
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

        // the dead-letter circuit breaker looks before anything is written
        if let Some(b) = &spec.breaker {
            let tripped = {
                let mut b = b.lock().unwrap();
                let now = tokio::time::Instant::now();
                for o in &outcomes {
                    if !matches!(o, Outcome::Skipped) {
                        b.record(now, matches!(o, Outcome::Dead(..)));
                    }
                }
                b.tripped().map(|why| (why, b.cooldown()))
            };
            if let Some((why, cooldown)) = tripped {
                return Err(open_circuit(&spec, &health, &cancel, why, cooldown).await);
            }
        }

        // 3. produce everything and wait for the acknowledgements
        for e in emits.drain(..) {
            if let Some((default, tees)) = &spec.tee
                && e.output == *default
            {
                for t in tees {
                    per_output[*t].push(e.message.clone());
                }
            }
            per_output[e.output].push(e.message);
        }
        let mut dead: Vec<(OutboundMessage, ErrorCategory)> = Vec::new();
        let mut retries: Vec<OutboundMessage> = Vec::new();
        let mut throttled = false;
        for o in outcomes.drain(..) {
            match o {
                Outcome::Dead(m, c) => dead.push((m, c)),
                Outcome::Retry(m, c) => {
                    throttled |= c == ErrorCategory::Throttling;
                    retries.push(m);
                }
                Outcome::Done | Outcome::Skipped | Outcome::Abandoned => {}
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
        let retry_send = async {
            if retries.is_empty() {
                return Ok(());
            }
            let r = spec.retry.as_ref().expect("retry outcomes exist only with a retry policy");
            let count = retries.len() as u64;
            r.via
                .producer
                .send(&r.via.physical, retries)
                .await
                .map_err(|source| WorkerError::Produce { entity: r.via.entity.clone(), source })?;
            r.via.produced.inc_by(count);
            r.scheduled.inc_by(count);
            Ok(())
        };
        let dead_send = async {
            if dead.is_empty() {
                return Ok(());
            }
            let target = spec.dead_letter.as_ref().expect("dead outcomes exist only with a dead-letter entity");
            let cats: Vec<ErrorCategory> = dead.iter().map(|d| d.1).collect();
            let msgs: Vec<OutboundMessage> = dead.into_iter().map(|d| d.0).collect();
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
        let (outs, rt, dl) = futures::future::join3(futures::future::join_all(sends), retry_send, dead_send).await;
        for r in outs {
            r?;
        }
        rt?;
        dl?;

        // the stage makes its own effects durable (a sink fsyncs)
        spec.stage.flush().await.map_err(WorkerError::Flush)?;

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
            if l == 0 {
                lag_seconds.set(0.0);
            }
        }
        health.lane_idle(p);
        throttle = if throttled {
            Some(throttle.map_or(Duration::from_millis(500), |d| d * 2).min(spec.retry_max))
        } else {
            None
        };
    }
}

/// The breaker tripped: pause (unready, nothing written), wait the cool-down,
/// then end the worker so the supervisor starts it afresh.
async fn open_circuit(
    spec: &WorkerSpec,
    health: &TaskHealth,
    cancel: &CancellationToken,
    why: String,
    cooldown: Duration,
) -> WorkerError {
    health
        .set_with(TaskState::Paused, format!("dead-letter limit exceeded, resuming in {}s: {why}", cooldown.as_secs()));
    health.record_error(ErrorCategory::Permanent, why.clone());
    spec.metrics.ready.set(0);
    spec.metrics.breaker_trips.inc();
    tracing::error!(
        worker = %spec.name, message_topic = %spec.input, message_consumer_group = %spec.group,
        reason = %why, cooldown_s = cooldown.as_secs(),
        "dead-letter limit exceeded: stopped dead-lettering; the worker pauses and the batch stays uncommitted"
    );
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(cooldown) => {}
    }
    if let Some(b) = &spec.breaker {
        b.lock().unwrap().reset();
    }
    WorkerError::DeadLetterLimit(why)
}

/// [`process`] with its own emit list (for concurrent processing).
async fn process_own(
    spec: &WorkerSpec,
    msg: &PipelineMessage,
    health: &TaskHealth,
    cancel: &CancellationToken,
) -> (Outcome, Vec<Emit>) {
    let mut own = Vec::new();
    let mut handler = spec.metrics.handler.local();
    let mut clock = Instant::now();
    let o = process(spec, msg, &mut own, health, cancel, &mut handler, &mut clock).await;
    (o, own)
}

fn ms_to_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn time_to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs the stage on one message, retrying as its failures ask.
async fn process(
    spec: &WorkerSpec,
    msg: &PipelineMessage,
    out: &mut Vec<Emit>,
    health: &TaskHealth,
    cancel: &CancellationToken,
    handler: &mut crate::metrics::LocalHistogram,
    clock: &mut Instant,
) -> Outcome {
    // retry bookkeeping rides in headers; stages and outputs never see it
    let (msg, prior): (Cow<'_, PipelineMessage>, RetryState) = if retry::has_retry_headers(&msg.headers) {
        let state = RetryState::of(&msg.headers);
        if state.worker.as_deref().is_some_and(|w| w != spec.name) {
            return Outcome::Skipped;
        }
        let mut clean = msg.clone();
        clean.headers = retry::strip(&msg.headers);
        (Cow::Owned(clean), state)
    } else {
        (Cow::Borrowed(msg), RetryState::default())
    };
    let msg = msg.as_ref();
    let mut attempts: u32 = prior.attempts;
    let mut first_failure: Option<SystemTime> = prior.first_failure_ms.map(ms_to_time);
    let mut paused = false;
    loop {
        attempts += 1;
        let start = out.len();
        let r = AssertUnwindSafe(spec.stage.process(msg, out)).catch_unwind().await;
        let t1 = Instant::now();
        handler.observe(t1.saturating_duration_since(*clock).as_secs_f64());
        *clock = t1;
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
        let first = *first_failure.get_or_insert(now);
        spec.metrics.failed(category).inc();
        health.record_error(category, err.to_string());

        let retryable = matches!(category, ErrorCategory::Transient | ErrorCategory::Throttling);
        if let (Some(r), true) = (&spec.retry, retryable)
            && attempts < r.max_attempts
        {
            let delay = retry::delay_for(&r.schedule, attempts);
            log_failure(spec, msg, &err, attempts, "message failed; scheduled for a delayed retry", Some(delay), None);
            let m = retry::to_retry(
                msg,
                &msg.headers,
                &spec.input,
                &spec.name,
                attempts,
                time_to_ms(first),
                delay,
                &err.to_string(),
            );
            return Outcome::Retry(m, category);
        }
        let give_up = match category {
            ErrorCategory::Permanent => true,
            ErrorCategory::Transient | ErrorCategory::Throttling => {
                spec.retry.as_ref().map_or(attempts >= IN_PLACE_ATTEMPTS, |r| attempts >= r.max_attempts)
            }
            ErrorCategory::Auth => false,
        };
        if give_up && let Some(dl) = &spec.dead_letter {
            log_failure(spec, msg, &err, attempts, "message dead-lettered", None, Some(&dl.entity));
            let f = Failure {
                category,
                kind: err.kind(),
                message: &err.to_string(),
                first_failure: first,
                last_failure: now,
                attempts,
            };
            let cx = Context { transport: spec.transport.kind(), consumer_group: &spec.group, worker: &spec.name };
            return Outcome::Dead(Envelope::new(msg, &f, &cx).to_message(msg.key.clone()), category);
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
        let delay = jitter(delay);
        log_failure(spec, msg, &err, attempts, "message failed; retrying in place", Some(delay), None);
        // waiting out a planned retry is healthy for the watchdog
        health.lane_idle(msg.partition);
        tokio::select! {
            _ = cancel.cancelled() => return Outcome::Abandoned,
            _ = tokio::time::sleep(delay) => {}
        }
        health.lane_busy(msg.partition);
        *clock = Instant::now();
    }
}

/// One log line per failed attempt, with the message's coordinates and
/// what happens next (a retry after `delay`, or the dead-letter entity).
fn log_failure(
    spec: &WorkerSpec,
    msg: &PipelineMessage,
    err: &StageError,
    attempts: u32,
    what: &str,
    delay: Option<Duration>,
    dead_letter: Option<&str>,
) {
    tracing::warn!(
        worker = %spec.name,
        message_topic = %msg.entity,
        message_partition = msg.partition,
        message_offset = msg.position,
        message_consumer_group = %spec.group,
        error_category = %err.category(),
        error_type = err.kind(),
        error = %err,
        attempts,
        retry_in_ms = delay.map(|d| d.as_millis() as u64),
        dead_letter,
        "{what}"
    );
}
