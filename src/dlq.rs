//! The dead-letter envelope (version 1).
//!
//! A dead-lettered message is written to the worker's `dead_letter` entity
//! as a JSON envelope carrying everything needed to understand and replay
//! it. Payload and key are base64 so their bytes are preserved exactly;
//! header values likewise. The envelope message keeps the original key (so it
//! lands on a predictable partition) and carries headers
//! `conveyor-dlq-version`, `conveyor-error-category`, `conveyor-origin-entity`.
//!
//! ```json
//! {
//!   "envelope_version": 1,
//!   "payload": "<base64>", "key": "<base64>|null",
//!   "headers": [{"name": "...", "value": "<base64>"}],
//!   "origin": {"entity": "...", "transport": "embedded", "partition": 0,
//!              "position": 42, "consumer_group": "...", "worker": "...",
//!              "timestamp_ms": 1700000000000},
//!   "error": {"category": "permanent", "type": "invalid_json", "message": "...",
//!             "first_failure": "2026-11-27T15:00:00Z", "last_failure": "...",
//!             "attempts": 1},
//!   "trace_id": "...", "conveyor_version": "0.1.0",
//!   "dead_lettered_at": "2026-11-27T15:00:00Z"
//! }
//! ```
//!
//! A **trimmed** envelope is written when the full one is larger than the
//! dead-letter entity accepts (base64 makes an envelope about 1.37× its
//! payload): `payload` is empty and `"payload_truncated": true`,
//! `"payload_size"` and `"payload_sha256"` describe the original; headers
//! too large to keep are dropped (`"headers_dropped": N`). `dlq redrive`
//! leaves trimmed envelopes alone (their payload is gone) and counts them.

use crate::classify::ErrorCategory;
use crate::transport::{Headers, OutboundMessage, PipelineMessage};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

pub const ENVELOPE_VERSION: u32 = 1;
pub const HEADER_VERSION: &str = "conveyor-dlq-version";
pub const HEADER_CATEGORY: &str = "conveyor-error-category";
pub const HEADER_ORIGIN: &str = "conveyor-origin-entity";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub envelope_version: u32,
    pub payload: String,
    pub key: Option<String>,
    pub headers: Vec<EnvelopeHeader>,
    pub origin: Origin,
    pub error: ErrorInfo,
    pub trace_id: String,
    pub conveyor_version: String,
    pub dead_lettered_at: String,
    /// The payload is not in this envelope (it did not fit the DLQ).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payload_truncated: bool,
    /// Size of the original payload, when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
    /// SHA-256 (hex) of the original payload, when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
    /// Headers left out of a trimmed envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_dropped: Option<usize>,
}

/// Headers larger than this (encoded) are dropped from a trimmed envelope.
const TRIMMED_HEADER_BYTES: usize = 16 << 10;
/// A trimmed envelope's error message is clipped to this.
const TRIMMED_MESSAGE_BYTES: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnvelopeHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Origin {
    pub entity: String,
    pub transport: String,
    pub partition: u32,
    pub position: i64,
    pub consumer_group: String,
    pub worker: String,
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorInfo {
    pub category: ErrorCategory,
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub first_failure: String,
    pub last_failure: String,
    pub attempts: u32,
}

/// What the worker knows about the failure.
pub struct Failure<'a> {
    pub category: ErrorCategory,
    pub kind: &'a str,
    pub message: &'a str,
    pub first_failure: SystemTime,
    pub last_failure: SystemTime,
    pub attempts: u32,
}

/// Where the message was consumed.
pub struct Context<'a> {
    pub transport: &'a str,
    pub consumer_group: &'a str,
    pub worker: &'a str,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The trace id of a message: W3C `traceparent`'s trace-id, else an
