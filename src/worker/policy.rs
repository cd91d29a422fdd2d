//! The failure policy, as pure functions of their inputs (the lane acts on
//! the answers; this module only decides):
//!
//! - [`decide`]: what becomes of a message after one attempt, from the
//!   error's category, the attempts made, the worker's retry configuration
//!   and the dead-letter breaker;
//! - [`retry_owner`]: whether a message carrying retry headers is this
//!   worker's to process.
//!
//! | outcome | `retry:` set | no `retry:` |
//! |---|---|---|
//! | success | emit | emit |
//! | `auth` | pause, try again | pause, try again |
//! | `permanent` | dead-letter | dead-letter (no `dead_letter`: retry in place forever) |
//! | `transient`/`throttling` | via the retry entity until `max_attempts`, then dead-letter | in place [`IN_PLACE_ATTEMPTS`] times, then dead-letter (no `dead_letter`: in place forever) |
//!
//! An open breaker turns every dead-letter into a pause until it closes.
//! Throttling doubles the in-place delay. Delays here are nominal; the lane
//! adds jitter.

use crate::backoff::Backoff;
use crate::classify::ErrorCategory;
use std::time::Duration;

/// Attempts of a transiently failing message before it is dead-lettered
/// (without `retry:`).
pub const IN_PLACE_ATTEMPTS: u32 = 5;

/// A worker's retry configuration, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// `retry:`: the delays of the retry entity (the last repeats) and the
    /// attempts in all before dead-lettering.
    pub via: Option<(Vec<Duration>, u32)>,
    /// Backoff between attempts in place (and auth pauses).
    pub in_place: Backoff,
    /// Whether the worker has a dead-letter entity.
    pub dead_letter: bool,
}

/// The dead-letter breaker, as a decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Tripped; closes after `remaining`.
    Open {
        remaining: Duration,
    },
}

/// What to do with a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It succeeded: produce what the stage emitted.
    Emit,
    /// Send it to the retry entity, due after this delay.
    ViaRetry(Duration),
    /// Try again here after this delay (the partition waits).
    InPlace(Duration),
    /// Write its dead-letter envelope.
    DeadLetter,
    /// Turn unready, wait this long, then try again (nothing is written).
    Pause(Duration),
}

/// Delay before attempt `attempts + 1` of a retry schedule (1-based
/// attempts made; the last delay repeats).
pub fn schedule_delay(schedule: &[Duration], attempts_made: u32) -> Duration {
    let i = (attempts_made.max(1) - 1) as usize;
    schedule.get(i).or(schedule.last()).copied().unwrap_or(Duration::from_secs(10))
}

/// The decision after attempt number `attempts` (1-based) ended with
/// `failure` (`None`: success).
pub fn decide(failure: Option<ErrorCategory>, attempts: u32, policy: &RetryPolicy, breaker: BreakerState) -> Decision {
    let dead = || match breaker {
        BreakerState::Closed => Decision::DeadLetter,
        BreakerState::Open { remaining } => Decision::Pause(remaining),
    };
    let in_place = |throttled: bool| {
        let d = policy.in_place.delay(attempts);
        Decision::InPlace(if throttled { d.saturating_mul(2).min(policy.in_place.max) } else { d })
    };
    let Some(category) = failure else { return Decision::Emit };
    match category {
        ErrorCategory::Auth => Decision::Pause(policy.in_place.delay(attempts)),
        ErrorCategory::Permanent if policy.dead_letter => dead(),
        ErrorCategory::Permanent => in_place(false),
        ErrorCategory::Transient | ErrorCategory::Throttling => {
            let throttled = category == ErrorCategory::Throttling;
            match &policy.via {
                Some((schedule, max_attempts)) if attempts < *max_attempts => {
                    Decision::ViaRetry(schedule_delay(schedule, attempts))
                }
                Some(_) if policy.dead_letter => dead(),
                Some(_) => in_place(throttled),
                None if attempts < IN_PLACE_ATTEMPTS => in_place(throttled),
                None if policy.dead_letter => dead(),
                None => in_place(throttled),
            }
        }
    }
}

