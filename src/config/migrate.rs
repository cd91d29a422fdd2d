//! `entities.<name>.migrate:` — an entity on its way to another transport
//! (see `migration` for what each phase runs, and `docs/migration.md`).

use serde::{Deserialize, Serialize};

/// `entities.<name>.migrate:`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MigrateConfig {
    /// The transport the entity moves to.
    pub to: String,
    /// Its name there. Default: the entity's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its partition count there. Default: the entity's `partitions`. When
    /// the counts match, a copy keeps its partition index; otherwise it is
    /// placed by its key.
    #[serde(default)]
    pub partitions: Option<u32>,
    /// `mirror`: producers and consumers stay on the old side, a mirror
    /// copies every message to the new side. `cutover`: producers write to
    /// the new side; consumers finish the old side up to its end, then go on
    /// on the new side, skipping the copies. `done`: the entity lives on `to`
    /// alone (the same as `transport: <to>`).
    pub phase: Phase,
    /// Allows `phase` to move backwards (`cutover` → `mirror`, `done` →
    /// `cutover`): producers return to the old side and consumers first
    /// finish the new side. Without it a reload that moves a phase back is
    /// refused.
    #[serde(default)]
    pub rollback: bool,
    /// `{ from, to }`: Confluent-framed Avro on the old side becomes
    /// Azure-framed Avro on the new side — in the mirror's copies and in
    /// what producers write during `cutover` and `done` (see
    /// `docs/schemas.md`). Consumers of the new side then read what a
    /// native Azure producer would write.
    #[serde(default)]
    pub transcode: Option<super::schema::TranscodeConfig>,
}

/// A migration phase, in the order phases move forward.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Mirror,
    Cutover,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Mirror => "mirror",
            Phase::Cutover => "cutover",
            Phase::Done => "done",
        }
    }

    /// The value of `conveyor_migration_phase` (0: not migrating).
    pub fn gauge(self) -> i64 {
        match self {
            Phase::Mirror => 1,
            Phase::Cutover => 2,
            Phase::Done => 3,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
