//! The consumer side of a migration: a [`Transport`] over the sides an
//! entity's consumers read, in order ([`super::plan::Consume`]).
//!
//! A [`Switch`] subscription reads each side but the last until the fence:
//! every partition's committed position of the consumer group, read from
//! that side's transport, has reached its end (`transport::drain_state`),
//! on two checks in a row [`FENCE_CHECK`] apart. Unknown positions never
//! count. Then it revokes every partition it holds there (the consumer
//! finishes and commits its batches; the revoke is answered once the lane
//! ended), leaves that side's group and joins the group on the next side.
//! Other processes of the group do the same by themselves: the fence is read
//! from the transport, not from this process.
//!
//! Readers skip *copies*: messages whose `conveyor-origin` names either side
//! of the entity (see `migration::origin`). A fetch that finds only copies
//! commits past them and reads on. Readers of a side being finished report
//! [`PartitionReader::retiring`], so a retry scheduler moves what it holds
//! to the entity's write side instead of waiting for it to fall due.

use super::origin;
use crate::transport::{
    Assignment, Drain, EntitySpec, GroupPosition, GroupSpec, PartitionInfo, PartitionReader, PipelineMessage, Producer,
    Seek, StartPosition, Subscription, Transport, TransportError, drain_state,
};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How often a side being finished is checked for its fence.
pub const FENCE_CHECK: Duration = Duration::from_millis(500);

/// One side an entity is read from.
#[derive(Clone)]
pub struct Endpoint {
    pub transport: Arc<dyn Transport>,
    /// The transport's config name (for logs).
    pub name: String,
    /// The entity's name on it.
    pub physical: String,
}

/// The sides of one entity, read in order (see the module docs).
pub struct Switch {
    /// Config key of the entity (logs).
    pub entity: String,
    /// At least one; all but the last are finished up to their fence.
    pub sides: Vec<Endpoint>,
    /// (transport, name) pairs whose copies are skipped.
    pub skip: Arc<Vec<(String, String)>>,
}

impl Switch {
    fn last(&self) -> &Endpoint {
        self.sides.last().expect("a switch has at least one side")
    }
}

#[async_trait]
impl Transport for Switch {
    fn kind(&self) -> &'static str {
        self.last().transport.kind()
    }

    fn producer(&self) -> Arc<dyn Producer> {
        self.last().transport.producer()
    }

    /// Joins `group` on the first side (`entity` is ignored: the switch
    /// knows each side's name).
    async fn subscribe(
        &self,
        _entity: &str,
        group: &str,
        start: StartPosition,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let first = &self.sides[0];
        let sub = first.transport.subscribe(&first.physical, group, start).await?;
        Ok(Box::new(SwitchSubscription {
            entity: self.entity.clone(),
            sides: self.sides.clone(),
            skip: self.skip.clone(),
            group: group.to_string(),
            start,
            at: 0,
            sub,
            held: BTreeSet::new(),
            fenced_checks: 0,
            revoking: None,
        }))
    }

    async fn partitions(&self, _entity: &str) -> Result<Vec<PartitionInfo>, TransportError> {
        let last = self.last();
        last.transport.partitions(&last.physical).await
    }

    async fn ensure(&self, _e: &[EntitySpec], _g: &[GroupSpec]) -> Result<(), TransportError> {
        // the sides' own transports are kept by the runtime
        Ok(())
    }

    async fn group_positions(&self, _entity: &str, group: &str) -> Result<Vec<GroupPosition>, TransportError> {
        let last = self.last();
        last.transport.group_positions(&last.physical, group).await
    }

    async fn open_reader(
        &self,
        _entity: &str,
        partition: u32,
        from: Seek,
    ) -> Result<Box<dyn PartitionReader>, TransportError> {
        let last = self.last();
        last.transport.open_reader(&last.physical, partition, from).await
    }
}

