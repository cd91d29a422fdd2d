//! Where each migration stands (`conveyor migrate status`, the `migration`
//! section of `/readyz`, `conveyor_migration_*` metrics), read from the
//! transports themselves: the mirror's lag, what the consumer groups have
//! left on the old side, their lag on the new side, and the fence (the old
//! side's end positions) once producers write to the new side. A position
//! a transport cannot tell is shown as unknown (`null`), never as 0.

use super::plan::MIRROR_GROUP;
use crate::config::{Config, Phase};
use crate::transport::{Drain, Transport, drain_state};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one position read may take.
const READ_WITHIN: Duration = Duration::from_secs(5);

/// One migrating entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityStatus {
    pub entity: String,
    pub phase: Phase,
    /// `transport/name` of each side.
    pub from: String,
    pub to: String,
    /// Messages of the old side the mirror has not copied (while it runs).
    pub mirror_lag: Option<u64>,
    /// Per consumer group: messages of the old side not yet processed.
    pub old_remaining: BTreeMap<String, Option<u64>>,
    /// Per consumer group: lag on the new side.
    pub new_lag: BTreeMap<String, Option<u64>>,
    /// Once producers write to the new side: the old side's end per
    /// partition, which its consumers finish before moving on.
    pub fence: Option<Vec<i64>>,
}

/// The consumer groups that read entity `key`: its workers' and, for a
/// retry entity, the retry scheduler's.
pub fn groups(cfg: &Config, key: &str) -> Vec<String> {
    let mut g: Vec<String> =
        cfg.workers.iter().filter(|(_, w)| w.input == key).map(|(n, w)| w.group(n).to_string()).collect();
    if cfg.workers.values().any(|w| w.retry.as_ref().is_some_and(|r| r.via == key)) {
        g.push(crate::retry::GROUP.to_string());
    }
    g
}

async fn behind(t: &Arc<dyn Transport>, physical: &str, group: &str) -> Option<u64> {
    match tokio::time::timeout(READ_WITHIN, t.group_positions(physical, group)).await {
        Ok(Ok(p)) => match drain_state(&p) {
            Drain::Drained => Some(0),
            Drain::Behind(n) => Some(n),
            Drain::Unknown { .. } => None,
        },
        _ => None,
    }
}

/// The status of every migrating entity of `cfg`; `transport` gives an open
/// transport by name.
pub async fn status(cfg: &Config, transport: impl Fn(&str) -> Option<Arc<dyn Transport>>) -> Vec<EntityStatus> {
    let mut out = Vec::new();
    for (key, e) in &cfg.entities {
        let (Some(m), Some(new)) = (&e.migrate, e.new_side(key)) else { continue };
        let old = e.old_side(key);
        let (old_t, new_t) = (transport(&old.transport), transport(&new.transport));
        let groups = groups(cfg, key);
        let mut s = EntityStatus {
            entity: key.clone(),
            phase: m.phase,
            from: format!("{}/{}", old.transport, old.physical),
            to: format!("{}/{}", new.transport, new.physical),
            mirror_lag: None,
            old_remaining: BTreeMap::new(),
            new_lag: BTreeMap::new(),
            fence: None,
        };
        if let Some(t) = &old_t {
            if m.phase != Phase::Done {
                s.mirror_lag = behind(t, &old.physical, MIRROR_GROUP).await;
            }
            for g in &groups {
                s.old_remaining.insert(g.clone(), behind(t, &old.physical, g).await);
            }
            if m.phase >= Phase::Cutover
                && let Ok(Ok(parts)) = tokio::time::timeout(READ_WITHIN, t.partitions(&old.physical)).await
            {
                s.fence = Some(parts.iter().map(|p| p.next).collect());
            }
        }
        if let Some(t) = &new_t
            && m.phase >= Phase::Cutover
        {
            for g in &groups {
                s.new_lag.insert(g.clone(), behind(t, &new.physical, g).await);
            }
        }
        out.push(s);
    }
    out
}

/// How often [`watch`] reads the status.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the status of the config and transports `current` returns every
/// [`EVERY`], and at once after each applied reload (`applied` changes), and
/// hands it to `publish` (empty once nothing migrates), until `stop`.
pub async fn watch<T>(
    current: impl Fn() -> Option<(Config, T)>,
    transport_of: impl Fn(&T, &str) -> Option<Arc<dyn Transport>>,
    publish: impl Fn(Vec<EntityStatus>),
    mut applied: tokio::sync::watch::Receiver<u64>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        applied.mark_unchanged();
        match current() {
            Some((cfg, transports)) => publish(status(&cfg, |name| transport_of(&transports, name)).await),
            None => publish(Vec::new()),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
            // a reload: the phases may have changed
            Ok(()) = applied.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_reload_is_read_at_once_not_after_the_period() {
        let (applied, rx) = tokio::sync::watch::channel(0u64);
        let reads = Arc::new(AtomicUsize::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let r = reads.clone();
        let task = tokio::spawn(watch(
            || None::<(Config, ())>,
            |_: &(), _: &str| None,
            move |s| {
                assert!(s.is_empty(), "nothing migrates: the status is cleared");
                r.fetch_add(1, Ordering::SeqCst);
            },
            rx,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "read at start");
        applied.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 2, "read again right after the reload, not {EVERY:?} later");
        tokio::time::sleep(EVERY).await;
        assert_eq!(reads.load(Ordering::SeqCst), 3, "and every period");
        stop.cancel();
        task.await.unwrap();
    }
}
