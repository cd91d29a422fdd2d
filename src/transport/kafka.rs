//! `type: kafka` — Apache Kafka through librdkafka (`rdkafka`).
//!
//! **Consumer.** One librdkafka consumer per subscription (worker × input),
//! in its consumer group. `enable.auto.offset.store=false`: an offset is
//! stored only when the worker commits a message, which it does only after
//! every output and DLQ/retry write is acknowledged; librdkafka commits the
//! stored offsets every `commit_interval`, and Conveyor commits them
//! synchronously on partition revoke and on shutdown. Each assigned
//! partition gets its own queue (`split_partition_queue`), so each lane reads
//! its partition in order while partitions run in parallel.
//!
//! Messages that librdkafka puts on the consumer's main queue before a new
//! partition queue is split off (*strays*) are read by that partition's
//! lane first: a new lane starts reading only after the poller thread has
//! emptied the main queue once the split is in place (the reader's *gate*),
//! so every stray is in hand before any later offset of its partition, and
//! no later offset is stored before an earlier one was processed.
//!
//! **Static membership.** The daemon's workers join their groups as static
//! members (`group.instance.id = <instance id>-<group>`, `crate::instance`):
//! a restart after a crash gets the same partitions back at once instead of
//! after `session.timeout.ms`. Groups several subscriptions of the process
//! use (the retry schedulers', the mirrors', a worker reading two topics of
//! one cluster mid-migration) join dynamically: a static member does not
//! leave when it stops, and the others' next rebalance would wait for it to
//! expire ([`static_groups`]). Within the process, a new consumer joining as
//! a member an earlier one held (a reload, a task restart) first waits for
//! that one's final commit (`transport::members`), so it never fences it
//! mid-commit. `properties: { group.instance.id: "" }` opts out.
//!
//! Header names that are not UTF-8 (Kafka allows any bytes) are read without
//! librdkafka-rust's UTF-8 check (which panics) and kept as
//! `transport::header_name` spells them; they are produced under that name.
//!
//! Rebalance callbacks run on a dedicated poller thread and never `.await`:
//! on revoke they hand the partitions to the async worker over a channel and
//! wait (bounded by `REVOKE_TIMEOUT`) until its lanes finished and committed
//! the batches in hand, then commit synchronously before librdkafka takes the
//! partitions away. Cooperative-sticky assignment works the same way
//! (`partition.assignment.strategy: cooperative-sticky` in `properties`).
//!
//! Consumed payloads are not copied: a message's payload `Bytes` points into
//! librdkafka's fetch buffer and keeps that message alive until the last
//! clone is dropped (the one `unsafe` block of the crate, see `hold`).
//!
//! **Producer.** One idempotent producer per transport, shared by every
//! worker. A send waits for every delivery report; `QueueFull` waits
//! (backpressure) and never drops. Delivery reports fill per-batch slots and
//! wake the sender once per batch, not once per message. Keys are placed with
//! `murmur2_random`, the Java client's and aiokafka's hash, so a key lands on
//! the same partition whichever producer wrote it during a migration (a
//! `partitioner` in `properties` overrides it).
//!
//! **Memory** is bounded by librdkafka's `queue.buffering.max.messages` /
//! `queue.buffering.max.kbytes` (producer) and `queued.max.messages.kbytes`
//! (consumer prefetch per partition queue: 2 MiB here, refilled after
//! `fetch.queue.backoff.ms` = 10 ms), plus the worker's batches in hand.
//!
//! **Errors** map through `classify::kafka_error`. Brokers down and
//! authentication failures reach the worker as `Assignment::Health`, turning
//! it unready until they clear. Secrets (`security.password` and every
//! `properties` value) are `Secret`s: never printed in logs or errors.

use super::{
    Assignment, EntitySpec, GroupPosition, GroupSpec, Headers, OutboundMessage, PartitionInfo, PartitionReader,
    PipelineMessage, ProduceResult, Producer, Refusal, Seek, StartPosition, Subscription, Transport, TransportError,
    header_name,
};
use crate::classify::{self, ErrorCategory};
use crate::config::KafkaConfig;
use crate::instance::Membership;
use crate::transport::members::Members;
use async_trait::async_trait;
use bytes::Bytes;
use futures::task::AtomicWaker;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};

/// Longest a partial batch waits to fill up.
const FILL_WAIT: Duration = Duration::from_millis(5);

/// Longest a revoke waits for the worker to finish the partition's batch.
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The Kafka transport. Cheap to clone.
#[derive(Clone)]
pub struct KafkaTransport {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    cfg: KafkaConfig,
    producer: ThreadedProducer<ProducerCtx>,
    /// By topic.
    entities: std::sync::RwLock<HashMap<String, EntitySpec>>,
    /// Consumer poll threads, by the static member (`group/instance`) each
    /// joined as.
    pollers: Members<std::thread::JoinHandle<()>>,
    /// Static (`group.instance.id`) or dynamic group membership.
    membership: Membership,
    /// The groups that join as static members: each read by one subscription
    /// of this process (see [`static_groups`]); set by `ensure`.
    statics: std::sync::RwLock<std::collections::HashSet<String>>,
}

