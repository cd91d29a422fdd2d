//! `type: eventhubs` — Azure Event Hubs over AMQP (`azure_messaging_eventhubs`
//! 0.16). One transport = one namespace; each entity is one event hub (its
//! `name:`, e.g. `xact.downloads.pending → xact-downloads-pending`).
//!
//! **Auth.** A SAS connection string (the SDK signs and renews tokens), or
//! Entra ID (`azure_identity`: developer tools, managed identity, workload
//! identity). `custom_endpoint: amqp://HOST:PORT` dials a local broker over
//! plain TCP; a connection string with `UseDevelopmentEmulator=true` does the
//! same without it (as the Python SDK does).
//!
//! **Producer.** One `ProducerClient` per hub, opened on first use and
//! shared by every worker. A send fills batches up to the hub's maximum
//! message size: messages with an
//! explicit partition go to that partition; messages with a key go to the
//! partition the service's key hash assigns (computed here, as the official
//! SDKs' buffered producers do), many keys to a batch, each message still
//! carrying its own partition key for consumers; the rest are spread by the
//! service. The batches of one send go out in turn; a send returns when
//! every batch is accepted. Event Hubs returns no positions for sends:
//! `ProduceResult.position` is -1. Caveat: the partition count is read at
//! a producer's first keyed send (and again after a failed send reopens
//! the producer); between a hub gaining partitions and that, keys keep
//! their old partitions. When the count cannot be read within 5 s, or the
//! hub's partition ids are not `0..n-1`, that send goes one batch per key,
//! hashed by the service (the same partitions, more round trips).
//!
//! **Consumer.** Per subscription (worker × input): one `ConsumerClient` on
//! the hub and consumer group, and a balancer task that shares the
//! partitions with every other consumer of the group through the checkpoint
//! store's ownership records (the algorithm of Azure's processors: each owner
//! aims at `partitions / owners`, claims unowned or expired partitions first,
//! then steals from owners above their share; claims are ETag-conditional).
//! An owned partition is read with owner level (epoch) 0, so a new owner
//! kicks the previous one's link. It starts after its checkpoint (sequence
//! number, exclusive) or, without one, at `start_position`.
//!
//! Checkpoints: a worker's commit only records the position; the balancer
//! writes the recorded positions of partitions it still owns every
//! `checkpoint_interval`, when a partition is lost, and on shutdown, when it
//! also releases its ownerships so others take over at once. Only
//! acknowledged work is ever checkpointed.
//!
//! **Reconnects.** The SDK re-attaches after link and connection errors with
//! the filter the receiver was opened with, i.e. it replays from the start
//! position. Each partition pump remembers the last sequence number handed
//! out, drops anything at or below it, and reopens after an error from that
//! sequence number, so workers never see a replay.
//!
//! **Errors** are classified by walking the error's source chain
//! ([`classify_error`]): throttling (server-busy, resource limits, 429/503),
//! auth (unauthorized, CBS 401/403), permanent (too large, not found, invalid
//! batch), transient (dropped connections, detaches, timeouts). A stolen link
//! (`amqp:link:stolen`, `ConsumerDisconnected`) means another consumer took
//! the partition: it is revoked, not retried.

pub mod checkpoint;
mod consumer;

use super::{
    EntitySpec, GroupPosition, GroupSpec, OutboundMessage, PartitionInfo, PartitionReader, ProduceResult, Producer,
    Refusal, Seek, StartPosition, Subscription, Transport, TransportError,
};
use crate::classify::{self, ErrorCategory};
use crate::config::{EventHubsConfig, Secret};
use crate::instance::Membership;
use crate::transport::members::Members;
use async_trait::async_trait;
use azure_core_amqp::{AmqpError, AmqpErrorKind, AmqpMessage, AmqpSymbol};
use azure_messaging_eventhubs::error::ErrorKind as EhKind;
use azure_messaging_eventhubs::models::{AmqpSimpleValue, EventData};
use azure_messaging_eventhubs::{ConsumerClient, EventDataBatchOptions, EventHubsError, ProducerClient};
use checkpoint::CheckpointStore;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Longest a send may take (the SDK retries inside; a connection stuck in
/// recovery is abandoned and reopened after this).
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// The SDK's own retries of a send or open: bounded well inside
/// [`SEND_TIMEOUT`], the worker retries beyond that with its own backoff.
fn sdk_retries() -> azure_messaging_eventhubs::RetryOptions {
    azure_messaging_eventhubs::RetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(200),
        max_delay: azure_core::time::Duration::seconds(5),
        max_total_elapsed: azure_core::time::Duration::seconds(10),
        max_retries: 6,
    }
}

