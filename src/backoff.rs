//! Exponential backoff: the one mechanism behind every wait-and-try-again in
//! Conveyor — a message retried in place, a lane slowing down after
//! throttling, the supervisor restarting a task, a transport reconnecting.
//!
//! Delays double from `base` and stop growing at `max`. [`Backoff::jittered`]
//! applies "equal jitter" (a delay between half and all of the nominal one),
//! so processes that failed together do not retry together. [`Attempts`] is
//! the stateful form for loops that reset after a success.

use std::time::Duration;

/// Delays `base`, `2·base`, `4·base`, … capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// 200 ms doubling to 30 s (the supervisor's restart backoff).
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The nominal delay before try number `attempt + 1` after `attempt`
    /// failures (1-based: `delay(1) == base`).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// [`delay`](Self::delay) with equal jitter.
    pub fn jittered(&self, attempt: u32) -> Duration {
        jitter(self.delay(attempt))
    }
}

/// "Equal jitter": between half of `d` and `d`.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

/// A running count of failures against a [`Backoff`].
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    failures: u32,
}

impl Attempts {
    pub fn new(backoff: Backoff) -> Self {
        Attempts { backoff, failures: 0 }
    }

    /// Counts one more failure and returns the delay before the next try.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures)
    }

    /// [`fail`](Self::fail) with equal jitter.
    pub fn fail_jittered(&mut self) -> Duration {
        jitter(self.fail())
    }

    /// A success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_never_overflows() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let got: Vec<u64> = (1..=7).map(|a| b.delay(a).as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        assert_eq!(huge.delay(30), Duration::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn equal_jitter_stays_between_half_and_full() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j <= Duration::from_millis(1000), "{j:?}");
        }
    }

    #[test]
    fn attempts_grow_and_reset() {
        let mut a = Attempts::new(Backoff::new(Duration::from_millis(10), Duration::from_millis(35)));
        assert_eq!([a.fail(), a.fail(), a.fail()].map(|d| d.as_millis()), [10, 20, 35]);
        assert_eq!(a.failures(), 3);
        a.reset();
        assert_eq!(a.fail(), Duration::from_millis(10));
    }
}
