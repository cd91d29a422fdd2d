//! The Event Hubs consumer: partition load balancing over the checkpoint
//! store, one pump task per owned partition, checkpoint flushing (semantics:
//! see the parent module).

use super::checkpoint::{Checkpoint, CheckpointStore, Ownership, store_error};
use super::{EventHubsTransport, classify_error};
use crate::backoff::{Attempts, Backoff};
use crate::classify::ErrorCategory;
use crate::instance::Membership;
use crate::transport::{
    Assignment, EntitySpec, Headers, PartitionReader, PipelineMessage, Seek, StartPosition, Subscription,
    TransportError,
};
use async_trait::async_trait;
use azure_messaging_eventhubs::models::{AmqpSimpleValue, ReceivedEventData};
use azure_messaging_eventhubs::{ConsumerClient, OpenReceiverOptions, StartLocation};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Longest a revoke waits for the worker to finish the partition's batch.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a partial batch waits to fill up (cancel-safe: what was taken
/// from the channel is already in `out`).
const FILL_WAIT: Duration = Duration::from_millis(5);

/// Longest opening a consumer connection may take before it is retried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits between reconnects of a partition pump (reset by an event).
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

fn timeout_error(what: &str) -> azure_messaging_eventhubs::EventHubsError {
    azure_messaging_eventhubs::EventHubsError::from(azure_messaging_eventhubs::error::ErrorKind::AmqpError(
        azure_core_amqp::AmqpError::from(azure_core_amqp::AmqpErrorKind::IdleTimeoutElapsed(
            format!("timed out {what}").into(),
        )),
    ))
}

type Event = Result<Assignment, TransportError>;

/// The recorded (acknowledged, not yet written) position of a partition.
#[derive(Debug, Clone, Default)]
struct Committed {
    seq: Option<i64>,
    offset: Option<String>,
    /// Written to the store already.
    flushed: bool,
}

/// State shared between a partition's pump, reader and the balancer.
struct Shared {
    committed: Mutex<Committed>,
    /// Last enqueued sequence number seen by the balancer (for lag).
    last_enqueued: std::sync::atomic::AtomicI64,
}