/// Largest batch Conveyor sends: Standard-tier hubs take 1 MiB; a hub with a
/// lower limit (Basic: 256 KiB) gets batches of its own limit.
const MAX_BATCH_BYTES: u64 = 1024 * 1024;

/// The Event Hubs transport. Cheap to clone.
#[derive(Clone)]
pub struct EventHubsTransport {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    cfg: EventHubsConfig,
    auth: Auth,
    /// Dial address (custom endpoint / emulator), if any.
    endpoint: Option<String>,
    /// Namespace in checkpoint names (`host[:port]` of the endpoint).
    namespace: String,
    store: Option<Arc<dyn CheckpointStore>>,
    /// By hub name (what workers pass to `send`/`subscribe`).
    entities: RwLock<HashMap<String, EntitySpec>>,
    producers: tokio::sync::Mutex<HashMap<String, Arc<HubProducer>>>,
    /// Balancer tasks, by the static member (`hub/group`) each claims as.
    balancers: Members<tokio::task::JoinHandle<()>>,
    /// The owner id of partition ownerships: the daemon's instance id, or a
    /// fresh one per consumer (dynamic).
    membership: Membership,
}

/// A hub's shared producer.
struct HubProducer {
    client: ProducerClient,
    /// The hub's partition count, read at the first keyed send: `Some(n)`
    /// when its ids are `0..n-1` (then keys are hashed here).
    partitions: std::sync::OnceLock<Option<u32>>,
}

/// Longest the first keyed send of a producer waits for the hub's
/// partitions; without them it leaves the keys to the service.
const PROPERTIES_TIMEOUT: Duration = Duration::from_secs(5);

/// `n` when `ids` are exactly `"0"`..`"n-1"` in order.
fn numbered(ids: &[String]) -> Option<u32> {
    let n = u32::try_from(ids.len()).ok().filter(|n| *n > 0)?;
    ids.iter().enumerate().all(|(i, id)| id.parse::<usize>() == Ok(i)).then_some(n)
}

#[derive(Clone)]
enum Auth {
    ConnectionString(Secret),
    Entra { namespace: String, credential: Arc<dyn azure_core::credentials::TokenCredential> },
}