/// The librdkafka settings shared by producer and consumers.
fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    c.set("client.id", "conveyor");
    c.set("security.protocol", cfg.security.protocol.as_librdkafka());
    if let Some(m) = cfg.security.mechanism {
        c.set("sasl.mechanism", m.as_str());
    }
    if let Some(u) = &cfg.security.username {
        c.set("sasl.username", u);
    }
    if let Some(p) = &cfg.security.password {
        c.set("sasl.password", p.expose());
    }
    if let Some(ca) = &cfg.security.ca_location {
        c.set("ssl.ca.location", ca.display().to_string());
    }
    c
}

fn apply_properties(c: &mut ClientConfig, cfg: &KafkaConfig) {
    for (k, v) in &cfg.properties {
        c.set(k, v.expose());
    }
}

/// A transport error from a librdkafka error, classified.
pub fn map_err(transport: &str, e: &KafkaError) -> TransportError {
    let code = e.rdkafka_error_code();
    let (category, kind) = match code {
        Some(c) => (classify::kafka_error(&format!("{c:?}")), kind_name(c)),
        None => match e {
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(..) => (ErrorCategory::Permanent, "kafka_config"),
            KafkaError::Canceled => (ErrorCategory::Transient, "kafka_canceled"),
            _ => (ErrorCategory::Transient, "kafka"),
        },
    };
    TransportError::Other { category, kind, message: format!("kafka transport {transport:?}: {e}") }
}

fn kind_name(c: RDKafkaErrorCode) -> &'static str {
    // a few stable names for envelopes and metrics; the message has the rest
    match c {
        RDKafkaErrorCode::MessageSizeTooLarge => "kafka_message_too_large",
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => "kafka_authorization",
        RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Authentication => "kafka_authentication",
        RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure => "kafka_broker_down",
        RDKafkaErrorCode::QueueFull => "kafka_queue_full",
        RDKafkaErrorCode::MessageTimedOut => "kafka_message_timed_out",
        RDKafkaErrorCode::UnknownTopicOrPartition => "kafka_unknown_topic",
        _ => "kafka",
    }
}

impl KafkaTransport {
    /// Creates the shared producer; optionally creates missing topics.
    pub async fn open(
        name: &str,
        cfg: &KafkaConfig,
        entities: &[EntitySpec],
        membership: Membership,
    ) -> Result<KafkaTransport, TransportError> {
        let mut pc = base_config(cfg);
        pc.set("enable.idempotence", "true");
        pc.set("linger.ms", "5");
        // the Java client's (and aiokafka's) key hash, so a key lands on the
        // same partition whichever producer wrote it during a migration
        pc.set("partitioner", "murmur2_random");
        pc.set("message.timeout.ms", "300000");
        apply_properties(&mut pc, cfg);
        let producer: ThreadedProducer<ProducerCtx> =
            pc.create_with_context(ProducerCtx).map_err(|e| map_err(name, &e))?;
        let t = KafkaTransport {
            inner: Arc::new(Inner {
                name: name.to_string(),
                cfg: cfg.clone(),
                producer,
                entities: std::sync::RwLock::new(HashMap::new()),
                pollers: Members::default(),
                membership,
                statics: Default::default(),
            }),
        };
        t.add(entities).await?;
        Ok(t)
    }

    /// Adds entities (a config reload uses this), creating their topics when
    /// `create_topics` is set.
    async fn add(&self, entities: &[EntitySpec]) -> Result<(), TransportError> {
        let new: Vec<EntitySpec> = {
            let mut map = self.inner.entities.write().unwrap();
            entities.iter().filter(|e| map.insert(e.name.clone(), (*e).clone()).is_none()).cloned().collect()
        };
        if self.inner.cfg.create_topics && !new.is_empty() {
            self.create_topics(&new).await?;
        }
        Ok(())
    }

