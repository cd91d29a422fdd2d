//! `conveyor tail`: read any entity of any transport, as no consumer group
//! (nothing is committed, no group is joined or rebalanced).
//!
//! Each partition is read from `--from-beginning`, or from its last `N`
//! messages (`--last N`, default 10). Without `--follow` it stops at the end
//! each partition had when the tail began, partition by partition; with it,
//! every partition is followed at once and messages print as they arrive,
//! in order within a partition, until the process is interrupted.
//!
//! An embedded entity the daemon holds is read through its entity API (see
//! `runtime::Transports::open_for_tool`).
//!
//! Formats: `json` (one [`Record`] per line), `text` (for people: position,
//! time, key, headers, payload; dead-letter envelopes decoded), `raw` (the
//! payload bytes and a newline).

use super::ToolError;
use crate::config::Config;
use crate::dlq::Envelope;
use crate::runtime::Transports;
use crate::transport::json::Record;
use crate::transport::scan::{Next, read_until};
use crate::transport::{PipelineMessage, Seek};
use std::io::Write;
use std::time::Duration;

/// Where each partition's tail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    /// The last `n` messages of each partition.
    Last(u64),
}

/// How messages are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Text,
    Raw,
}

pub struct TailOptions {
    pub entity: String,
    pub start: Start,
    pub follow: bool,
    pub partition: Option<u32>,
    pub format: Format,
}

/// Where a partition of extent `earliest..next` is read from.
pub fn seek(start: Start, earliest: i64, next: i64) -> Seek {
    match start {
        Start::Beginning => Seek::Earliest,
        Start::Last(n) => Seek::At(next.saturating_sub(n.min(i64::MAX as u64) as i64).max(earliest)),
    }
}

/// `m` as the tail prints it.
pub fn render(entity: &str, m: &PipelineMessage, format: Format, out: &mut Vec<u8>) {
    match format {
        Format::Raw => {
            out.extend_from_slice(&m.payload);
            out.push(b'\n');
        }
        Format::Json => {
            out.extend_from_slice(serde_json::to_string(&Record::of(entity, m)).unwrap_or_default().as_bytes());
            out.push(b'\n');
        }
        Format::Text => out.extend_from_slice(text(entity, m).as_bytes()),
    }
}

/// A message timestamp (Unix ms, any value a broker hands out) as RFC 3339,
/// or as the number when it is before 1970 or after 9999.
fn when(ms: i64) -> String {
    const YEAR_10000_MS: i64 = 253_402_300_800_000;
    match u64::try_from(ms) {
        Ok(v) if ms < YEAR_10000_MS => {
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(v)).to_string()
        }
        _ => format!("{ms}ms"),
    }
}

fn text(entity: &str, m: &PipelineMessage) -> String {
    let mut s = format!("{entity}/{}@{}  {}", m.partition, m.position, when(m.timestamp_ms));
    if let Some(k) = &m.key {
        s += &format!("  key={}", String::from_utf8_lossy(k));
    }
    for (n, v) in m.headers.iter() {
        s += &format!("  {n}={}", String::from_utf8_lossy(v));
    }
    s.push('\n');
    match Envelope::parse(&m.payload) {
        Ok(e) => {
            s += &format!(
                "  dead letter of {}/{}@{} by worker {:?} at {}: {} {} after {} attempt(s): {}\n",
                e.origin.entity,
                e.origin.partition,
                e.origin.position,
                e.origin.worker,
                e.dead_lettered_at,
                e.error.category,
                e.error.kind,
                e.error.attempts,
                e.error.message.replace('\n', " ")
            );
            if let Ok(Some(k)) = e.original_key() {
                s += &format!("  original key: {}\n", String::from_utf8_lossy(&k));
            }
            match e.original_payload() {
                Ok(p) if !e.payload_truncated => s += &format!("  original payload: {}\n", String::from_utf8_lossy(&p)),
                _ => s += "  original payload: (not in the envelope)\n",
            }
        }
        Err(_) => s += &format!("  {}\n", String::from_utf8_lossy(&m.payload)),
    }
    s
}

/// `conveyor tail`: prints to `out`; returns how many messages it printed.
pub async fn tail(cfg: &Config, o: &TailOptions, out: &mut (dyn Write + Send)) -> Result<u64, ToolError> {
    if !cfg.entities.contains_key(&o.entity) {
        return Err(ToolError::UnknownEntity(o.entity.clone()));
    }
    let ts = Transports::open_for_tool(cfg).await?;
    let r = run(cfg, &ts, o, out).await;
    ts.close(Duration::from_secs(5)).await;
    r
}