/// `Endpoint=sb://HOST[:PORT]/` of a connection string → `HOST[:PORT]`, and
/// whether it says `UseDevelopmentEmulator=true`.
pub fn parse_endpoint(cs: &str) -> Option<(String, bool)> {
    let mut host = None;
    let mut emulator = false;
    for part in cs.split(';') {
        let Some((k, v)) = part.split_once('=') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "endpoint" => {
                let v = v.trim();
                let rest = v.split_once("://").map(|(_, r)| r).unwrap_or(v);
                host = Some(rest.split('/').next().unwrap_or("").to_string());
            }
            "usedevelopmentemulator" => emulator = v.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    host.filter(|h| !h.is_empty()).map(|h| (h, emulator))
}

/// The connection string without `EntityPath` (a transport serves several
/// hubs; the SDK refuses a hub that differs from `EntityPath`).
fn without_entity_path(cs: &str) -> String {
    cs.split(';').filter(|p| !p.trim().to_ascii_lowercase().starts_with("entitypath=")).collect::<Vec<_>>().join(";")
}

fn other(category: ErrorCategory, kind: &'static str, message: String) -> TransportError {
    TransportError::Other { category, kind, message }
}

impl EventHubsTransport {
    /// Resolves credentials and opens the checkpoint store; clients connect
    /// on first use.
    pub async fn open(
        name: &str,
        cfg: &EventHubsConfig,
        entities: &[EntitySpec],
        membership: Membership,
    ) -> Result<Self, TransportError> {
        let (auth, namespace, mut endpoint) = match (&cfg.connection_string, &cfg.credential) {
            (Some(cs), _) => {
                let (host, emulator) = parse_endpoint(cs.expose()).ok_or_else(|| {
                    other(
                        ErrorCategory::Permanent,
                        "config",
                        format!("transports.{name}.connection_string has no Endpoint=sb://..."),
                    )
                })?;
                let endpoint = emulator.then(|| format!("amqp://{host}"));
                let cs = Secret::new(without_entity_path(cs.expose()));
                (Auth::ConnectionString(cs), cfg.namespace.clone().unwrap_or(host), endpoint)
            }
            (None, Some(c)) => {
                let ns = cfg.namespace.clone().unwrap_or_default();
                let credential = crate::azure::entra_credential(c).map_err(|e| {
                    other(ErrorCategory::Auth, "credential", format!("transports.{name}.credential: {e}"))
                })?;
                (Auth::Entra { namespace: ns.clone(), credential }, ns, None)
            }
            (None, None) => {
                return Err(other(
                    ErrorCategory::Permanent,
                    "config",
                    format!("transports.{name} needs connection_string or credential"),
                ));
            }
        };
        if cfg.custom_endpoint.is_some() {
            endpoint = cfg.custom_endpoint.clone();
        }
        let store = match &cfg.checkpoint_store {
            Some(s) => Some(checkpoint::open(name, s).await?),
            None => None,
        };
        let t = EventHubsTransport {
            inner: Arc::new(Inner {
                name: name.to_string(),
                cfg: cfg.clone(),
                auth,
                endpoint,
                namespace,
                store,
                entities: RwLock::new(HashMap::new()),
                producers: tokio::sync::Mutex::new(HashMap::new()),
                balancers: Members::default(),
                membership,
            }),
        };
        t.add(entities);
        Ok(t)
    }

    /// Adds entities (a config reload uses this).
    fn add(&self, entities: &[EntitySpec]) {
        let mut map = self.inner.entities.write().unwrap();
        for e in entities {
            map.insert(e.name.clone(), e.clone());
        }
    }

    fn entity(&self, hub: &str) -> Result<EntitySpec, TransportError> {
        self.inner.entities.read().unwrap().get(hub).cloned().ok_or_else(|| TransportError::UnknownEntity {
            transport: self.inner.name.clone(),
            entity: hub.to_string(),
        })
    }

    fn map_err(&self, hub: &str, e: &EventHubsError) -> TransportError {
        let c = classify_error(e);
        other(c.category, c.kind, format!("event hub {hub:?} on {}: {}", self.inner.name, redact(&e.to_string())))
    }

    /// The shared producer of `hub`, opened on first use.
    async fn producer_for(&self, hub: &str) -> Result<Arc<HubProducer>, TransportError> {
        let mut map = self.inner.producers.lock().await;
        if let Some(p) = map.get(hub) {
            return Ok(p.clone());
        }
        let p = self.open_producer(hub).await?;
        let p = Arc::new(HubProducer { client: p, partitions: std::sync::OnceLock::new() });
        map.insert(hub.to_string(), p.clone());
        Ok(p)
    }

    /// A new producer client on `hub`.
    async fn open_producer(&self, hub: &str) -> Result<ProducerClient, TransportError> {
        let mut b = ProducerClient::builder()
            .with_application_id(format!("conveyor-{}", self.inner.name))
            .with_retry_options(sdk_retries());
        if let Some(ep) = &self.inner.endpoint {
            b = b.with_custom_endpoint(ep.clone());
        }
        match &self.inner.auth {
            Auth::ConnectionString(cs) => b.open_with_connection_string(cs.expose(), Some(hub)).await,
            Auth::Entra { namespace, credential } => b.open(namespace, hub, credential.clone()).await,
        }
        .map_err(|e| self.map_err(hub, &e))
    }

    /// The partition count keys are hashed over on `hub`: read once per
    /// producer, within [`PROPERTIES_TIMEOUT`]; `None` (the service hashes
    /// the keys of this send) when the read fails or the ids are not
    /// `0..n-1`. Only sends with keys ask.
    async fn key_partitions(&self, p: &HubProducer, hub: &str) -> Option<u32> {
        if let Some(n) = p.partitions.get() {
            return *n;
        }
        match tokio::time::timeout(PROPERTIES_TIMEOUT, p.client.get_eventhub_properties()).await {
            Ok(Ok(props)) => *p.partitions.get_or_init(|| numbered(&props.partition_ids)),
            Ok(Err(e)) => {
                tracing::debug!(hub, error = %redact(&e.to_string()), "hub properties unread; the service hashes keys");
                None
            }
            Err(_) => None,
        }
    }

    /// The partition count of `hub` as the service reports it (for
    /// `conveyor check`).
    pub async fn hub_partitions(&self, hub: &str) -> Result<u32, TransportError> {
        let p = &self.producer_for(hub).await?.client;
        let props = p.get_eventhub_properties().await.map_err(|e| self.map_err(hub, &e))?;
        Ok(props.partition_ids.len() as u32)
    }

    /// Opens a consumer client on `hub` in `group` (SDK error).
    async fn open_consumer(&self, hub: &str, group: &str, instance: &str) -> Result<ConsumerClient, EventHubsError> {
        let mut b = ConsumerClient::builder()
            .with_consumer_group(group.to_string())
            .with_application_id(instance.to_string())
            .with_instance_id(instance.to_string())
            .with_retry_options(sdk_retries());
        if let Some(ep) = &self.inner.endpoint {
            b = b.with_custom_endpoint(ep.clone());
        }
        match &self.inner.auth {
            Auth::ConnectionString(cs) => b.open_with_connection_string(cs.expose(), Some(hub)).await,
            Auth::Entra { namespace, credential } => b.open(namespace, hub.to_string(), credential.clone()).await,
        }
    }

    /// Opens a consumer client on `hub` in `group`.
    async fn consumer_for(&self, hub: &str, group: &str, instance: &str) -> Result<ConsumerClient, TransportError> {
        self.open_consumer(hub, group, instance).await.map_err(|e| self.map_err(hub, &e))
    }

    /// Sends one group of messages with the same target, in as few batches
    /// as fit.
    async fn send_group(
        &self,
        p: &ProducerClient,
        hub: &str,
        target: &Target,
        msgs: &[&OutboundMessage],
    ) -> Result<(), TransportError> {
        let mut i = 0;
        while i < msgs.len() {
            let opts = |max: Option<u64>| EventDataBatchOptions {
                partition_id: match target {
                    Target::Partition(p) | Target::Hashed(p) => Some(p.to_string()),
                    _ => None,
                },
                partition_key: match target {
                    Target::Key(k) => Some(k.clone()),
                    _ => None,
                },
                max_size_in_bytes: max,
            };
            let batch = match p.create_batch(Some(opts(Some(MAX_BATCH_BYTES)))).await {
                // the hub's limit is below ours: use the hub's
                Err(e) if matches!(e.kind, EhKind::InvalidBatchSize { .. }) => p.create_batch(Some(opts(None))).await,
                r => r,
            }
            .map_err(|e| self.map_err(hub, &e))?;
            while i < msgs.len() {
                let event = to_event(msgs[i], matches!(target, Target::Partition(_)))?;
                let added = match (target, &msgs[i].key) {
                    // each message keeps its own key: consumers read it as
                    // the event's partition key
                    (Target::Hashed(_), Some(k)) => {
                        let mut m = AmqpMessage::from(event);
                        m.add_message_annotation(AmqpSymbol::from(PARTITION_KEY_ANNOTATION), key_str(k));
                        batch.try_add_amqp_message(m, None)
                    }
                    _ => batch.try_add_event_data(event, None),
                }
                .map_err(|e| self.map_err(hub, &e))?;
                if !added {
                    break;
                }
                i += 1;
            }
            if batch.is_empty() {
                return Err(TransportError::TooLarge {
                    size: msgs[i].payload.len(),
                    limit: batch.size().max(1) as usize,
                });
            }
            p.send_batch(batch, None).await.map_err(|e| self.map_err(hub, &e))?;
        }
        Ok(())
    }
}

/// Where a group of messages goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// A partition the message named: its key travels as [`KEY_PROPERTY`].
    Partition(u32),
    /// The partition the service's hash assigns the messages' keys.
    Hashed(u32),
    /// One key, hashed by the service (a hub not numbered `0..n-1`).
    Key(String),
    Any,
}

