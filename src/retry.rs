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

/// How long until a retry carrying `h` is due, at wall-clock `now_ms`
/// (zero when due, past due, or without a readable `conveyor-retry-due`).
pub fn due_in(h: &Headers, now_ms: i64) -> Duration {
    let due_ms = h.get_str(H_DUE).and_then(|v| v.parse::<i64>().ok());
    Duration::from_millis(due_ms.map_or(0, |d| d.saturating_sub(now_ms).max(0)) as u64)
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
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    headers.set(H_DUE, now_ms().saturating_add(delay_ms).to_string());
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

    fn base() -> PipelineMessage {
        PipelineMessage {
            entity: "in".into(),
            partition: 0,
            position: 0,
            key: None,
            headers: Headers::default(),
            payload: "p".into(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn a_due_time_far_in_the_past_is_due_now() {
        let mut h = Headers::default();
        h.set(H_DUE, i64::MIN.to_string());
        assert_eq!(due_in(&h, 1_700_000_000_000), Duration::ZERO);
        h.set(H_DUE, i64::MAX.to_string());
        assert_eq!(due_in(&h, -1), Duration::from_millis(i64::MAX as u64));
    }

    #[test]
    fn a_delay_beyond_the_end_of_time_saturates_the_due_time() {
        let m = to_retry(&base(), "in", "w", 1, 0, Duration::from_millis(i64::MAX as u64), "e");
        assert_eq!(m.headers.get_str(H_DUE), Some(i64::MAX.to_string().as_str()));
        let m = to_retry(&base(), "in", "w", 1, 0, Duration::MAX, "e");
        assert_eq!(m.headers.get_str(H_DUE), Some(i64::MAX.to_string().as_str()));
    }

    mod prop {
        use super::super::*;
        use bytes::Bytes;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        /// A header value: arbitrary bytes, arbitrary text, or numbers at
        /// and around the edges of every integer type the reader parses.
        fn value() -> impl Strategy<Value = Bytes> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from),
                ".{0,24}".prop_map(Bytes::from),
                any::<i64>().prop_map(|n| Bytes::from(n.to_string())),
                any::<u64>().prop_map(|n| Bytes::from(n.to_string())),
                prop::sample::select(vec![
                    "-9223372036854775808",
                    "9223372036854775807",
                    "9223372036854775808",
                    "4294967295",
                    "4294967296",
                    "-1",
                    "0",
                    "+1",
                    " 1",
                    "1e3",
                    "",
                ])
                .prop_map(|s: &'static str| Bytes::from_static(s.as_bytes())),
            ]
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    H_TARGET,
                    H_WORKER,
                    H_ATTEMPT,
                    H_DUE,
                    H_FIRST_FAILURE,
                    H_LAST_ERROR,
                    H_REDRIVE
                ])
                .prop_map(str::to_string),
                "conveyor-retry-.{0,6}",
                ".{0,12}",
            ]
        }

        fn headers() -> impl Strategy<Value = Headers> {
            prop::collection::vec((name(), value()), 0..10).prop_map(Headers)
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn retry_header_reader_never_panics(mut h in headers(), due in value(), now in any::<i64>()) {
                let _ = RetryState::of(&h);
                let _ = due_in(&h, now);
                h.set(H_DUE, due);
                let _ = due_in(&h, now);
                let _ = has_retry_headers(&h);
                let s = strip(&h);
                prop_assert!(!has_retry_headers(&s));
                prop_assert_eq!(RetryState::of(&s), RetryState::default());
            }

            #[test]
            fn retry_headers_read_back_what_was_written(
                original in headers(),
                target in ".{0,16}",
                worker in ".{0,16}",
                attempts in any::<u32>(),
                first_failure_ms in any::<i64>(),
                delay_ms in prop_oneof![0u64..86_400_000, any::<u64>()],
                error in ".{0,600}",
            ) {
                let msg = PipelineMessage {
                    entity: "in".into(),
                    partition: 0,
                    position: 0,
                    key: Some(Bytes::from_static(b"k")),
                    headers: strip(&original),
                    payload: Bytes::from_static(b"\x00p"),
                    timestamp_ms: 0,
                };
                let delay = Duration::from_millis(delay_ms);
                let before = now_ms();
                let m = to_retry(&msg, &target, &worker, attempts, first_failure_ms, delay, &error);
                let after = now_ms();
                let h = &m.headers;
                prop_assert_eq!(
                    RetryState::of(h),
                    RetryState { worker: Some(worker.clone()), attempts, first_failure_ms: Some(first_failure_ms) }
                );
                prop_assert_eq!(h.get_str(H_TARGET), Some(target.as_str()));
                let last = h.get_str(H_LAST_ERROR).unwrap();
                prop_assert!(last.len() <= LAST_ERROR_BYTES && error.starts_with(last));
                prop_assert!(error.len() > LAST_ERROR_BYTES || last == error);
                let d = delay_ms.min(i64::MAX as u64) as i64;
                let due: i64 = h.get_str(H_DUE).unwrap().parse().unwrap();
                prop_assert!(before.saturating_add(d) <= due && due <= after.saturating_add(d), "due {due}");
                prop_assert!(due_in(h, after) <= delay);
                prop_assert!(has_retry_headers(h));
                // everything else is the message's own, untouched
                prop_assert_eq!(strip(h), msg.headers.clone());
                prop_assert_eq!(&m.key, &msg.key);
                prop_assert_eq!(&m.payload, &msg.payload);
            }
        }
    }
}