    async fn create_topics(&self, entities: &[EntitySpec]) -> Result<(), TransportError> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let mut ac = base_config(&self.inner.cfg);
        apply_properties(&mut ac, &self.inner.cfg);
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            ac.create().map_err(|e| map_err(&self.inner.name, &e))?;
        let topics: Vec<NewTopic> =
            entities.iter().map(|e| NewTopic::new(&e.name, e.partitions as i32, TopicReplication::Fixed(1))).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics(topics.iter(), &opts).await.map_err(|e| map_err(&self.inner.name, &e))?;
        for r in results {
            match r {
                Ok(t) => tracing::info!(transport = %self.inner.name, topic = %t, "topic created"),
                Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %t, "topic exists"),
                Err((t, code)) => {
                    return Err(TransportError::Other {
                        category: classify::kafka_error(&format!("{code:?}")),
                        kind: "kafka_create_topic",
                        message: format!("cannot create topic {t:?}: {code}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn entity(&self, topic: &str) -> Result<EntitySpec, TransportError> {
        self.inner.entities.read().unwrap().get(topic).cloned().ok_or_else(|| TransportError::UnknownEntity {
            transport: self.inner.name.clone(),
            entity: topic.to_string(),
        })
    }

    /// Partition counts on the broker, by topic (for `conveyor check`).
    pub fn broker_partitions(
        cfg: &KafkaConfig,
        topics: &[String],
        timeout: Duration,
    ) -> Result<HashMap<String, Option<u32>>, KafkaError> {
        let mut c = base_config(cfg);
        apply_properties(&mut c, cfg);
        let consumer: BaseConsumer = c.create()?;
        let md = consumer.fetch_metadata(None, timeout)?;
        Ok(topics
            .iter()
            .map(|t| {
                let n = md
                    .topics()
                    .iter()
                    .find(|m| m.name() == t && m.error().is_none())
                    .map(|m| m.partitions().len() as u32);
                (t.clone(), n)
            })
            .collect())
    }
}

/// The acknowledgements of one `send` call. librdkafka's delivery callback
/// (on the producer's polling thread) fills one slot per message and wakes
/// the sender once, when the last report is in: no future, channel or wake-up
/// per message.
struct Acks {
    remaining: AtomicUsize,
    partitions: Box<[AtomicI32]>,
    offsets: Box<[AtomicI64]>,
    error: Mutex<Option<KafkaError>>,
    waker: AtomicWaker,
}

impl Acks {
    fn new(n: usize) -> Acks {
        Acks {
            remaining: AtomicUsize::new(n),
            partitions: (0..n).map(|_| AtomicI32::new(-1)).collect(),
            offsets: (0..n).map(|_| AtomicI64::new(-1)).collect(),
            error: Mutex::new(None),
            waker: AtomicWaker::new(),
        }
    }

    /// `n` reports will never come (their messages were not enqueued).
    fn forget(&self, n: usize) {
        if n > 0 && self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.waker.wake();
        }
    }

    async fn all(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.remaining.load(Ordering::Acquire) == 0 {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// One message's delivery-report handle: its batch and its slot there.
pub struct Pending(Arc<Acks>, usize);

/// The shared producer's context: routes delivery reports to their batches.
pub struct ProducerCtx;

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        let Pending(acks, i) = *pending;
        match result {
            Ok(m) => {
                acks.partitions[i].store(m.partition(), Ordering::Relaxed);
                acks.offsets[i].store(m.offset(), Ordering::Relaxed);
            }
            Err((e, _)) => {
                acks.error.lock().unwrap().get_or_insert_with(|| e.clone());
            }
        }
        acks.forget(1);
    }
}

#[async_trait]
impl Producer for KafkaTransport {
    async fn send(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, TransportError> {
        self.send_slice(entity, &batch).await
    }

    async fn send_or_return(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, Refusal> {
        self.send_slice(entity, &batch).await.map_err(|error| Refusal::of(error, batch))
    }
}

impl KafkaTransport {
    /// [`Producer::send`] from a borrowed batch (librdkafka copies what it
    /// sends).
    async fn send_slice(&self, entity: &str, batch: &[OutboundMessage]) -> Result<Vec<ProduceResult>, TransportError> {
        let e = self.entity(entity)?;
        let label: Arc<str> = e.key.as_str().into();
        let n = batch.len();
        let acks = Arc::new(Acks::new(n));
        for (i, m) in batch.iter().enumerate() {
            let mut rec: BaseRecord<'_, [u8], [u8], Box<Pending>> =
                BaseRecord::with_opaque_to(&e.name, Box::new(Pending(acks.clone(), i))).payload(&m.payload[..]);
            if let Some(k) = &m.key {
                rec = rec.key(&k[..]);
            }
            if let Some(p) = m.partition {
                rec = rec.partition(p as i32);
            }
            if let Some(ts) = m.timestamp_ms {
                rec = rec.timestamp(ts);
            }
            if !m.headers.is_empty() {
                rec = rec.headers(
                    m.headers.iter().fold(OwnedHeaders::new_with_capacity(m.headers.0.len()), |h, (k, v)| {
                        h.insert(Header { key: k, value: Some(&v[..]) })
                    }),
                );
            }
            loop {
                match self.inner.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // backpressure: wait for librdkafka's queue to drain
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((err, _)) => {
                        // the messages already enqueued are delivered (or
                        // not) on their own; the caller sends the batch again
                        acks.forget(n - i);
                        return Err(map_err(&self.inner.name, &err));
                    }
                }
            }
        }
        acks.all().await;
        if let Some(err) = acks.error.lock().unwrap().take() {
            return Err(map_err(&self.inner.name, &err));
        }
        Ok((0..n)
            .map(|i| ProduceResult {
                entity: label.clone(),
                partition: acks.partitions[i].load(Ordering::Relaxed) as u32,
                position: acks.offsets[i].load(Ordering::Relaxed),
            })
            .collect())
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(self.clone())
    }

    async fn subscribe(
        &self,
        entity: &str,
        group: &str,
        start: StartPosition,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let e = self.entity(entity)?;
        let name = self.inner.name.clone();
        let mut c = base_config(&self.inner.cfg);
        c.set("group.id", group);
        c.set("enable.auto.commit", "true");
        c.set("enable.auto.offset.store", "false");
        c.set("auto.commit.interval.ms", self.inner.cfg.commit_interval.get().as_millis().to_string());
        c.set(
            "auto.offset.reset",
            match start {
                StartPosition::Earliest => "earliest",
                StartPosition::Latest => "latest",
            },
        );
        c.set("statistics.interval.ms", "1000");
        // a small prefetch per partition, refilled promptly: bounded memory
        // and, measured, more messages per CPU-second than librdkafka's
        // 64 MiB default (bench/kafka_passthrough.sh); the default 1 s
        // back-off would stall a lane whenever its small queue fills up
        c.set("queued.max.messages.kbytes", "2048");
        c.set("fetch.queue.backoff.ms", "10");
        // static membership: a restart after a crash rejoins as the same
        // member and gets its partitions back without waiting for the
        // session timeout (`instance`); `properties` may still override it
        if self.inner.statics.read().unwrap().contains(group)
            && let Some(id) = self.inner.membership.kafka_instance(group)
        {
            c.set("group.instance.id", id);
        }
        for (k, v) in &self.inner.cfg.properties {
            c.set(k, v.expose());
        }
        // `group.instance.id: ""` in `properties`: a dynamic member
        if c.get("group.instance.id") == Some("") {
            c.remove("group.instance.id");
        }
        let member = c.get("group.instance.id").map(|id| format!("{group}/{id}"));
        if let Some(m) = &member {
            self.previous_member_done(m).await;
        }
        c.set("enable.auto.offset.store", "false");
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Ctx {
            transport: name.clone(),
            topic: e.name.clone(),
            label: e.key.as_str().into(),
            events: tx,
            me: OnceLock::new(),
            lags: Arc::new(Mutex::new(HashMap::new())),
            strays: Arc::new(Mutex::new(HashMap::new())),
            fresh: Mutex::new(Vec::new()),
            degraded: AtomicBool::new(false),
        };
        let consumer: Arc<BaseConsumer<Ctx>> =
            Arc::new(c.create_with_context(ctx).map_err(|err| map_err(&name, &err))?);
        let _ = consumer.context().me.set(Arc::downgrade(&consumer));
        consumer.subscribe(&[&e.name]).map_err(|err| map_err(&name, &err))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (consumer.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name(format!("kafka-poll-{group}"))
            .spawn(move || poll_loop(c2, s2))
            .map_err(|err| TransportError::Other {
            category: ErrorCategory::Transient,
            kind: "thread",
            message: err.to_string(),
        })?;
        self.inner.pollers.push(member, handle);
        Ok(Box::new(KafkaSubscription { rx, stop }))
    }

    async fn partitions(&self, entity: &str) -> Result<Vec<PartitionInfo>, TransportError> {
        let e = self.entity(entity)?;
        let c = self.client_config(None);
        let name = self.inner.name.clone();
        blocking(move || {
            let consumer: BaseConsumer = c.create().map_err(|err| map_err(&name, &err))?;
            watermarks(&consumer, &name, &e)
        })
        .await
    }

    async fn ensure(&self, entities: &[EntitySpec], groups: &[GroupSpec]) -> Result<(), TransportError> {
        // groups live on the broker; nothing here holds data back for them
        *self.inner.statics.write().unwrap() = static_groups(groups);
        self.add(entities).await
    }

    async fn group_positions(&self, entity: &str, group: &str) -> Result<Vec<GroupPosition>, TransportError> {
        let e = self.entity(entity)?;
        let c = self.client_config(Some(group));
        let name = self.inner.name.clone();
        blocking(move || {
            let consumer: BaseConsumer = c.create().map_err(|err| map_err(&name, &err))?;
            let infos = watermarks(&consumer, &name, &e)?;
            let mut tpl = TopicPartitionList::new();
            for i in &infos {
                tpl.add_partition(&e.name, i.partition as i32);
            }
            let committed =
                consumer.committed_offsets(tpl, Duration::from_secs(10)).map_err(|err| map_err(&name, &err))?;
            Ok(infos
                .into_iter()
                .map(|info| {
                    let c = committed.find_partition(&e.name, info.partition as i32).and_then(|el| match el.offset() {
                        Offset::Offset(o) if o >= 0 => Some(o),
                        _ => None,
                    });
                    GroupPosition { info, committed: c }
                })
                .collect())
        })
        .await
    }

    async fn open_reader(
        &self,
        entity: &str,
        partition: u32,
        from: Seek,
    ) -> Result<Box<dyn PartitionReader>, TransportError> {
        let e = self.entity(entity)?;
        let mut c = self.client_config(Some(&format!("conveyor-reader-{:016x}", fastrand::u64(..))));
        c.set("enable.auto.offset.store", "false");
        c.set("auto.offset.reset", "earliest");
        let name = self.inner.name.clone();
        let (e2, n2) = (e.clone(), name.clone());
        let consumer = blocking(move || {
            let consumer: BaseConsumer = c.create().map_err(|err| map_err(&n2, &err))?;
            let infos = watermarks(&consumer, &n2, &e2)?;
            if partition as usize >= infos.len() {
                return Err(TransportError::UnknownPartition {
                    entity: e2.key.clone(),
                    partition,
                    partitions: infos.len() as u32,
                });
            }
            let mut tpl = TopicPartitionList::new();
            let offset = match from {
                Seek::Earliest => Offset::Beginning,
                Seek::At(p) => Offset::Offset(p.max(0)),
            };
            tpl.add_partition_offset(&e2.name, partition as i32, offset).map_err(|err| map_err(&n2, &err))?;
            consumer.assign(&tpl).map_err(|err| map_err(&n2, &err))?;
            Ok(consumer)
        })
        .await?;
        Ok(Box::new(GrouplessReader { transport: name, label: e.key.as_str().into(), partition, consumer }))
    }

    async fn close(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let inner = self.inner.clone();
        let flush = tokio::task::spawn_blocking(move || inner.producer.flush(Timeout::After(within)));
        if tokio::time::timeout_at(deadline, flush).await.is_err() {
            tracing::warn!(transport = %self.inner.name, "producer flush did not finish in time");
        }
        let handles = self.inner.pollers.take_all();
        let join = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        if tokio::time::timeout_at(deadline, join).await.is_err() {
            // a consumer's final commit is stuck (broker gone): its uncommitted
            // work is redelivered on the next start; the process may exit
            tracing::warn!(transport = %self.inner.name, "consumer threads did not finish in time; left behind");
        }
    }
}

impl KafkaTransport {
    /// Waits (10 s at most) for earlier consumers of this process that
    /// joined as static member `m` (`group/instance`) to make their final
    /// commit and stop ([`Members`]).
    async fn previous_member_done(&self, m: &str) {
        let same = self.inner.pollers.take_same(m, |h| h.is_finished());
        if same.is_empty() {
            return;
        }
        let join = tokio::task::spawn_blocking(move || {
            for h in same {
                let _ = h.join();
            }
        });
        if tokio::time::timeout(Duration::from_secs(10), join).await.is_err() {
            tracing::warn!(transport = %self.inner.name, member = %m, "the previous consumer did not stop in time; joining anyway");
        }
    }

    /// Base settings and `properties`, with `group` as `group.id` and no
    /// automatic commits (for reads that must not move a group).
    fn client_config(&self, group: Option<&str>) -> ClientConfig {
        let mut c = base_config(&self.inner.cfg);
        apply_properties(&mut c, &self.inner.cfg);
        if let Some(g) = group {
            c.set("group.id", g);
            c.set("enable.auto.commit", "false");
        }
        c
    }
}

/// The groups of `groups` that join as static members: not shared by
/// design, and read from one topic only. A static member does not leave its
/// group when it stops, so the group's next rebalance waits for it to expire
/// (`session.timeout.ms`): fine for a group only this subscription uses here
/// (its restart rejoins as the same member), a stall for the other
/// subscriptions of a group several use.
pub(crate) fn static_groups(groups: &[GroupSpec]) -> std::collections::HashSet<String> {
    let mut topics: HashMap<&str, (bool, std::collections::HashSet<&str>)> = HashMap::new();
    for g in groups {
        let e = topics.entry(g.group.as_str()).or_default();
        e.0 |= g.shared;
        e.1.insert(g.entity.as_str());
    }
    topics.into_iter().filter(|(_, (shared, t))| !shared && t.len() == 1).map(|(g, _)| g.to_string()).collect()
}

/// Runs blocking librdkafka calls off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TransportError> + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(f).await.map_err(|err| TransportError::Other {
        category: ErrorCategory::Transient,
        kind: "join",
        message: err.to_string(),
    })?
}

/// Every partition's low and high watermark (blocking).
fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    transport: &str,
    e: &EntitySpec,
) -> Result<Vec<PartitionInfo>, TransportError> {
    let md = consumer.fetch_metadata(Some(&e.name), Duration::from_secs(10)).map_err(|err| map_err(transport, &err))?;
    let n = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for p in 0..n as i32 {
        let (lo, hi) =
            consumer.fetch_watermarks(&e.name, p, Duration::from_secs(10)).map_err(|err| map_err(transport, &err))?;
        out.push(PartitionInfo { entity: e.key.as_str().into(), partition: p as u32, earliest: lo, next: hi });
    }
    Ok(out)
}

/// Reads one assigned partition as no group (`Transport::open_reader`).
struct GrouplessReader {
    transport: String,
    label: Arc<str>,
    partition: u32,
    consumer: BaseConsumer,
}

#[async_trait]
impl PartitionReader for GrouplessReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    async fn fetch(&mut self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        loop {
            while out.len() < max.max(1) {
                match self.consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => out.push(PipelineMessage {
                        payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
                        ..without_payload(&m, &self.label)
                    }),
                    Some(Err(e)) if out.is_empty() => return Err(map_err(&self.transport, &e)),
                    Some(Err(_)) | None => break,
                }
            }
            if !out.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn commit(&mut self, _last: &PipelineMessage) -> Result<(), TransportError> {
        Err(TransportError::ReadOnly)
    }
}

type Event = Result<Assignment, TransportError>;

struct Ctx {
    transport: String,
    topic: String,
    label: Arc<str>,
    events: mpsc::UnboundedSender<Event>,
    me: OnceLock<Weak<BaseConsumer<Ctx>>>,
    lags: Arc<Mutex<HashMap<u32, i64>>>,
    /// Messages that reached the main queue before their partition queue
    /// was split off; the lane reads them first.
    strays: Arc<Mutex<HashMap<u32, VecDeque<PipelineMessage>>>>,
    /// Gates of readers handed out by the last rebalance; the poller opens
    /// them once it has emptied the main queue (every stray is in `strays`).
    fresh: Mutex<Vec<Arc<Gate>>>,
    degraded: AtomicBool,
}

/// Opens once the partition's strays are all known.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    opened: Notify,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.opened.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let n = self.opened.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.open.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        if let Some(t) = s.topics.get(&self.topic) {
            let mut lags = self.lags.lock().unwrap();
            for (p, info) in &t.partitions {
                if *p >= 0 && info.consumer_lag >= 0 {
                    lags.insert(*p as u32, info.consumer_lag);
                }
            }
        }
        let up = s.brokers.values().any(|b| b.state == "UP");
        if up && self.degraded.swap(false, Ordering::Relaxed) {
            let _ = self.events.send(Ok(Assignment::Health(None)));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let e = map_err(&self.transport, &error);
        tracing::warn!(transport = %self.transport, topic = %self.topic, error = %error, reason, "kafka client error");
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
            // the consumer is unusable from here on (e.g. a static member
            // fenced after a coordinator failover): the subscription ends,
            // and the task's restart opens a new consumer as the same member
            let _ = self.events.send(Err(e));
            return;
        }
        let serious = matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown))
            || e.category() == ErrorCategory::Auth;
        if serious {
            self.degraded.store(true, Ordering::Relaxed);
            let _ = self.events.send(Ok(Assignment::Health(Some(e))));
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        // hand the revoked partitions to the worker; wait (bounded) until
        // their lanes finished and committed what they hold
        let mut waits = Vec::new();
        for el in tpl.elements() {
            let (done, rx) = oneshot::channel();
            let partition = el.partition() as u32;
            if self.events.send(Ok(Assignment::Revoked { partition, done })).is_ok() {
                waits.push((partition, rx));
            }
            self.strays.lock().unwrap().remove(&partition);
        }
        let deadline = Instant::now() + REVOKE_TIMEOUT;
        for (p, mut rx) in waits {
            loop {
                match rx.try_recv() {
                    Ok(()) | Err(oneshot::error::TryRecvError::Closed) => break,
                    Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => {
                        tracing::error!(topic = %self.topic, partition = p, "revoked partition did not drain in time; its uncommitted messages will be redelivered");
                        break;
                    }
                }
            }
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
            && !matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset))
        {
            tracing::warn!(topic = %self.topic, error = %e, "commit on revoke failed; the next owner may see duplicates");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else { return };
        let Some(me) = self.me.get().and_then(Weak::upgrade) else { return };
        for el in tpl.elements() {
            let p = el.partition();
            let Some(mut queue) = me.split_partition_queue(el.topic(), p) else {
                tracing::error!(topic = %self.topic, partition = p, "cannot split the partition queue");
                continue;
            };
            let notify = Arc::new(Notify::new());
            let n2 = notify.clone();
            queue.set_nonempty_callback(move || n2.notify_one());
            let gate = Arc::new(Gate::default());
            self.fresh.lock().unwrap().push(gate.clone());
            let reader = KafkaReader {
                transport: self.transport.clone(),
                topic: self.topic.clone(),
                label: self.label.clone(),
                partition: p as u32,
                consumer: me.clone(),
                queue,
                notify,
                gate,
                lags: self.lags.clone(),
                strays: self.strays.clone(),
            };
            let _ = self.events.send(Ok(Assignment::Assigned(Box::new(reader))));
        }
    }
}

