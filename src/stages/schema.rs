//! `type: decode`, `type: encode`, `type: transcode`: schema-framed
//! messages in and out of a worker (see `crate::schema`).
//!
//! - `decode`: a Confluent- or Azure-framed Avro record → its JSON, to
//!   `default`; the writer schema's id goes in the `conveyor-schema-id`
//!   header, the `content-type` header is removed.
//! - `encode`: a JSON payload → an Avro record with the configured schema,
//!   framed for its registry (Azure: the `content-type` header).
//! - `transcode`: Confluent-framed → Azure-framed, record bytes kept.
//!
//! Failures carry the schema error's category (`crate::schema`): a message
//! that cannot be read or written is dead-lettered with the schema id; a
//! registry outage makes the message wait, never dead-lettered for it.

use super::{Emit, Stage, StageError};
use crate::schema::codec::{Decoder, Encoder, Transcoder};
use crate::schema::wire::CONTENT_TYPE;
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;

/// The header `decode` sets: the registry and id of the writer schema.
pub const SCHEMA_ID_HEADER: &str = "conveyor-schema-id";

pub struct Decode {
    pub decoder: Decoder,
    pub output: usize,
}

#[async_trait]
impl Stage for Decode {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let d = self.decoder.decode(&msg.payload, &msg.headers).await?;
        let mut m = OutboundMessage::from_message(msg);
        m.payload = bytes::Bytes::from(serde_json::to_vec(&d.json).expect("JSON values serialize"));
        m.headers.0.retain(|(n, _)| n != CONTENT_TYPE);
        m.headers.set(SCHEMA_ID_HEADER, d.schema_id);
        out.push(Emit { output: self.output, message: m });
        Ok(())
    }
}

pub struct Encode {
    pub encoder: Encoder,
    pub output: usize,
}

#[async_trait]
impl Stage for Encode {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let v: serde_json::Value =
            serde_json::from_slice(&msg.payload).map_err(|e| StageError::InvalidJson(e.to_string()))?;
        let (payload, content_type, _) = self.encoder.encode(&v).await?;
        let mut m = OutboundMessage::from_message(msg);
        m.payload = payload;
        m.headers.0.retain(|(n, _)| n != CONTENT_TYPE && n != SCHEMA_ID_HEADER);
        if let Some(ct) = content_type {
            m.headers.set(CONTENT_TYPE, ct);
        }
        out.push(Emit { output: self.output, message: m });
        Ok(())
    }
}

pub struct Transcode {
    pub transcoder: Transcoder,
    pub output: usize,
}

#[async_trait]
impl Stage for Transcode {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let m = self.transcoder.transcode(OutboundMessage::from_message(msg)).await?;
        out.push(Emit { output: self.output, message: m });
        Ok(())
    }
}
