//! One partition's processing loop (see the `worker` module docs): fetch,
//! process by the failure policy, deliver, flush, commit.

use super::deliver::{Dead, DeliverError, Delivery};
use super::policy::{self, BreakerState, Decision, RetryOwner};
use super::{WorkerError, WorkerSpec};
use crate::backoff::{Attempts, Backoff, jitter};
use crate::classify::ErrorCategory;
use crate::consume::ConsumeError;
use crate::dlq::{Context, Envelope, Failure};
use crate::health::TaskState;
use crate::retry::{self, RetryState};
use crate::stages::{Emit, StageError};
use crate::supervisor::panic_text;
use crate::transport::{OutboundMessage, PartitionReader, PipelineMessage, TransportError};
use futures::FutureExt;
use futures::StreamExt;
use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Waits of a lane whose delivery is stuck (nothing can take a message).
const STUCK: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));

/// What became of one message.
enum Outcome {
    /// Processed; its emits (when processed concurrently; sequential
    /// processing hands them to the delivery at once).
    Done(Vec<Emit>),
    /// Failed for good: write this envelope to the dead-letter entity.
    Dead(Box<Envelope>, ErrorCategory),
    /// Failed for now: write this to the retry entity (boxed: an outcome
    /// per message stays small).
    Retry(Box<OutboundMessage>, ErrorCategory),
    /// A retry addressed to another worker on the same input.
    Skipped,
    /// A drain arrived while the message waited for a retry or a pause.
    Abandoned,
}

/// Decrements the in-flight gauge however the batch ends.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge, i64);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec_by(self.1);
    }
}

/// However a lane ends, it no longer counts for the watchdog, and its
/// partition's lag series go away (another process may own it now).
struct IdleOnDrop<'a>(&'a WorkerSpec, u32);
impl Drop for IdleOnDrop<'_> {
    fn drop(&mut self) {
        self.0.host.health.lane_idle(self.1);
        self.0.metrics.forget_partition(self.1);
    }
}

/// How often a lane that waits out throttling refreshes its lag gauge.
const LAG_REFRESH: Duration = Duration::from_secs(1);