struct Owned {
    partition: u32,
    etag: Option<azure_core::http::Etag>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

pub(super) struct EhSubscription {
    rx: mpsc::UnboundedReceiver<Event>,
    _guard: DropGuard,
}

#[async_trait]
impl Subscription for EhSubscription {
    async fn next(&mut self) -> Result<Assignment, TransportError> {
        match self.rx.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }
}

/// Opens the consumer client and starts the balancer task.
pub(super) async fn start(
    t: EventHubsTransport,
    e: EntitySpec,
    group: String,
    start: StartPosition,
    store: Arc<dyn CheckpointStore>,
) -> Result<(EhSubscription, tokio::task::JoinHandle<()>), TransportError> {
    // the daemon's stable instance id: a restart reclaims the ownerships it
    // still holds at once (they are renewals of ours, see `plan_claims`)
    let owner_id = match &t.inner.membership {
        Membership::Static(id) => id.clone(),
        Membership::Dynamic => {
            format!("conveyor-{}-{}-{:08x}", crate::instance::hostname(), std::process::id(), fastrand::u32(..))
        }
    };
    let client = t.consumer_for(&e.name, &group, &owner_id).await?;
    let props = client.get_eventhub_properties().await.map_err(|err| t.map_err(&e.name, &err))?;
    let partitions = props.partition_ids.clone();
    if partitions.len() as u32 != e.partitions {
        tracing::warn!(
            transport = %t.inner.name, hub = %e.name, config = e.partitions, actual = partitions.len(),
            "event hub partition count differs from the config; using the hub's"
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let b = Balancer {
        t,
        hub: e.name.clone(),
        label: e.key.as_str().into(),
        group,
        start,
        store,
        client: Arc::new(client),
        owner_id,
        partitions,
        owned: HashMap::new(),
        events: tx,
        stop: stop.clone(),
        lost: mpsc::unbounded_channel(),
        degraded: false,
    };
    let handle = tokio::spawn(b.run());
    Ok((EhSubscription { rx, _guard: stop.drop_guard() }, handle))
}

struct Balancer {
    t: EventHubsTransport,
    hub: String,
    label: Arc<str>,
    group: String,
    start: StartPosition,
    store: Arc<dyn CheckpointStore>,
    client: Arc<ConsumerClient>,
    owner_id: String,
    partitions: Vec<String>,
    owned: HashMap<String, Owned>,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
    /// Pumps report partitions taken by another consumer here.
    lost: (mpsc::UnboundedSender<String>, mpsc::UnboundedReceiver<String>),
    degraded: bool,
}

impl Balancer {
    fn ns(&self) -> &str {
        &self.t.inner.namespace
    }

    async fn run(mut self) {
        let update = self.t.inner.cfg.update_interval.get();
        let mut flush = tokio::time::interval(self.t.inner.cfg.checkpoint_interval.get());
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_cycle = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep_until(next_cycle) => {
                    self.cycle().await;
                    next_cycle = tokio::time::Instant::now() + update;
                }
                _ = flush.tick() => self.flush(None).await,
                Some(pid) = self.lost.1.recv() => {
                    tracing::info!(hub = %self.hub, group = %self.group, partition = %pid, "partition taken by another consumer");
                    self.revoke(&pid).await;
                }
            }
        }
        self.shutdown().await;
    }

    fn health(&mut self, err: Option<TransportError>) {
        let bad = err.is_some();
        if bad != self.degraded {
            self.degraded = bad;
            let _ = self.events.send(Ok(Assignment::Health(err)));
        }
    }

    /// One load-balancing round: list, decide, claim (renewing ours), then
    /// start or stop partitions to match.
    async fn cycle(&mut self) {
        let listed = match self.store.list_ownerships(self.ns(), &self.hub, &self.group).await {
            Ok(l) => l,
            Err(e) => {
                let err = store_error(&self.t.inner.name, e);
                tracing::warn!(hub = %self.hub, group = %self.group, error = %err, "cannot list partition ownership");
                self.health(Some(err));
                return;
            }
        };
        let expiry = self.t.inner.cfg.ownership_expiration.get();
        let base = Ownership {
            fully_qualified_namespace: self.ns().to_string(),
            event_hub_name: self.hub.clone(),
            consumer_group: self.group.clone(),
            ..Default::default()
        };
        let claims = plan_claims(&base, &self.partitions, &listed, &self.owner_id, expiry, SystemTime::now());
        let claimed = if claims.is_empty() {
            Vec::new()
        } else {
            match self.store.claim_ownership(&claims).await {
                Ok(c) => c,
                Err(e) => {
                    let err = store_error(&self.t.inner.name, e);
                    tracing::warn!(hub = %self.hub, group = %self.group, error = %err, "cannot claim partition ownership");
                    self.health(Some(err));
                    return;
                }
            }
        };
        self.health(None);
        let now_owned: HashMap<String, Ownership> = claimed
            .into_iter()
            .filter(|o| o.owner_id.as_deref() == Some(&self.owner_id))
            .map(|o| (o.partition_id.clone(), o))
            .collect();
        let lost: Vec<String> = self.owned.keys().filter(|p| !now_owned.contains_key(*p)).cloned().collect();
        for pid in lost {
            tracing::info!(hub = %self.hub, group = %self.group, partition = %pid, "partition ownership lost");
            self.revoke(&pid).await;
        }
        let mut new = Vec::new();
        for (pid, o) in now_owned {
            match self.owned.get_mut(&pid) {
                Some(cur) => cur.etag = o.etag,
                None => new.push((pid, o)),
            }
        }
        if new.is_empty() {
            self.refresh_lag().await;
            return;
        }
        let checkpoints = match self.store.list_checkpoints(self.ns(), &self.hub, &self.group).await {
            Ok(c) => c,
            Err(e) => {
                let err = store_error(&self.t.inner.name, e);
                tracing::warn!(hub = %self.hub, error = %err, "cannot read checkpoints; partitions start next round");
                self.health(Some(err));
                return; // the claims stay ours; next round starts them
            }
        };
        for (pid, o) in new {
            let cp = checkpoints.iter().find(|c| c.partition_id == pid);
            self.assign(pid, o, cp.cloned());
        }
        self.refresh_lag().await;
    }

    /// Last enqueued sequence numbers of owned partitions (for lag); bounded
    /// as a whole, so a stuck management link never delays renewals.
    async fn refresh_lag(&self) {
        let all = async {
            for (pid, o) in &self.owned {
                if let Ok(pp) = self.client.get_partition_properties(pid).await {
                    o.shared
                        .last_enqueued
                        .store(pp.last_enqueued_sequence_number, std::sync::atomic::Ordering::Relaxed);
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
    }

    fn assign(&mut self, pid: String, o: Ownership, cp: Option<Checkpoint>) {
        let partition =
            pid.parse().unwrap_or_else(|_| self.partitions.iter().position(|p| *p == pid).unwrap_or(0) as u32);
        let committed = Committed {
            seq: cp.as_ref().and_then(|c| c.sequence_number),
            offset: cp.as_ref().and_then(|c| c.offset.clone()),
            flushed: true,
        };
        let start = match (&committed.seq, &committed.offset) {
            (Some(s), _) => StartLocation::SequenceNumber(*s),
            (None, Some(off)) => StartLocation::Offset(off.clone()),
            (None, None) => match self.start {
                StartPosition::Earliest => StartLocation::Earliest,
                StartPosition::Latest => StartLocation::Latest,
            },
        };
        tracing::info!(
            hub = %self.hub, group = %self.group, partition = %pid, owner = %self.owner_id,
            checkpoint = ?committed.seq, "partition assigned"
        );
        let shared =
            Arc::new(Shared { committed: Mutex::new(committed), last_enqueued: std::sync::atomic::AtomicI64::new(-1) });
        let stop = self.stop.child_token();
        let (tx, rx) = mpsc::channel(self.t.inner.cfg.prefetch.max(16) as usize);
        let pump = Pump {
            t: self.t.clone(),
            client: None,
            group: self.group.clone(),
            instance: format!("{}-p{pid}", self.owner_id),
            hub: self.hub.clone(),
            pid: pid.clone(),
            partition,
            label: self.label.clone(),
            prefetch: self.t.inner.cfg.prefetch,
            start,
            last_seq: None,
            tx,
            lost: self.lost.0.clone(),
            health: self.events.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(pump.run());
        let reader = EhReader { partition, rx, shared: shared.clone(), pending: VecDeque::new() };
        self.owned.insert(pid, Owned { partition, etag: o.etag, shared, stop });
        let _ = self.events.send(Ok(Assignment::Assigned(Box::new(reader))));
    }

    /// Stops reading `pid`: the worker finishes and commits its batch, then
    /// the partition's checkpoint is written.
    async fn revoke(&mut self, pid: &str) {
        let Some(o) = self.owned.remove(pid) else { return };
        let (done, wait) = oneshot::channel();
        if self.events.send(Ok(Assignment::Revoked { partition: o.partition, done })).is_ok() {
            let _ = tokio::time::timeout(REVOKE_TIMEOUT, wait).await;
        }
        o.stop.cancel();
        self.write_checkpoint(pid, &o.shared).await;
    }

    async fn write_checkpoint(&self, pid: &str, shared: &Shared) -> bool {
        let c = {
            let c = shared.committed.lock().unwrap();
            if c.flushed || c.seq.is_none() {
                return true;
            }
            c.clone()
        };
        let cp = Checkpoint {
            fully_qualified_namespace: self.ns().to_string(),
            event_hub_name: self.hub.clone(),
            consumer_group: self.group.clone(),
            partition_id: pid.to_string(),
            offset: c.offset.clone(),
            sequence_number: c.seq,
        };
        match self.store.update_checkpoint(cp).await {
            Ok(()) => {
                let mut cur = shared.committed.lock().unwrap();
                if cur.seq == c.seq {
                    cur.flushed = true;
                }
                true
            }
            Err(e) => {
                let err = store_error(&self.t.inner.name, e);
                tracing::warn!(hub = %self.hub, partition = %pid, error = %err, "checkpoint write failed; retried next interval");
                false
            }
        }
    }

    /// Writes the recorded positions of owned partitions (`only`: one).
    async fn flush(&mut self, only: Option<&str>) {
        let items: Vec<(String, Arc<Shared>)> = self
            .owned
            .iter()
            .filter(|(p, _)| only.is_none_or(|o| o == p.as_str()))
            .map(|(p, o)| (p.clone(), o.shared.clone()))
            .collect();
        for (pid, shared) in items {
            self.write_checkpoint(&pid, &shared).await;
        }
    }

    /// Subscription dropped (worker stopped after committing): write the
    /// last checkpoints, release ownership so others take over at once,
    /// close the client.
    async fn shutdown(mut self) {
        for o in self.owned.values() {
            o.stop.cancel();
        }
        self.flush(None).await;
        let release: Vec<Ownership> = self
            .owned
            .iter()
            .map(|(pid, o)| Ownership {
                fully_qualified_namespace: self.ns().to_string(),
                event_hub_name: self.hub.clone(),
                consumer_group: self.group.clone(),
                partition_id: pid.clone(),
                owner_id: None,
                etag: o.etag.clone(),
                last_modified_time: None,
            })
            .collect();
        if !release.is_empty() {
            match self.store.claim_ownership(&release).await {
                Ok(r) => {
                    tracing::info!(hub = %self.hub, group = %self.group, released = r.len(), "partition ownership released")
                }
                Err(e) => {
                    tracing::warn!(hub = %self.hub, error = %store_error(&self.t.inner.name, e), "cannot release ownership")
                }
            }
        }
        self.owned.clear();
        if let Ok(c) = Arc::try_unwrap(self.client) {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.close()).await;
        }
    }
}

/// The claims of one balancing round (renewals of ours + new ones), the
/// algorithm of Azure's processors: with `n` active owners (us included),
/// each aims at `P / n`, and up to `P % n` owners may hold one more. We take
/// unowned or expired partitions first, and steal one from an owner above
/// its share only when none is free.
pub(crate) fn plan_claims(
    base: &Ownership,
    partitions: &[String],
    listed: &[Ownership],
    me: &str,
    expiry: Duration,
    now: SystemTime,
) -> Vec<Ownership> {
    let active = |o: &&Ownership| {
        o.owner_id.is_some()
            && o.last_modified_time.is_some_and(|t| SystemTime::from(t) + expiry > now)
            && partitions.contains(&o.partition_id)
    };
    let live: Vec<&Ownership> = listed.iter().filter(active).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for o in &live {
        *counts.entry(o.owner_id.as_deref().unwrap_or_default()).or_default() += 1;
    }
    counts.entry(me).or_default();
    let p = partitions.len();
    let n = counts.len();
    let min = p / n;
    let extra = p % n;
    let mine = counts[me];
    let with_extra = counts.values().filter(|c| **c > min).count();
    let mut claims: Vec<Ownership> =
        live.iter().filter(|o| o.owner_id.as_deref() == Some(me)).map(|o| (*o).clone()).collect();
    let want = if mine < min {
        min - mine
    } else if mine == min && extra > 0 && with_extra < extra {
        1
    } else {
        0
    };
    if want == 0 {
        return claims;
    }
    let template = |pid: &str| -> Ownership {
        listed.iter().find(|o| o.partition_id == pid).cloned().unwrap_or_else(|| Ownership {
            partition_id: pid.to_string(),
            owner_id: None,
            etag: None,
            last_modified_time: None,
            ..base.clone()
        })
    };
    let mut free: Vec<&String> =
        partitions.iter().filter(|pid| !live.iter().any(|o| &o.partition_id == *pid)).collect();
    fastrand::shuffle(&mut free);
    for pid in free.into_iter().take(want) {
        let mut o = template(pid);
        o.owner_id = Some(me.to_string());
        claims.push(o);
    }
    if claims.iter().filter(|o| o.owner_id.as_deref() == Some(me)).count() == mine {
        // nothing free: steal one from an owner above its share
        let max = min + usize::from(extra > 0);
        let victims: Vec<&&Ownership> = live
            .iter()
            .filter(|o| {
                let c = counts[o.owner_id.as_deref().unwrap_or_default()];
                o.owner_id.as_deref() != Some(me) && (c > max || (c == max && mine < min))
            })
            .collect();
        if let Some(v) = victims.get(fastrand::usize(..victims.len().max(1))).filter(|_| !victims.is_empty()) {
            let mut o = (**v).clone();
            o.owner_id = Some(me.to_string());
            claims.push(o);
        }
    }
    claims
}

/// Reads one partition and feeds the reader's channel, without replays.
struct Pump {
    t: EventHubsTransport,
    /// The pump's own connection (one per partition, as Azure's SDKs do):
    /// after any receive error it is closed and a fresh one is opened, so a
    /// half-recovered connection never stalls the partition.
    client: Option<ConsumerClient>,
    group: String,
    instance: String,
    hub: String,
    pid: String,
    partition: u32,
    label: Arc<str>,
    prefetch: u32,
    start: StartLocation,
    /// Last sequence number handed to the reader.
    last_seq: Option<i64>,
    tx: mpsc::Sender<Delivered>,
    lost: mpsc::UnboundedSender<String>,
    health: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
}

/// A message and its Event Hubs offset (checkpoints carry both).
struct Delivered {
    msg: PipelineMessage,
    offset: Option<String>,
}

impl Pump {
    async fn run(mut self) {
        let mut backoff = Attempts::new(RECONNECT);
        let mut degraded = false;
        while !self.stop.is_cancelled() {
            let start = match self.last_seq {
                Some(s) => StartLocation::SequenceNumber(s),
                None => self.start.clone(),
            };
            let outcome = self.attempt(start, &mut degraded, &mut backoff).await;
            let e = match outcome {
                Ok(()) => break, // stopped
                Err(e) => e,
            };
            let c = classify_error(&e);
            if c.ownership_lost {
                let _ = self.lost.send(self.pid.clone());
                break;
            }
            let err = self.t.map_err(&self.hub, &e);
            tracing::warn!(
                hub = %self.hub, partition = %self.pid, error = %err, category = %c.category,
                after_seq = ?self.last_seq, "receive failed; reopening"
            );
            if matches!(c.category, ErrorCategory::Auth | ErrorCategory::Permanent) && !degraded {
                degraded = true;
                let _ = self.health.send(Ok(Assignment::Health(Some(err))));
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(backoff.fail()) => {}
            }
        }
    }

    /// Opens a receiver at `start` (and a client, if none) and pumps.
    async fn attempt(
        &mut self,
        start: StartLocation,
        degraded: &mut bool,
        backoff: &mut Attempts,
    ) -> Result<(), azure_messaging_eventhubs::EventHubsError> {
        if self.client.is_none() {
            let c = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                c = tokio::time::timeout(OPEN_TIMEOUT, self.t.open_consumer(&self.hub, &self.group, &self.instance)) => c,
            };
            match c {
                Ok(Ok(c)) => self.client = Some(c),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(timeout_error("opening the consumer connection")),
            }
        }
        let opts = OpenReceiverOptions {
            owner_level: Some(0),
            prefetch: Some(self.prefetch),
            start_position: Some(azure_messaging_eventhubs::StartPosition { location: start, inclusive: false }),
            ..Default::default()
        };
        let client = self.client.as_ref().expect("opened above");
        let r = client.open_receiver_on_partition(self.pid.clone(), Some(opts)).await;
        let outcome = match r {
            Ok(r) => {
                let o = self.pump(&r, degraded, backoff).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), r.close()).await;
                o
            }
            Err(e) => Err(e),
        };
        if outcome.is_err()
            && let Some(c) = self.client.take()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.close()).await;
        }
        outcome
    }

    /// Forwards events until stopped (`Ok`) or the stream fails.
    async fn pump(
        &mut self,
        r: &azure_messaging_eventhubs::EventReceiver,
        degraded: &mut bool,
        backoff: &mut Attempts,
    ) -> Result<(), azure_messaging_eventhubs::EventHubsError> {
        let mut stream = std::pin::pin!(r.stream_events());
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                n = stream.next() => n,
            };
            let ev = match next {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(azure_messaging_eventhubs::EventHubsError::from(
                        azure_messaging_eventhubs::error::ErrorKind::SimpleMessage("event stream ended".into()),
                    ));
                }
            };
            if *degraded {
                *degraded = false;
                let _ = self.health.send(Ok(Assignment::Health(None)));
            }
            backoff.reset();
            let Some(seq) = ev.sequence_number() else { continue };
            if self.last_seq.is_some_and(|l| seq <= l) {
                continue; // a replay after the SDK re-attached
            }
            let d = Delivered { offset: ev.offset().clone(), msg: to_message(&ev, &self.label, self.partition, seq) };
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                sent = self.tx.send(d) => if sent.is_err() { return Ok(()) },
            }
            self.last_seq = Some(seq);
        }
    }
}

