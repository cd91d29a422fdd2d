//! `dlq redrive`: the original messages of dead-letter envelopes produced
//! again to their origin (or another entity), for `conveyor dlq redrive`
//! and for the daemon's entity API (`POST /v1/entities/E/redrive`), which
//! runs it with the daemon's own transports while it holds an embedded
//! store.
//!
//! It reads the DLQ with its own consumer group (default
//! `conveyor-redrive`) from that group's committed position, re-produces
//! each matching envelope's original key, headers and payload — byte for
//! byte — with `conveyor-redrive-count` raised by one and retry bookkeeping
//! removed, and commits the DLQ position after each batch is acknowledged.
//! The group's position moves past every envelope it examined, matching or
//! not: to redrive selectively in several passes, give each pass its own
//! group. A dry run produces and commits nothing. It reads up to the end
//! each partition had when it began, and fails (never reports success after
//! reading less) when its group is not given a partition within
//! [`ASSIGN_WAIT`] or a partition stalls.

use crate::config::StartPosition;
use crate::dlq::Envelope;
use crate::retry;
use crate::transport::scan::{Next, ScanError, read_until};
use crate::transport::{
    Assignment, Headers, OutboundMessage, PartitionReader, PipelineMessage, Transport, TransportError,
};
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Slowest redrive rate, in messages per second (one every ~17 minutes).
pub const MIN_RATE: f64 = 0.001;

/// `rate` when it is a usable messages-per-second figure.
pub fn check_rate(rate: Option<f64>) -> Result<Option<f64>, RedriveError> {
    match rate {
        Some(r) if !(MIN_RATE..=1e9).contains(&r) => Err(RedriveError::BadRate(r)),
        other => Ok(other),
    }
}

/// Longest wait for a consumer group to be given every partition.
pub const ASSIGN_WAIT: Duration = Duration::from_secs(60);

/// Where an entity (by config name) is written now: its transport and name
/// there; `None` when the config has no such entity.
pub type Locate<'a> = dyn Fn(&str) -> Option<(Arc<dyn Transport>, String)> + Send + Sync + 'a;

/// Why a redrive stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("entity {0:?} is not in the config")]
    UnknownEntity(String),
    #[error("{entity:?}: {source}")]
    Transport { entity: String, source: TransportError },
    #[error("bad --filter {0:?}: write key=value with key one of category, worker, origin, type")]
    BadFilter(String),
    #[error("bad --rate {0}: give messages per second between {MIN_RATE} and 1e9")]
    BadRate(f64),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(
        "{entity:?}: consumer group {group:?} was not given partition(s) {missing:?} within {waited:?} (does another process hold them?)"
    )]
    NotAssigned { entity: String, group: String, missing: Vec<u32>, waited: Duration },
}

/// A `key=value` filter on envelopes.
#[derive(Debug, Clone)]
pub struct Filter(Vec<(String, String)>);

impl Filter {
    pub fn parse(items: &[String]) -> Result<Filter, RedriveError> {
        let mut v = Vec::new();
        for i in items {
            let (k, val) = i.split_once('=').ok_or_else(|| RedriveError::BadFilter(i.clone()))?;
            if !["category", "worker", "origin", "type"].contains(&k) {
                return Err(RedriveError::BadFilter(i.clone()));
            }
            v.push((k.to_string(), val.to_string()));
        }
        Ok(Filter(v))
    }

    pub fn matches(&self, e: &Envelope) -> bool {
        self.0.iter().all(|(k, v)| match k.as_str() {
            "category" => e.error.category.as_str() == v,
            "worker" => e.origin.worker == *v,
            "origin" => e.origin.entity == *v,
            "type" => e.error.kind == *v,
            _ => false,
        })
    }
}

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedriveReport {
    pub examined: u64,
    pub redriven: u64,
    pub skipped: u64,
    pub unreadable: u64,
    /// Envelopes written without their payload (too large): left alone.
    pub trimmed: u64,
    pub by_target: BTreeMap<String, u64>,
}

/// What to redrive (besides the DLQ itself).
pub struct RedriveOptions {
    pub from: String,
    pub to: Option<String>,
    pub filter: Filter,
    pub rate: Option<f64>,
    pub dry_run: bool,
    pub group: String,
    pub progress: bool,
}

