//! Shared helpers for the integration tests.
#![allow(dead_code)]

use conveyor::config::{self, Config, StartPosition};
use conveyor::transport::embedded::{Embedded, EmbeddedOptions, EntitySpec};
use conveyor::transport::{Assignment, OutboundMessage, PipelineMessage, Transport};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parses and validates a config text (panics with the errors).
pub fn config(text: &str) -> Config {
    match config::load_str(text, Path::new("test.yaml"), |v| std::env::var(v).ok()) {
        Ok(l) => l.config,
        Err(e) => panic!("{e}"),
    }
}

/// A minimal HTTP/1.1 GET over a real socket: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, dechunk(&body)))
}

fn dechunk(body: &str) -> String {
    // axum answers with Content-Length for these endpoints; handle chunked anyway
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// Blocking variant for tests that drive the binary.
pub fn get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(get(addr, path))
}

/// The value of a sample line `name{labels} value` in a metrics text (sum
/// over all lines whose name and label text contain `needle`).
pub fn metric_sum(text: &str, name: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f().await
}

/// Opens an embedded store directly (the daemon must not be running on it).
/// `groups` (entity, group) are registered so their stored positions show.
pub fn open_store(path: &Path, entities: &[(&str, u32)], groups: &[(&str, &str)]) -> Embedded {
    let specs: Vec<EntitySpec> =
        entities.iter().map(|(n, p)| EntitySpec { name: n.to_string(), key: n.to_string(), partitions: *p }).collect();
    let opts = EmbeddedOptions { name: "local".into(), path: Some(path.to_path_buf()), capacity: 65_536 };
    let groups: Vec<_> = groups.iter().map(|(e, g)| (e.to_string(), g.to_string(), StartPosition::Earliest)).collect();
    Embedded::open(opts, &specs, &groups).expect("open store")
}

/// Writes `ids` (as payload `{"id": ...}`, keyed by id) into `entity`.
pub async fn produce_ids(t: &dyn Transport, entity: &str, ids: impl IntoIterator<Item = String>) {
    let msgs: Vec<OutboundMessage> = ids
        .into_iter()
        .map(|id| OutboundMessage {
            key: Some(id.clone().into()),
            payload: format!("{{\"id\":\"{id}\"}}").into(),
            ..Default::default()
        })
        .collect();
    for chunk in msgs.chunks(1000) {
        t.producer().send(entity, chunk.to_vec()).await.expect("produce");
    }
}

/// Reads every message of `entity` from the beginning with a fresh group.
pub async fn read_all(t: &dyn Transport, entity: &str) -> Vec<PipelineMessage> {
    let group = format!("reader-{}", fastrand::u64(..));
    let mut sub = t.subscribe(entity, &group, StartPosition::Earliest).await.expect("subscribe");
    let parts = t.partitions(entity).await.expect("partitions");
    let mut out = Vec::new();
    for info in &parts {
        let Assignment::Assigned(mut r) = sub.next().await.expect("assignment") else { panic!("revoked") };
        let _ = info;
        loop {
            let mut batch = Vec::new();
            match tokio::time::timeout(Duration::from_millis(100), r.fetch(10_000, &mut batch)).await {
                Ok(res) => {
                    res.expect("fetch");
                    out.extend(batch);
                }
                Err(_) => break,
            }
        }
    }
    out
}

/// The `id` field of each JSON payload.
pub fn ids(msgs: &[PipelineMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json payload");
            v["id"].as_str().expect("id").to_string()
        })
        .collect()
}