/// The decision after attempt `attempts` failed because a dependency every
/// message needs is out (a schema registry that does not answer): nothing
/// is wrong with the message, so it is neither dead-lettered nor sent
/// through the retry entity — it waits in place (throttling: twice the
/// delay) however long the outage lasts. `Auth` pauses as in [`decide`].
pub fn decide_outage(category: ErrorCategory, attempts: u32, policy: &RetryPolicy) -> Decision {
    let d = policy.in_place.delay(attempts);
    match category {
        ErrorCategory::Auth => Decision::Pause(d),
        ErrorCategory::Throttling => Decision::InPlace(d.saturating_mul(2).min(policy.in_place.max)),
        ErrorCategory::Transient | ErrorCategory::Permanent => Decision::InPlace(d),
    }
}

/// Whose a message with retry headers is, for one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOwner {
    /// Addressed to this worker (or to nobody): process it.
    Mine,
    /// Addressed to another worker on the same input: skip it (that worker
    /// processes it; this one already processed the original).
    Sibling,
    /// Addressed to a worker that no longer exists, and this worker is the
    /// only one on the input: it takes the message over (counted).
    Adopt,
    /// Addressed to a worker that no longer exists, with several workers on
    /// the input, so no one can tell whose path it belongs to: this worker
    /// (the first of them by name) dead-letters it (counted).
    Orphan,
    /// As `Orphan`, but another worker of the input dead-letters it.
    OrphanOfAnother,
}

