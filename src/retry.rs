//! Delayed retries through retry entities, transport-agnostic.
//!
//! A worker with `retry: { via: E, schedule, max_attempts }` sends a message
//! that failed `transient`ly or with `throttling` to entity `E` (not back to
//! its input), with these headers:
//!
//! | header | meaning |
//! |---|---|
//! | `conveyor-retry-target` | entity (config key) to re-deliver to: the worker's input |
//! | `conveyor-retry-worker` | the worker the retry is for (other workers on the target skip it) |
//! | `conveyor-retry-attempt` | attempts made so far |
//! | `conveyor-retry-due` | Unix ms when it is due |
//! | `conveyor-first-failure` | Unix ms of the first failure (kept into the DLQ envelope) |
//! | `conveyor-last-error` | the last error, for people |
//!
//! The built-in scheduler (one per retry entity, consumer group
//! `conveyor-retry`) holds fetched messages in a delay queue ordered by due
//! time, re-produces each to its target when due (removing `-due`/`-target`,
//! keeping the attempt count), and commits the retry entity only up to the
//! oldest message not yet re-produced. So a message due in 30 minutes never
//! holds back one due in 10 seconds, and after a crash every pending retry is
//! read again from the entity (pending retries survive restarts; a message
//! re-produced but not yet committed may be delivered twice: at least once).
//! The scheduler holds at most [`MAX_PENDING`] messages per partition in
//! memory and stops fetching beyond that.

use crate::health::{TaskHealth, TaskState};
use crate::transport::{
    Assignment, Headers, OutboundMessage, PartitionReader, PipelineMessage, Producer, StartPosition, Transport, now_ms,
};
use crate::worker::WorkerError;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const H_TARGET: &str = "conveyor-retry-target";
pub const H_WORKER: &str = "conveyor-retry-worker";
pub const H_ATTEMPT: &str = "conveyor-retry-attempt";
pub const H_DUE: &str = "conveyor-retry-due";
pub const H_FIRST_FAILURE: &str = "conveyor-first-failure";
pub const H_LAST_ERROR: &str = "conveyor-last-error";
/// Set by `conveyor dlq redrive`: how often the message was redriven.
pub const H_REDRIVE: &str = "conveyor-redrive-count";

/// Messages held per partition before the scheduler stops fetching.
pub const MAX_PENDING: usize = 100_000;

/// The consumer group of every retry scheduler.
pub const GROUP: &str = "conveyor-retry";

/// Retry bookkeeping carried by a message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryState {
    pub worker: Option<String>,
    pub attempts: u32,
    pub first_failure_ms: Option<i64>,
}

impl RetryState {
    pub fn of(h: &Headers) -> RetryState {
        RetryState {
            worker: h.get_str(H_WORKER).map(str::to_string),
            attempts: h.get_str(H_ATTEMPT).and_then(|v| v.parse().ok()).unwrap_or(0),
            first_failure_ms: h.get_str(H_FIRST_FAILURE).and_then(|v| v.parse().ok()),
        }
    }
}

/// Whether `h` carries retry headers (cheap check for the hot path).
pub fn has_retry_headers(h: &Headers) -> bool {
    !h.is_empty() && h.iter().any(|(n, _)| n.starts_with("conveyor-retry-") || n == H_FIRST_FAILURE)
}

/// `h` without any retry bookkeeping (what stages and outputs see).
pub fn strip(h: &Headers) -> Headers {
    Headers(
        h.0.iter()
            .filter(|(n, _)| !(n.starts_with("conveyor-retry-") || n == H_FIRST_FAILURE || n == H_LAST_ERROR))
            .cloned()
            .collect(),
    )
}

/// The message to write to the retry entity for attempt `attempts + 1`.
#[allow(clippy::too_many_arguments)]
pub fn to_retry(
    msg: &PipelineMessage,
    clean: &Headers,
    target: &str,
    worker: &str,
    attempts: u32,
    first_failure_ms: i64,
    delay: Duration,
    error: &str,
) -> OutboundMessage {
    let mut headers = clean.clone();
    headers.set(H_TARGET, target.to_string());
    headers.set(H_WORKER, worker.to_string());
    headers.set(H_ATTEMPT, attempts.to_string());
    headers.set(H_DUE, (now_ms() + delay.as_millis() as i64).to_string());
    headers.set(H_FIRST_FAILURE, first_failure_ms.to_string());
    let mut e = error.to_string();
    e.truncate(512);
    headers.set(H_LAST_ERROR, e);
    OutboundMessage { key: msg.key.clone(), headers, payload: msg.payload.clone(), partition: None, timestamp_ms: None }
}

