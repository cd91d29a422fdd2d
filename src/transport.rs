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
//!   finish and commit the partition's in-flight batch.

pub mod embedded;
#[cfg(feature = "eventhubs")]
pub mod eventhub;
#[cfg(feature = "kafka")]
pub mod kafka;

use crate::classify::ErrorCategory;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Message headers, in order; names may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Bytes)>);

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
    #[error("message of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("{message}")]
    Other { category: ErrorCategory, kind: &'static str, message: String },
}

impl TransportError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            TransportError::UnknownEntity { .. }
            | TransportError::UnknownPartition { .. }
            | TransportError::TooLarge { .. } => ErrorCategory::Permanent,
            TransportError::Closed { .. } | TransportError::Storage { .. } | TransportError::Open { .. } => {
                ErrorCategory::Transient
            }
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
            TransportError::TooLarge { .. } => "too_large",
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
    /// Flushes and releases resources (after all workers are drained).
    async fn close(&self) {}
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
    fn headers_set_replaces() {
        let mut h = Headers::default();
        h.set("a", "1");
        h.set("b", "2");
        h.set("a", "3");
        assert_eq!(h.get_str("a"), Some("3"));
        assert_eq!(h.0.len(), 2);
    }
}
