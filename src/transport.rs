//! The transport-agnostic API. Workers, stages, the DLQ and the retry
//! machinery see only these types; each transport (`embedded` today, Kafka
//! and Event Hubs behind the same traits) converts at its edge.
//!
//! Semantics every transport implements:
//! - a [`Producer::send`] returns only after every message of the batch is
//!   acknowledged by the transport (durably, where the transport is durable);
//!   on error, none of the batch may be assumed written (callers resend: at
//!   least once);
//! - a consumer is a [`Subscription`] handing out one [`PartitionReader`] per
//!   assigned partition; a reader yields messages of that partition in order;
//! - [`PartitionReader::commit`] records that everything up to and including
//!   a message is done; after a restart the group resumes after the last
//!   commit. Workers commit only after all outputs of the message are acked.
//! - when a partition is taken away (rebalance, shutdown), the subscription
//!   reports [`Assignment::Revoked`] and waits (bounded) for the worker to
//!   finish and commit the partition's in-flight batch;
//! - [`Transport::ensure`] makes the transport carry exactly a topology's
//!   entities and consumer groups (a reload calls it; a group that is no
//!   longer listed stops holding data back where the transport keeps data
//!   for groups, as the embedded one does);
//! - [`Transport::group_positions`] reads, from the transport itself, each
//!   partition's end and a group's committed position (`None` when the
//!   group has not committed there, or the transport cannot tell): the
//!   basis of every "is it drained?" decision, which treats an unknown
//!   position as not drained;
//! - [`Transport::open_reader`] reads one partition from a position without
//!   joining a consumer group (inspection, parity checks): its `commit`
//!   fails.
//!
//! Headers: names are UTF-8, values any bytes, names may repeat. A
//! transport that cannot carry a header as it is rejects the message with a
//! `Permanent` error naming the header, never drops or merges it silently
//! (Event Hubs properties cannot repeat a name; a Kafka header name that is
//! not UTF-8 arrives under [`BINARY_HEADER_PREFIX`] and its base64).

pub mod embedded;
#[cfg(feature = "eventhubs")]
pub mod eventhub;
pub mod json;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod members;
pub mod remote;
pub mod scan;
#[cfg(test)]
pub(crate) mod scripted;

use crate::classify::ErrorCategory;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// A header name that stands for one that is not UTF-8 (Kafka allows any
/// bytes): this prefix, then the name's bytes in unpadded base64url.
pub const BINARY_HEADER_PREFIX: &str = "conveyor-binary-name.";

/// Message headers, in order; names may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Bytes)>);

/// The header that carries a message's content type; on Event Hubs it is
/// the event's AMQP `content-type` property (both ways), not an
/// application property.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

impl Headers {
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// Sets `name`, replacing earlier values.
    pub fn set(&mut self, name: &str, value: impl Into<Bytes>) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_string(), value.into()));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Bytes of every name and value.
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
    /// The first name that occurs more than once, if any.
    pub fn repeated_name(&self) -> Option<&str> {
        let mut seen = std::collections::HashSet::with_capacity(self.0.len());
        self.0.iter().map(|(n, _)| n.as_str()).find(|n| !seen.insert(*n))
    }
}

/// The header name for `raw`: itself when it is UTF-8, else
/// [`BINARY_HEADER_PREFIX`] and its base64url.
pub fn header_name(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) => s.to_string(),
        Err(_) => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            format!("{BINARY_HEADER_PREFIX}{b64}")
        }
    }
}

/// A consumed message, whatever the transport.
#[derive(Debug, Clone)]
pub struct PipelineMessage {
    /// Entity (topic / event hub) it was read from, by its config key.
    pub entity: Arc<str>,
    pub partition: u32,
    /// Offset (Kafka, embedded) or sequence number (Event Hubs).
    pub position: i64,
    pub key: Option<Bytes>,
    pub headers: Headers,
    pub payload: Bytes,
    /// When the message was produced / enqueued (Unix ms).
    pub timestamp_ms: i64,
}

/// A message to produce.
#[derive(Debug, Clone, Default)]
pub struct OutboundMessage {
    pub key: Option<Bytes>,
    pub headers: Headers,
    pub payload: Bytes,
    /// Explicit partition; `None` → by key hash (or round-robin without key).
    pub partition: Option<u32>,
    /// Producer timestamp (Unix ms); `None` → now.
    pub timestamp_ms: Option<i64>,
}