impl Ctx {
    /// A message polled from the main queue: its partition's lane reads it
    /// before anything of its own queue.
    fn stray(&self, m: BorrowedMessage<'_>) {
        let msg = PipelineMessage {
            payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
            ..without_payload(&m, &self.label)
        };
        tracing::debug!(topic = %self.topic, partition = msg.partition, offset = msg.position, "message from the main queue kept for its lane");
        self.strays.lock().unwrap().entry(msg.partition).or_default().push_back(msg);
    }
}

/// Serves the consumer's main queue (rebalances, errors, statistics) on its
/// own thread, where the rebalance callbacks may block. After a rebalance
/// handed out readers it empties the main queue into the strays, then opens
/// their gates.
fn poll_loop(consumer: Arc<BaseConsumer<Ctx>>, stop: Arc<AtomicBool>) {
    let ctx = consumer.context();
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(Duration::from_millis(100));
        handle_polled(ctx, polled);
        let fresh: Vec<Arc<Gate>> = std::mem::take(&mut *ctx.fresh.lock().unwrap());
        if !fresh.is_empty() {
            // the split is in place: whatever is on the main queue now is
            // all that will ever come there for these partitions
            loop {
                match consumer.poll(Duration::ZERO) {
                    None => break,
                    polled => handle_polled(ctx, polled),
                }
            }
            for g in fresh {
                g.open();
            }
        }
    }
    // shutdown: the worker's lanes are done; commit what they stored, leave
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
        && !matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset))
    {
        tracing::warn!(topic = %ctx.topic, error = %e, "final commit failed; uncommitted messages will be redelivered");
    }
    consumer.unsubscribe();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && !consumer.assignment().map(|a| a.count() == 0).unwrap_or(true) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
}

