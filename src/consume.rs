//! The partition host: the one loop that turns a consumer-group membership
//! into one *lane* per assigned partition. Workers and retry schedulers both
//! run on it; they differ only in what a lane does ([`Lanes`]).
//!
//! The host:
//! - joins the group ([`Transport::subscribe`]);
//! - starts a lane per [`Assignment::Assigned`] partition, each with a child
//!   of the task's cancellation token;
//! - on [`Assignment::Revoked`], cancels that lane and answers the
//!   transport's `done` only after the lane has *ended* — it finishes and
//!   commits the batch in hand first, so the next owner starts after it;
//!   the host keeps serving other events meanwhile;
//! - follows [`Assignment::Health`]: a degraded transport makes the task
//!   `paused` and unready (`/readyz`, `conveyor_transport_connected`), a
//!   healthy one ready again — for workers and retry schedulers alike;
//! - turns a lane's panic into [`ConsumeError::Panic`] with the panic text
//!   (the supervisor restarts the task; nothing of that batch was committed);
//! - on cancellation, drains: every lane finishes its batch, for at most the
//!   grace period; lanes still running then are aborted (their batches stay
//!   uncommitted and are redelivered) and the drain reports it.
//!
//! Every error a consumer can meet outside its own processing — subscribe,
//! fetch, produce, commit, panic, a drain over grace — is a [`ConsumeError`];
//! its category (from the transport's error) tells the supervisor how to
//! restart.

use crate::classify::ErrorCategory;
use crate::health::{TaskHealth, TaskState};
use crate::transport::{Assignment, PartitionReader, StartPosition, Transport, TransportError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A consumer-level failure.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("cannot join consumer group {group:?} on {entity:?}: {source}")]
    Subscribe { entity: String, group: String, source: TransportError },
    #[error("reading {entity:?} partition {partition}: {source}")]
    Fetch { entity: String, partition: u32, source: TransportError },
    #[error("writing to {entity:?}: {source}")]
    Produce { entity: String, source: TransportError },
    #[error("committing {entity:?} partition {partition} at position {position}: {source}")]
    Commit { entity: String, partition: u32, position: i64, source: TransportError },
    #[error("the lane of {entity:?} partition {partition} panicked: {message}")]
    Panic { entity: String, partition: u32, message: String },
    #[error("lanes of {entity:?} did not finish within the drain grace of {grace:?}; their batches are redelivered")]
    DrainTimeout { entity: String, grace: Duration },
}

impl ConsumeError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            ConsumeError::Subscribe { source, .. }
            | ConsumeError::Fetch { source, .. }
            | ConsumeError::Produce { source, .. }
            | ConsumeError::Commit { source, .. } => source.category(),
            ConsumeError::Panic { .. } | ConsumeError::DrainTimeout { .. } => ErrorCategory::Transient,
        }
    }
}

/// What runs on each assigned partition.
pub trait Lanes: Send + Sync + 'static {
    type Error: From<ConsumeError> + Send + 'static;

    /// Processes one partition until `cancel`, then finishes the batch in
    /// hand and returns.
    fn lane(
        self: Arc<Self>,
        reader: Box<dyn PartitionReader>,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
}

/// A consumer-group membership to host.
pub struct Host {
    /// Entity config key (errors, logs) and its name on the transport.
    pub entity: String,
    pub physical: String,
    pub group: String,
    pub start: StartPosition,
    pub transport: Arc<dyn Transport>,
    pub health: Arc<TaskHealth>,
    /// Longest a drain waits for the lanes.
    pub grace: Duration,
}

type Ended<E> = (u32, Result<(), E>);