impl OutboundMessage {
    /// Bytes of payload, key and headers (what size limits count).
    pub fn byte_len(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, |k| k.len()) + self.headers.byte_len()
    }

    /// The same key, headers and payload as `m` (zero-copy).
    pub fn from_message(m: &PipelineMessage) -> Self {
        OutboundMessage {
            key: m.key.clone(),
            headers: m.headers.clone(),
            payload: m.payload.clone(),
            partition: None,
            timestamp_ms: None,
        }
    }
}

/// Where an acknowledged message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    pub entity: Arc<str>,
    pub partition: u32,
    pub position: i64,
}

/// A partition's extent and, for a group, its committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub entity: Arc<str>,
    pub partition: u32,
    /// First position still stored.
    pub earliest: i64,
    /// Position the next produced message will get (high watermark).
    pub next: i64,
}

/// A partition's extent and a consumer group's committed position there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    pub info: PartitionInfo,
    /// The next position the group will read (everything before it is
    /// done); `None` when the group has not committed on this partition or
    /// the transport cannot tell.
    pub committed: Option<i64>,
}

/// How far a consumer group is through an entity, from the transport's
/// positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// Every partition's committed position is at its end.
    Drained,
    /// This many messages are not yet committed.
    Behind(u64),
    /// A partition holds messages and the group's position there is
    /// unknown: never taken for drained.
    Unknown { partition: u32 },
}

/// Whether a group is through an entity (see [`Drain`]). A partition that
/// holds nothing (`earliest == next`) is drained whatever the group did.
pub fn drain_state(positions: &[GroupPosition]) -> Drain {
    let mut behind = 0u64;
    for p in positions {
        let (earliest, next) = (p.info.earliest, p.info.next);
        match p.committed {
            Some(c) => behind += (next - c.max(earliest)).max(0) as u64,
            None if next <= earliest => {}
            None => return Drain::Unknown { partition: p.info.partition },
        }
    }
    if behind == 0 { Drain::Drained } else { Drain::Behind(behind) }
}

/// An entity a transport carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySpec {
    /// Config key (consumed messages are labelled with it).
    pub key: String,
    /// Name on the transport (topic, event hub, embedded log).
    pub name: String,
    pub partitions: u32,
}

/// A consumer group a topology uses on an entity (by its name on the
/// transport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub entity: String,
    pub group: String,
    pub start: StartPosition,
    /// Several subscriptions of one process use this group by design (the
    /// retry schedulers' and the mirrors' groups): it never joins as a static
    /// member, whose departure would stall the others' rebalances.
    pub shared: bool,
}

/// Where a reader opened with [`Transport::open_reader`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// The first position still stored.
    Earliest,
    /// This position (or the first stored one after it).
    At(i64),
}

/// Where a group without a committed position starts.
pub use crate::config::StartPosition;

/// Errors from a transport, each with its [`ErrorCategory`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("entity {entity:?} is not known to transport {transport:?}")]
    UnknownEntity { transport: String, entity: String },
    #[error("partition {partition} does not exist in entity {entity:?} ({partitions} partitions)")]
    UnknownPartition { entity: String, partition: u32, partitions: u32 },
    #[error("transport {transport:?} is shutting down")]
    Closed { transport: String },
    #[error("storage error in {transport:?}: {message}")]
    Storage { transport: String, message: String },
    #[error("cannot open storage for {transport:?} at {path}: {message}")]
    Open { transport: String, path: String, message: String },
    /// Another process (a running daemon) holds the embedded store.
    #[error(
        "the data directory {path} of {transport:?} is in use by another process (is conveyor running on it? the embedded store admits one process at a time)"
    )]
    InUse { transport: String, path: String },
    #[error("message of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The message cannot be carried as it is (a header the transport
    /// cannot represent, too many headers); `Permanent`.
    #[error("{0}")]
    Unrepresentable(String),
    /// A reader opened without a group cannot commit.
    #[error("this reader belongs to no consumer group and cannot commit")]
    ReadOnly,
    #[error("{message}")]
    Other { category: ErrorCategory, kind: &'static str, message: String },
}

