//! The retry scheduler of one retry entity: a set of lanes on the partition
//! host (`consume`), consumer group `conveyor-retry`, so it joins, rebalances,
//! goes unready with its transport and drains exactly as workers do.
//!
//! A lane holds fetched messages in a delay queue ordered by due time,
//! re-produces each to its target when due (removing `-due`/`-target`,
//! keeping the attempt count), and commits only through the oldest message
//! not yet re-produced. So a message due in 30 minutes never holds back one
//! due in 10 seconds, and after a crash every pending retry is read again
//! from the entity (pending retries survive restarts; a message re-produced
//! but not yet committed may be delivered twice: at least once).
//!
//! **Re-parking.** A long-delayed message would hold the commit back while
//! many later ones are re-delivered, and a restart would deliver all of
//! those again. When the messages done behind the oldest pending ones
//! outnumber them ([`repark_plan`]), the lane writes those pending messages
//! again at the end of the same partition (due time unchanged) and commits
//! past everything done: a restart re-reads the re-parked copies, not the
//! done ones.
//!
//! **Retries a reload left behind** are never skipped silently: a message
//! whose target is no longer a target of this entity goes to the current
//! input of the worker it names; if that worker is gone too (or the message
//! carries no retry headers at all), it is dead-lettered to the dead-letter
//! entity of a worker that retries through this entity, with error type
//! `retry_target_unknown`. Both are counted
//! (`conveyor_retry_rerouted_total`, `conveyor_retry_invalid_total`).
//!
//! **Migration.** On a side a migration is finishing (the reader is
//! *retiring*), the lane re-parks everything it holds to the retry entity's
//! write side at once and commits past it, so the old side reaches its
//! fence without waiting for retries due in an hour.
//!
//! A lane holds at most [`MAX_PENDING`] messages in memory and stops
//! fetching beyond that.

use super::{GROUP, H_DUE, H_TARGET, H_WORKER};
use crate::classify::ErrorCategory;
use crate::consume::{self, ConsumeError, Host, Lanes};
use crate::dlq::{Context, Envelope, Failure};
use crate::transport::{Headers, OutboundMessage, PartitionReader, PipelineMessage, Producer, now_ms};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Messages held per partition before the scheduler stops fetching.
pub const MAX_PENDING: usize = 100_000;

/// An entity the scheduler writes to.
#[derive(Clone)]
pub struct Target {
    pub entity: String,
    pub physical: String,
    pub producer: Arc<dyn Producer>,
}

/// One retry entity's scheduler.
pub struct Scheduler {
    /// The retry entity, its group (`conveyor-retry`) and transport.
    pub host: Host,
    /// The retry entity itself (re-parking writes there).
    pub own: Target,
    /// Re-delivery targets by entity config key: the inputs of the workers
    /// that retry through this entity.
    pub targets: HashMap<String, Target>,
    /// Every worker of the config: its current input (where a retry of a
    /// worker whose input changed goes).
    pub worker_inputs: HashMap<String, Target>,
    /// Dead-letter entities of the workers that retry through this entity
    /// (for retries nothing can take), by worker name.
    pub dead_letters: BTreeMap<String, Target>,
    pub redelivered: Counter,
    pub rerouted: Counter,
    pub invalid: Counter,
    pub reparked: Counter,
    pub pending: Gauge,
    /// Consumer lag of the scheduler's group, by partition.
    pub lag: Arc<dyn Fn(u32) -> Gauge + Send + Sync>,
}

impl Lanes for Scheduler {
    type Error = ConsumeError;

    async fn lane(
        self: Arc<Self>,
        reader: Box<dyn PartitionReader>,
        cancel: CancellationToken,
    ) -> Result<(), ConsumeError> {
        self.run_lane(reader, cancel).await
    }
}

/// Where a held message goes when due.
enum Route {
    /// To this target (entity key), with its target header rewritten when
    /// it changed.
    Deliver(String),
    /// Nothing takes it: dead-letter it here (worker name of the DLQ).
    DeadLetter(String),
}

/// A held (fetched, not yet committed) message.
struct Held {
    msg: PipelineMessage,
    route: Route,
}

