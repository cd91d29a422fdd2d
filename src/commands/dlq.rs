//! `conveyor dlq inspect` and `conveyor dlq redrive`.
//!
//! Both open the config's transports directly. `inspect` reaches an
//! embedded DLQ that a running daemon holds through the daemon's entity API
//! (`admin::entities`); `redrive` commits as a consumer group, which that
//! API does not offer, so for an embedded DLQ stop the daemon first (the
//! error says so). Broker transports can be used while the daemon runs.
//!
//! Both read up to the end each partition had when they started, and never
//! report success after reading less (`transport::scan`: a broker that does
//! not answer is an error, not "0 examined").
//!
//! `inspect` reads as no consumer group (`Transport::open_reader`): it
//! changes nothing anywhere.
//!
//! `redrive` reads the DLQ with its own consumer group (default
//! `conveyor-redrive`) from that group's committed position, re-produces each
//! matching envelope's original key, headers and payload — byte for byte —
//! to its origin entity (or `--to`), with `conveyor-redrive-count` raised by
//! one and retry bookkeeping removed, and commits the DLQ position after each
//! batch is acknowledged. The group's position moves past every envelope it
//! examined, matching or not: to redrive selectively in several passes, give
//! each pass its own `--group`. `--dry-run` produces and commits nothing.

pub use super::error::ToolError;
use crate::config::{Config, StartPosition};
use crate::dlq::Envelope;
use crate::retry;
use crate::runtime::Transports;
use crate::transport::scan::{Next, ScanError, browse, read_until};
use crate::transport::{Assignment, Headers, OutboundMessage, PartitionReader, PipelineMessage, Transport};
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for a consumer group to be given every partition.
pub const ASSIGN_WAIT: Duration = Duration::from_secs(60);
/// Longest flush of the transports when a tool is done.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// A `key=value` filter on envelopes.
#[derive(Debug, Clone)]
pub struct Filter(Vec<(String, String)>);