fn handle_polled(ctx: &Ctx, polled: Option<Result<BorrowedMessage<'_>, KafkaError>>) {
    match polled {
        Some(Ok(m)) => ctx.stray(m),
        Some(Err(e)) => {
            let te = map_err(&ctx.transport, &e);
            tracing::warn!(topic = %ctx.topic, error = %e, category = %te.category(), "kafka consumer error");
            if te.category() == ErrorCategory::Auth {
                ctx.degraded.store(true, Ordering::Relaxed);
                let _ = ctx.events.send(Ok(Assignment::Health(Some(te))));
            }
        }
        None => {}
    }
}

struct KafkaSubscription {
    rx: mpsc::UnboundedReceiver<Event>,
    stop: Arc<AtomicBool>,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Assignment, TransportError> {
        match self.rx.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // revokes during the final unsubscribe find no worker: they pass at once
        self.rx.close();
    }
}

struct KafkaReader {
    transport: String,
    topic: String,
    label: Arc<str>,
    partition: u32,
    consumer: Arc<BaseConsumer<Ctx>>,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<Ctx>,
    notify: Arc<Notify>,
    gate: Arc<Gate>,
    lags: Arc<Mutex<HashMap<u32, i64>>>,
    strays: Arc<Mutex<HashMap<u32, VecDeque<PipelineMessage>>>>,
}

