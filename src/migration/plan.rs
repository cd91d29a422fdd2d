//! What runs for a migrating entity in each phase: a pure function of its
//! config (see the table in the module docs of `migration`).

use crate::config::{EntityConfig, Phase, Side};

/// How the consumers of an entity read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consume {
    /// One side.
    On(Side),
    /// `first` up to its end (the fence), then `then`.
    DrainThen { first: Side, then: Side },
}

impl Consume {
    /// Every side read, in order.
    pub fn sides(&self) -> Vec<&Side> {
        match self {
            Consume::On(s) => vec![s],
            Consume::DrainThen { first, then } => vec![first, then],
        }
    }
}

/// How consumers of entity `key` read it.
pub fn consume(e: &EntityConfig, key: &str) -> Consume {
    let (Some(m), Some(new)) = (&e.migrate, e.new_side(key)) else { return Consume::On(e.old_side(key)) };
    let old = e.old_side(key);
    match (m.phase, m.rollback) {
        (Phase::Mirror, false) => Consume::On(old),
        (Phase::Mirror, true) => Consume::DrainThen { first: new, then: old },
        (Phase::Cutover, _) => Consume::DrainThen { first: old, then: new },
        (Phase::Done, _) => Consume::On(new),
    }
}

/// The mirror of entity `key`, (from, to), while one runs.
pub fn mirror(e: &EntityConfig, key: &str) -> Option<(Side, Side)> {
    let m = e.migrate.as_ref()?;
    match m.phase {
        Phase::Mirror | Phase::Cutover => Some((e.old_side(key), e.new_side(key)?)),
        Phase::Done => None,
    }
}

/// Both sides of entity `key`, as (transport, name) pairs: copies from
/// either are skipped by its consumers.
pub fn sides(e: &EntityConfig, key: &str) -> Vec<(String, String)> {
    let mut v = vec![(e.transport.clone(), e.physical_name(key).to_string())];
    if let Some(n) = e.new_side(key) {
        v.push((n.transport, n.physical));
    }
    v
}

/// The consumer group of every mirror.
pub const MIRROR_GROUP: &str = "conveyor-mirror";

/// The name of the mirror task of entity `key`.
pub fn mirror_task(key: &str) -> String {
    format!("mirror:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MigrateConfig;

    fn entity(phase: Option<Phase>, rollback: bool) -> EntityConfig {
        EntityConfig {
            transport: "kafka".into(),
            partitions: 4,
            name: Some("t".into()),
            migrate: phase.map(|phase| MigrateConfig {
                to: "hubs".into(),
                name: Some("h".into()),
                partitions: Some(2),
                phase,
                rollback,
                transcode: None,
            }),
        }
    }

    #[test]
    fn who_writes_reads_and_mirrors_in_each_phase() {
        let old = Side { transport: "kafka".into(), physical: "t".into(), partitions: 4 };
        let new = Side { transport: "hubs".into(), physical: "h".into(), partitions: 2 };
        let drain = |first: &Side, then: &Side| Consume::DrainThen { first: first.clone(), then: then.clone() };
        #[rustfmt::skip]
        let table: Vec<(Option<Phase>, bool, &Side, Consume, bool)> = vec![
            // phase, rollback, producers write, consumers read, mirror runs
            (None, false, &old, Consume::On(old.clone()), false),
            (Some(Phase::Mirror), false, &old, Consume::On(old.clone()), true),
            (Some(Phase::Cutover), false, &new, drain(&old, &new), true),
            (Some(Phase::Done), false, &new, Consume::On(new.clone()), false),
            // rollback: back to the old side, finishing the new one first
            (Some(Phase::Mirror), true, &old, drain(&new, &old), true),
            (Some(Phase::Cutover), true, &new, drain(&old, &new), true),
            (Some(Phase::Done), true, &new, Consume::On(new.clone()), false),
        ];
        for (i, (phase, rollback, writes, reads, mirrors)) in table.into_iter().enumerate() {
            let e = entity(phase, rollback);
            assert_eq!(&e.write_side("x"), writes, "row {i}: producers");
            assert_eq!(consume(&e, "x"), reads, "row {i}: consumers");
            assert_eq!(mirror(&e, "x"), mirrors.then(|| (old.clone(), new.clone())), "row {i}: mirror");
        }
        assert_eq!(
            sides(&entity(Some(Phase::Mirror), false), "x"),
            [("kafka".into(), "t".into()), ("hubs".into(), "h".into())]
        );
    }
}