impl Filter {
    pub fn parse(items: &[String]) -> Result<Filter, ToolError> {
        let mut v = Vec::new();
        for i in items {
            let (k, val) = i.split_once('=').ok_or_else(|| ToolError::BadFilter(i.clone()))?;
            if !["category", "worker", "origin", "type"].contains(&k) {
                return Err(ToolError::BadFilter(i.clone()));
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

/// One DLQ record: where it sits and what it says.
pub struct Entry {
    pub message: PipelineMessage,
    pub envelope: Result<Envelope, serde_json::Error>,
}

/// Reads every record of `physical` present when called that consumer
/// group `group` has not committed, with that group (so `each` may commit).
async fn consume_to_end(
    t: &Arc<dyn Transport>,
    entity: &str,
    physical: &str,
    group: &str,
    mut each: impl AsyncFnMut(&mut Box<dyn PartitionReader>, Vec<PipelineMessage>) -> Result<Next, ToolError>,
) -> Result<(), ToolError> {
    let terr = |source| ToolError::Transport { entity: entity.to_string(), source };
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
                return Err(ToolError::NotAssigned {
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
            Err(ToolError::Scan(ScanError::Stalled { .. })) if committed_through(t, physical, group, p, end).await => {}
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

fn entry(m: PipelineMessage) -> Entry {
    let envelope = Envelope::parse(&m.payload);
    Entry { message: m, envelope }
}

/// `conveyor dlq inspect`: the first `limit` envelopes (table or JSON lines).
pub async fn inspect(cfg: &Config, entity: &str, limit: usize, json: bool) -> Result<usize, ToolError> {
    if !cfg.entities.contains_key(entity) {
        return Err(ToolError::UnknownEntity(entity.to_string()));
    }
    let ts = Transports::open_for_tool(cfg).await?;
    let (t, physical) = ts.entity(cfg, entity).ok_or_else(|| ToolError::UnknownEntity(entity.to_string()))?;
    let mut shown = 0usize;
    if !json {
        println!(
            "{:<24} {:<36} {:<18} {:<10} {:<16} {:>3}  error",
            "dead-lettered at", "origin", "worker", "category", "type", "#"
        );
    }
    let read: Result<_, ToolError> = browse(&t, entity, &physical, async |_r, batch| {
        for m in batch {
            if shown >= limit {
                return Ok(Next::Stop);
            }
            shown += 1;
            let e = entry(m);
            match (&e.envelope, json) {
                (Ok(env), true) => {
                    let mut v = serde_json::to_value(env).unwrap_or_default();
                    v["dlq_partition"] = e.message.partition.into();
                    v["dlq_position"] = e.message.position.into();
                    println!("{v}");
                }
                (Ok(env), false) => {
                    let origin = format!("{}/{}@{}", env.origin.entity, env.origin.partition, env.origin.position);
                    let msg = env.error.message.replace('\n', " ");
                    let msg = crate::text::clip(&msg, 80);
                    println!(
                        "{:<24} {:<36} {:<18} {:<10} {:<16} {:>3}  {msg}",
                        env.dead_lettered_at, origin, env.origin.worker, env.error.category, env.error.kind, env.error.attempts
                    );
                }
                (Err(err), true) => println!(
                    "{}",
                    serde_json::json!({"dlq_partition": e.message.partition, "dlq_position": e.message.position, "unreadable": err.to_string()})
                ),
                (Err(err), false) => println!(
                    "{:<24} {:<36} unreadable envelope at {entity}/{}@{}: {err}",
                    "-", "-", e.message.partition, e.message.position
                ),
            }
        }
        Ok(Next::More)
    })
    .await;
    ts.close(CLOSE_WITHIN).await;
    read?;
    if !json {
        eprintln!("{shown} envelope(s) shown from {entity}");
    }
    Ok(shown)
}

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedriveReport {
    pub examined: u64,
    pub redriven: u64,
    pub skipped: u64,
    pub unreadable: u64,
    /// Envelopes written without their payload (too large): left alone.
    pub trimmed: u64,
    pub by_target: BTreeMap<String, u64>,
}

pub struct RedriveOptions {
    pub from: String,
    pub to: Option<String>,
    pub filter: Filter,
    pub rate: Option<f64>,
    pub dry_run: bool,
    pub group: String,
    pub progress: bool,
}

/// `conveyor dlq redrive`.
pub async fn redrive(cfg: &Config, o: &RedriveOptions) -> Result<RedriveReport, ToolError> {
    for e in std::iter::once(&o.from).chain(o.to.as_ref()) {
        if !cfg.entities.contains_key(e) {
            return Err(ToolError::UnknownEntity(e.clone()));
        }
    }
    let ts = Transports::open(cfg).await?;
    let r = redrive_with(cfg, &ts, o).await;
    ts.close(CLOSE_WITHIN).await;
    r
}

async fn redrive_with(cfg: &Config, ts: &Transports, o: &RedriveOptions) -> Result<RedriveReport, ToolError> {
    let (t, physical) = ts.entity(cfg, &o.from).ok_or_else(|| ToolError::UnknownEntity(o.from.clone()))?;
    if let Some(to) = &o.to {
        ts.entity(cfg, to).ok_or_else(|| ToolError::UnknownEntity(to.clone()))?;
    }
    let total: i64 = t
        .partitions(&physical)
        .await
        .map_err(|source| ToolError::Transport { entity: o.from.clone(), source })?
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
    consume_to_end(&t, &o.from, &physical, &o.group, async |reader, batch| {
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
            if !cfg.entities.contains_key(&target) {
                return Err(ToolError::UnknownEntity(target));
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
                let due = started + Duration::from_secs_f64((report.redriven + n) as f64 / rate);
                tokio::time::sleep_until(due).await;
            }
            if !o.dry_run {
                let (tt, tphys) = ts.entity(cfg, &target).expect("checked above");
                tt.producer().send(&tphys, msgs).await.map_err(|source| ToolError::Transport { entity: target.clone(), source })?;
            }
            report.redriven += n;
            *report.by_target.entry(target).or_default() += n;
        }
        if !o.dry_run {
            let last = batch.last().expect("non-empty batch");
            reader.commit(last).await.map_err(|source| ToolError::Transport { entity: o.from.clone(), source })?;
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
