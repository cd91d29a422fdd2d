//! `conveyor produce`: write messages from standard input to any entity of
//! any transport, and print where each one went once the transport
//! acknowledged it (`entity/partition@position`, one line per message).
//!
//! The whole input is one message, unless `--ndjson`: then every non-blank
//! line is one, and must be JSON (a bad line is named and nothing is
//! written). `--key` and `--header k=v` apply to every message. The input
//! is read the way the HTTP ingest source reads a body
//! (`sources::http::parse`), and sent in chunks of
//! [`crate::sources::http::CHUNK`] messages, in order; when a chunk fails,
//! the positions printed so far are the acknowledged ones.
//!
//! An embedded entity the daemon holds is written through its entity API.

use super::ToolError;
use crate::config::Config;
use crate::runtime::Transports;
use crate::sources::http::{CHUNK, Rejection, parse};
use crate::transport::Headers;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::time::Duration;

pub struct ProduceOptions {
    pub entity: String,
    pub key: Option<String>,
    /// `name=value` pairs.
    pub headers: Vec<String>,
    pub ndjson: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// The headers of `--header name=value` arguments.
pub fn headers(items: &[String]) -> Result<Headers, ToolError> {
    let mut h = Headers::default();
    for i in items {
        let (n, v) = i
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| ToolError::Input(format!("--header {i:?}: write name=value")))?;
        h.0.push((n.to_string(), Bytes::copy_from_slice(v.as_bytes())));
    }
    Ok(h)
}

/// `conveyor produce`: returns how many messages were acknowledged.
pub async fn produce(
    cfg: &Config,
    o: &ProduceOptions,
    input: Bytes,
    out: &mut (dyn Write + Send),
) -> Result<u64, ToolError> {
    if !cfg.entities.contains_key(&o.entity) {
        return Err(ToolError::UnknownEntity(o.entity.clone()));
    }
    let hs = headers(&o.headers)?;
    let parsed = parse(input, o.ndjson, o.key.clone().map(Bytes::from), &hs).map_err(|r| match r {
        Rejection::BadLine { line, error } => ToolError::Input(format!("line {line}: {error}; nothing was written")),
        Rejection::Empty => ToolError::Input("no message in the input".into()),
        other => ToolError::Input(format!("{other:?}")),
    })?;
    let ts = Transports::open_for_tool(cfg).await?;
    let r = async {
        let (t, physical) = ts.entity(cfg, &o.entity).ok_or_else(|| ToolError::UnknownEntity(o.entity.clone()))?;
        let producer = t.producer();
        let total = parsed.messages.len() as u64;
        let bar = if o.progress && total > CHUNK as u64 {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} messages  {per_sec}  eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        let mut done = 0u64;
        let mut rest = parsed.messages;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(CHUNK));
            let chunk = std::mem::replace(&mut rest, tail);
            let acked = producer
                .send(&physical, chunk)
                .await
                .map_err(|source| ToolError::Transport { entity: o.entity.clone(), source })?;
            let mut lines = String::new();
            for a in &acked {
                lines += &format!("{}/{}@{}\n", o.entity, a.partition, a.position);
            }
            out.write_all(lines.as_bytes())?;
            done += acked.len() as u64;
            bar.set_position(done);
        }
        out.flush()?;
        bar.finish_and_clear();
        Ok(done)
    }
    .await;
    ts.close(Duration::from_secs(10)).await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_arguments_are_name_value_pairs() {
        let h = headers(&["a=1".into(), "a=2".into(), "b=".into(), "c=x=y".into()]).unwrap();
        let got: Vec<(&str, &[u8])> = h.iter().map(|(n, v)| (n, v.as_ref())).collect();
        assert_eq!(got, [("a", &b"1"[..]), ("a", b"2"), ("b", b""), ("c", b"x=y")]);
        assert!(headers(&["novalue".into()]).is_err());
        assert!(headers(&["=v".into()]).is_err());
    }
}
