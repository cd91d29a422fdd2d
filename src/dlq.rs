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
    /// The schema id of a `schema_*` failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<String>,
}

/// What the worker knows about the failure.
pub struct Failure<'a> {
    pub category: ErrorCategory,
    pub kind: &'a str,
    pub message: &'a str,
    pub first_failure: SystemTime,
    pub last_failure: SystemTime,
    pub attempts: u32,
    /// The schema id of a `schema_*` failure.
    pub schema_id: Option<&'a str>,
}

/// Where the message was consumed.
pub struct Context<'a> {
    pub transport: &'a str,
    pub consumer_group: &'a str,
    pub worker: &'a str,
}

/// `t` in RFC 3339, clamped to what it can write (1970 to the last
/// millisecond of 9999): a failure time can come from a message header, and
/// humantime's formatter fails outside that range (`to_string` then panics).
fn rfc3339(t: SystemTime) -> String {
    let last = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(253_402_300_799_999);
    humantime::format_rfc3339_millis(t.clamp(SystemTime::UNIX_EPOCH, last)).to_string()
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
                schema_id: f.schema_id.map(str::to_string),
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
            schema_id: None,
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
            schema_id: None,
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

    #[test]
    fn failure_times_outside_rfc3339_are_clamped_not_a_panic() {
        // a `conveyor-first-failure` header of 999999999999999 (year 33658)
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(999_999_999_999_999);
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(1);
        let msg = PipelineMessage {
            entity: "in".into(),
            partition: 0,
            position: 0,
            key: None,
            headers: Headers::default(),
            payload: Bytes::new(),
            timestamp_ms: 0,
        };
        let f = Failure {
            category: ErrorCategory::Transient,
            kind: "k",
            message: "m",
            first_failure: far,
            last_failure: before,
            attempts: 1,
            schema_id: None,
        };
        let cx = Context { transport: "embedded", consumer_group: "g", worker: "w" };
        let env = Envelope::new(&msg, &f, &cx);
        assert_eq!(env.error.first_failure, "9999-12-31T23:59:59.999Z");
        assert_eq!(env.error.last_failure, "1970-01-01T00:00:00.000Z");
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;
        use std::time::Duration;

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        /// Any text: empty, multi-byte, control characters, quotes.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![Just(String::new()), "\\PC{0,16}", any::<String>(), Just("é€𝄞\"\\\u{0}\u{1f}".to_string())]
        }

        fn bytes() -> impl Strategy<Value = Bytes> {
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
        }

        fn category() -> impl Strategy<Value = ErrorCategory> {
            prop::sample::select(ErrorCategory::ALL.to_vec())
        }

        /// Any time a failure may be stamped with, including far outside RFC 3339's years.
        fn time() -> impl Strategy<Value = SystemTime> {
            prop_oneof![
                (0u64..4_000_000_000_000).prop_map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                (0u64..i64::MAX as u64).prop_map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                (1u64..1 << 40).prop_map(|ms| SystemTime::UNIX_EPOCH - Duration::from_millis(ms)),
            ]
        }

        fn envelope() -> impl Strategy<Value = Envelope> {
            let origin = (text(), text(), any::<u32>(), any::<i64>(), text(), text(), any::<i64>()).prop_map(
                |(entity, transport, partition, position, consumer_group, worker, timestamp_ms)| Origin {
                    entity,
                    transport,
                    partition,
                    position,
                    consumer_group,
                    worker,
                    timestamp_ms,
                },
            );
            let error = (category(), text(), text(), text(), text(), any::<u32>()).prop_map(
                |(category, kind, message, first_failure, last_failure, attempts)| ErrorInfo {
                    schema_id: None,
                    category,
                    kind,
                    message,
                    first_failure,
                    last_failure,
                    attempts,
                },
            );
            let header = (text(), text()).prop_map(|(name, value)| EnvelopeHeader { name, value });
            let trimmed = (any::<bool>(), any::<Option<u64>>(), prop::option::of(text()), any::<Option<usize>>());
            (
                any::<u32>(),
                text(),
                prop::option::of(text()),
                prop::collection::vec(header, 0..4),
                origin,
                error,
                (text(), text(), text()),
                trimmed,
            )
                .prop_map(
                    |(
                        envelope_version,
                        payload,
                        key,
                        headers,
                        origin,
                        error,
                        (trace_id, conveyor_version, dead_lettered_at),
                        (payload_truncated, payload_size, payload_sha256, headers_dropped),
                    )| Envelope {
                        envelope_version,
                        payload,
                        key,
                        headers,
                        origin,
                        error,
                        trace_id,
                        conveyor_version,
                        dead_lettered_at,
                        payload_truncated,
                        payload_size,
                        payload_sha256,
                        headers_dropped,
                    },
                )
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn dlq_parse_never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = Envelope::parse(&b);
            }

            #[test]
            fn dlq_parse_never_panics_on_a_mutated_envelope(
                env in envelope(),
                at in any::<prop::sample::Index>(),
                with in any::<u8>(),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut b = env.to_message(None).payload.to_vec();
                let i = at.index(b.len());
                b[i] = with;
                if let Ok(e) = Envelope::parse(&b) {
                    let _ = (e.original_payload(), e.original_key());
                }
                let _ = Envelope::parse(&b[..cut.index(b.len())]);
            }

            #[test]
            fn dlq_envelope_round_trips(env in envelope()) {
                let out = env.to_message(None);
                prop_assert_eq!(Envelope::parse(&out.payload).unwrap(), env);
            }

            #[test]
            fn dlq_envelope_of_any_message_round_trips(
                key in prop::option::of(bytes()),
                headers in prop::collection::vec((text(), bytes()), 0..4),
                payload in bytes(),
                (partition, position, timestamp_ms) in any::<(u32, i64, i64)>(),
                entity in text(),
                (category, kind, message, attempts) in (category(), text(), text(), any::<u32>()),
                (first_failure, last_failure) in (time(), time()),
                (transport, consumer_group, worker) in (text(), text(), text()),
            ) {
                let msg = PipelineMessage {
                    entity: entity.as_str().into(),
                    partition,
                    position,
                    key: key.clone(),
                    headers: Headers(headers.clone()),
                    payload: payload.clone(),
                    timestamp_ms,
                };
                let f = Failure { category, kind: &kind, message: &message, first_failure, last_failure, attempts, schema_id: None };
                let cx = Context { transport: &transport, consumer_group: &consumer_group, worker: &worker };
                let mut env = Envelope::new(&msg, &f, &cx);
                let out = env.to_message(key.clone());
                let back = Envelope::parse(&out.payload).unwrap();
                prop_assert_eq!(&back, &env);
                prop_assert_eq!(back.original_payload().unwrap(), payload.to_vec());
                prop_assert_eq!(back.original_key().unwrap(), key.map(|k| k.to_vec()));
                let hs: Vec<(String, Vec<u8>)> =
                    back.headers.iter().map(|h| (h.name.clone(), B64.decode(&h.value).unwrap())).collect();
                let want: Vec<(String, Vec<u8>)> = headers.into_iter().map(|(n, v)| (n, v.to_vec())).collect();
                prop_assert_eq!(hs, want);
                prop_assert_eq!((back.origin.entity.as_str(), back.origin.position), (entity.as_str(), position));
                prop_assert_eq!((back.error.kind.as_str(), back.error.message.as_str()), (kind.as_str(), message.as_str()));
                prop_assert_eq!(out.headers.get_str(HEADER_ORIGIN), Some(entity.as_str()));
                // trimming keeps it readable
                env.trim();
                let back = Envelope::parse(&env.to_message(None).payload).unwrap();
                prop_assert_eq!(back.payload_size, Some(payload.len() as u64));
                prop_assert_eq!(back, env);
            }
        }
    }
}
