//! Delayed retries through retry entities, transport-agnostic.
//!
//! A worker with `retry: { via: E, schedule, max_attempts }` sends a message
//! that failed `transient`ly or with `throttling` to entity `E` (not back to
//! its input), with these headers:
//!
//! | header | meaning |
//! |---|---|
//! | `conveyor-retry-target` | entity (config key) to re-deliver to: the worker's input |
//! | `conveyor-retry-worker` | the worker the retry is for (other workers on the target skip it) |
//! | `conveyor-retry-attempt` | attempts made so far |
//! | `conveyor-retry-due` | Unix ms when it is due |
//! | `conveyor-first-failure` | Unix ms of the first failure (kept into the DLQ envelope) |
//! | `conveyor-last-error` | the last error, for people (at most 512 bytes) |
//!
//! The built-in [`scheduler`] (one per retry entity, consumer group
//! `conveyor-retry`) re-delivers each message to its target when due; see
//! there for commits, restarts and what happens to retries whose worker or
//! target a reload removed.

pub mod scheduler;

pub use scheduler::Scheduler;

use crate::transport::{Headers, OutboundMessage, PipelineMessage, now_ms};
use std::time::Duration;

pub const H_TARGET: &str = "conveyor-retry-target";
pub const H_WORKER: &str = "conveyor-retry-worker";
pub const H_ATTEMPT: &str = "conveyor-retry-attempt";
pub const H_DUE: &str = "conveyor-retry-due";
pub const H_FIRST_FAILURE: &str = "conveyor-first-failure";
pub const H_LAST_ERROR: &str = "conveyor-last-error";
/// Set by `conveyor dlq redrive`: how often the message was redriven.
pub const H_REDRIVE: &str = "conveyor-redrive-count";

/// Longest `conveyor-last-error` value.
pub const LAST_ERROR_BYTES: usize = 512;

/// The consumer group of every retry scheduler.
pub const GROUP: &str = "conveyor-retry";

/// Retry bookkeeping carried by a message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryState {
    pub worker: Option<String>,
    pub attempts: u32,
    pub first_failure_ms: Option<i64>,
}

impl RetryState {
    pub fn of(h: &Headers) -> RetryState {
        RetryState {
            worker: h.get_str(H_WORKER).map(str::to_string),
            attempts: h.get_str(H_ATTEMPT).and_then(|v| v.parse().ok()).unwrap_or(0),
            first_failure_ms: h.get_str(H_FIRST_FAILURE).and_then(|v| v.parse().ok()),
        }
    }
}

/// Whether `h` carries retry headers (cheap check for the hot path).
pub fn has_retry_headers(h: &Headers) -> bool {
    !h.is_empty() && h.iter().any(|(n, _)| n.starts_with("conveyor-retry-") || n == H_FIRST_FAILURE)
}

/// `h` without any retry bookkeeping (what stages and outputs see).
pub fn strip(h: &Headers) -> Headers {
    Headers(
        h.0.iter()
            .filter(|(n, _)| !(n.starts_with("conveyor-retry-") || n == H_FIRST_FAILURE || n == H_LAST_ERROR))
            .cloned()
            .collect(),
    )
}

/// The message to write to the retry entity for attempt `attempts + 1` of
/// `msg` (whose headers carry no retry bookkeeping).
pub fn to_retry(
    msg: &PipelineMessage,
    target: &str,
    worker: &str,
    attempts: u32,
    first_failure_ms: i64,
    delay: Duration,
    error: &str,
) -> OutboundMessage {
    let mut headers = msg.headers.clone();
    headers.set(H_TARGET, target.to_string());
    headers.set(H_WORKER, worker.to_string());
    headers.set(H_ATTEMPT, attempts.to_string());
    headers.set(H_DUE, (now_ms() + delay.as_millis() as i64).to_string());
    headers.set(H_FIRST_FAILURE, first_failure_ms.to_string());
    headers.set(H_LAST_ERROR, crate::text::clip(error, LAST_ERROR_BYTES).to_string());
    OutboundMessage { key: msg.key.clone(), headers, payload: msg.payload.clone(), partition: None, timestamp_ms: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_removes_only_bookkeeping() {
        let mut h = Headers::default();
        h.set("traceparent", "x");
        h.set(H_ATTEMPT, "2");
        h.set(H_FIRST_FAILURE, "1");
        h.set(H_LAST_ERROR, "e");
        assert!(has_retry_headers(&h));
        let s = strip(&h);
        assert_eq!(s.0.len(), 1);
        assert!(!has_retry_headers(&s));
        assert_eq!(RetryState::of(&h).attempts, 2);
    }

    #[test]
    fn a_long_multibyte_error_is_clipped_at_a_character_boundary() {
        // 511 ASCII bytes, then a 3-byte character straddling byte 512
        let error = format!("{}€ and more", "x".repeat(511));
        let base = PipelineMessage {
            entity: "in".into(),
            partition: 0,
            position: 0,
            key: None,
            headers: Headers::default(),
            payload: "p".into(),
            timestamp_ms: 0,
        };
        let m = to_retry(&base, "in", "w", 1, 0, Duration::from_secs(1), &error);
        let last = m.headers.get_str(H_LAST_ERROR).expect("valid UTF-8");
        assert_eq!(last.len(), 511);
        assert!(last.chars().all(|c| c == 'x'));
    }
}
