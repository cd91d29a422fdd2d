//! `type: chaos` — deterministic fault injection. A message's fate is a
//! function of its payload (FNV-1a hash → a number in [0, 1)): below
//! `transient` it fails as `Transient`, then `Permanent`, then it panics,
//! otherwise it is forwarded unchanged. The same message fails the same way
//! on every attempt, which makes retry and dead-letter paths testable.

use super::{Emit, Stage, StageError};
use crate::classify::ErrorCategory;
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;

pub struct Chaos {
    pub transient: f64,
    pub permanent: f64,
    pub panic: f64,
    pub delay: std::time::Duration,
    pub output: usize,
}

/// Where `payload` falls in [0, 1).
pub fn fate(payload: &[u8]) -> f64 {
    let h = payload.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[async_trait]
impl Stage for Chaos {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let x = fate(&msg.payload);
        if x < self.transient {
            return Err(StageError::other(ErrorCategory::Transient, "chaos_transient", "injected transient failure"));
        }
        if x < self.transient + self.permanent {
            return Err(StageError::other(ErrorCategory::Permanent, "chaos_permanent", "injected permanent failure"));
        }
        if x < self.transient + self.permanent + self.panic {
            panic!("injected panic");
        }
        out.push(Emit { output: self.output, message: OutboundMessage::from_message(msg) });
        Ok(())
    }
}