impl TransportError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            TransportError::UnknownEntity { .. }
            | TransportError::UnknownPartition { .. }
            | TransportError::TooLarge { .. }
            | TransportError::Unrepresentable(_)
            | TransportError::ReadOnly => ErrorCategory::Permanent,
            TransportError::Closed { .. }
            | TransportError::Storage { .. }
            | TransportError::Open { .. }
            | TransportError::InUse { .. } => ErrorCategory::Transient,
            TransportError::Other { category, .. } => *category,
        }
    }

    /// A short, stable name of the error kind (for DLQ envelopes and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::UnknownEntity { .. } => "unknown_entity",
            TransportError::UnknownPartition { .. } => "unknown_partition",
            TransportError::Closed { .. } => "closed",
            TransportError::Storage { .. } => "storage",
            TransportError::Open { .. } => "open",
            TransportError::InUse { .. } => "in_use",
            TransportError::TooLarge { .. } => "too_large",
            TransportError::Unrepresentable(_) => "unrepresentable",
            TransportError::ReadOnly => "read_only",
            TransportError::Other { kind, .. } => kind,
        }
    }
}

/// Produces to entities of one transport. Shared by every worker (a pool).
#[async_trait]
pub trait Producer: Send + Sync {
    /// Writes `batch` to `entity` and returns when all of it is acknowledged,
    /// in the order given. Waits (backpressure) when the transport is full.
    async fn send(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, TransportError>;

    /// [`Producer::send`], giving the batch back with a refusal for good
    /// (`Permanent`), so that a caller can look for the refused messages one
    /// at a time without keeping a copy of every batch it sends. The default
    /// keeps that copy; a transport that sends from a borrowed batch, or
    /// checks a whole batch before taking any of it, does without.
    async fn send_or_return(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, Refusal> {
        let copy = batch.clone();
        self.send(entity, batch).await.map_err(|error| Refusal::of(error, copy))
    }
}

/// A failed [`Producer::send_or_return`].
#[derive(Debug)]
pub struct Refusal {
    pub error: TransportError,
    /// The batch, untouched, when the refusal was for good (`Permanent`);
    /// `None` otherwise (then send it all again). Messages before the
    /// refused one may have been written (sending them again duplicates
    /// them, as any retry may); the embedded transport writes none.
    pub batch: Option<Vec<OutboundMessage>>,
}

impl Refusal {
    /// `error` for `batch`: the batch comes back when the error is for good.
    pub fn of(error: TransportError, batch: Vec<OutboundMessage>) -> Self {
        let batch = (error.category() == ErrorCategory::Permanent).then_some(batch);
        Refusal { error, batch }
    }
}

/// What a subscription asks the worker to do next.
pub enum Assignment {
    /// Start reading a partition.
    Assigned(Box<dyn PartitionReader>),
    /// Stop reading `partition`: finish and commit in-flight work, then drop
    /// the reader and send on `done`.
    Revoked { partition: u32, done: oneshot::Sender<()> },
    /// The connection is degraded (`Some`: brokers down, auth failing; the
    /// worker turns unready and shows the error) or healthy again (`None`).
    Health(Option<TransportError>),
}

/// A consumer-group membership on one entity.
#[async_trait]
pub trait Subscription: Send {
    /// The next assignment change; pending while nothing changes.
    async fn next(&mut self) -> Result<Assignment, TransportError>;
}

/// Reads one assigned partition, in order.
#[async_trait]
pub trait PartitionReader: Send {
    fn partition(&self) -> u32;
    /// Appends up to `max` messages to `out`, waiting until at least one is
    /// available. Cancel-safe: nothing is lost when the future is dropped.
    async fn fetch(&mut self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError>;
    /// Records that `last` and everything before it in this partition is done.
    async fn commit(&mut self, last: &PipelineMessage) -> Result<(), TransportError>;
    /// Consumer lag in messages (high watermark − committed), if known.
    fn lag(&self) -> Option<u64> {
        None
    }
    /// The partition is being finished for good (a migration's old side):
    /// work held for later (a retry scheduler's pending retries) should be
    /// moved to the entity's write side instead of waiting here.
    fn retiring(&self) -> bool {
        false
    }
}

/// A configured transport: hands out the shared producer and subscriptions.
#[async_trait]
pub trait Transport: Send + Sync {
    /// `embedded`, `kafka`, `eventhubs` (a metric label).
    fn kind(&self) -> &'static str;
    fn producer(&self) -> Arc<dyn Producer>;
    /// Joins `group` on `entity`.
    async fn subscribe(
        &self,
        entity: &str,
        group: &str,
        start: StartPosition,
    ) -> Result<Box<dyn Subscription>, TransportError>;
    async fn partitions(&self, entity: &str) -> Result<Vec<PartitionInfo>, TransportError>;
    /// Carries `entities` from now on (new ones are created or recovered)
    /// with exactly the consumer groups `groups`.
    async fn ensure(&self, entities: &[EntitySpec], groups: &[GroupSpec]) -> Result<(), TransportError>;
    /// Each partition's extent and `group`'s committed position, read from
    /// the transport (the broker, the checkpoint store, the store).
    async fn group_positions(&self, entity: &str, group: &str) -> Result<Vec<GroupPosition>, TransportError>;
    /// Reads `partition` of `entity` from `from` on, as no consumer group.
    async fn open_reader(
        &self,
        entity: &str,
        partition: u32,
        from: Seek,
    ) -> Result<Box<dyn PartitionReader>, TransportError>;
    /// Flushes and releases resources (after all workers are drained),
    /// within `within`; what is still running then is abandoned.
    async fn close(&self, within: std::time::Duration) {
        let _ = within;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Kafka's default partitioner hash (murmur2, positive), so a key lands on
/// the same partition number on every transport with the same partition
/// count as on Kafka.
pub fn key_partition(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let seed: u32 = 0x9747_b28c;
    let mut h = seed ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // values from Kafka's UtilsTest.testMurmur2
        let cases: [(&[u8], i32); 3] =
            [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536)];
        for (input, want) in cases {
            assert_eq!(murmur2(input) as i32, want, "{:?}", std::str::from_utf8(input));
        }
    }

    #[test]
    fn key_partition_is_stable_and_in_range() {
        for n in 1..16 {
            let p = key_partition(b"claim-42", n);
            assert!(p < n);
            assert_eq!(p, key_partition(b"claim-42", n));
        }
    }

    #[test]
    fn header_names_that_are_not_utf8_are_kept_distinct() {
        assert_eq!(header_name(b"trace"), "trace");
        let a = header_name(&[0xff, 0x01]);
        let b = header_name(&[0xff, 0x02]);
        assert!(a.starts_with(BINARY_HEADER_PREFIX) && a != b, "{a} {b}");
        let h = Headers(vec![("a".into(), Bytes::new()), ("b".into(), Bytes::new()), ("a".into(), Bytes::new())]);
        assert_eq!(h.repeated_name(), Some("a"));
        assert_eq!(Headers::default().repeated_name(), None);
    }

    #[test]
    fn drained_only_when_every_position_is_known_and_at_the_end() {
        let pos = |partition: u32, earliest: i64, next: i64, committed: Option<i64>| GroupPosition {
            info: PartitionInfo { entity: "e".into(), partition, earliest, next },
            committed,
        };
        let table: Vec<(Vec<GroupPosition>, Drain)> = vec![
            (vec![], Drain::Drained),
            (vec![pos(0, 0, 10, Some(10)), pos(1, 0, 0, None)], Drain::Drained),
            // nothing stored any more (retention): nothing to drain
            (vec![pos(0, 7, 7, None)], Drain::Drained),
            (vec![pos(0, 0, 10, Some(4)), pos(1, 0, 3, Some(3))], Drain::Behind(6)),
            // a commit below the earliest stored position counts from there
            (vec![pos(0, 5, 10, Some(2))], Drain::Behind(5)),
            // Kafka before its first commit, a restarting worker: unknown
            (vec![pos(0, 0, 10, Some(10)), pos(1, 0, 1, None)], Drain::Unknown { partition: 1 }),
        ];
        for (i, (positions, want)) in table.into_iter().enumerate() {
            assert_eq!(drain_state(&positions), want, "row {i}");
        }
    }

    #[test]
    fn headers_set_replaces() {
        let mut h = Headers::default();
        h.set("a", "1");
        h.set("b", "2");
        h.set("a", "3");
        assert_eq!(h.get_str("a"), Some("3"));
        assert_eq!(h.0.len(), 2);
    }
}