async fn run(cfg: &Config, ts: &Transports, o: &TailOptions, out: &mut (dyn Write + Send)) -> Result<u64, ToolError> {
    let entity = o.entity.as_str();
    let terr = |source| ToolError::Transport { entity: entity.to_string(), source };
    let (t, physical) = ts.entity(cfg, entity).ok_or_else(|| ToolError::UnknownEntity(entity.to_string()))?;
    let mut parts = t.partitions(&physical).await.map_err(terr)?;
    if let Some(p) = o.partition {
        let n = parts.len();
        parts.retain(|x| x.partition == p);
        if parts.is_empty() {
            return Err(ToolError::NoPartition { entity: entity.to_string(), partition: p, partitions: n });
        }
    }
    let mut printed = 0u64;
    let mut buf = Vec::new();
    if !o.follow {
        for p in &parts {
            if p.next <= p.earliest {
                continue;
            }
            let from = seek(o.start, p.earliest, p.next);
            if matches!(from, Seek::At(x) if x >= p.next) {
                continue;
            }
            let mut r = t.open_reader(&physical, p.partition, from).await.map_err(terr)?;
            read_until(&mut r, entity, p.next, &mut async |_r, batch: Vec<PipelineMessage>| {
                buf.clear();
                for m in &batch {
                    render(entity, m, o.format, &mut buf);
                }
                out.write_all(&buf)?;
                out.flush()?;
                printed += batch.len() as u64;
                Ok::<_, ToolError>(Next::More)
            })
            .await?;
        }
        return Ok(printed);
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<PipelineMessage>, ToolError>>(16);
    for p in &parts {
        let mut r = t.open_reader(&physical, p.partition, seek(o.start, p.earliest, p.next)).await.map_err(terr)?;
        let tx = tx.clone();
        let entity = entity.to_string();
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::new();
                let got = r.fetch(500, &mut batch).await;
                let sent = match got {
                    Ok(()) => tx.send(Ok(batch)).await,
                    Err(source) => {
                        let _ = tx.send(Err(ToolError::Transport { entity: entity.clone(), source })).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    while let Some(batch) = rx.recv().await {
        buf.clear();
        let batch = batch?;
        for m in &batch {
            render(entity, m, o.format, &mut buf);
        }
        out.write_all(&buf)?;
        out.flush()?;
        printed += batch.len() as u64;
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn each_partition_starts_where_asked_never_before_its_first_record() {
        let table = [
            (Start::Beginning, 5, 20, Seek::Earliest),
            (Start::Last(10), 5, 20, Seek::At(10)),
            (Start::Last(10), 15, 20, Seek::At(15)),
            (Start::Last(0), 5, 20, Seek::At(20)),
            (Start::Last(u64::MAX), 0, 3, Seek::At(0)),
        ];
        for (start, earliest, next, want) in table {
            assert_eq!(seek(start, earliest, next), want, "{start:?} {earliest}..{next}");
        }
    }

    #[test]
    fn any_timestamp_prints_without_a_panic() {
        let table = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_765_000_000_123, "2025-12-06T05:46:40.123Z"),
            (-1, "-1ms"),
            (i64::MAX, "9223372036854775807ms"),
            (i64::MIN, "-9223372036854775808ms"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ];
        for (ms, want) in table {
            assert_eq!(when(ms), want);
        }
    }

    #[test]
    fn text_shows_the_message_and_decodes_dead_letters() {
        let m = PipelineMessage {
            entity: "e".into(),
            partition: 1,
            position: 9,
            key: Some(Bytes::from_static(b"k1")),
            headers: Default::default(),
            payload: Bytes::from_static(b"{\"a\":1}"),
            timestamp_ms: 0,
        };
        let mut out = Vec::new();
        render("events", &m, Format::Text, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("events/1@9  1970-01-01T00:00:00.000Z  key=k1\n  {\"a\":1}\n"), "{s}");
        let mut raw = Vec::new();
        render("events", &m, Format::Raw, &mut raw);
        assert_eq!(raw, b"{\"a\":1}\n");
        let envelope = r#"{"envelope_version":1,"payload":"eyJhIjoxfQ==","key":"azE=","headers":[],
            "origin":{"entity":"events","transport":"embedded","partition":2,"position":7,"consumer_group":"g",
                      "worker":"w","timestamp_ms":0},
            "error":{"category":"permanent","type":"invalid_json","message":"bad\nthing","first_failure":"t0",
                     "last_failure":"t1","attempts":3},
            "trace_id":"x","conveyor_version":"0","dead_lettered_at":"2026-12-07T00:00:00Z"}"#;
        let dead = PipelineMessage { payload: Bytes::from(envelope), ..m };
        let mut out = Vec::new();
        render("dlq", &dead, Format::Text, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("dead letter of events/2@7 by worker \"w\" at 2026-12-07T00:00:00Z: permanent invalid_json after 3 attempt(s): bad thing"),
            "{s}"
        );
        assert!(s.contains("original key: k1\n  original payload: {\"a\":1}\n"), "{s}");
    }
}
