//! The consumers a transport started, each with the static group member it
//! joined as (`crate::instance`), so that a new consumer joining as the
//! same member first waits for the previous one to finish.
//!
//! A reload or a task restart drops the old subscription just before it
//! subscribes again. The old consumer then still makes its final commit
//! (Kafka) or checkpoint flush and ownership release (Event Hubs) in the
//! background; a new consumer with the same identity would fence it
//! mid-commit (Kafka) or have its fresh claims released under it (Event
//! Hubs), and what the old one processed would be redelivered.

use std::sync::Mutex;

/// Handles (`H`: a thread or a task) of the running consumers, keyed by
/// member (`None`: a dynamic member, never waited for).
pub struct Members<H> {
    list: Mutex<Vec<(Option<String>, H)>>,
}

impl<H> Default for Members<H> {
    fn default() -> Self {
        Members { list: Mutex::new(Vec::new()) }
    }
}

impl<H> Members<H> {
    /// Records a started consumer.
    pub fn push(&self, member: Option<String>, handle: H) {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).push((member, handle));
    }

    /// Takes the handles of earlier consumers joined as `member` (to wait
    /// for), dropping those `finished` along the way.
    pub fn take_same(&self, member: &str, finished: impl Fn(&H) -> bool) -> Vec<H> {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let (same, rest): (Vec<_>, Vec<_>) =
            list.drain(..).partition(|(m, h)| m.as_deref() == Some(member) || finished(h));
        *list = rest;
        same.into_iter().filter(|(_, h)| !finished(h)).map(|(_, h)| h).collect()
    }

    /// Takes every handle (closing the transport).
    pub fn take_all(&self) -> Vec<H> {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).drain(..).map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_member_is_waited_for_and_finished_ones_are_forgotten() {
        let m: Members<(u32, bool)> = Members::default();
        m.push(Some("g/a".into()), (1, false));
        m.push(Some("g/b".into()), (2, false));
        m.push(None, (3, false));
        m.push(Some("g/a".into()), (4, true)); // finished
        m.push(Some("g/c".into()), (5, true)); // finished
        let same: Vec<u32> = m.take_same("g/a", |h| h.1).into_iter().map(|h| h.0).collect();
        assert_eq!(same, vec![1]);
        let rest: Vec<u32> = m.take_all().into_iter().map(|h| h.0).collect();
        assert_eq!(rest, vec![2, 3]);
    }
}