pub(super) async fn run(
    spec: Arc<WorkerSpec>,
    mut reader: Box<dyn PartitionReader>,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    let p = reader.partition();
    let health = spec.host.health.clone();
    let _idle_on_exit = IdleOnDrop(&spec, p);
    let lag = spec.metrics.lag(p);
    let lag_seconds = spec.metrics.lag_seconds(p);
    let mut batch: Vec<PipelineMessage> = Vec::with_capacity(spec.batch_size);
    let mut emits: Vec<Emit> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(spec.batch_size);
    let mut delivery = Delivery::new(spec.outputs.len());
    let mut throttle = Attempts::new(Backoff::new(Duration::from_millis(500), spec.policy.in_place.max));
    let mut throttled = false;
    let mut handler = spec.metrics.handler.local();
    if let Some(l) = reader.lag() {
        lag.set(l as i64);
    }
    loop {
        // throttling: slow down before the next fetch, showing the backlog
        // that builds up meanwhile (the gauge otherwise moves on commits)
        if throttled {
            let until = tokio::time::Instant::now() + throttle.fail();
            loop {
                if let Some(l) = reader.lag() {
                    lag.set(l as i64);
                }
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep_until(until.min(now + LAG_REFRESH)) => {}
                }
            }
        } else {
            throttle.reset();
        }
        batch.clear();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            r = reader.fetch(spec.batch_size, &mut batch) => r.map_err(|source| ConsumeError::Fetch {
                entity: spec.host.entity.clone(), partition: p, source,
            })?,
        }
        if batch.is_empty() {
            continue;
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
        outcomes.clear();
        if spec.concurrency <= 1 {
            let mut clock = StageClock::new();
            for (i, msg) in batch.iter().enumerate() {
                // a stage that answers at once, on a message with no retry
                // state to strip, needs none of `process`'s machinery
                let first = if spec.retry_headers && retry::has_retry_headers(&msg.headers) {
                    None
                } else {
                    attempt_now(&spec, msg, &mut emits, &mut clock)
                };
                let o = match first {
                    Some(Ok(())) => Outcome::Done(Vec::new()),
                    first => process(&spec, msg, &mut emits, &cancel, &mut handler, &mut clock, first).await,
                };
                // straight into the buckets: no list per message (nothing is
                // written before the breaker below has looked)
                for e in emits.drain(..) {
                    delivery.emit(i, e, &spec.tee);
                }
                outcomes.push(o);
            }
            clock.settle(&mut handler);
            handler.flush();
        } else {
            // at most `concurrency` messages at once, results in partition order
            let mut running = futures::stream::FuturesOrdered::new();
            let mut next = 0;
            loop {
                while running.len() < spec.concurrency && next < batch.len() {
                    running.push_back(process_own(&spec, &batch[next], &cancel));
                    next += 1;
                }
                match running.next().await {
                    Some(o) => outcomes.push(o),
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
                let dead_here = outcomes.iter().any(|o| matches!(o, Outcome::Dead(..)));
                b.check(now).filter(|_| dead_here).map(|why| (why, b.state(now)))
            };
            if let Some((why, state)) = tripped {
                let wait = match state {
                    BreakerState::Open { remaining } => remaining,
                    BreakerState::Closed => Duration::ZERO,
                };
                // a drain during the cool-down ends the lane cleanly (the
                // batch stays uncommitted, as it would anyway)
                return match open_circuit(&spec, p, &cancel, why, wait).await {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
        }

        // 3. sort into buckets and deliver
        throttled = false;
        for (i, o) in outcomes.drain(..).enumerate() {
            match o {
                Outcome::Done(es) => {
                    for e in es {
                        delivery.emit(i, e, &spec.tee);
                    }
                }
                Outcome::Dead(envelope, category) => {
                    delivery.dead(Dead { envelope: *envelope, key: batch[i].key.clone(), category })
                }
                Outcome::Retry(m, c) => {
                    throttled |= c == ErrorCategory::Throttling;
                    delivery.retry(i, *m);
                }
                Outcome::Skipped | Outcome::Abandoned => {}
            }
        }
        let refused = |source: usize, entity: &str, e: &TransportError| -> Option<Dead> {
            spec.dead_letter.as_ref()?;
            let msg = &batch[source];
            let now = SystemTime::now();
            let message = format!("{entity} refused the message: {e}");
            let f = Failure {
                category: ErrorCategory::Permanent,
                kind: e.kind(),
                message: &message,
                first_failure: now,
                last_failure: now,
                attempts: 1,
                schema_id: None,
            };
            Some(Dead { envelope: envelope(&spec, msg, &f), key: msg.key.clone(), category: f.category })
        };
        let mut stuck = Attempts::new(STUCK);
        loop {
            match delivery.send(&spec, &refused).await {
                Ok(()) => break,
                Err(DeliverError::Failed(e)) => return Err(e.into()),
                Err(DeliverError::Stuck { entity, reason, messages }) => {
                    health.lane_paused(p);
                    health.set_with(TaskState::Paused, format!("cannot deliver {messages} message(s): {reason}"));
                    health.record_error(ErrorCategory::Permanent, reason.clone());
                    spec.metrics.undeliverable.set(delivery.len() as i64);
                    let wait = stuck.fail_jittered();
                    tracing::error!(
                        worker = %spec.name, message_topic = %spec.host.entity, message_partition = p,
                        message_consumer_group = %spec.host.group, entity = %entity, reason = %reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "undeliverable: the partition waits (nothing is committed) and tries again"
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    health.lane_busy(p);
                }
            }
        }
        if stuck.failures() > 0 {
            spec.metrics.undeliverable.set(0);
            health.set(TaskState::Ready);
        }

        // 4. the stage makes its own effects durable (a sink fsyncs), commit
        spec.stage.flush(p).await.map_err(WorkerError::Flush)?;
        let last = batch.last().expect("fetch returns at least one message");
        reader.commit(last).await.map_err(|source| ConsumeError::Commit {
            entity: spec.host.entity.clone(),
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
    }
}

/// The breaker tripped: pause (unready, nothing written, not stuck for the
/// watchdog), wait out the cool-down, then end the worker so the supervisor
/// starts it afresh (the batch is delivered again). `None` when a drain
/// began during the cool-down.
async fn open_circuit(
    spec: &WorkerSpec,
    partition: u32,
    cancel: &CancellationToken,
    why: String,
    cooldown: Duration,
) -> Option<WorkerError> {
    let health = &spec.host.health;
    health.lane_paused(partition);
    health
        .set_with(TaskState::Paused, format!("dead-letter limit exceeded, resuming in {}s: {why}", cooldown.as_secs()));
    health.record_error(ErrorCategory::Permanent, why.clone());
    spec.metrics.breaker_trips.inc();
    tracing::error!(
        worker = %spec.name, message_topic = %spec.host.entity, message_consumer_group = %spec.host.group,
        reason = %why, cooldown_s = cooldown.as_secs(),
        "dead-letter limit exceeded: stopped dead-lettering; the worker pauses and the batch stays uncommitted"
    );
    tokio::select! {
        _ = cancel.cancelled() => None,
        _ = tokio::time::sleep(cooldown) => Some(WorkerError::DeadLetterLimit(why)),
    }
}

/// [`process`] with its own emit list (for concurrent processing).
async fn process_own(spec: &WorkerSpec, msg: &PipelineMessage, cancel: &CancellationToken) -> Outcome {
    let mut own = Vec::new();
    let mut handler = spec.metrics.handler.local();
    let mut clock = StageClock::new();
    let o = process(spec, msg, &mut own, cancel, &mut handler, &mut clock, None).await;
    clock.settle(&mut handler);
    match o {
        Outcome::Done(_) => Outcome::Done(own),
        other => other,
    }
}

/// Times stage calls for the handler histogram, with one clock read per
/// call that waits and one per run of calls that did not: each call's end
/// is the next one's start, and the calls a stage answered at once
/// ([`crate::stages::Stage::process_now`]) are observed together, each as
/// their mean (a clock read costs as much as such a call).
struct StageClock {
    start: Instant,
    /// Calls answered at once since `start`.
    quick: u64,
}

impl StageClock {
    fn new() -> Self {
        StageClock { start: Instant::now(), quick: 0 }
    }

    /// A call answered at once.
    fn quick(&mut self) {
        self.quick += 1;
    }

    /// Observes the calls answered at once since the last read.
    fn settle(&mut self, h: &mut crate::metrics::LocalHistogram) {
        if self.quick > 0 {
            let now = Instant::now();
            h.observe_n(now.saturating_duration_since(self.start).as_secs_f64() / self.quick as f64, self.quick);
            self.start = now;
            self.quick = 0;
        }
    }

    /// A call that waited ends now (after [`StageClock::settle`]).
    fn lap(&mut self, h: &mut crate::metrics::LocalHistogram) {
        let now = Instant::now();
        h.observe(now.saturating_duration_since(self.start).as_secs_f64());
        self.start = now;
    }

    /// Time spent waiting between attempts is no stage's (call
    /// [`StageClock::settle`] before the wait).
    fn restart(&mut self) {
        debug_assert_eq!(self.quick, 0);
        self.start = Instant::now();
    }
}

fn ms_to_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn time_to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The dead-letter envelope of `msg` for failure `f`.
fn envelope(spec: &WorkerSpec, msg: &PipelineMessage, f: &Failure<'_>) -> Envelope {
    let cx = Context { transport: spec.host.transport.kind(), consumer_group: &spec.host.group, worker: &spec.name };
    Envelope::new(msg, f, &cx)
}

/// The stage's answer without waiting ([`crate::stages::Stage::process_now`]),
/// a panic caught as a failure; `None` when the stage must be awaited. What
/// a failed call pushed to `out` is taken back.
fn attempt_now(
    spec: &WorkerSpec,
    msg: &PipelineMessage,
    out: &mut Vec<Emit>,
    clock: &mut StageClock,
) -> Option<Result<(), StageError>> {
    let start = out.len();
    let r = match std::panic::catch_unwind(AssertUnwindSafe(|| spec.stage.process_now(msg, out))) {
        Ok(None) => return None,
        Ok(Some(r)) => r,
        Err(panic) => Err(StageError::Panic(panic_text(&*panic))),
    };
    clock.quick();
    if r.is_err() {
        out.truncate(start);
    }
    Some(r)
}

/// Runs the stage on one message, retrying as the failure policy decides;
/// `first` is the first attempt's result when the caller already made it
/// ([`attempt_now`]). Emits go to `out`; `Outcome::Done` carries none (the
/// caller takes `out`).
async fn process(
    spec: &WorkerSpec,
    msg: &PipelineMessage,
    out: &mut Vec<Emit>,
    cancel: &CancellationToken,
    handler: &mut crate::metrics::LocalHistogram,
    clock: &mut StageClock,
    mut first: Option<Result<(), StageError>>,
) -> Outcome {
    let health = &spec.host.health;
    // retry bookkeeping rides in headers; stages and outputs never see it
    let (msg, prior): (Cow<'_, PipelineMessage>, RetryState) = if spec.retry_headers
        && retry::has_retry_headers(&msg.headers)
    {
        let state = RetryState::of(&msg.headers);
        let mut clean = msg.clone();
        clean.headers = retry::strip(&msg.headers);
        let workers: Vec<&str> = spec.input_workers.iter().map(String::as_str).collect();
        match policy::retry_owner(state.worker.as_deref(), &spec.name, &workers) {
            RetryOwner::Mine => {}
            RetryOwner::Sibling | RetryOwner::OrphanOfAnother => return Outcome::Skipped,
            RetryOwner::Adopt => {
                spec.metrics.retries_adopted.inc();
                tracing::warn!(
                    worker = %spec.name, message_topic = %msg.entity, message_partition = msg.partition,
                    message_offset = msg.position, addressed_to = ?state.worker,
                    "a retry for a worker that no longer exists: this worker (the only one on the input) takes it over"
                );
            }
            RetryOwner::Orphan => {
                spec.metrics.retries_orphaned.inc();
                let now = SystemTime::now();
                let message = format!(
                    "retry addressed to worker {:?}, which no longer exists; several workers consume {:?}, so it is dead-lettered for redrive",
                    state.worker.as_deref().unwrap_or_default(),
                    spec.host.entity
                );
                let f = Failure {
                    category: ErrorCategory::Permanent,
                    kind: "retry_orphaned",
                    message: &message,
                    first_failure: state.first_failure_ms.map(ms_to_time).unwrap_or(now),
                    last_failure: now,
                    attempts: state.attempts,
                    schema_id: None,
                };
                log_dead(spec, &clean, &f);
                return Outcome::Dead(Box::new(envelope(spec, &clean, &f)), ErrorCategory::Permanent);
            }
        }
        (Cow::Owned(clean), state)
    } else {
        (Cow::Borrowed(msg), RetryState::default())
    };
    let msg = msg.as_ref();
    let mut attempts: u32 = prior.attempts;
    let mut first_failure: Option<SystemTime> = prior.first_failure_ms.map(ms_to_time);
    let mut paused = false;
    loop {
        // the prior count comes from a header: anything up to u32::MAX
        attempts = attempts.saturating_add(1);
        let start = out.len();
        let r = match first.take().or_else(|| attempt_now(spec, msg, out, clock)) {
            Some(r) => r,
            None => {
                clock.settle(handler);
                let r = AssertUnwindSafe(spec.stage.process(msg, out)).catch_unwind().await;
                clock.lap(handler);
                r.unwrap_or_else(|panic| Err(StageError::Panic(panic_text(&*panic))))
            }
        };
        let err = match r {
            Ok(()) => {
                if paused {
                    health.set(TaskState::Ready);
                    health.lane_busy(msg.partition);
                }
                return Outcome::Done(Vec::new());
            }
            Err(e) => e,
        };
        clock.settle(handler);
        out.truncate(start);
        let category = err.category();
        let now = SystemTime::now();
        let first = *first_failure.get_or_insert(now);
        spec.metrics.failed(category).inc();
        health.record_error(category, err.to_string());
        let breaker = match &spec.breaker {
            Some(b) => b.lock().unwrap().state(tokio::time::Instant::now()),
            None => BreakerState::Closed,
        };
        let decision = if err.is_outage() {
            policy::decide_outage(category, attempts, &spec.policy)
        } else {
            policy::decide(Some(category), attempts, &spec.policy, breaker)
        };
        let wait = match decision {
            Decision::Emit => unreachable!("a failure never emits"),
            Decision::ViaRetry(delay) => {
                log_failure(spec, msg, &err, attempts, "message failed; scheduled for a delayed retry", Some(delay));
                let m = retry::to_retry(
                    msg,
                    &spec.host.entity,
                    &spec.name,
                    attempts,
                    time_to_ms(first),
                    delay,
                    &err.to_string(),
                );
                return Outcome::Retry(Box::new(m), category);
            }
            Decision::DeadLetter => {
                let message = err.to_string();
                let f = Failure {
                    category,
                    kind: err.kind(),
                    message: &message,
                    first_failure: first,
                    last_failure: now,
                    attempts,
                    schema_id: err.schema_id(),
                };
                log_dead(spec, msg, &f);
                return Outcome::Dead(Box::new(envelope(spec, msg, &f)), category);
            }
            Decision::InPlace(delay) => {
                let delay = jitter(delay);
                log_failure(spec, msg, &err, attempts, "message failed; retrying in place", Some(delay));
                // waiting out a planned retry is healthy for the watchdog
                health.lane_idle(msg.partition);
                delay
            }
            Decision::Pause(delay) => {
                let delay = jitter(delay);
                if !paused {
                    paused = true;
                    let why = match (category, breaker) {
                        (ErrorCategory::Auth, _) => format!("auth failure: {err}"),
                        (_, BreakerState::Open { .. }) => "dead-letter limit exceeded: dead letters wait".to_string(),
                        _ => format!("paused: {err}"),
                    };
                    health.set_with(TaskState::Paused, why);
                }
                log_failure(spec, msg, &err, attempts, "message failed; the worker pauses", Some(delay));
                health.lane_paused(msg.partition);
                delay
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Outcome::Abandoned,
            _ = tokio::time::sleep(wait) => {}
        }
        health.lane_busy(msg.partition);
        clock.restart();
    }
}

fn log_dead(spec: &WorkerSpec, msg: &PipelineMessage, f: &Failure<'_>) {
    tracing::warn!(
        worker = %spec.name,
        message_topic = %msg.entity,
        message_partition = msg.partition,
        message_offset = msg.position,
        message_consumer_group = %spec.host.group,
        error_category = %f.category,
        error_type = f.kind,
        error = %f.message,
        attempts = f.attempts,
        dead_letter = spec.dead_letter.as_ref().map(|d| d.entity.as_str()),
        "message dead-lettered"
    );
}

/// One log line per failed attempt, with the message's coordinates and
/// when it is tried again.
fn log_failure(
    spec: &WorkerSpec,
    msg: &PipelineMessage,
    err: &StageError,
    attempts: u32,
    what: &str,
    delay: Option<Duration>,
) {
    tracing::warn!(
        worker = %spec.name,
        message_topic = %msg.entity,
        message_partition = msg.partition,
        message_offset = msg.position,
        message_consumer_group = %spec.host.group,
        error_category = %err.category(),
        error_type = err.kind(),
        error = %err,
        attempts,
        retry_in_ms = delay.map(|d| d.as_millis() as u64),
        "{what}"
    );
}

#[cfg(test)]
mod tests {
    use super::StageClock;
    use crate::metrics::BatchHistogram;

    #[test]
    fn calls_answered_at_once_are_observed_together_and_each_call_once() {
        let hist = BatchHistogram::new(vec![0.001, 1.0]);
        let mut h = hist.local();
        let mut clock = StageClock::new();
        for _ in 0..3 {
            clock.quick();
        }
        // a call that waits first settles the quick ones, then is timed alone
        clock.settle(&mut h);
        clock.lap(&mut h);
        clock.quick();
        clock.settle(&mut h);
        clock.settle(&mut h); // nothing new: observes nothing
        clock.restart();
        h.flush();
        assert_eq!(hist.count(), 5);
    }
}
