//! What the stages, the migration mirror and cut-over producers do with
//! registries: decode a framed message into JSON, encode JSON with a
//! registered schema, transcode Confluent framing into Azure framing.
//!
//! The `content-type` header follows the payload: a decoded message has
//! none (it is JSON now), an Azure-framed one has `avro/binary+<id>`, a
//! Confluent-framed one none (its id is in the payload).

use super::SchemaError;
use super::registry::{Kind, Registry};
use super::wire::{self, CONTENT_TYPE};
use crate::avro::AvroSchema;
use crate::transport::{Headers, OutboundMessage};
use bytes::Bytes;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub json: Json,
    /// The writer schema's id.
    pub schema_id: String,
}

/// The framing a message carries, and its schema id and body.
fn framing<'a>(payload: &'a [u8], headers: &'a Headers) -> Result<(Kind, String, &'a [u8]), wire::FrameError> {
    if let Some(ct) = headers.get_str(CONTENT_TYPE)
        && ct.trim_start().to_ascii_lowercase().starts_with(wire::AZURE_AVRO)
    {
        let id = wire::azure_schema_id(ct)?;
        return Ok((Kind::Azure, id.to_string(), payload));
    }
    let (id, body) = wire::confluent_split(payload)?;
    Ok((Kind::Confluent, id.to_string(), body))
}

/// Reads framed messages with the registries their framings name.
pub struct Decoder {
    pub registries: Vec<Arc<Registry>>,
    /// Records are resolved to this schema when given.
    pub reader: Option<AvroSchema>,
}

impl Decoder {
    pub async fn decode(&self, payload: &[u8], headers: &Headers) -> Result<Decoded, SchemaError> {
        let (kind, id, body) =
            framing(payload, headers).map_err(|e| SchemaError::Decode { id: None, reason: e.to_string() })?;
        let registry = self.registries.iter().find(|r| r.kind() == kind).ok_or_else(|| SchemaError::Decode {
            id: Some(id.clone()),
            reason: format!(
                "the message is {}-framed and no {} registry is configured for this stage",
                kind.as_str(),
                kind.as_str()
            ),
        })?;
        let schema = registry.schema(&id).await?;
        let json = schema
            .decode(body, self.reader.as_ref())
            .map_err(|e| SchemaError::Decode { id: Some(id.clone()), reason: e.to_string() })?;
        Ok(Decoded { json, schema_id: id })
    }
}

/// Writes JSON records with one schema, framed for its registry.
pub struct Encoder {
    pub registry: Arc<Registry>,
    pub schema: AvroSchema,
    /// The Confluent subject or Azure schema name.
    pub subject: String,
    pub register: bool,
}

impl Encoder {
    /// `json` encoded and framed, with the content type to set (Azure) and
    /// the schema id.
    pub async fn encode(&self, json: &Json) -> Result<(Bytes, Option<String>, String), SchemaError> {
        let id = self.registry.id_for(&self.subject, &self.schema, self.register).await?;
        let body = self
            .schema
            .encode(json)
            .map_err(|e| SchemaError::Incompatible { id: Some(id.clone()), reason: e.to_string() })?;
        Ok(match self.registry.kind() {
            Kind::Confluent => {
                let n: u32 = id.parse().map_err(|_| SchemaError::Refused {
                    registry: self.registry.name().into(),
                    status: 200,
                    reason: format!("schema id {id:?} is not a number"),
                })?;
                (Bytes::from(wire::confluent_frame(n, &body)), None, id)
            }
            Kind::Azure => (Bytes::from(body), Some(wire::azure_content_type(&id)), id),
        })
    }
}

/// Turns Confluent-framed Avro into Azure-framed Avro: the same schema is
/// registered in the Azure group (once per Confluent id; the mapping is
/// cached and logged) and the record bytes are kept as they are (the
/// schema is the same, so is its binary encoding), after checking that
/// they decode with it. A message already Azure-framed passes unchanged.
pub struct Transcoder {
    pub from: Arc<Registry>,
    pub to: Arc<Registry>,
    ids: Mutex<HashMap<String, String>>,
}

impl Transcoder {
    pub fn new(from: Arc<Registry>, to: Arc<Registry>) -> Self {
        Transcoder { from, to, ids: Mutex::default() }
    }

    /// `m` Azure-framed.
    pub async fn transcode(&self, mut m: OutboundMessage) -> Result<OutboundMessage, SchemaError> {
        let (kind, id, _) =
            framing(&m.payload, &m.headers).map_err(|e| SchemaError::Decode { id: None, reason: e.to_string() })?;
        if kind == Kind::Azure {
            return Ok(m);
        }
        let schema = self.from.schema(&id).await?;
        schema
            .check(&m.payload[5..])
            .map_err(|e| SchemaError::Decode { id: Some(id.clone()), reason: e.to_string() })?;
        let cached = self.ids.lock().unwrap().get(&id).cloned();
        let to_id = match cached {
            Some(t) => t,
            None => {
                let name = self.to.subject("", &schema)?;
                let t = self.to.id_for(&name, &schema, true).await?;
                tracing::info!(
                    event = "schema_mapped",
                    from_registry = self.from.name(),
                    from_id = %id,
                    to_registry = self.to.name(),
                    to_id = %t,
                    schema = %name,
                    "transcoding schema {id} of {} as {t} of {}",
                    self.from.name(),
                    self.to.name()
                );
                self.ids.lock().unwrap().insert(id.clone(), t.clone());
                t
            }
        };
        m.payload = m.payload.slice(5..);
        m.headers.set(CONTENT_TYPE, wire::azure_content_type(&to_id));
        Ok(m)
    }

    /// The Confluent → Azure id mapping so far.
    pub fn mapping(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.ids.lock().unwrap().iter().map(|(a, b)| (a.clone(), b.clone())).collect();
        v.sort();
        v
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Confluent => "Confluent",
            Kind::Azure => "Azure",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_read_from_the_content_type_first() {
        let mut h = Headers::default();
        assert_eq!(framing(&[0, 0, 0, 0, 9, 1], &h).unwrap(), (Kind::Confluent, "9".into(), &[1u8][..]));
        assert!(framing(b"{\"a\":1}", &h).unwrap_err().to_string().contains("magic byte"));
        assert!(framing(b"{}", &h).unwrap_err().to_string().contains("shorter"));
        h.set(CONTENT_TYPE, "avro/binary+abc");
        assert_eq!(framing(&[0, 0, 0, 0, 9, 1], &h).unwrap(), (Kind::Azure, "abc".into(), &[0u8, 0, 0, 0, 9, 1][..]));
        h.set(CONTENT_TYPE, "avro/binary+");
        assert!(framing(&[1], &h).is_err());
        // another content type: the payload decides
        h.set(CONTENT_TYPE, "application/octet-stream");
        assert_eq!(framing(&[0, 0, 0, 0, 1], &h).unwrap().0, Kind::Confluent);
    }
}