struct SwitchSubscription {
    entity: String,
    sides: Vec<Endpoint>,
    skip: Arc<Vec<(String, String)>>,
    group: String,
    start: StartPosition,
    /// Index of the side read now.
    at: usize,
    sub: Box<dyn Subscription>,
    /// Partitions held on the current side.
    held: BTreeSet<u32>,
    /// Fence checks passed in a row.
    fenced_checks: u32,
    /// The fence was reached: revokes handed out, answers awaited.
    revoking: Option<Vec<oneshot::Receiver<()>>>,
}

impl SwitchSubscription {
    fn on_last(&self) -> bool {
        self.at + 1 >= self.sides.len()
    }

    fn wrap(&self, r: Box<dyn PartitionReader>) -> Box<dyn PartitionReader> {
        Box::new(SkipCopies { inner: r, skip: self.skip.clone(), retiring: !self.on_last() })
    }

    /// Whether the current side is through to its end for this group.
    fn fenced(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let side = self.sides[self.at].clone();
        let group = self.group.clone();
        async move {
            let read = side.transport.group_positions(&side.physical, &group);
            match tokio::time::timeout(Duration::from_secs(10), read).await {
                Ok(Ok(positions)) => drain_state(&positions) == Drain::Drained,
                _ => false,
            }
        }
    }

    /// Leaves the current side and joins the group on the next one.
    async fn advance(&mut self) -> Result<(), TransportError> {
        let next = &self.sides[self.at + 1];
        let sub = next.transport.subscribe(&next.physical, &self.group, self.start).await?;
        let done = std::mem::replace(&mut self.sub, sub);
        drop(done);
        tracing::info!(
            entity = %self.entity, message_consumer_group = %self.group,
            from = %self.sides[self.at].name, to = %next.name,
            "fence reached: every message of the side is processed and committed; reading on from the next side"
        );
        self.at += 1;
        self.held.clear();
        self.fenced_checks = 0;
        Ok(())
    }
}

#[async_trait]
impl Subscription for SwitchSubscription {
    async fn next(&mut self) -> Result<Assignment, TransportError> {
        loop {
            if let Some(waits) = &mut self.revoking {
                if let Some(partition) = self.held.pop_first() {
                    let (done, rx) = oneshot::channel();
                    waits.push(rx);
                    return Ok(Assignment::Revoked { partition, done });
                }
                for rx in std::mem::take(waits) {
                    // answered once the lane ended (or dropped: nothing to wait for)
                    let _ = rx.await;
                }
                self.revoking = None;
                self.advance().await?;
                continue;
            }
            if self.on_last() {
                return Ok(match self.sub.next().await? {
                    Assignment::Assigned(r) => Assignment::Assigned(self.wrap(r)),
                    other => other,
                });
            }
            tokio::select! {
                a = self.sub.next() => {
                    return Ok(match a? {
                        Assignment::Assigned(r) => {
                            self.held.insert(r.partition());
                            Assignment::Assigned(self.wrap(r))
                        }
                        Assignment::Revoked { partition, done } => {
                            self.held.remove(&partition);
                            Assignment::Revoked { partition, done }
                        }
                        health => health,
                    });
                }
                _ = tokio::time::sleep(FENCE_CHECK) => {
                    self.fenced_checks = if self.fenced().await { self.fenced_checks + 1 } else { 0 };
                    if self.fenced_checks >= 2 {
                        self.revoking = Some(Vec::new());
                    }
                }
            }
        }
    }
}

/// A reader that leaves out copies (see the module docs).
struct SkipCopies {
    inner: Box<dyn PartitionReader>,
    skip: Arc<Vec<(String, String)>>,
    retiring: bool,
}

#[async_trait]
impl PartitionReader for SkipCopies {
    fn partition(&self) -> u32 {
        self.inner.partition()
    }