/// Headers of a consumed message, copied (they are small and few). Names
/// are read without librdkafka-rust's UTF-8 check, which panics.
#[allow(unsafe_code)]
fn headers_of<M: Message<Headers = BorrowedHeaders>>(m: &M) -> Headers {
    use rdkafka::bindings as rd;
    let Some(h) = m.headers() else { return Headers::default() };
    // a `&BorrowedHeaders` is librdkafka's `rd_kafka_headers_t *` itself
    // (how rdkafka-rust builds it), so the cast gives back that pointer
    let ptr = h as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
    let n = h.count();
    let mut out = Vec::with_capacity(n);
    for idx in 0..n {
        let mut name: *const std::ffi::c_char = std::ptr::null();
        let mut value: *const std::ffi::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `ptr` is a live header list owned by `m` (borrowed for this
        // call); `rd_kafka_header_get_all` fills the three out-pointers with
        // a NUL-terminated name and a value of `size` bytes (or NULL), both
        // owned by the list, which we copy before returning.
        let (key, val) = unsafe {
            if rd::rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                || name.is_null()
            {
                break;
            }
            let key = std::ffi::CStr::from_ptr(name).to_bytes();
            let val = if value.is_null() {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(std::slice::from_raw_parts(value as *const u8, size))
            };
            (header_name(key), val)
        };
        out.push((key, val));
    }
    Headers(out)
}

/// Everything of `m` but its payload (left empty); the key is copied (small).
fn without_payload<M: Message<Headers = BorrowedHeaders>>(m: &M, label: &Arc<str>) -> PipelineMessage {
    PipelineMessage {
        entity: label.clone(),
        partition: m.partition() as u32,
        position: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        headers: headers_of(m),
        payload: Bytes::new(),
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    }
}

/// A consumed librdkafka message kept alive as the backing store of its
/// payload `Bytes`: the payload is never copied on the consume side.
struct HeldMessage {
    // declared first, so it is destroyed before the consumer reference
    msg: BorrowedMessage<'static>,
    _consumer: Arc<BaseConsumer<Ctx>>,
}

impl AsRef<[u8]> for HeldMessage {
    fn as_ref(&self) -> &[u8] {
        self.msg.payload().unwrap_or_default()
    }
}

/// A polled message as a [`PipelineMessage`] whose payload points into
/// librdkafka's fetch buffer (zero-copy).
#[allow(unsafe_code)]
fn hold(m: BorrowedMessage<'_>, consumer: &Arc<BaseConsumer<Ctx>>, label: &Arc<str>) -> PipelineMessage {
    let meta = without_payload(&m, label);
    if m.payload().is_none_or(|p| p.is_empty()) {
        return meta;
    }
    // SAFETY: a `BorrowedMessage` borrows its consumer only to keep the
    // consumer alive while the message exists; `HeldMessage` does that with
    // an owned `Arc` of the same consumer, dropped after the message.
    let msg: BorrowedMessage<'static> = unsafe { std::mem::transmute(m) };
    PipelineMessage { payload: Bytes::from_owner(HeldMessage { msg, _consumer: consumer.clone() }), ..meta }
}

impl KafkaReader {
    fn drain_strays(&self, max: usize, out: &mut Vec<PipelineMessage>) {
        let mut strays = self.strays.lock().unwrap();
        if let Some(q) = strays.get_mut(&self.partition) {
            while out.len() < max {
                match q.pop_front() {
                    Some(m) => out.push(m),
                    None => break,
                }
            }
        }
    }

    /// Polls without blocking; `Err` only when nothing was read.
    fn poll_some(&self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        while out.len() < max {
            match self.queue.poll(Duration::ZERO) {
                Some(Ok(m)) => out.push(hold(m, &self.consumer, &self.label)),
                Some(Err(e)) => {
                    if out.is_empty() {
                        return Err(map_err(&self.transport, &e));
                    }
                    // the batch in hand is processed; the error is not dropped silently
                    tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "kafka error while reading a batch");
                    break;
                }
                None => break,
            }
        }
        Ok(())
    }
}