/// Delay before attempt `attempt + 1` (1-based attempts made), last repeats.
pub fn delay_for(schedule: &[Duration], attempts_made: u32) -> Duration {
    let i = (attempts_made.max(1) - 1) as usize;
    schedule.get(i).or(schedule.last()).copied().unwrap_or(Duration::from_secs(10))
}

/// A target the scheduler can re-deliver to.
#[derive(Clone)]
pub struct Target {
    pub physical: String,
    pub producer: Arc<dyn Producer>,
}

/// One retry entity's scheduler.
pub struct Scheduler {
    pub entity: String,
    pub physical: String,
    pub transport: Arc<dyn Transport>,
    /// By entity config key.
    pub targets: HashMap<String, Target>,
    pub redelivered: Counter,
    pub invalid: Counter,
    pub pending: Gauge,
    /// Consumer lag of the scheduler's group, by partition.
    pub lag: Arc<dyn Fn(u32) -> Gauge + Send + Sync>,
}

impl Scheduler {
    pub async fn run(self: Arc<Self>, health: Arc<TaskHealth>, cancel: CancellationToken) -> Result<(), WorkerError> {
        let mut sub = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            s = self.transport.subscribe(&self.physical, GROUP, StartPosition::Earliest) => s,
        }
        .map_err(|source| WorkerError::Subscribe {
            entity: self.entity.clone(),
            group: GROUP.into(),
            source,
        })?;
        let mut lanes: JoinSet<Result<(), WorkerError>> = JoinSet::new();
        let mut stops: HashMap<u32, CancellationToken> = HashMap::new();
        let mut result = Ok(());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                a = sub.next() => match a {
                    Ok(Assignment::Assigned(reader)) => {
                        let token = cancel.child_token();
                        stops.insert(reader.partition(), token.clone());
                        let me = self.clone();
                        lanes.spawn(async move { me.lane(reader, token).await });
                        health.set(TaskState::Ready);
                    }
                    Ok(Assignment::Health(_)) => {}
                    Ok(Assignment::Revoked { partition, done }) => {
                        if let Some(t) = stops.remove(&partition) {
                            t.cancel();
                        }
                        let _ = done.send(());
                    }
                    Err(source) => {
                        result = Err(WorkerError::Subscribe { entity: self.entity.clone(), group: GROUP.into(), source });
                        break;
                    }
                },
                Some(done) = lanes.join_next() => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => { result = Err(e); break; }
                    Err(j) => { result = Err(WorkerError::Panic(j.to_string())); break; }
                },
            }
        }
        for t in stops.values() {
            t.cancel();
        }
        while let Some(done) = lanes.join_next().await {
            if let (Ok(Err(e)), true) = (done, result.is_ok()) {
                result = Err(e);
            }
        }
        result
    }

    async fn lane(&self, mut reader: Box<dyn PartitionReader>, cancel: CancellationToken) -> Result<(), WorkerError> {
        let p = reader.partition();
        let lag = (self.lag)(p);
        let mut pending = PendingShare { gauge: self.pending.clone(), mine: 0 };
        // uncommitted messages by position; `None` once re-produced
        let mut held: BTreeMap<i64, Option<PipelineMessage>> = BTreeMap::new();
        let mut last_done: Option<PipelineMessage> = None;
        let mut queue: BinaryHeap<Reverse<(Instant, i64)>> = BinaryHeap::new();
        let mut buf = Vec::new();
        loop {
            let next_due = queue.peek().map(|Reverse((at, _))| *at);
            let can_fetch = held.len() < MAX_PENDING;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = sleep_until(next_due) => {
                    let now = Instant::now();
                    let mut due: Vec<i64> = Vec::new();
                    while let Some(Reverse((at, pos))) = queue.peek().copied() {
                        if at > now { break; }
                        queue.pop();
                        due.push(pos);
                    }
                    self.redeliver(&mut held, &due).await?;
                }
                r = reader.fetch(1000, &mut buf), if can_fetch => {
                    r.map_err(|source| WorkerError::Fetch { entity: self.entity.clone(), partition: p, source })?;
                    let wall = now_ms();
                    let now = Instant::now();
                    for m in buf.drain(..) {
                        let due_ms = m.headers.get_str(H_DUE).and_then(|v| v.parse::<i64>().ok());
                        let target_ok = m.headers.get_str(H_TARGET).is_some_and(|t| self.targets.contains_key(t));
                        if !target_ok {
                            self.invalid.inc();
                            tracing::error!(
                                message_topic = %self.entity, message_partition = p, message_offset = m.position,
                                message_consumer_group = GROUP, target = ?m.headers.get_str(H_TARGET),
                                "retry message has no known target entity; skipped (it was not written by this topology)"
                            );
                            held.insert(m.position, None);
                            continue;
                        }
                        let wait = Duration::from_millis(due_ms.map_or(0, |d| (d - wall).max(0)) as u64);
                        queue.push(Reverse((now + wait, m.position)));
                        held.insert(m.position, Some(m));
                    }
                }
            }
            // commit through the oldest message not yet re-produced
            let mut advanced = false;
            while let Some(entry) = held.first_entry() {
                if entry.get().is_some() {
                    break;
                }
                let pos = *entry.key();
                entry.remove();
                last_done = Some(position_marker(&self.entity, p, pos));
                advanced = true;
            }
            if advanced {
                let last = last_done.as_ref().expect("set above");
                reader.commit(last).await.map_err(|source| WorkerError::Commit {
                    entity: self.entity.clone(),
                    partition: p,
                    position: last.position,
                    source,
                })?;
            }
            pending.set(queue.len() as i64);
            if let Some(l) = reader.lag() {
                lag.set(l as i64);
            }
        }
    }

    /// Re-produces the messages at `positions` to their targets and marks
    /// them done in `held`.
    async fn redeliver(
        &self,
        held: &mut BTreeMap<i64, Option<PipelineMessage>>,
        positions: &[i64],
    ) -> Result<(), WorkerError> {
        let mut by_target: HashMap<&str, Vec<OutboundMessage>> = HashMap::new();
        for pos in positions {
            let Some(Some(m)) = held.get(pos) else { continue };
            let target = m.headers.get_str(H_TARGET).expect("checked at fetch");
            let mut headers = m.headers.clone();
            headers.0.retain(|(n, _)| n != H_DUE && n != H_TARGET);
            let (key, _) = self.targets.get_key_value(target).expect("checked at fetch");
            by_target.entry(key.as_str()).or_default().push(OutboundMessage {
                key: m.key.clone(),
                headers,
                payload: m.payload.clone(),
                partition: None,
                timestamp_ms: None,
            });
        }
        let mut n = 0;
        for (target, msgs) in by_target {
            let t = &self.targets[target];
            n += msgs.len();
            t.producer
                .send(&t.physical, msgs)
                .await
                .map_err(|source| WorkerError::Produce { entity: target.to_string(), source })?;
        }
        for pos in positions {
            if let Some(slot) = held.get_mut(pos) {
                *slot = None;
            }
        }
        self.redelivered.inc_by(n as u64);
        Ok(())
    }
}

/// This lane's share of the entity's pending gauge (lanes of all partitions
/// add up; a lane that ends takes its share back).
struct PendingShare {
    gauge: Gauge,
    mine: i64,
}

impl PendingShare {
    fn set(&mut self, n: i64) {
        self.gauge.inc_by(n - self.mine);
        self.mine = n;
    }
}

impl Drop for PendingShare {
    fn drop(&mut self) {
        self.gauge.dec_by(self.mine);
    }
}

/// A message standing for a position, for `commit`.
fn position_marker(entity: &str, partition: u32, position: i64) -> PipelineMessage {
    PipelineMessage {
        entity: entity.into(),
        partition,
        position,
        key: None,
        headers: Headers::default(),
        payload: Default::default(),
        timestamp_ms: 0,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
