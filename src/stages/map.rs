//! `type: map` — JSON validation (`require: [fields]`), forwarding valid
//! messages unchanged. A payload that is not a JSON object, or lacks a
//! required top-level field, fails as `Permanent`.

use super::{Emit, Stage, StageError};
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;
use serde_json::Value;

pub struct MapStage {
    require: Vec<String>,
    output: usize,
}

impl MapStage {
    pub fn new(require: Vec<String>, output: usize) -> Self {
        MapStage { require, output }
    }
}

#[async_trait]
impl Stage for MapStage {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let v: Value = serde_json::from_slice(&msg.payload).map_err(|e| StageError::InvalidJson(e.to_string()))?;
        let Value::Object(obj) = &v else {
            return Err(StageError::InvalidJson("expected a JSON object".into()));
        };
        if let Some(missing) = self.require.iter().find(|f| obj.get(f.as_str()).is_none_or(Value::is_null)) {
            return Err(StageError::MissingField(missing.clone()));
        }
        out.push(Emit { output: self.output, message: OutboundMessage::from_message(msg) });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::ErrorCategory;
    use bytes::Bytes;

    fn msg(p: &'static [u8]) -> PipelineMessage {
        PipelineMessage {
            entity: "e".into(),
            partition: 0,
            position: 0,
            key: None,
            headers: Default::default(),
            payload: Bytes::from_static(p),
            timestamp_ms: 0,
        }
    }

    #[tokio::test]
    async fn validates_required_fields() {
        let s = MapStage::new(vec!["id".into()], 0);
        let mut out = Vec::new();
        s.process(&msg(br#"{"id":"a"}"#), &mut out).await.unwrap();
        assert_eq!(out.len(), 1);
        for bad in [&b"not json"[..], br#"[1]"#, br#"{"x":1}"#, br#"{"id":null}"#] {
            let e = s.process(&msg(bad), &mut out).await.unwrap_err();
            assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
        }
        assert_eq!(out.len(), 1);
    }
}
