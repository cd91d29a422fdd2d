//! The dead-letter circuit breaker (`dead_letter_limit`).
//!
//! Counts processed and dead-lettered messages in one-second buckets over a
//! sliding window, plus the current run of consecutive dead letters. It trips
//! when the run reaches `max_consecutive`, or when the window holds at least
//! `min_messages` and more than `max_ratio` of them were dead-lettered. The
//! check happens *before* a batch's dead letters are written, so a tripped
//! breaker writes nothing more to the DLQ.

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
}

impl Breaker {
    pub fn new(limit: DeadLetterLimit) -> Self {
        Breaker { limit, origin: Instant::now(), buckets: VecDeque::new(), consecutive: 0 }
    }

    pub fn cooldown(&self) -> Duration {
        self.limit.cooldown.get()
    }

    /// Records one message's fate; `dead` when it would be dead-lettered.
    pub fn record(&mut self, now: Instant, dead: bool) {
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

    /// Why the breaker is open, if it is.
    pub fn tripped(&self) -> Option<String> {
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

    pub fn reset(&mut self) {
        self.buckets.clear();
        self.consecutive = 0;
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
            assert!(b.tripped().is_none(), "{i}");
        }
        b.record(now, true);
        assert!(b.tripped().unwrap().contains("10 messages dead-lettered in a row"));
        b.reset();
        assert!(b.tripped().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_ratio_only_with_enough_messages_and_forgets_old_ones() {
        let mut b = Breaker::new(limit());
        let t0 = Instant::now();
        // 6 of 10 dead: ratio exceeded but too few messages
        for i in 0..10 {
            b.record(t0, i % 5 < 3);
        }
        assert!(b.tripped().is_none());
        // a minute later the old ones are gone: 10 of 30, fine
        let t1 = t0 + Duration::from_secs(61);
        for i in 0..30 {
            b.record(t1, i % 3 == 0);
        }
        assert!(b.tripped().is_none(), "{:?}", b.tripped());
        // 20 more, 16 dead: 26 of 50 > 0.5
        for i in 0..20 {
            b.record(t1 + Duration::from_secs(1), i % 5 != 0);
        }
        assert!(b.tripped().unwrap().contains("26 of 50"), "{:?}", b.tripped());
    }
}