/// Runs `lanes` on every partition the group assigns us until `cancel`, then
/// drains (see the module docs).
pub async fn run<L: Lanes>(host: &Host, lanes: Arc<L>, cancel: CancellationToken) -> Result<(), L::Error> {
    let health = &host.health;
    health.set(TaskState::Starting);
    let sub = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        s = host.transport.subscribe(&host.physical, &host.group, host.start) => s,
    };
    let mut sub = sub.map_err(|source| ConsumeError::Subscribe {
        entity: host.entity.clone(),
        group: host.group.clone(),
        source,
    })?;
    let mut running: JoinSet<Ended<L::Error>> = JoinSet::new();
    let mut partition_of: HashMap<tokio::task::Id, u32> = HashMap::new();
    let mut stops: HashMap<u32, CancellationToken> = HashMap::new();
    let mut revoked: HashMap<u32, Vec<oneshot::Sender<()>>> = HashMap::new();
    let mut result: Result<(), L::Error> = Ok(());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            a = sub.next() => match a {
                Ok(Assignment::Assigned(reader)) => {
                    let p = reader.partition();
                    let token = cancel.child_token();
                    if let Some(old) = stops.insert(p, token.clone()) {
                        old.cancel();
                    }
                    let lane = lanes.clone().lane(reader, token);
                    let h = running.spawn(async move { (p, lane.await) });
                    partition_of.insert(h.id(), p);
                    health.set(TaskState::Ready);
                    health.connected(true);
                }
                Ok(Assignment::Health(Some(e))) => {
                    health.record_error(e.category(), e.to_string());
                    health.set_with(TaskState::Paused, format!("{} error from the transport: {e}", e.category()));
                    health.connected(false);
                    tracing::warn!(
                        task = %host.group, message_topic = %host.entity, error_category = %e.category(), error = %e,
                        "transport degraded"
                    );
                }
                Ok(Assignment::Health(None)) => {
                    health.connected(true);
                    if !stops.is_empty() {
                        health.set(TaskState::Ready);
                        tracing::info!(task = %host.group, message_topic = %host.entity, "transport healthy again");
                    }
                }
                Ok(Assignment::Revoked { partition, done }) => match stops.remove(&partition) {
                    // answered when the lane has ended (below)
                    Some(token) => {
                        token.cancel();
                        revoked.entry(partition).or_default().push(done);
                    }
                    None => {
                        let _ = done.send(());
                    }
                },
                Err(source) => {
                    result = Err(ConsumeError::Subscribe {
                        entity: host.entity.clone(),
                        group: host.group.clone(),
                        source,
                    }
                    .into());
                    break;
                }
            },
            Some(joined) = running.join_next_with_id() => {
                if let Err(e) = ended(host, joined, &mut partition_of, &mut stops, &mut revoked) {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    // drain: every lane finishes the batch in hand and commits it, within grace
    for token in stops.values() {
        token.cancel();
    }
    let deadline = tokio::time::Instant::now() + host.grace;
    loop {
        match tokio::time::timeout_at(deadline, running.join_next_with_id()).await {
            Ok(None) => break,
            Ok(Some(joined)) => {
                if let Err(e) = ended(host, joined, &mut partition_of, &mut stops, &mut revoked)
                    && result.is_ok()
                {
                    result = Err(e);
                }
            }
            Err(_) => {
                // dropped mid-batch: nothing of those batches is committed
                running.abort_all();
                while running.join_next().await.is_some() {}
                tracing::error!(
                    message_topic = %host.entity, message_consumer_group = %host.group, grace = ?host.grace,
                    "lanes did not finish within the drain grace; aborted (their batches are redelivered)"
                );
                if result.is_ok() {
                    result = Err(ConsumeError::DrainTimeout { entity: host.entity.clone(), grace: host.grace }.into());
                }
                break;
            }
        }
    }
    // every lane has ended now
    for dones in revoked.into_values() {
        for d in dones {
            let _ = d.send(());
        }
    }
    drop(sub);
    if result.is_ok() {
        health.set(TaskState::Stopped);
    }
    result
}

/// Book-keeping for a lane that ended: answers its revokes; returns its
/// error (a panic becomes [`ConsumeError::Panic`]).
fn ended<E: From<ConsumeError>>(
    host: &Host,
    joined: Result<(tokio::task::Id, Ended<E>), tokio::task::JoinError>,
    partition_of: &mut HashMap<tokio::task::Id, u32>,
    stops: &mut HashMap<u32, CancellationToken>,
    revoked: &mut HashMap<u32, Vec<oneshot::Sender<()>>>,
) -> Result<(), E> {
    let (partition, outcome) = match joined {
        Ok((id, (p, r))) => {
            partition_of.remove(&id);
            (p, r)
        }
        Err(j) => {
            let p = partition_of.remove(&j.id()).unwrap_or(u32::MAX);
            let message = if j.is_panic() {
                crate::supervisor::panic_text(&*j.into_panic())
            } else {
                "the lane was aborted".to_string()
            };
            (p, Err(ConsumeError::Panic { entity: host.entity.clone(), partition: p, message }.into()))
        }
    };
    if stops.get(&partition).is_some_and(|t| t.is_cancelled()) {
        stops.remove(&partition);
    }
    for d in revoked.remove(&partition).unwrap_or_default() {
        let _ = d.send(());
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::transport::scripted::{Idle, Script, scripted};

    /// Lanes that take `linger` to finish after cancellation (their batch)
    /// and panic on partition 9.
    struct Slow {
        linger: Duration,
        ended: AtomicU32,
    }

    impl Lanes for Slow {
        type Error = ConsumeError;
        async fn lane(
            self: Arc<Self>,
            reader: Box<dyn PartitionReader>,
            cancel: CancellationToken,
        ) -> Result<(), ConsumeError> {
            assert_ne!(reader.partition(), 9, "lane 9 explodes");
            cancel.cancelled().await;
            tokio::time::sleep(self.linger).await;
            self.ended.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn host(t: Arc<dyn Transport>, grace: Duration) -> Host {
        Host {
            entity: "e".into(),
            physical: "e".into(),
            group: "g".into(),
            start: StartPosition::Earliest,
            transport: t,
            health: Health::new().task("w", "worker"),
            grace,
        }
    }

    fn script() -> (Arc<dyn Transport>, Script) {
        let (t, tx) = scripted();
        (t, tx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoke_is_answered_only_after_its_lane_has_ended() {
        let (t, tx) = script();
        let lanes = Arc::new(Slow { linger: Duration::from_secs(3), ended: AtomicU32::new(0) });
        let h = host(t, Duration::from_secs(30));
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let (lanes, cancel) = (lanes.clone(), cancel.clone());
            async move { super::run(&h, lanes, cancel).await }
        });
        tx.send(Ok(Assignment::Assigned(Box::new(Idle(0))))).unwrap();
        tx.send(Ok(Assignment::Assigned(Box::new(Idle(1))))).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (done, mut answered) = oneshot::channel();
        tx.send(Ok(Assignment::Revoked { partition: 0, done })).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(answered.try_recv().is_err(), "the lane is still finishing its batch");
        assert_eq!(lanes.ended.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(answered.try_recv().is_ok(), "answered once the lane ended");
        assert_eq!(lanes.ended.load(Ordering::SeqCst), 1, "only the revoked lane");
        cancel.cancel();
        run.await.unwrap().unwrap();
        assert_eq!(lanes.ended.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn health_events_move_readiness_and_a_panic_is_reported_with_its_text() {
        let (t, tx) = script();
        let lanes = Arc::new(Slow { linger: Duration::ZERO, ended: AtomicU32::new(0) });
        let h = host(t, Duration::from_secs(30));
        let health = h.health.clone();
        let run = tokio::spawn(async move { super::run(&h, lanes, CancellationToken::new()).await });
        tx.send(Ok(Assignment::Assigned(Box::new(Idle(0))))).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(health.state(), TaskState::Ready);
        let down = TransportError::Closed { transport: "t".into() };
        tx.send(Ok(Assignment::Health(Some(down)))).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(health.state(), TaskState::Paused, "unready while the transport is down");
        tx.send(Ok(Assignment::Health(None))).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(health.state(), TaskState::Ready);
        tx.send(Ok(Assignment::Assigned(Box::new(Idle(9))))).unwrap();
        let err = run.await.unwrap().unwrap_err();
        assert!(matches!(&err, ConsumeError::Panic { partition: 9, .. }), "{err}");
        assert!(err.to_string().contains("lane 9 explodes"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_bounded_by_the_grace_period() {
        let (t, tx) = script();
        let lanes = Arc::new(Slow { linger: Duration::from_secs(3600), ended: AtomicU32::new(0) });
        let h = host(t, Duration::from_secs(5));
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let (lanes, cancel) = (lanes.clone(), cancel.clone());
            async move { super::run(&h, lanes, cancel).await }
        });
        tx.send(Ok(Assignment::Assigned(Box::new(Idle(0))))).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t0 = tokio::time::Instant::now();
        cancel.cancel();
        let err = run.await.unwrap().unwrap_err();
        assert!(matches!(err, ConsumeError::DrainTimeout { .. }), "{err}");
        assert!(t0.elapsed() <= Duration::from_secs(6), "{:?}", t0.elapsed());
        assert_eq!(lanes.ended.load(Ordering::SeqCst), 0, "the lane was dropped mid-batch");
    }
}
