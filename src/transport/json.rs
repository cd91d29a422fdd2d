//! A message as one JSON object: the wire format of the daemon's entity API
//! (`/v1/entities/...`) and of `conveyor tail --format json`.
//!
//! ```json
//! {"entity":"events","partition":0,"position":41,"timestamp_ms":1765000000000,
//!  "key":"k-1","headers":[["trace","abc"]],"payload":{"base64":"AAEC"}}
//! ```
//!
//! Bytes (key, header values, payload) are a JSON string when they are
//! UTF-8, else `{"base64": "..."}` (standard alphabet, padded): nothing is
//! lost either way, and text stays readable. Headers are a list of pairs, so
//! their order and repeated names survive. To produce, an object of
//! `payload` and, optionally, `key`, `headers` and `partition` ([`Outbound`];
//! other fields are refused).

use super::{Headers, OutboundMessage, PipelineMessage};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The entity API's `503` error while the daemon applies its first config
/// (clients wait it out).
pub const DAEMON_STARTING: &str = "the daemon is starting: its first config is not applied yet";

/// Bytes as text when they are UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Data {
    Text(String),
    Binary {
        /// The bytes in standard, padded base64.
        base64: String,
    },
}

/// Why a JSON message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("not a message object: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("{field}: invalid base64: {error}")]
    Base64 { field: &'static str, error: base64::DecodeError },
}

impl Data {
    pub fn of(b: &[u8]) -> Data {
        match std::str::from_utf8(b) {
            Ok(s) => Data::Text(s.to_string()),
            Err(_) => Data::Binary { base64: STANDARD.encode(b) },
        }
    }

    pub fn bytes(&self, field: &'static str) -> Result<Bytes, JsonError> {
        match self {
            Data::Text(s) => Ok(Bytes::copy_from_slice(s.as_bytes())),
            Data::Binary { base64 } => {
                STANDARD.decode(base64).map(Bytes::from).map_err(|error| JsonError::Base64 { field, error })
            }
        }
    }
}

/// A stored message, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub entity: String,
    pub partition: u32,
    pub position: i64,
    pub timestamp_ms: i64,
    #[serde(default)]
    pub key: Option<Data>,
    #[serde(default)]
    pub headers: Vec<(String, Data)>,
    pub payload: Data,
}

impl Record {
    /// `m` as JSON, named `entity` (the config's name, not the physical one).
    pub fn of(entity: &str, m: &PipelineMessage) -> Record {
        Record {
            entity: entity.to_string(),
            partition: m.partition,
            position: m.position,
            timestamp_ms: m.timestamp_ms,
            key: m.key.as_deref().map(Data::of),
            headers: m.headers.iter().map(|(n, v)| (n.to_string(), Data::of(v))).collect(),
            payload: Data::of(&m.payload),
        }
    }

    /// Back to a message of entity `entity` (as the reader names it).
    pub fn message(&self, entity: &std::sync::Arc<str>) -> Result<PipelineMessage, JsonError> {
        Ok(PipelineMessage {
            entity: entity.clone(),
            partition: self.partition,
            position: self.position,
            key: self.key.as_ref().map(|k| k.bytes("key")).transpose()?,
            headers: headers(&self.headers)?,
            payload: self.payload.bytes("payload")?,
            timestamp_ms: self.timestamp_ms,
        })
    }
}

fn headers(h: &[(String, Data)]) -> Result<Headers, JsonError> {
    Ok(Headers(h.iter().map(|(n, v)| Ok((n.clone(), v.bytes("headers")?))).collect::<Result<_, JsonError>>()?))
}

/// A message to produce, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Data>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, Data)>,
    pub payload: Data,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

impl Outbound {
    pub fn of(m: &OutboundMessage) -> Outbound {
        Outbound {
            key: m.key.as_deref().map(Data::of),
            headers: m.headers.iter().map(|(n, v)| (n.to_string(), Data::of(v))).collect(),
            payload: Data::of(&m.payload),
            partition: m.partition,
        }
    }

    pub fn message(&self) -> Result<OutboundMessage, JsonError> {
        Ok(OutboundMessage {
            key: self.key.as_ref().map(|k| k.bytes("key")).transpose()?,
            headers: headers(&self.headers)?,
            payload: self.payload.bytes("payload")?,
            partition: self.partition,
            timestamp_ms: None,
        })
    }
}

/// Where a produced message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub partition: u32,
    pub position: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn any_bytes_survive_the_round_trip_and_text_stays_text() {
        let mut headers = Headers::default();
        headers.0.push(("a".into(), Bytes::from_static(b"1")));
        headers.0.push(("a".into(), Bytes::from_static(&[0xff, 0x00])));
        let m = PipelineMessage {
            entity: Arc::from("phys"),
            partition: 2,
            position: 7,
            key: Some(Bytes::from_static("cl\u{e9}".as_bytes())),
            headers,
            payload: Bytes::from_static(&[0xc3, 0x28, 0x00]),
            timestamp_ms: 5,
        };
        let r = Record::of("events", &m);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"key\":\"clé\""), "{text}");
        assert!(text.contains("\"payload\":{\"base64\":\"wygA\"}"), "{text}");
        let back: Record = serde_json::from_str(&text).unwrap();
        let again = back.message(&Arc::from("events")).unwrap();
        assert_eq!((again.key, again.headers, again.payload), (m.key, m.headers, m.payload));
    }

    #[test]
    fn outbound_needs_only_a_payload_and_refuses_unknown_fields_and_bad_base64() {
        let o: Outbound = serde_json::from_str(r#"{"payload":"x"}"#).unwrap();
        assert_eq!(o.message().unwrap().payload, Bytes::from_static(b"x"));
        assert!(serde_json::from_str::<Outbound>(r#"{"payload":"x","kye":"k"}"#).is_err());
        let bad: Outbound = serde_json::from_str(r#"{"payload":{"base64":"***"}}"#).unwrap();
        assert!(matches!(bad.message(), Err(JsonError::Base64 { field: "payload", .. })));
    }
}
