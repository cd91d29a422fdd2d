//! Checks a config against the one it replaces (a reload; `conveyor check
//! --previous FILE`): a migration moves forward one phase at a time, and
//! back only with `rollback: true`; `migrate` is removed only where that
//! strands nothing.

use super::issues::Issues;
use super::migrate::Phase;
use super::model::{Config, EntityConfig};

/// Where an entity stands, for this check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Plain { transport: String },
    Migrating { from: String, to: String, phase: Phase, rollback: bool },
}

fn state(e: &EntityConfig) -> State {
    match &e.migrate {
        None => State::Plain { transport: e.transport.clone() },
        Some(m) => {
            State::Migrating { from: e.transport.clone(), to: m.to.clone(), phase: m.phase, rollback: m.rollback }
        }
    }
}

/// Why going from `prev` to `next` is refused, if it is.
fn refusal(prev: &State, next: &State) -> Option<String> {
    use State::*;
    match (prev, next) {
        (Plain { .. }, Plain { .. }) => None,
        (Plain { transport }, Migrating { from, phase, .. }) => {
            if from != transport {
                Some(format!("the entity is on {transport:?}: a migration starts from where it is"))
            } else if *phase != Phase::Mirror {
                Some(format!(
                    "a migration starts with `phase: mirror` (the new side needs the copies first), not {phase}"
                ))
            } else {
                None
            }
        }
        (Migrating { from, to, phase, .. }, Plain { transport }) => match phase {
            Phase::Done if transport == to => None,
            Phase::Mirror if transport == from => None,
            _ => Some(format!(
                "removing `migrate` in phase {phase} on {transport:?} strands messages: go on to `phase: done` and then write `transport: {to}`, or roll back to `phase: mirror` first"
            )),
        },
        (Migrating { from, to, phase, .. }, Migrating { from: from2, to: to2, phase: phase2, rollback }) => {
            if (from, to) != (from2, to2) {
                // a finished migration may start back the other way
                if *phase == Phase::Done && from2 == to && *phase2 == Phase::Mirror {
                    return None;
                }
                return Some(format!(
                    "this migration ({from} → {to}, phase {phase}) cannot turn into {from2} → {to2}: finish it (`phase: done`) first"
                ));
            }
            if phase2 > phase {
                (*phase == Phase::Mirror && *phase2 == Phase::Done).then(|| {
                    "phase mirror cannot go straight to done: `cutover` first (consumers finish the old side there)"
                        .to_string()
                })
            } else if phase2 < phase && !rollback {
                Some(format!(
                    "phase moves back from {phase} to {phase2}: that is a rollback; set `rollback: true` (consumers then finish the new side first)"
                ))
            } else {
                None
            }
        }
    }
}

/// Every entity of `next` also in `prev`, checked.
pub(super) fn transitions(prev: &Config, next: &Config, v: &mut Issues<'_>) {
    for (name, e) in &next.entities {
        let Some(p) = prev.entities.get(name) else { continue };
        if let Some(why) = refusal(&state(p), &state(e)) {
            let at: &[&str] = if e.migrate.is_some() {
                &["entities", name, "migrate", "phase"]
            } else {
                &["entities", name, "transport"]
            };
            v.error(at, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(t: &str) -> State {
        State::Plain { transport: t.into() }
    }

    fn mig(phase: Phase, rollback: bool) -> State {
        State::Migrating { from: "kafka".into(), to: "hubs".into(), phase, rollback }
    }

    #[test]
    fn forward_one_phase_at_a_time_back_only_as_a_rollback() {
        use Phase::*;
        #[rustfmt::skip]
        let table: Vec<(State, State, bool)> = vec![
            (plain("kafka"), plain("hubs"), true),                   // a plain move (drained by the reload)
            (plain("kafka"), mig(Mirror, false), true),
            (plain("kafka"), mig(Cutover, false), false),            // no copies yet
            (plain("kafka"), mig(Done, false), false),
            (plain("local"), mig(Mirror, false), false),             // not where it is
            (mig(Mirror, false), mig(Cutover, false), true),
            (mig(Cutover, false), mig(Done, false), true),
            (mig(Mirror, false), mig(Done, false), false),           // skips cutover
            (mig(Cutover, false), mig(Mirror, false), false),        // back without the flag
            (mig(Cutover, false), mig(Mirror, true), true),          // rollback
            (mig(Done, false), mig(Cutover, true), true),
            (mig(Done, false), mig(Cutover, false), false),
            (mig(Done, false), plain("hubs"), true),                 // the rewrite check suggests
            (mig(Done, false), plain("kafka"), false),
            (mig(Mirror, false), plain("kafka"), true),              // abandoned before the cut-over
            (mig(Cutover, false), plain("hubs"), false),
            (mig(Done, false), State::Migrating { from: "hubs".into(), to: "kafka".into(), phase: Mirror, rollback: false }, true),
            (mig(Mirror, false), State::Migrating { from: "kafka".into(), to: "local".into(), phase: Mirror, rollback: false }, false),
        ];
        for (i, (prev, next, ok)) in table.into_iter().enumerate() {
            assert_eq!(
                refusal(&prev, &next).is_none(),
                ok,
                "row {i}: {prev:?} -> {next:?}: {:?}",
                refusal(&prev, &next)
            );
        }
    }
}
