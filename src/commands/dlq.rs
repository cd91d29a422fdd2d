//! `conveyor dlq inspect` and `conveyor dlq redrive`.
//!
//! Both open the config's transports for a tool
//! (`runtime::Transports::open_for_tool`): broker transports directly, and
//! an embedded DLQ that a running daemon holds through the daemon: `inspect`
//! reads it over the entity API (`admin::entities`), and `redrive` asks the
//! daemon to run the redrive with its own transports (it commits as a
//! consumer group, which only the store's holder can do).
//!
//! Both read up to the end each partition had when they started, and never
//! report success after reading less (`transport::scan`: a broker that does
//! not answer is an error, not "0 examined").
//!
//! `inspect` reads as no consumer group (`Transport::open_reader`): it
//! changes nothing anywhere. What `redrive` does is in `crate::redrive`.

pub use super::error::ToolError;
use crate::config::Config;
use crate::dlq::Envelope;
use crate::redrive::{self, Request};
pub use crate::redrive::{Filter, RedriveOptions, RedriveReport};
use crate::runtime::Transports;
use crate::transport::PipelineMessage;
use crate::transport::scan::{Next, browse};
use std::time::Duration;
/// Longest redrive the daemon runs for the tool.
const REDRIVE_WITHIN: Duration = Duration::from_secs(3600);
/// Longest flush of the transports when a tool is done.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// One DLQ record: where it sits and what it says.
pub struct Entry {
    pub message: PipelineMessage,
    pub envelope: Result<Envelope, serde_json::Error>,
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

/// `conveyor dlq redrive`: here, or by the daemon when it holds the DLQ's
/// embedded store (it then runs with the daemon's transports).
pub async fn redrive(cfg: &Config, o: &RedriveOptions, filter: &[String]) -> Result<RedriveReport, ToolError> {
    for e in std::iter::once(&o.from).chain(o.to.as_ref()) {
        if !cfg.entities.contains_key(e) {
            return Err(ToolError::UnknownEntity(e.clone()));
        }
    }
    let ts = Transports::open_for_tool(cfg).await?;
    let r = match ts.daemon_for(cfg, &o.from) {
        Some(daemon) => {
            let req = Request {
                to: o.to.clone(),
                filter: filter.to_vec(),
                rate: o.rate,
                dry_run: o.dry_run,
                group: o.group.clone(),
            };
            eprintln!("the daemon holds {:?}: it runs the redrive", o.from);
            daemon
                .post_json(
                    &format!("entities/{}/redrive", crate::transport::remote::segment(&o.from)),
                    &req,
                    REDRIVE_WITHIN,
                )
                .await
                .map_err(|source| ToolError::Transport { entity: o.from.clone(), source })
        }
        None => redrive::run(&|name: &str| ts.entity(cfg, name), o).await.map_err(ToolError::from),
    };
    ts.close(CLOSE_WITHIN).await;
    r
}
