//! `conveyor dlq inspect` and `conveyor dlq redrive`.
//!
//! Both open the config's transports directly. The embedded durable store
//! admits one process, so for an embedded DLQ stop the daemon first (the
//! error says so); broker transports can be used while it runs.
//!
//! `redrive` reads the DLQ with its own consumer group (default
//! `conveyor-redrive`) up to the end it saw when it started, re-produces each
//! matching envelope's original key, headers and payload — byte for byte —
//! to its origin entity (or `--to`), with `conveyor-redrive-count` raised by
//! one and retry bookkeeping removed, and commits the DLQ position after each
//! batch is acknowledged. The group's position moves past every envelope it
//! examined, matching or not: to redrive selectively in several passes, give
//! each pass its own `--group`. `--dry-run` produces and commits nothing.

use super::Envelope;
use crate::app::{AppError, Transports, open_transports};
use crate::config::{Config, StartPosition};
use crate::retry;
use crate::transport::{Assignment, Headers, OutboundMessage, PipelineMessage, Transport, TransportError};
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("entity {0:?} is not in the config")]
    UnknownEntity(String),
    #[error("{entity:?}: {source}")]
    Transport { entity: String, source: TransportError },
    #[error("bad --filter {0:?}: write key=value with key one of category, worker, origin, type")]
    BadFilter(String),
}

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
    pub envelope: Result<Envelope, String>,
}

/// Reads every record of `entity` present when called, partition by
/// partition, with `group` (nothing is committed).
async fn read_to_end(
    t: &Arc<dyn Transport>,
    entity: &str,
    physical: &str,
    group: &str,
    mut each: impl AsyncFnMut(
        &mut Box<dyn crate::transport::PartitionReader>,
        Vec<PipelineMessage>,
    ) -> Result<bool, ToolError>,
) -> Result<(), ToolError> {
    let terr = |source| ToolError::Transport { entity: entity.to_string(), source };
    let ends: BTreeMap<u32, i64> =
        t.partitions(physical).await.map_err(terr)?.into_iter().map(|p| (p.partition, p.next)).collect();
    let mut sub = t.subscribe(physical, group, StartPosition::Earliest).await.map_err(terr)?;
    let mut seen = 0;
    while seen < ends.len() {
        let Assignment::Assigned(mut r) = sub.next().await.map_err(terr)? else { continue };
        seen += 1;
        let end = ends.get(&r.partition()).copied().unwrap_or(0);
        loop {
            let mut batch = Vec::new();
            match tokio::time::timeout(Duration::from_millis(500), r.fetch(500, &mut batch)).await {
                Ok(res) => res.map_err(terr)?,
                Err(_) => break, // nothing more (committed past the end already)
            }
            batch.retain(|m| m.position < end);
            let reached_end = batch.last().is_none_or(|m| m.position + 1 >= end);
            if !batch.is_empty() && !each(&mut r, batch).await? {
                return Ok(());
            }
            if reached_end {
                break;
            }
        }
    }
    Ok(())
}

fn entry(m: PipelineMessage) -> Entry {
    let envelope = Envelope::parse(&m.payload).map_err(|e| e.to_string());
    Entry { message: m, envelope }
}

/// `conveyor dlq inspect`: the first `limit` envelopes (table or JSON lines).
pub async fn inspect(cfg: &Config, entity: &str, limit: usize, json: bool) -> Result<usize, ToolError> {
    let ts = open_transports(cfg).await?;
    let (t, physical) = ts.entity(cfg, entity).ok_or_else(|| ToolError::UnknownEntity(entity.to_string()))?;
    let mut shown = 0usize;
    if !json {
        println!(
            "{:<24} {:<36} {:<18} {:<10} {:<16} {:>3}  error",
            "dead-lettered at", "origin", "worker", "category", "type", "#"
        );
    }
    let group = format!("conveyor-inspect-{}", fastrand::u64(..));
    read_to_end(&t, entity, &physical, &group, async |_r, batch| {
        for m in batch {
            if shown >= limit {
                return Ok(false);
            }
            shown += 1;
            let e = entry(m);
            match (&e.envelope, json) {
                (Ok(env), true) => {
                    let mut v = serde_json::to_value(env).expect("envelope serializes");
                    v["dlq_partition"] = e.message.partition.into();
                    v["dlq_position"] = e.message.position.into();
                    println!("{v}");
                }
                (Ok(env), false) => {
                    let origin = format!("{}/{}@{}", env.origin.entity, env.origin.partition, env.origin.position);
                    let mut msg = env.error.message.replace('\n', " ");
                    msg.truncate(80);
                    println!(
                        "{:<24} {:<36} {:<18} {:<10} {:<16} {:>3}  {msg}",
                        env.dead_lettered_at, origin, env.origin.worker, env.error.category, env.error.kind, env.error.attempts
                    );
                }
                (Err(err), true) => println!(
                    "{}",
                    serde_json::json!({"dlq_partition": e.message.partition, "dlq_position": e.message.position, "unreadable": err})
                ),
                (Err(err), false) => println!(
                    "{:<24} {:<36} unreadable envelope at {entity}/{}@{}: {err}",
                    "-", "-", e.message.partition, e.message.position
                ),
            }
        }
        Ok(true)
    })
    .await?;
    ts.close().await;
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
    let ts = open_transports(cfg).await?;
    let r = redrive_with(cfg, &ts, o).await;
    ts.close().await;
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
    read_to_end(&t, &o.from, &physical, &o.group, async |reader, batch| {
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
        Ok(true)
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
