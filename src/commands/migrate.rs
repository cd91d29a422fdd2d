//! `conveyor migrate verify` and `conveyor migrate status` (see
//! `migration::verify` and `migration::status` for what they compare and
//! show). `verify` reads the old side first, waits (at most
//! [`MIRROR_WAIT`]) until the mirror has copied what it read, then reads the
//! new side: it gives a meaningful answer while traffic flows. Both open only the transports they read, from the config, and
//! write nothing. An embedded durable store admits one process: while the
//! daemon holds it, stop the daemon first (the error says so).
//!
//! Exit codes of `verify`: 0 equal, 1 different (what differs is printed),
//! 2 a side unreachable (which one), 64 bad usage.

use crate::cli::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::{Config, Side};
use crate::migration::status::{self, EntityStatus};
use crate::migration::verify::{self, Compare, Rec, Report};
use crate::runtime::{LiveTransport, RuntimeError, transports};
use crate::transport::scan::{self, Next, ScanError};
use crate::transport::{PartitionInfo, PartitionReader, PipelineMessage, Transport};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Exit code: a side could not be read.
pub const EXIT_UNREACHABLE: u8 = 2;

/// Why a migration command failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Usage(String),
    #[error("the {side} side ({at}) cannot be read: {source}")]
    Unreachable { side: &'static str, at: String, source: Box<dyn std::error::Error + Send + Sync> },
}

impl MigrateError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            MigrateError::Usage(_) => EXIT_USAGE,
            MigrateError::Unreachable { .. } => EXIT_UNREACHABLE,
        }
    }
}

/// What `verify` found for one entity.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub entity: String,
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub report: Report,
}

impl Verified {
    /// The process exit code: 0 equal, 1 different.
    pub fn exit_code(&self) -> u8 {
        if self.report.equal { 0 } else { EXIT_FAILURE }
    }

    /// A human-readable summary.
    pub fn text(&self) -> String {
        let r = &self.report;
        let mut s =
            format!("{}: {} → {}: {}\n", self.entity, self.from, self.to, if r.equal { "EQUAL" } else { "DIFFERENT" });
        let old: u64 = r.old_counts.values().sum();
        let copies: u64 = r.copy_counts.values().sum();
        s += &format!(
            "  messages: {old} on the old side, {copies} copies on the new side ({} duplicate copies, {} produced there, {} copied after the old side was read, {} of messages the old side no longer holds)\n",
            r.duplicates, r.native, r.later, r.expired
        );
        for (p, n) in &r.old_counts {
            let c = r.copy_counts.get(p).copied().unwrap_or(0);
            if c != *n {
                s += &format!("  partition {p}: {n} on the old side, {c} copies\n");
            }
        }
        s += &format!("  keys: {} compared, {} with a different order-sensitive hash\n", r.keys, r.keys_differing);
        for (what, f) in
            [("missing", &r.missing), ("extra", &r.extra), ("changed", &r.changed), ("out of order", &r.out_of_order)]
        {
            if let Some(e) = &f.first {
                let at = |p: Option<u32>, pos: Option<i64>| match (p, pos) {
                    (Some(p), Some(pos)) => format!("{p}@{pos}"),
                    _ => "-".into(),
                };
                s += &format!(
                    "  {what}: {} (first: old {}, new {}, key {})\n",
                    f.count,
                    at(e.old_partition, e.old_position),
                    at(e.new_partition, e.new_position),
                    e.key.as_deref().unwrap_or("(none)")
                );
            }
        }
        s
    }
}

/// The migrating entity `entity` of `cfg` and its two sides.
fn sides(cfg: &Config, entity: &str) -> Result<(Side, Side), MigrateError> {
    let e = cfg
        .entities
        .get(entity)
        .ok_or_else(|| MigrateError::Usage(format!("entity {entity:?} is not in the config")))?;
    let new = e.new_side(entity).ok_or_else(|| {
        MigrateError::Usage(format!(
            "entity {entity:?} does not migrate: give it `migrate: {{ to: TRANSPORT, phase: mirror }}`"
        ))
    })?;
    Ok((e.old_side(entity), new))
}

/// Opens transport `name` of `cfg` for reading `side` (`old` or `new`).
async fn open(cfg: &Config, name: &str, side: &'static str, at: &str) -> Result<LiveTransport, MigrateError> {
    transports::open(cfg, name, &crate::instance::Membership::Dynamic)
        .await
        .map_err(|e: RuntimeError| MigrateError::Unreachable { side, at: at.to_string(), source: Box::new(e) })
}

/// Reads one side as records, with the extents it read up to.
async fn read_side(
    t: &Arc<dyn Transport>,
    entity: &str,
    physical: &str,
    old_side: (&str, &str),
    how: Compare,
    bar: &ProgressBar,
) -> Result<(Vec<Rec>, Vec<PartitionInfo>), ScanError> {
    let mut out = Vec::new();
    let extents =
        scan::browse(t, entity, physical, async |_r: &mut Box<dyn PartitionReader>, batch: Vec<PipelineMessage>| {
            bar.inc(batch.len() as u64);
            out.extend(batch.iter().map(|m| Rec::of(m, old_side, how)));
            Ok::<_, ScanError>(Next::More)
        })
        .await?;
    Ok((out, extents))
}

