//! `type: passthrough` — forwards each message unchanged (zero-copy).

use super::{Emit, Stage, StageError};
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;

/// Forwards key, headers and payload as they are to one output.
pub struct Passthrough {
    pub output: usize,
}

#[async_trait]
impl Stage for Passthrough {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        self.process_now(msg, out).unwrap_or(Ok(()))
    }

    fn process_now(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Option<Result<(), StageError>> {
        out.push(Emit { output: self.output, message: OutboundMessage::from_message(msg) });
        Some(Ok(()))
    }
}