#[async_trait]
impl PartitionReader for KafkaReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    async fn fetch(&mut self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        let max = max.max(1);
        // strays first: nothing of this partition's own queue before every
        // message of the main queue is in hand
        self.gate.wait().await;
        loop {
            self.drain_strays(max, out);
            if out.len() >= max {
                return Ok(());
            }
            self.poll_some(max, out)?;
            if !out.is_empty() {
                // a partial batch waits up to FILL_WAIT for more: fewer,
                // fuller batches cost less per message than many small ones
                if out.len() < max / 2 {
                    let more = self.notify.notified();
                    let _ = tokio::time::timeout(FILL_WAIT, more).await;
                    self.poll_some(max, out)?;
                }
                return Ok(());
            }
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.poll_some(max, out)?;
            if !out.is_empty() {
                return Ok(());
            }
            // the callback fires on empty → non-empty; poll again at least
            // every 100 ms in case librdkafka queued an event without data
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    async fn commit(&mut self, last: &PipelineMessage) -> Result<(), TransportError> {
        // rd_kafka_offset_store stores `offset + 1` (the next to read) itself
        self.consumer
            .store_offset(&self.topic, self.partition as i32, last.position)
            .map_err(|e| map_err(&self.transport, &e))
    }

    fn lag(&self) -> Option<u64> {
        self.lags.lock().unwrap().get(&self.partition).map(|l| (*l).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::StartPosition;

    fn g(entity: &str, group: &str, shared: bool) -> GroupSpec {
        GroupSpec { entity: entity.into(), group: group.into(), start: StartPosition::Earliest, shared }
    }

    #[test]
    fn only_groups_one_subscription_uses_join_statically() {
        let groups = [
            g("claims", "ingest", false),
            g("xact.retry", "conveyor-retry", true),
            g("claimx.retry", "conveyor-retry", true),
            g("only.retry", "solo-retry", true),
            // a worker reading both sides of a same-cluster migration
            g("orders", "forward", false),
            g("orders.v2", "forward", false),
            g("enriched", "enrich", false),
        ];
        let mut got: Vec<String> = static_groups(&groups).into_iter().collect();
        got.sort();
        assert_eq!(got, vec!["enrich".to_string(), "ingest".to_string()]);
    }
}