/// Whose a retried message addressed to `addressed` is, seen by worker `me`
/// among `workers` (every worker consuming the input, `me` included).
pub fn retry_owner(addressed: Option<&str>, me: &str, workers: &[&str]) -> RetryOwner {
    match addressed {
        None => RetryOwner::Mine,
        Some(a) if a == me => RetryOwner::Mine,
        Some(a) if workers.contains(&a) => RetryOwner::Sibling,
        Some(_) if workers.iter().all(|w| *w == me) => RetryOwner::Adopt,
        Some(_) if workers.iter().min() == Some(&me) => RetryOwner::Orphan,
        Some(_) => RetryOwner::OrphanOfAnother,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use ErrorCategory::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_category_by_retry_config_and_attempts() {
        let in_place = Backoff::new(ms(100), s(30));
        let via = RetryPolicy { via: Some((vec![s(10), s(60)], 3)), in_place, dead_letter: true };
        let local = RetryPolicy { via: None, in_place, dead_letter: true };
        let bare = RetryPolicy { via: None, in_place, dead_letter: false };
        let closed = BreakerState::Closed;
        let open = BreakerState::Open { remaining: s(42) };
        #[rustfmt::skip]
        let table: Vec<(Option<ErrorCategory>, u32, &RetryPolicy, BreakerState, Decision)> = vec![
            // success always emits, whatever the breaker
            (None, 1, &via, closed, Emit),
            (None, 7, &bare, open, Emit),
            // auth pauses with the in-place backoff, never dead-letters
            (Some(Auth), 1, &via, closed, Pause(ms(100))),
            (Some(Auth), 3, &local, closed, Pause(ms(400))),
            (Some(Auth), 40, &bare, open, Pause(s(30))),
            // permanent: dead-letter at once; without a DLQ the partition waits
            (Some(Permanent), 1, &via, closed, DeadLetter),
            (Some(Permanent), 1, &local, closed, DeadLetter),
            (Some(Permanent), 1, &bare, closed, InPlace(ms(100))),
            (Some(Permanent), 2, &bare, closed, InPlace(ms(200))),
            (Some(Permanent), 1, &via, open, Pause(s(42))),
            // transient with retry: the schedule, then dead-letter
            (Some(Transient), 1, &via, closed, ViaRetry(s(10))),
            (Some(Transient), 2, &via, closed, ViaRetry(s(60))),
            (Some(Transient), 3, &via, closed, DeadLetter),
            (Some(Transient), 9, &via, open, Pause(s(42))),
            (Some(Throttling), 1, &via, closed, ViaRetry(s(10))),
            (Some(Throttling), 3, &via, closed, DeadLetter),
            // transient without retry: in place, then dead-letter
            (Some(Transient), 1, &local, closed, InPlace(ms(100))),
            (Some(Transient), 4, &local, closed, InPlace(ms(800))),
            (Some(Transient), IN_PLACE_ATTEMPTS, &local, closed, DeadLetter),
            (Some(Transient), IN_PLACE_ATTEMPTS, &local, open, Pause(s(42))),
            (Some(Throttling), 1, &local, closed, InPlace(ms(200))),
            (Some(Throttling), 4, &local, closed, InPlace(ms(1600))),
            (Some(Throttling), 20, &bare, closed, InPlace(s(30))),
            // no DLQ: never gives up
            (Some(Transient), IN_PLACE_ATTEMPTS, &bare, closed, InPlace(ms(1600))),
            (Some(Transient), 50, &bare, open, InPlace(s(30))),
        ];
        for (i, (failure, attempts, policy, breaker, want)) in table.into_iter().enumerate() {
            assert_eq!(decide(failure, attempts, policy, breaker), want, "row {i}: {failure:?} attempt {attempts}");
        }
    }

    #[test]
    fn an_outage_waits_in_place_however_many_attempts() {
        let full = RetryPolicy { via: Some((vec![s(1)], 3)), in_place: Backoff::new(ms(10), s(1)), dead_letter: true };
        let table = [
            (Transient, 1, InPlace(ms(10))),
            (Transient, 3, InPlace(ms(40))),
            (Transient, 1000, InPlace(s(1))),
            (Throttling, 1, InPlace(ms(20))),
            (Throttling, 1000, InPlace(s(1))),
            (Auth, 2, Pause(ms(20))),
        ];
        for (category, attempts, want) in table {
            assert_eq!(decide_outage(category, attempts, &full), want, "{category:?} attempt {attempts}");
            // where `decide` would dead-letter or use the retry entity
            assert!(matches!(
                decide(Some(category), attempts, &full, BreakerState::Closed),
                DeadLetter | ViaRetry(_) | Pause(_)
            ));
        }
    }

    #[test]
    fn retry_without_dead_letter_falls_back_to_in_place() {
        // config validation refuses it; the policy still never drops
        let p = RetryPolicy { via: Some((vec![s(1)], 2)), in_place: Backoff::new(ms(10), s(1)), dead_letter: false };
        assert_eq!(decide(Some(Transient), 2, &p, BreakerState::Closed), InPlace(ms(20)));
    }

    #[test]
    fn schedule_repeats_its_last_delay() {
        let sched = [s(10), s(60)];
        assert_eq!(schedule_delay(&sched, 1), s(10));
        assert_eq!(schedule_delay(&sched, 2), s(60));
        assert_eq!(schedule_delay(&sched, 7), s(60));
        assert_eq!(schedule_delay(&[], 1), s(10));
    }

    #[test]
    fn retry_owner_table() {
        use RetryOwner::*;
        let table: [(Option<&str>, &str, &[&str], RetryOwner); 8] = [
            (None, "a", &["a"], Mine),
            (Some("a"), "a", &["a", "b"], Mine),
            (Some("b"), "a", &["a", "b"], Sibling),
            // renamed or removed worker, one worker on the input: adopt
            (Some("old"), "new", &["new"], Adopt),
            // several workers: the first by name dead-letters, the rest skip
            (Some("old"), "a", &["a", "b"], Orphan),
            (Some("old"), "b", &["a", "b"], OrphanOfAnother),
            (Some("old"), "b", &["b", "c", "a"], OrphanOfAnother),
            (Some("old"), "a", &["c", "a", "b"], Orphan),
        ];
        for (addressed, me, workers, want) in table {
            assert_eq!(retry_owner(addressed, me, workers), want, "{addressed:?} seen by {me} among {workers:?}");
        }
    }
}