fn bar(total: u64, progress: bool) -> ProgressBar {
    let bar = if progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} verify {pos}/{len} [{bar:30}] {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Longest wait for the mirror to copy what the old side held when it was
/// read.
pub const MIRROR_WAIT: Duration = Duration::from_secs(60);

/// Waits (at most [`MIRROR_WAIT`]) until the mirror's group has committed
/// `extents` on the old side, so the new side is read after the copies of
/// everything read there were written.
async fn mirror_caught_up(t: &Arc<dyn Transport>, physical: &str, extents: &[PartitionInfo]) {
    let deadline = tokio::time::Instant::now() + MIRROR_WAIT;
    loop {
        if let Ok(ps) = t.group_positions(physical, crate::migration::plan::MIRROR_GROUP).await {
            let done = extents.iter().all(|e| {
                e.next <= e.earliest
                    || ps.iter().any(|g| g.info.partition == e.partition && g.committed.is_some_and(|c| c >= e.next))
            });
            if done {
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(entity = %physical, "the mirror has not copied everything the old side held within {MIRROR_WAIT:?}; comparing anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `conveyor migrate verify`: compares both sides of `entity`.
pub async fn verify(cfg: &Config, entity: &str, progress: bool) -> Result<Verified, MigrateError> {
    let (old, new) = sides(cfg, entity)?;
    let old_at = format!("{}/{}", old.transport, old.physical);
    let new_at = format!("{}/{}", new.transport, new.physical);
    let old_t = open(cfg, &old.transport, "old", &old_at).await?;
    let new_t =
        if new.transport == old.transport { old_t.clone() } else { open(cfg, &new.transport, "new", &new_at).await? };
    let transcoded = cfg.entities[entity].migrate.as_ref().is_some_and(|m| m.transcode.is_some());
    let how = if transcoded { Compare::Records } else { Compare::Bytes };
    let result = verify_with(entity, (&old, &old_t.transport), (&new, &new_t.transport), how, progress).await;
    for t in [&old_t, &new_t] {
        t.transport.close(Duration::from_secs(10)).await;
    }
    result
}

/// The parity check of `entity` over open transports: the old side is read
/// first; once the mirror has copied what it held, the new side.
pub async fn verify_with(
    entity: &str,
    (old, old_t): (&Side, &Arc<dyn Transport>),
    (new, new_t): (&Side, &Arc<dyn Transport>),
    how: Compare,
    progress: bool,
) -> Result<Verified, MigrateError> {
    let old_at = format!("{}/{}", old.transport, old.physical);
    let new_at = format!("{}/{}", new.transport, new.physical);
    let total = async |t: &Arc<dyn Transport>, physical: &str| -> u64 {
        t.partitions(physical).await.map(|ps| ps.iter().map(|p| (p.next - p.earliest).max(0) as u64).sum()).unwrap_or(0)
    };
    let bar = bar(total(old_t, &old.physical).await + total(new_t, &new.physical).await, progress);
    let result = async {
        bar.set_message(old_at.clone());
        let unreachable = |side: &'static str, at: &str| {
            let at = at.to_string();
            move |e: ScanError| MigrateError::Unreachable { side, at, source: Box::new(e) }
        };
        let old_side = (old.transport.as_str(), old.physical.as_str());
        let (old_recs, extents) =
            read_side(old_t, entity, &old.physical, old_side, how, &bar).await.map_err(unreachable("old", &old_at))?;
        mirror_caught_up(old_t, &old.physical, &extents).await;
        bar.set_message(new_at.clone());
        let (new_recs, _) =
            read_side(new_t, entity, &new.physical, old_side, how, &bar).await.map_err(unreachable("new", &new_at))?;
        let extents: BTreeMap<u32, (i64, i64)> = extents.iter().map(|e| (e.partition, (e.earliest, e.next))).collect();
        let report = verify::compare(&old_recs, &extents, &new_recs);
        Ok(Verified { entity: entity.to_string(), from: old_at.clone(), to: new_at.clone(), report })
    }
    .await;
    bar.finish_and_clear();
    result
}

/// `conveyor migrate status`: where every migrating entity stands.
pub async fn status(cfg: &Config) -> Result<Vec<EntityStatus>, MigrateError> {
    let mut names: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (key, e) in &cfg.entities {
        if let Some(new) = e.new_side(key) {
            names.insert(e.transport.clone());
            names.insert(new.transport);
        }
    }
    let mut open_ones: BTreeMap<String, LiveTransport> = BTreeMap::new();
    for name in names {
        let t = open(cfg, &name, "old or new", &name).await?;
        open_ones.insert(name, t);
    }
    let s = status::status(cfg, |name| open_ones.get(name).map(|t| t.transport.clone())).await;
    for t in open_ones.values() {
        t.transport.close(Duration::from_secs(10)).await;
    }
    Ok(s)
}

/// The status as a table.
pub fn status_text(s: &[EntityStatus]) -> String {
    let n = |v: &Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    let mut out =
        format!("{:<32} {:<8} {:>10} {:>12} {:>10}  fence\n", "entity", "phase", "mirror lag", "old left", "new lag");
    for e in s {
        let sum =
            |m: &BTreeMap<String, Option<u64>>| -> Option<u64> { m.values().try_fold(0u64, |a, v| v.map(|v| a + v)) };
        let fence = e.fence.as_ref().map(|f| format!("{f:?}")).unwrap_or_else(|| "-".into());
        out += &format!(
            "{:<32} {:<8} {:>10} {:>12} {:>10}  {fence}\n",
            e.entity,
            e.phase.as_str(),
            n(&e.mirror_lag),
            n(&sum(&e.old_remaining)),
            if e.new_lag.is_empty() { "-".into() } else { n(&sum(&e.new_lag)) },
        );
    }
    out
}