    async fn fetch(&mut self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        let start = out.len();
        loop {
            self.inner.fetch(max, out).await?;
            if !out[start..].iter().any(|m| m.headers.get(origin::HEADER).is_some()) {
                return Ok(());
            }
            let fetched: Vec<PipelineMessage> = out.drain(start..).collect();
            let mut last_copy = None;
            for m in fetched {
                if origin::copy_from(&m.headers, &self.skip) {
                    last_copy = Some(m);
                } else {
                    out.push(m);
                }
            }
            if out.len() > start {
                return Ok(());
            }
            // only copies: nothing before them is uncommitted, so move past
            if let Some(m) = last_copy
                && start == 0
            {
                self.inner.commit(&m).await?;
            }
        }
    }

    async fn commit(&mut self, last: &PipelineMessage) -> Result<(), TransportError> {
        self.inner.commit(last).await
    }

    fn lag(&self) -> Option<u64> {
        self.inner.lag()
    }

    fn retiring(&self) -> bool {
        self.retiring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::embedded::{Embedded, EmbeddedOptions};
    use crate::transport::{Headers, OutboundMessage};

    fn store(name: &str) -> Embedded {
        let specs = [EntitySpec { key: "e".into(), name: "e".into(), partitions: 2 }];
        let groups =
            [GroupSpec { entity: "e".into(), group: "g".into(), start: StartPosition::Earliest, shared: false }];
        Embedded::open(EmbeddedOptions { name: name.into(), ..Default::default() }, &specs, &groups).unwrap()
    }

    fn msg(id: &str, partition: u32, origin: Option<String>) -> OutboundMessage {
        let mut headers = Headers::default();
        if let Some(o) = origin {
            headers.set(origin::HEADER, o);
        }
        OutboundMessage {
            key: Some(id.as_bytes().to_vec().into()),
            headers,
            payload: id.to_string().into(),
            partition: Some(partition),
            timestamp_ms: None,
        }
    }

    fn switch(old: &Embedded, new: &Embedded) -> Switch {
        let ep = |t: &Embedded, name: &str| Endpoint {
            transport: Arc::new(t.clone()),
            name: name.into(),
            physical: "e".into(),
        };
        Switch {
            entity: "e".into(),
            sides: vec![ep(old, "old"), ep(new, "new")],
            skip: Arc::new(vec![("old".into(), "e".into()), ("new".into(), "e".into())]),
        }
    }

    /// A lane: reads its partition, records what it saw, commits each batch;
    /// ends when cancelled.
    fn lane(
        mut r: Box<dyn PartitionReader>,
        seen: Arc<std::sync::Mutex<Vec<String>>>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::new();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    f = r.fetch(10, &mut batch) => f.unwrap(),
                }
                for m in &batch {
                    seen.lock().unwrap().push(String::from_utf8(m.payload.to_vec()).unwrap());
                }
                r.commit(batch.last().unwrap()).await.unwrap();
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_old_side_is_finished_before_the_new_one_and_copies_are_skipped() {
        let (old, new) = (store("old"), store("new"));
        old.producer().send("e", vec![msg("o1", 0, None), msg("o2", 1, None), msg("o3", 0, None)]).await.unwrap();
        // the mirror's copies of o1..o3, and one message produced on the new side
        let copies = vec![
            msg("o1", 0, Some(origin::Origin::render("old", "e", 0, 0))),
            msg("o2", 1, Some(origin::Origin::render("old", "e", 1, 0))),
            msg("o3", 0, Some(origin::Origin::render("old", "e", 0, 1))),
            msg("n1", 1, None),
        ];
        new.producer().send("e", copies).await.unwrap();
        let sw = switch(&old, &new);
        let mut sub = sw.subscribe("e", "g", StartPosition::Earliest).await.unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let retiring = Arc::new(std::sync::Mutex::new(Vec::new()));
        // the host's part: a lane per assignment, a revoke answered once its lane ended
        let host = tokio::spawn({
            let (seen, retiring) = (seen.clone(), retiring.clone());
            async move {
                let mut lanes = std::collections::HashMap::new();
                loop {
                    match sub.next().await.unwrap() {
                        Assignment::Assigned(r) => {
                            retiring.lock().unwrap().push(r.retiring());
                            let p = r.partition();
                            let stop = tokio_util::sync::CancellationToken::new();
                            let h = lane(r, seen.clone(), stop.clone());
                            lanes.insert(p, (stop, h));
                        }
                        Assignment::Revoked { partition, done } => {
                            if let Some((stop, h)) = lanes.remove(&partition) {
                                stop.cancel();
                                h.await.unwrap();
                            }
                            let _ = done.send(());
                        }
                        Assignment::Health(_) => {}
                    }
                }
            }
        });
        for _ in 0..600 {
            if seen.lock().unwrap().len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        host.abort();
        let retiring = retiring.lock().unwrap().clone();
        let seen = seen.lock().unwrap().clone();
        let old_part: BTreeSet<&str> = seen[..3].iter().map(String::as_str).collect();
        assert_eq!(old_part, BTreeSet::from(["o1", "o2", "o3"]), "the old side first: {seen:?}");
        assert_eq!(seen[3], "n1", "then the new side, copies skipped: {seen:?}");
        assert_eq!(retiring, [true, true, false, false], "old-side readers are retiring");
        // the copies were committed past
        let positions = new.group_positions("e", "g").await.unwrap();
        assert!(positions.iter().all(|p| p.committed == Some(p.info.next)), "{positions:?}");
    }

    use crate::transport::scripted::{Idle, Scripted, scripted};

    fn position(partition: u32, next: i64, committed: Option<i64>) -> GroupPosition {
        GroupPosition { info: PartitionInfo { entity: "e".into(), partition, earliest: 0, next }, committed }
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_positions_never_reach_the_fence_and_a_revoke_during_the_drain_is_passed_on() {
        let (old, old_tx) = scripted();
        let (new, _new_tx) = scripted();
        let ep =
            |t: &Arc<Scripted>, name: &str| Endpoint { transport: t.clone(), name: name.into(), physical: "e".into() };
        let sw = Switch { entity: "e".into(), sides: vec![ep(&old, "old"), ep(&new, "new")], skip: Arc::new(vec![]) };
        let mut sub = sw.subscribe("e", "g", StartPosition::Earliest).await.unwrap();
        old_tx.send(Ok(Assignment::Assigned(Box::new(Idle(0))))).unwrap();
        old_tx.send(Ok(Assignment::Assigned(Box::new(Idle(1))))).unwrap();
        for want in [0, 1] {
            let Assignment::Assigned(r) = sub.next().await.unwrap() else { panic!("assigned") };
            assert_eq!(r.partition(), want);
        }
        // a rebalance takes partition 1 away while the old side drains
        let (done, answered) = oneshot::channel();
        old_tx.send(Ok(Assignment::Revoked { partition: 1, done })).unwrap();
        let Assignment::Revoked { partition: 1, done } = sub.next().await.unwrap() else { panic!("passed on") };
        done.send(()).unwrap();
        answered.await.unwrap();
        // everything committed on partition 0, unknown on partition 1 (no
        // commit yet, e.g. its new owner restarting): no fence
        *old.positions.lock().unwrap() = vec![position(0, 5, Some(5)), position(1, 3, None)];
        let waited = tokio::time::timeout(Duration::from_secs(30), sub.next()).await;
        assert!(waited.is_err(), "unknown is never the fence");
        assert_eq!(new.subscriptions(), 0);
        // known and at the end: the partition still held (0) is revoked, and
        // only after it is answered does the switch join the new side
        *old.positions.lock().unwrap() = vec![position(0, 5, Some(5)), position(1, 3, Some(3))];
        let Assignment::Revoked { partition: 0, done } = sub.next().await.unwrap() else {
            panic!("revoke at the fence")
        };
        let next = tokio::spawn(async move { sub.next().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(new.subscriptions(), 0, "waits for the lane to end");
        done.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(new.subscriptions(), 1, "then joins the new side");
        next.abort();
    }
}