/// `x-trace-id` header, else a new random id.
pub fn trace_id(h: &Headers) -> String {
    if let Some(tp) = h.get_str("traceparent")
        && let Some(id) = tp.split('-').nth(1).filter(|id| id.len() == 32)
    {
        return id.to_string();
    }
    if let Some(id) = h.get_str("x-trace-id") {
        return id.to_string();
    }
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

impl Envelope {
    pub fn new(msg: &PipelineMessage, f: &Failure<'_>, cx: &Context<'_>) -> Self {
        Envelope {
            envelope_version: ENVELOPE_VERSION,
            payload: B64.encode(&msg.payload),
            key: msg.key.as_ref().map(|k| B64.encode(k)),
            headers: msg.headers.iter().map(|(n, v)| EnvelopeHeader { name: n.into(), value: B64.encode(v) }).collect(),
            origin: Origin {
                entity: msg.entity.to_string(),
                transport: cx.transport.into(),
                partition: msg.partition,
                position: msg.position,
                consumer_group: cx.consumer_group.into(),
                worker: cx.worker.into(),
                timestamp_ms: msg.timestamp_ms,
            },
            error: ErrorInfo {
                category: f.category,
                kind: f.kind.into(),
                message: f.message.into(),
                first_failure: rfc3339(f.first_failure),
                last_failure: rfc3339(f.last_failure),
                attempts: f.attempts,
            },
            trace_id: trace_id(&msg.headers),
            conveyor_version: env!("CARGO_PKG_VERSION").into(),
            dead_lettered_at: rfc3339(SystemTime::now()),
            payload_truncated: false,
            payload_size: None,
            payload_sha256: None,
            headers_dropped: None,
        }
    }

    /// Leaves the payload (and headers too large to keep) out, describing
    /// the payload by size and SHA-256 instead.
    pub fn trim(&mut self) {
        if !self.payload_truncated {
            use sha2::{Digest, Sha256};
            let original = B64.decode(&self.payload).unwrap_or_default();
            self.payload_size = Some(original.len() as u64);
            self.payload_sha256 = Some(Sha256::digest(&original).iter().map(|b| format!("{b:02x}")).collect());
            self.payload = String::new();
            self.payload_truncated = true;
        }
        let header_bytes: usize = self.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
        if header_bytes > TRIMMED_HEADER_BYTES {
            self.headers_dropped = Some(self.headers.len());
            self.headers.clear();
        }
        crate::text::truncate(&mut self.error.message, TRIMMED_MESSAGE_BYTES);
    }

    /// The message to write to the dead-letter entity.
    pub fn to_message(&self, original_key: Option<Bytes>) -> OutboundMessage {
        let mut headers = Headers::default();
        headers.set(HEADER_VERSION, ENVELOPE_VERSION.to_string());
        headers.set(HEADER_CATEGORY, self.error.category.as_str());
        headers.set(HEADER_ORIGIN, self.origin.entity.clone());
        OutboundMessage {
            key: original_key,
            headers,
            payload: Bytes::from(serde_json::to_vec(self).expect("an envelope always serializes")),
            partition: None,
            timestamp_ms: None,
        }
    }

    pub fn parse(payload: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// The original payload bytes.
    pub fn original_payload(&self) -> Result<Vec<u8>, base64::DecodeError> {
        B64.decode(&self.payload)
    }

    /// The original key bytes.
    pub fn original_key(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        self.key.as_ref().map(|k| B64.decode(k)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_preserves_bytes_and_context() {
        let mut headers = Headers::default();
        headers.set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        headers.set("bin", Bytes::from_static(&[0, 159, 255]));
        let msg = PipelineMessage {
            entity: "orders.in".into(),
            partition: 3,
            position: 42,
            key: Some(Bytes::from_static(b"k\xff")),
            headers,
            payload: Bytes::from_static(b"\x00not json\xfe"),
            timestamp_ms: 7,
        };
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let f = Failure {
            category: ErrorCategory::Permanent,
            kind: "invalid_json",
            message: "bad",
            first_failure: t,
            last_failure: t,
            attempts: 1,
        };
        let cx = Context { transport: "embedded", consumer_group: "g", worker: "w" };
        let env = Envelope::new(&msg, &f, &cx);
        let out = env.to_message(msg.key.clone());
        let back = Envelope::parse(&out.payload).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.original_payload().unwrap(), msg.payload.to_vec());
        assert_eq!(back.original_key().unwrap().unwrap(), b"k\xff".to_vec());
        assert_eq!(back.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(back.origin.position, 42);
        assert_eq!(back.error.first_failure, "2027-01-15T08:00:00.000Z");
        assert_eq!(out.headers.get_str(HEADER_CATEGORY), Some("permanent"));
        assert!(!String::from_utf8_lossy(&out.payload).contains("payload_truncated"), "absent unless trimmed");
    }

    #[test]
    fn a_trimmed_envelope_describes_the_payload_it_leaves_out() {
        let mut headers = Headers::default();
        headers.set("big", Bytes::from(vec![b'h'; 20_000]));
        let msg = PipelineMessage {
            entity: "in".into(),
            partition: 0,
            position: 9,
            key: None,
            headers,
            payload: Bytes::from(vec![7u8; 100_000]),
            timestamp_ms: 0,
        };
        let now = SystemTime::now();
        let long = "é".repeat(2000);
        let f = Failure {
            category: ErrorCategory::Permanent,
            kind: "too_large",
            message: &long,
            first_failure: now,
            last_failure: now,
            attempts: 1,
        };
        let cx = Context { transport: "embedded", consumer_group: "g", worker: "w" };
        let mut env = Envelope::new(&msg, &f, &cx);
        let full = env.to_message(None).payload.len();
        env.trim();
        let out = env.to_message(None);
        assert!(out.payload.len() < 2_000, "{} bytes (was {full})", out.payload.len());
        let back = Envelope::parse(&out.payload).unwrap();
        assert!(back.payload_truncated && back.payload.is_empty());
        assert_eq!(back.payload_size, Some(100_000));
        use sha2::{Digest, Sha256};
        let want: String = Sha256::digest(vec![7u8; 100_000]).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(back.payload_sha256.as_deref(), Some(want.as_str()));
        assert_eq!(back.headers_dropped, Some(1));
        assert!(back.error.message.len() <= 1024 && back.error.message.starts_with('é'));
        assert_eq!(back.origin.position, 9, "the coordinates stay");
    }
}