impl Scheduler {
    /// Runs until `cancel`, then drains.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), ConsumeError> {
        consume::run(&self.host, self.clone(), cancel).await
    }

    /// Where `m` goes (see the module docs), counting reroutes.
    fn route(&self, m: &PipelineMessage) -> Route {
        let target = m.headers.get_str(H_TARGET);
        if let Some(t) = target.filter(|t| self.targets.contains_key(*t)) {
            return Route::Deliver(t.to_string());
        }
        let worker = m.headers.get_str(H_WORKER);
        if let Some(input) = worker.and_then(|w| self.worker_inputs.get(w)) {
            self.rerouted.inc();
            tracing::warn!(
                message_topic = %self.host.entity, message_partition = m.partition, message_offset = m.position,
                target = ?target, worker = ?worker, rerouted_to = %input.entity,
                "retry target is no longer this worker's input; re-delivered to its current input"
            );
            return Route::Deliver(input.entity.clone());
        }
        let dlq = worker
            .filter(|w| self.dead_letters.contains_key(*w))
            .map(str::to_string)
            .or_else(|| self.dead_letters.keys().next().cloned())
            .unwrap_or_default();
        Route::DeadLetter(dlq)
    }

    async fn run_lane(
        &self,
        mut reader: Box<dyn PartitionReader>,
        cancel: CancellationToken,
    ) -> Result<(), ConsumeError> {
        let p = reader.partition();
        let lag = (self.lag)(p);
        let mut pending = PendingShare { gauge: self.pending.clone(), mine: 0 };
        // uncommitted messages by position; `None` once re-produced
        let mut held: BTreeMap<i64, Option<Held>> = BTreeMap::new();
        let mut queue: BinaryHeap<Reverse<(Instant, i64)>> = BinaryHeap::new();
        let mut buf = Vec::new();
        loop {
            let next_due = queue.peek().map(|Reverse((at, _))| *at);
            let can_fetch = held.len() < MAX_PENDING;
            let mut round_done = false;
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
                    round_done = true;
                }
                r = reader.fetch(1000, &mut buf), if can_fetch => {
                    r.map_err(|source| ConsumeError::Fetch { entity: self.host.entity.clone(), partition: p, source })?;
                    let wall = now_ms();
                    let now = Instant::now();
                    for m in buf.drain(..) {
                        let wait = super::due_in(&m.headers, wall);
                        let route = self.route(&m);
                        let at = if matches!(route, Route::DeadLetter(_)) { now } else { now + wait };
                        queue.push(Reverse((at, m.position)));
                        held.insert(m.position, Some(Held { msg: m, route }));
                    }
                }
            }
            // commit through the oldest message not yet re-produced
            let mut last_done = None;
            while let Some(entry) = held.first_entry() {
                if entry.get().is_some() {
                    break;
                }
                last_done = Some(*entry.key());
                entry.remove();
            }
            // a long-pending message holds many done ones back: re-park it
            if round_done {
                let slots: Vec<(i64, bool)> = held.iter().map(|(pos, h)| (*pos, h.is_some())).collect();
                if let Some(plan) = repark_plan(&slots) {
                    self.repark(Some(p), &mut held, &plan).await?;
                    queue.retain(|Reverse((_, pos))| !plan.repark.contains(pos));
                    while let Some(entry) = held.first_entry() {
                        if *entry.key() > plan.through {
                            break;
                        }
                        entry.remove();
                    }
                    last_done = Some(plan.through);
                }
            }
            // a migration finishes this side: what waits here moves to the
            // entity's write side now instead of holding the fence back
            if reader.retiring() && !queue.is_empty() {
                let repark: Vec<i64> = held.iter().filter(|(_, h)| h.is_some()).map(|(pos, _)| *pos).collect();
                let through = held.keys().next_back().copied().unwrap_or_default();
                self.repark(None, &mut held, &Repark { repark, through }).await?;
                queue.clear();
                held.clear();
                last_done = Some(through);
            }
            if let Some(pos) = last_done {
                let marker = position_marker(&self.host.entity, p, pos);
                reader.commit(&marker).await.map_err(|source| ConsumeError::Commit {
                    entity: self.host.entity.clone(),
                    partition: p,
                    position: pos,
                    source,
                })?;
            }
            pending.set(queue.len() as i64);
            if let Some(l) = reader.lag() {
                lag.set(l as i64);
            }
        }
    }

    /// Writes the pending messages `plan.repark` again at the end of the
    /// retry entity (on partition `p`, or placed by key; headers unchanged,
    /// so their due time is too) and marks them done.
    async fn repark(
        &self,
        p: Option<u32>,
        held: &mut BTreeMap<i64, Option<Held>>,
        plan: &Repark,
    ) -> Result<(), ConsumeError> {
        let msgs: Vec<OutboundMessage> = plan
            .repark
            .iter()
            .filter_map(|pos| held.get(pos)?.as_ref())
            .map(|h| OutboundMessage {
                key: h.msg.key.clone(),
                headers: h.msg.headers.clone(),
                payload: h.msg.payload.clone(),
                partition: p,
                timestamp_ms: None,
            })
            .collect();
        let n = msgs.len() as u64;
        self.own
            .producer
            .send(&self.own.physical, msgs)
            .await
            .map_err(|source| ConsumeError::Produce { entity: self.own.entity.clone(), source })?;
        for pos in &plan.repark {
            if let Some(slot) = held.get_mut(pos) {
                *slot = None;
            }
        }
        self.reparked.inc_by(n);
        Ok(())
    }

    /// Re-produces the messages at `positions` where they go and marks them
    /// done in `held`.
    async fn redeliver(&self, held: &mut BTreeMap<i64, Option<Held>>, positions: &[i64]) -> Result<(), ConsumeError> {
        let mut by_target: HashMap<&str, Vec<OutboundMessage>> = HashMap::new();
        let mut dead: BTreeMap<&str, Vec<OutboundMessage>> = BTreeMap::new();
        for pos in positions {
            let Some(Some(h)) = held.get(pos) else { continue };
            match &h.route {
                Route::Deliver(target) => {
                    let mut headers = h.msg.headers.clone();
                    headers.0.retain(|(n, _)| n != H_DUE && n != H_TARGET);
                    let entry = by_target.entry(target.as_str()).or_default();
                    entry.push(OutboundMessage {
                        key: h.msg.key.clone(),
                        headers,
                        payload: h.msg.payload.clone(),
                        partition: None,
                        timestamp_ms: None,
                    });
                }
                Route::DeadLetter(worker) => {
                    dead.entry(worker.as_str()).or_default().push(self.envelope(&h.msg, worker));
                }
            }
        }
        let mut n = 0;
        for (target, msgs) in by_target {
            let t = self.targets.get(target).or_else(|| self.worker_inputs.values().find(|t| t.entity == target));
            let Some(t) = t else { continue };
            n += msgs.len();
            t.producer
                .send(&t.physical, msgs)
                .await
                .map_err(|source| ConsumeError::Produce { entity: target.to_string(), source })?;
        }
        for (worker, msgs) in dead {
            let Some(t) = self.dead_letters.get(worker) else { continue };
            let count = msgs.len() as u64;
            t.producer
                .send(&t.physical, msgs)
                .await
                .map_err(|source| ConsumeError::Produce { entity: t.entity.clone(), source })?;
            self.invalid.inc_by(count);
        }
        for pos in positions {
            if let Some(slot) = held.get_mut(pos) {
                *slot = None;
            }
        }
        self.redelivered.inc_by(n as u64);
        Ok(())
    }

    /// The dead-letter envelope of a retry nothing can take.
    fn envelope(&self, m: &PipelineMessage, dlq_worker: &str) -> OutboundMessage {
        let state = super::RetryState::of(&m.headers);
        let now = SystemTime::now();
        let message = format!(
            "retry for worker {:?} to entity {:?}: neither is in the running config any more",
            state.worker.as_deref().unwrap_or("(none)"),
            m.headers.get_str(H_TARGET).unwrap_or("(none)")
        );
        tracing::error!(
            message_topic = %self.host.entity, message_partition = m.partition, message_offset = m.position,
            message_consumer_group = GROUP, error = %message, dead_letter_of = %dlq_worker,
            "retry dead-lettered: nothing in the config takes it"
        );
        let f = Failure {
            category: ErrorCategory::Permanent,
            kind: "retry_target_unknown",
            message: &message,
            first_failure: state
                .first_failure_ms
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
                .unwrap_or(now),
            last_failure: now,
            attempts: state.attempts,
            schema_id: None,
        };
        let cx = Context { transport: self.host.transport.kind(), consumer_group: GROUP, worker: dlq_worker };
        let clean = PipelineMessage { headers: super::strip(&m.headers), ..m.clone() };
        Envelope::new(&clean, &f, &cx).to_message(m.key.clone())
    }
}

/// A re-park: write these pending positions again, then commit through
/// `through`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repark {
    pub repark: Vec<i64>,
    pub through: i64,
}

/// Given the held positions in order with whether each is still pending
/// (`true`) or done (`false`), the re-park that lets the commit advance
/// furthest for the fewest writes: the prefix ending at a done position where
/// done messages outnumber (or equal) pending ones the most. `None` when no
/// prefix is worth it (or nothing pending precedes a done one).
pub fn repark_plan(held: &[(i64, bool)]) -> Option<Repark> {
    let (mut done, mut pending) = (0i64, 0i64);
    let mut best: Option<(i64, usize)> = None; // (score, index of the done position)
    for (i, (_, is_pending)) in held.iter().enumerate() {
        if *is_pending {
            pending += 1;
            continue;
        }
        done += 1;
        let score = done - pending;
        if pending > 0 && score >= 0 && best.is_none_or(|(b, _)| score >= b) {
            best = Some((score, i));
        }
    }
    let (_, end) = best?;
    Some(Repark { repark: held[..end].iter().filter(|(_, p)| *p).map(|(pos, _)| *pos).collect(), through: held[end].0 })
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
#[path = "scheduler_tests.rs"]
mod tests;