fn simple_to_bytes(v: &AmqpSimpleValue) -> Bytes {
    match v {
        AmqpSimpleValue::String(s) => Bytes::copy_from_slice(s.as_bytes()),
        AmqpSimpleValue::Binary(b) => Bytes::copy_from_slice(b),
        AmqpSimpleValue::Boolean(b) => Bytes::from(b.to_string()),
        AmqpSimpleValue::Long(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::Int(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::Short(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::Byte(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::ULong(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::UInt(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::UShort(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::UByte(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::Double(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::Float(n) => Bytes::from(n.to_string()),
        AmqpSimpleValue::Null => Bytes::new(),
        other => Bytes::from(format!("{other:?}")),
    }
}

fn to_message(ev: &ReceivedEventData, label: &Arc<str>, partition: u32, seq: i64) -> PipelineMessage {
    let data = ev.event_data();
    let mut headers = Vec::new();
    let mut produced_at = None;
    let mut carried_key = None;
    if let Some(props) = data.properties() {
        let mut props: Vec<_> = props.iter().collect();
        props.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in props {
            match (k.as_str(), v) {
                (super::TIMESTAMP_PROPERTY, AmqpSimpleValue::Long(ts)) => produced_at = Some(*ts),
                (super::KEY_PROPERTY, v) => carried_key = Some(simple_to_bytes(v)),
                _ => headers.push((k.clone(), simple_to_bytes(v))),
            }
        }
    }
    // the AMQP content type is the message's; an application property of
    // the same name gives way to it (one value per name)
    if let Some(ct) = data.content_type() {
        headers.retain(|(n, _)| n != crate::transport::CONTENT_TYPE_HEADER);
        headers.push((crate::transport::CONTENT_TYPE_HEADER.to_string(), Bytes::copy_from_slice(ct.as_bytes())));
    }
    PipelineMessage {
        entity: label.clone(),
        partition,
        position: seq,
        key: ev.partition_key().as_ref().map(|k| Bytes::copy_from_slice(k.as_bytes())).or(carried_key),
        headers: Headers(headers),
        payload: data.body().map(Bytes::copy_from_slice).unwrap_or_default(),
        timestamp_ms: produced_at.unwrap_or_else(|| {
            ev.enqueued_time()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .unwrap_or_else(crate::transport::now_ms)
        }),
    }
}

struct EhReader {
    partition: u32,
    rx: mpsc::Receiver<Delivered>,
    shared: Arc<Shared>,
    /// (sequence number, offset) of fetched, not yet committed messages.
    pending: VecDeque<(i64, Option<String>)>,
}

#[async_trait]
impl PartitionReader for EhReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    async fn fetch(&mut self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        let Some(first) = self.rx.recv().await else {
            // the pump stopped (partition revoked or lost): the subscription
            // sends the revoke; wait for it
            return std::future::pending().await;
        };
        let mut next = Some(first);
        let fill_until = tokio::time::Instant::now() + FILL_WAIT;
        while let Some(d) = next.take() {
            self.pending.push_back((d.msg.position, d.offset));
            out.push(d.msg);
            if out.len() < max {
                next = match self.rx.try_recv() {
                    Ok(d) => Some(d),
                    // a partial batch waits briefly to fill up: fewer, fuller sends
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(fill_until, self.rx.recv()).await.ok().flatten()
                    }
                    Err(_) => None,
                };
            }
        }
        Ok(())
    }

    async fn commit(&mut self, last: &PipelineMessage) -> Result<(), TransportError> {
        let mut offset = None;
        while let Some((seq, _)) = self.pending.front() {
            if *seq > last.position {
                break;
            }
            offset = self.pending.pop_front().and_then(|(_, o)| o);
        }
        let mut c = self.shared.committed.lock().unwrap();
        if c.seq.is_none_or(|s| s < last.position) {
            c.seq = Some(last.position);
            if offset.is_some() {
                c.offset = offset;
            }
            c.flushed = false;
        }
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        let last = self.shared.last_enqueued.load(std::sync::atomic::Ordering::Relaxed);
        let c = self.shared.committed.lock().unwrap().seq.unwrap_or(-1);
        (last >= 0).then(|| (last - c).max(0) as u64)
    }
}

/// Reads one partition as no consumer group (`Transport::open_reader`): a
/// receiver in `$Default` without an owner level, so it takes nothing from
/// the group's owners.
pub(super) async fn browse(
    t: EventHubsTransport,
    e: EntitySpec,
    partition: u32,
    from: Seek,
) -> Result<Box<dyn PartitionReader>, TransportError> {
    let instance = format!("conveyor-reader-{:08x}", fastrand::u32(..));
    let client = t.consumer_for(&e.name, "$Default", &instance).await?;
    let props = client.get_eventhub_properties().await.map_err(|err| t.map_err(&e.name, &err))?;
    let pid = partition.to_string();
    if !props.partition_ids.contains(&pid) {
        return Err(TransportError::UnknownPartition {
            entity: e.key.clone(),
            partition,
            partitions: props.partition_ids.len() as u32,
        });
    }
    let location = match from {
        Seek::Earliest => StartLocation::Earliest,
        Seek::At(p) => StartLocation::SequenceNumber(p),
    };
    let opts = OpenReceiverOptions {
        owner_level: None,
        prefetch: Some(300),
        start_position: Some(azure_messaging_eventhubs::StartPosition { location, inclusive: true }),
        ..Default::default()
    };
    let receiver = client.open_receiver_on_partition(pid, Some(opts)).await.map_err(|err| t.map_err(&e.name, &err))?;
    let (tx, rx) = mpsc::channel::<Result<PipelineMessage, TransportError>>(256);
    let stop = CancellationToken::new();
    let (stop2, label) = (stop.clone(), Arc::<str>::from(e.key.as_str()));
    tokio::spawn(async move {
        {
            let mut stream = std::pin::pin!(receiver.stream_events());
            loop {
                let next = tokio::select! {
                    _ = stop2.cancelled() => break,
                    n = stream.next() => n,
                };
                let item = match next {
                    Some(Ok(ev)) => match ev.sequence_number() {
                        Some(seq) => Ok(to_message(&ev, &label, partition, seq)),
                        None => continue,
                    },
                    Some(Err(err)) => Err(t.map_err(&e.name, &err)),
                    None => break,
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), receiver.close()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
    });
    Ok(Box::new(BrowseReader { partition, rx, _stop: stop.drop_guard() }))
}

struct BrowseReader {
    partition: u32,
    rx: mpsc::Receiver<Result<PipelineMessage, TransportError>>,
    _stop: DropGuard,
}

#[async_trait]
impl PartitionReader for BrowseReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    async fn fetch(&mut self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        let Some(first) = self.rx.recv().await else {
            return Err(TransportError::Other {
                category: ErrorCategory::Transient,
                kind: "stream_ended",
                message: "the event stream ended".into(),
            });
        };
        out.push(first?);
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(Ok(m)) => out.push(m),
                Ok(Err(e)) => {
                    tracing::warn!(partition = self.partition, error = %e, "event hub read failed after a partial batch");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    async fn commit(&mut self, _last: &PipelineMessage) -> Result<(), TransportError> {
        Err(TransportError::ReadOnly)
    }
}