/// A redrive asked of the daemon (`POST /v1/entities/{dlq}/redrive`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Target entity instead of each envelope's origin.
    #[serde(default)]
    pub to: Option<String>,
    /// `key=value` filters.
    #[serde(default)]
    pub filter: Vec<String>,
    /// Most messages per second.
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub dry_run: bool,
    /// Consumer group that remembers how far redrive got.
    pub group: String,
}

impl Request {
    /// The options of a redrive of `from`.
    pub fn options(&self, from: &str) -> Result<RedriveOptions, RedriveError> {
        Ok(RedriveOptions {
            from: from.to_string(),
            to: self.to.clone(),
            filter: Filter::parse(&self.filter)?,
            rate: check_rate(self.rate)?,
            dry_run: self.dry_run,
            group: self.group.clone(),
            progress: false,
        })
    }
}

/// Reads every record of `physical` present when called that consumer
/// group `group` has not committed, with that group (so `each` may commit).
async fn consume_to_end(
    t: &Arc<dyn Transport>,
    entity: &str,
    physical: &str,
    group: &str,
    mut each: impl AsyncFnMut(&mut Box<dyn PartitionReader>, Vec<PipelineMessage>) -> Result<Next, RedriveError>,
) -> Result<(), RedriveError> {
    let terr = |source| RedriveError::Transport { entity: entity.to_string(), source };
    // where the group stands, where each partition ends: only partitions
    // with something left to read are waited for
    let ends: BTreeMap<u32, i64> = match t.group_positions(physical, group).await {
        Ok(ps) => ps
            .into_iter()
            .filter(|g| g.committed.unwrap_or(g.info.earliest).max(g.info.earliest) < g.info.next)
            .map(|g| (g.info.partition, g.info.next))
            .collect(),
        // the transport cannot tell (Event Hubs without a checkpoint store)
        Err(_) => t
            .partitions(physical)
            .await
            .map_err(terr)?
            .into_iter()
            .filter(|p| p.earliest < p.next)
            .map(|p| (p.partition, p.next))
            .collect(),
    };
    if ends.is_empty() {
        return Ok(());
    }
    let mut sub = t.subscribe(physical, group, StartPosition::Earliest).await.map_err(terr)?;
    let mut pending: Vec<u32> = ends.keys().copied().collect();
    let deadline = tokio::time::Instant::now() + ASSIGN_WAIT;
    while !pending.is_empty() {
        let next = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(n) => n.map_err(terr)?,
            Err(_) => {
                return Err(RedriveError::NotAssigned {
                    entity: entity.to_string(),
                    group: group.to_string(),
                    missing: pending,
                    waited: ASSIGN_WAIT,
                });
            }
        };
        let Assignment::Assigned(mut r) = next else { continue };
        let p = r.partition();
        let Some(end) = ends.get(&p).copied() else { continue };
        pending.retain(|x| *x != p);
        match read_until(&mut r, entity, end, &mut each).await {
            Ok(Next::More) => {}
            Ok(Next::Stop) => return Ok(()),
            // committed through the end meanwhile (another redrive)
            Err(RedriveError::Scan(ScanError::Stalled { .. }))
                if committed_through(t, physical, group, p, end).await => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `group` has committed everything of partition `p` before `end`.
async fn committed_through(t: &Arc<dyn Transport>, physical: &str, group: &str, p: u32, end: i64) -> bool {
    match t.group_positions(physical, group).await {
        Ok(ps) => ps.iter().any(|g| g.info.partition == p && g.committed.is_some_and(|c| c >= end)),
        Err(_) => false,
    }
}

/// Redrives `o.from` as described in the module docs. `locate` gives the
/// transport and physical name where an entity (by config name) is
/// written now; `None` for an entity not in the config.
pub async fn run(locate: &Locate<'_>, o: &RedriveOptions) -> Result<RedriveReport, RedriveError> {
    let (t, physical) = locate(&o.from).ok_or_else(|| RedriveError::UnknownEntity(o.from.clone()))?;
    if let Some(to) = &o.to {
        locate(to).ok_or_else(|| RedriveError::UnknownEntity(to.clone()))?;
    }
    let total: i64 = t
        .partitions(&physical)
        .await
        .map_err(|source| RedriveError::Transport { entity: o.from.clone(), source })?
        .iter()
        .map(|p| p.next - p.earliest)
        .sum();
    let bar = if o.progress { ProgressBar::new(total.max(0) as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} redrive {pos}/{len} [{bar:30}] {per_sec} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut report = RedriveReport::default();
    let started = tokio::time::Instant::now();
    consume_to_end(&t, &o.from, &physical, &o.group, async |reader: &mut Box<dyn PartitionReader>, batch: Vec<PipelineMessage>| {
        let mut out: BTreeMap<String, Vec<OutboundMessage>> = BTreeMap::new();
        for m in &batch {
            report.examined += 1;
            let env = match Envelope::parse(&m.payload) {
                Ok(e) => e,
                Err(e) => {
                    report.unreadable += 1;
                    tracing::warn!(entity = %o.from, partition = m.partition, position = m.position, error = %e, "unreadable envelope left alone");
                    continue;
                }
            };
            if !o.filter.matches(&env) {
                report.skipped += 1;
                continue;
            }
            if env.payload_truncated {
                // the payload is gone: nothing to send back
                report.trimmed += 1;
                tracing::warn!(entity = %o.from, partition = m.partition, position = m.position, "trimmed envelope (no payload) left alone");
                continue;
            }
            let target = o.to.clone().unwrap_or_else(|| env.origin.entity.clone());
            if locate(&target).is_none() {
                return Err(RedriveError::UnknownEntity(target));
            }
            match rebuild(&env) {
                Ok(msg) => out.entry(target).or_default().push(msg),
                Err(e) => {
                    report.unreadable += 1;
                    tracing::warn!(entity = %o.from, position = m.position, error = %e, "envelope with bad base64 left alone");
                }
            }
        }
        for (target, msgs) in out {
            let n = msgs.len() as u64;
            // rate limit: never ahead of `rate` messages per second on average
            if let Some(rate) = o.rate.filter(|r| *r > 0.0) {
                // a rate that `check_rate` let through keeps this finite
                let after = Duration::try_from_secs_f64((report.redriven + n) as f64 / rate).unwrap_or(Duration::MAX);
                if let Some(due) = started.checked_add(after) {
                    tokio::time::sleep_until(due).await;
                }
            }
            if !o.dry_run {
                let (tt, tphys) = locate(&target).ok_or_else(|| RedriveError::UnknownEntity(target.clone()))?;
                tt.producer().send(&tphys, msgs).await.map_err(|source| RedriveError::Transport { entity: target.clone(), source })?;
            }
            report.redriven += n;
            *report.by_target.entry(target).or_default() += n;
        }
        if !o.dry_run {
            let last = batch.last().expect("non-empty batch");
            reader.commit(last).await.map_err(|source| RedriveError::Transport { entity: o.from.clone(), source })?;
        }
        bar.inc(batch.len() as u64);
        bar.set_message(format!("{} redriven", report.redriven));
        Ok(Next::More)
    })
    .await?;
    bar.finish_and_clear();
    Ok(report)
}

/// The original message of an envelope, ready to produce again.
fn rebuild(env: &Envelope) -> Result<OutboundMessage, base64::DecodeError> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut headers = Headers::default();
    for h in &env.headers {
        headers.0.push((h.name.clone(), b64.decode(&h.value)?.into()));
    }
    let mut headers = retry::strip(&headers);
    let count = headers.get_str(retry::H_REDRIVE).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    headers.set(retry::H_REDRIVE, (count + 1).to_string());
    Ok(OutboundMessage {
        key: env.original_key()?.map(Into::into),
        headers,
        payload: env.original_payload()?.into(),
        partition: None,
        timestamp_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_what_a_clock_can_wait_for_are_refused() {
        let table = [
            (None, true),
            (Some(1.0), true),
            (Some(MIN_RATE), true),
            (Some(1e9), true),
            (Some(0.0), false),
            (Some(1e-300), false),
            (Some(-5.0), false),
            (Some(f64::NAN), false),
            (Some(f64::INFINITY), false),
        ];
        for (rate, ok) in table {
            assert_eq!(check_rate(rate).is_ok(), ok, "{rate:?}");
        }
    }
}
