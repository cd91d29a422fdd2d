//! The dead-letter circuit breaker (`dead_letter_limit`), shared by every
//! lane of a worker.
//!
//! Counts processed and dead-lettered messages in one-second buckets over a
//! sliding window, plus the current run of consecutive dead letters. It
//! trips when the run reaches `max_consecutive`, or when the window holds at
//! least `min_messages` and more than `max_ratio` of them were
//! dead-lettered. The check happens *before* a batch's dead letters are
//! written, so a tripped breaker writes nothing more to the DLQ.
//!
//! A trip *latches* for the cool-down: while open, no lane's success closes
//! it, and every lane's dead-letter decision becomes a pause. It closes (and
//! forgets its counts) when the cool-down has passed.

use super::policy::BreakerState;
use crate::config::DeadLetterLimit;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

pub struct Breaker {
    limit: DeadLetterLimit,
    origin: Instant,
    /// (second since origin, processed, dead)
    buckets: VecDeque<(u64, u64, u64)>,
    consecutive: u32,
    /// Open until then, and why.
    open: Option<(Instant, String)>,
}

impl Breaker {
    pub fn new(limit: DeadLetterLimit) -> Self {
        Breaker { limit, origin: Instant::now(), buckets: VecDeque::new(), consecutive: 0, open: None }
    }

    pub fn cooldown(&self) -> Duration {
        self.limit.cooldown.get()
    }

    /// Records one message's fate; `dead` when it would be dead-lettered.
    /// Counts nothing while open.
    pub fn record(&mut self, now: Instant, dead: bool) {
        if self.is_open(now) {
            return;
        }
        let sec = now.saturating_duration_since(self.origin).as_secs();
        match self.buckets.back_mut() {
            Some(b) if b.0 == sec => {
                b.1 += 1;
                b.2 += dead as u64;
            }
            _ => self.buckets.push_back((sec, 1, dead as u64)),
        }
        let window = self.limit.window.get().as_secs().max(1);
        while self.buckets.front().is_some_and(|b| b.0 + window <= sec) {
            self.buckets.pop_front();
        }
        self.consecutive = if dead { self.consecutive + 1 } else { 0 };
    }

    /// Why the counts exceed the limit, if they do.
    fn exceeded(&self) -> Option<String> {
        if self.consecutive >= self.limit.max_consecutive {
            return Some(format!(
                "{} messages dead-lettered in a row (dead_letter_limit.max_consecutive = {})",
                self.consecutive, self.limit.max_consecutive
            ));
        }
        let (n, d) = self.buckets.iter().fold((0, 0), |(n, d), b| (n + b.1, d + b.2));
        if n >= self.limit.min_messages as u64 && n > 0 && d as f64 / n as f64 > self.limit.max_ratio {
            return Some(format!(
                "{d} of {n} messages dead-lettered within {} (dead_letter_limit.max_ratio = {})",
                self.limit.window, self.limit.max_ratio
            ));
        }
        None
    }

    /// Trips (latched for the cool-down) when the counts exceed the limit;
    /// returns why when it is open, counting from an earlier trip too.
    pub fn check(&mut self, now: Instant) -> Option<String> {
        if self.is_open(now) {
            return self.open.as_ref().map(|(_, why)| why.clone());
        }
        let why = self.exceeded()?;
        self.open = Some((now + self.cooldown(), why.clone()));
        Some(why)
    }

    fn is_open(&mut self, now: Instant) -> bool {
        match &self.open {
            Some((until, _)) if now < *until => true,
            Some(_) => {
                // the cool-down has passed: close and start counting afresh
                self.open = None;
                self.buckets.clear();
                self.consecutive = 0;
                false
            }
            None => false,
        }
    }

    /// The state a dead-letter decision sees.
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if self.is_open(now) {
            let until = self.open.as_ref().map(|(u, _)| *u).unwrap_or(now);
            BreakerState::Open { remaining: until.saturating_duration_since(now) }
        } else {
            BreakerState::Closed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn limit() -> DeadLetterLimit {
        DeadLetterLimit {
            max_ratio: 0.5,
            window: Dur::secs(60),
            max_consecutive: 10,
            min_messages: 20,
            cooldown: Dur::secs(300),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_consecutive_dead_letters() {
        let mut b = Breaker::new(limit());
        let now = Instant::now();
        for i in 0..9 {
            b.record(now, true);
            assert!(b.check(now).is_none(), "{i}");
        }
        b.record(now, true);
        assert!(b.check(now).unwrap().contains("10 messages dead-lettered in a row"));
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_ratio_only_with_enough_messages_and_forgets_old_ones() {
        let mut b = Breaker::new(limit());
        let t0 = Instant::now();
        // 6 of 10 dead: ratio exceeded but too few messages
        for i in 0..10 {
            b.record(t0, i % 5 < 3);
        }
        assert!(b.check(t0).is_none());
        // a minute later the old ones are gone: 10 of 30, fine
        let t1 = t0 + Duration::from_secs(61);
        for i in 0..30 {
            b.record(t1, i % 3 == 0);
        }
        assert!(b.check(t1).is_none());
        // 20 more, 16 dead: 26 of 50 > 0.5
        let t2 = t1 + Duration::from_secs(1);
        for i in 0..20 {
            b.record(t2, i % 5 != 0);
        }
        assert!(b.check(t2).unwrap().contains("26 of 50"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trip_latches_across_lanes_until_the_cooldown_passes() {
        let mut b = Breaker::new(limit());
        let t0 = Instant::now();
        for _ in 0..10 {
            b.record(t0, true); // lane A's batch: all dead
        }
        assert!(b.check(t0).is_some(), "lane A trips it");
        // lane B's successes must not close it
        for _ in 0..100 {
            b.record(t0, false);
        }
        assert!(b.check(t0).is_some(), "still open after another lane's successes");
        let t1 = t0 + Duration::from_secs(120);
        assert_eq!(b.state(t1), BreakerState::Open { remaining: Duration::from_secs(180) });
        // lane C's next dead letter is a pause, not a write
        let p = super::super::policy::RetryPolicy {
            via: None,
            in_place: crate::backoff::Backoff::default(),
            dead_letter: true,
        };
        let d = super::super::policy::decide(Some(crate::classify::ErrorCategory::Permanent), 1, &p, b.state(t1));
        assert_eq!(d, super::super::policy::Decision::Pause(Duration::from_secs(180)));
        // after the cool-down: closed, counts forgotten
        let t2 = t0 + Duration::from_secs(301);
        assert_eq!(b.state(t2), BreakerState::Closed);
        b.record(t2, true);
        assert!(b.check(t2).is_none());
    }
}