/// Where `m` goes on a hub of `partitions` (when numbered `0..n-1`).
fn target(m: &OutboundMessage, partitions: Option<u32>) -> Target {
    match (m.partition, &m.key, partitions) {
        (Some(p), _, _) => Target::Partition(p),
        // hashed in place: no copy of the key per message
        (None, Some(k), Some(n)) => match std::str::from_utf8(k) {
            Ok(k) => Target::Hashed(conveyor_eh_hash::partition_for_key(k, n)),
            Err(_) => Target::Key(key_str(k)),
        },
        (None, Some(k), None) => Target::Key(key_str(k)),
        (None, None, _) => Target::Any,
    }
}

/// A key as the partition key string (keys that are not UTF-8 are refused
/// by [`to_event`] before anything is sent).
fn key_str(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

/// The message annotation that carries an event's partition key.
const PARTITION_KEY_ANNOTATION: &str = "x-opt-partition-key";

/// The application property that carries an explicit producer timestamp
/// (Event Hubs sets the enqueued time itself); read back as the message's
/// timestamp, not as a header.
pub const TIMESTAMP_PROPERTY: &str = "conveyor-timestamp";

/// The application property that carries a message's key when it is sent to
/// an explicit partition (Event Hubs takes a partition id or a partition
/// key, not both); read back as the message's key, not as a header.
pub const KEY_PROPERTY: &str = "conveyor-key";

/// The SDK's event for `m`. Application properties are a map, so a header
/// name that repeats cannot be carried, and a partition key is a string, so
/// a key that is not UTF-8 cannot either: such a message is refused
/// (`Permanent`, naming the header or the key) rather than losing a value or
/// merging distinct keys. Header values that are not UTF-8 go as binary.
/// With `carry_key` (an explicit partition), the key travels as
/// [`KEY_PROPERTY`].
fn to_event(m: &OutboundMessage, carry_key: bool) -> Result<EventData, TransportError> {
    check_event(m)?;
    let mut b = EventData::builder().with_body(m.payload.to_vec());
    if let Some(ts) = m.timestamp_ms {
        b = b.add_property(TIMESTAMP_PROPERTY.to_string(), AmqpSimpleValue::Long(ts));
    }
    if carry_key && let Some(k) = &m.key {
        // UTF-8: checked above
        b = b.add_property(KEY_PROPERTY.to_string(), AmqpSimpleValue::String(String::from_utf8_lossy(k).into_owned()));
    }
    for (k, v) in m.headers.iter() {
        if k == crate::transport::CONTENT_TYPE_HEADER
            && let Ok(ct) = std::str::from_utf8(v)
        {
            b = b.with_content_type(ct.to_string());
            continue;
        }
        let v = match std::str::from_utf8(v) {
            Ok(s) => AmqpSimpleValue::String(s.to_string()),
            Err(_) => AmqpSimpleValue::Binary(v.to_vec()),
        };
        b = b.add_property(k.to_string(), v);
    }
    Ok(b.build())
}

/// Whether [`to_event`] can carry `m` (the same checks, nothing built).
fn check_event(m: &OutboundMessage) -> Result<(), TransportError> {
    if let Some(k) = &m.key
        && std::str::from_utf8(k).is_err()
    {
        return Err(TransportError::Unrepresentable(format!(
            "message key {:?} is not UTF-8; an Event Hubs partition key is a string",
            crate::text::clip_bytes(k, 64)
        )));
    }
    if let Some(n) = m.headers.repeated_name() {
        return Err(TransportError::Unrepresentable(format!(
            "header {:?} appears more than once; Event Hubs properties hold one value per name",
            crate::text::clip(n, 64)
        )));
    }
    if let Some(reserved) = [TIMESTAMP_PROPERTY, KEY_PROPERTY].into_iter().find(|n| m.headers.get(n).is_some()) {
        return Err(TransportError::Unrepresentable(format!(
            "header {reserved:?} is reserved on Event Hubs (it carries the message's timestamp or key)"
        )));
    }
    Ok(())
}

#[async_trait]
impl Producer for EventHubsTransport {
    async fn send(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, TransportError> {
        self.send_slice(entity, &batch).await
    }

    async fn send_or_return(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, Refusal> {
        self.send_slice(entity, &batch).await.map_err(|error| Refusal::of(error, batch))
    }
}

impl EventHubsTransport {
    /// [`Producer::send`] from a borrowed batch (the SDK's events are built
    /// from it).
    async fn send_slice(&self, entity: &str, batch: &[OutboundMessage]) -> Result<Vec<ProduceResult>, TransportError> {
        let e = self.entity(entity)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // refuse what cannot be carried before anything of the batch goes out
        for m in batch {
            check_event(m)?;
        }
        let p = self.producer_for(&e.name).await?;
        let mut groups: Vec<(Target, Vec<&OutboundMessage>)> = Vec::new();
        let mut index: HashMap<Target, usize> = HashMap::new();
        let mut results = Vec::with_capacity(batch.len());
        let label: Arc<str> = e.key.as_str().into();
        let keyed = batch.iter().any(|m| m.partition.is_none() && m.key.is_some());
        let partitions = if keyed { self.key_partitions(&p, &e.name).await } else { None };
        for m in batch {
            let target = target(m, partitions);
            results.push(ProduceResult { entity: label.clone(), partition: m.partition.unwrap_or(0), position: -1 });
            let i = *index.entry(target.clone()).or_insert_with(|| {
                groups.push((target, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(m);
        }
        // groups go out one after another (the SDK sends on a link one at a
        // time anyway); the first failure stops the rest
        let sends = async {
            for (t, msgs) in &groups {
                self.send_group(&p.client, &e.name, t, msgs).await?;
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(SEND_TIMEOUT, sends).await.unwrap_or_else(|_| {
            Err(other(
                ErrorCategory::Transient,
                "timeout",
                format!("event hub {:?} on {}: send not acknowledged within {SEND_TIMEOUT:?}", e.name, self.inner.name),
            ))
        });
        if let Err(err) = outcome {
            if err.category() == ErrorCategory::Transient {
                // let the next send open a fresh client
                self.inner.producers.lock().await.remove(&e.name);
            }
            return Err(err);
        }
        Ok(results)
    }
}

#[async_trait]
impl Transport for EventHubsTransport {
    fn kind(&self) -> &'static str {
        "eventhubs"
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
        let Some(store) = self.inner.store.clone() else {
            return Err(other(
                ErrorCategory::Permanent,
                "config",
                format!("transports.{} has no checkpoint_store; consuming needs one", self.inner.name),
            ));
        };
        // an earlier balancer of this hub and group with our owner id first
        // flushes its checkpoints and releases its claims (`Members`)
        let member = matches!(self.inner.membership, Membership::Static(_)).then(|| format!("{}/{group}", e.name));
        if let Some(m) = &member {
            for h in self.inner.balancers.take_same(m, |h| h.is_finished()) {
                if tokio::time::timeout(Duration::from_secs(10), h).await.is_err() {
                    tracing::warn!(transport = %self.inner.name, member = %m, "the previous consumer did not stop in time; claiming anyway");
                }
            }
        }
        let (sub, handle) = consumer::start(self.clone(), e, group.to_string(), start, store).await?;
        self.inner.balancers.push(member, handle);
        Ok(Box::new(sub))
    }

    async fn partitions(&self, entity: &str) -> Result<Vec<PartitionInfo>, TransportError> {
        let e = self.entity(entity)?;
        let p = &self.producer_for(&e.name).await?.client;
        let props = p.get_eventhub_properties().await.map_err(|err| self.map_err(&e.name, &err))?;
        let mut out = Vec::new();
        for (i, id) in props.partition_ids.iter().enumerate() {
            let pp = p.get_partition_properties(id).await.map_err(|err| self.map_err(&e.name, &err))?;
            let empty = pp.last_enqueued_sequence_number < pp.beginning_sequence_number;
            out.push(PartitionInfo {
                entity: e.key.as_str().into(),
                partition: id.parse().unwrap_or(i as u32),
                earliest: pp.beginning_sequence_number,
                next: if empty { pp.beginning_sequence_number } else { pp.last_enqueued_sequence_number + 1 },
            });
        }
        Ok(out)
    }

    async fn ensure(&self, entities: &[EntitySpec], _groups: &[GroupSpec]) -> Result<(), TransportError> {
        // consumer groups are the namespace's; ownership and checkpoints
        // live in the checkpoint store
        self.add(entities);
        Ok(())
    }

    async fn group_positions(&self, entity: &str, group: &str) -> Result<Vec<GroupPosition>, TransportError> {
        let e = self.entity(entity)?;
        let Some(store) = self.inner.store.clone() else {
            return Err(other(
                ErrorCategory::Permanent,
                "config",
                format!("transports.{} has no checkpoint_store: group positions are unknown", self.inner.name),
            ));
        };
        let checkpoints = store
            .list_checkpoints(&self.inner.namespace, &e.name, group)
            .await
            .map_err(|err| checkpoint::store_error(&self.inner.name, err))?;
        let infos = self.partitions(entity).await?;
        Ok(infos
            .into_iter()
            .map(|info| {
                // a checkpoint holds the last processed sequence number
                let committed = checkpoints
                    .iter()
                    .find(|c| c.partition_id.parse::<u32>().ok() == Some(info.partition))
                    .and_then(|c| c.sequence_number)
                    .map(|s| s + 1);
                GroupPosition { info, committed }
            })
            .collect())
    }

    async fn open_reader(
        &self,
        entity: &str,
        partition: u32,
        from: Seek,
    ) -> Result<Box<dyn PartitionReader>, TransportError> {
        let e = self.entity(entity)?;
        consumer::browse(self.clone(), e, partition, from).await
    }

    async fn close(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let handles = self.inner.balancers.take_all();
        for h in handles {
            if tokio::time::timeout_at(deadline, h).await.is_err() {
                tracing::warn!(transport = %self.inner.name, "a consumer did not finish writing its checkpoints in time");
            }
        }
        let producers: Vec<_> = self.inner.producers.lock().await.drain().map(|(_, p)| p).collect();
        for p in producers {
            if let Ok(p) = Arc::try_unwrap(p) {
                let _ = tokio::time::timeout_at(deadline, p.client.close()).await;
            }
        }
    }
}

/// Removes `SharedAccessKey=...`/`SharedAccessSignature=...`/`sig=...`
/// values from a message (SDK errors may quote connection details).
pub fn redact(s: &str) -> String {
    let mut out = s.to_string();
    for key in ["SharedAccessKey=", "SharedAccessSignature=", "sig="] {
        let mut from = 0;
        while let Some(i) = out[from..].find(key) {
            let start = from + i + key.len();
            let end = out[start..].find([';', '&', ' ', '"', '\'']).map(|j| start + j).unwrap_or(out.len());
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

/// How an Event Hubs error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EhClass {
    pub category: ErrorCategory,
    /// Short stable name (metrics, DLQ envelopes).
    pub kind: &'static str,
    /// Another consumer took the partition: release it, don't retry.
    pub ownership_lost: bool,
}

const fn class(category: ErrorCategory, kind: &'static str) -> EhClass {
    EhClass { category, kind, ownership_lost: false }
}

/// Classifies an Event Hubs error by walking its source chain for the
/// SDK's error kinds, AMQP conditions, management status codes and I/O
/// errors (wrappers re-box errors, so the first decisive one wins).
pub fn classify_error(e: &EventHubsError) -> EhClass {
    if let Some(c) = classify_kind(&e.kind) {
        return c;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    for _ in 0..16 {
        let Some(err) = cur else { break };
        if let Some(c) = classify_dyn(err) {
            return c;
        }
        cur = err.source();
    }
    class(ErrorCategory::Transient, "eventhubs")
}

fn classify_dyn(err: &(dyn std::error::Error + 'static)) -> Option<EhClass> {
    if let Some(eh) = err.downcast_ref::<EventHubsError>() {
        return classify_kind(&eh.kind);
    }
    if let Some(a) = err.downcast_ref::<AmqpError>() {
        return classify_amqp(a.kind());
    }
    if let Some(a) = err.downcast_ref::<azure_core::Error>() {
        if let Some(inner) = a.get_ref()
            && let Some(c) = classify_dyn(inner)
        {
            return Some(c);
        }
        if let azure_core::error::ErrorKind::Credential = a.kind() {
            return Some(class(ErrorCategory::Auth, "credential"));
        }
    }
    if err.downcast_ref::<std::io::Error>().is_some() {
        return Some(class(ErrorCategory::Transient, "io"));
    }
    None
}

fn classify_kind(k: &EhKind) -> Option<EhClass> {
    match k {
        EhKind::InvalidBatchSize { .. } => Some(class(ErrorCategory::Permanent, "invalid_batch_size")),
        EhKind::MissingCheckpointMetadata { .. } => {
            Some(class(ErrorCategory::Permanent, "missing_checkpoint_metadata"))
        }
        EhKind::ConsumerDisconnected(_) => {
            Some(EhClass { category: ErrorCategory::Transient, kind: "ownership_lost", ownership_lost: true })
        }
        EhKind::SendRejected(Some(d)) => Some(condition(<&str>::from(&d.condition))),
        EhKind::SendRejected(None) | EhKind::SendNotAccepted(_) => {
            Some(class(ErrorCategory::Permanent, "send_rejected"))
        }
        EhKind::AmqpError(a) => classify_amqp(a.kind()),
        EhKind::AzureCore(a) => a.get_ref().and_then(|e| classify_dyn(e)),
        _ => None,
    }
}

fn condition(cond: &str) -> EhClass {
    let category = classify::amqp_condition(cond);
    let kind = match cond {
        "com.microsoft:server-busy" => "server_busy",
        "amqp:resource-limit-exceeded" => "resource_limit_exceeded",
        "com.microsoft:quota-exceeded" => "quota_exceeded",
        "amqp:unauthorized-access" => "unauthorized",
        "amqp:link:message-size-exceeded" => "message_too_large",
        "amqp:not-found" => "not_found",
        "amqp:link:stolen" => "ownership_lost",
        "amqp:link:detach-forced" => "link_detached",
        "amqp:connection:forced" => "connection_forced",
        "com.microsoft:timeout" => "timeout",
        _ => match category {
            ErrorCategory::Permanent => "amqp_permanent",
            ErrorCategory::Auth => "unauthorized",
            ErrorCategory::Throttling => "throttled",
            ErrorCategory::Transient => "amqp_transient",
        },
    };
    EhClass { category, kind, ownership_lost: cond == "amqp:link:stolen" }
}

fn classify_amqp(k: &AmqpErrorKind) -> Option<EhClass> {
    use ErrorCategory::*;
    Some(match k {
        AmqpErrorKind::AmqpDescribedError(d) => condition(<&str>::from(&d.condition)),
        AmqpErrorKind::ManagementStatusCode(code, _) => match u16::from(*code) {
            401 | 403 => class(Auth, "unauthorized"),
            429 | 503 => class(Throttling, "server_busy"),
            404 => class(Permanent, "not_found"),
            408 => class(Transient, "timeout"),
            s if s >= 500 => class(Transient, "management_error"),
            _ => class(Permanent, "management_error"),
        },
        AmqpErrorKind::ConnectionDropped(_)
        | AmqpErrorKind::ConnectionClosedByRemote(_)
        | AmqpErrorKind::ConnectionDetachedByRemote(_) => class(Transient, "connection_lost"),
        AmqpErrorKind::LinkDetachedByRemote(_)
        | AmqpErrorKind::LinkClosedByRemote(_)
        | AmqpErrorKind::SessionClosedByRemote(_)
        | AmqpErrorKind::SessionDetachedByRemote(_)
        | AmqpErrorKind::DetachError(_)
        | AmqpErrorKind::LinkStateError(_) => class(Transient, "link_detached"),
        AmqpErrorKind::IdleTimeoutElapsed(_) => class(Transient, "timeout"),
        AmqpErrorKind::FramingError(_) | AmqpErrorKind::TransportImplementationError(_) => {
            class(Transient, "connection_lost")
        }
        AmqpErrorKind::TransferLimitExceeded(_) => class(Throttling, "transfer_limit"),
        AmqpErrorKind::SendRejected => class(Permanent, "send_rejected"),
        AmqpErrorKind::AzureCore(a) => return a.get_ref().and_then(|e| classify_dyn(e)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
