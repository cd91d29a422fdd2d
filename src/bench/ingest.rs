//! `conveyor bench ingest`: HTTP ingest (`type: http` sources) against the
//! embedded transport's own produce rate, with the load generator in this
//! process.
//!
//! Three runs, each on a fresh memory-only (or, with `--durable`, durable)
//! embedded transport, `concurrency` tasks at once:
//! - **direct**: `Producer::send` of `batch`-message batches (the ceiling);
//! - **ndjson**: `POST`s of `batch` NDJSON lines to an ingest source served
//!   by the source's own router on a real socket;
//! - **single**: one message per `POST` (`single` messages in all).
//!
//! It prints msgs/s, msgs per CPU-second of the process (the client's
//! CPU included: the same client code for both HTTP runs) and each run's
//! ratio to the direct one. Figures, not assertions.

use super::{BenchError, cpu_seconds};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::sources::Ingest;
use crate::transport::embedded::{Embedded, EmbeddedOptions};
use crate::transport::{EntitySpec, OutboundMessage, Producer, Transport};
use bytes::Bytes;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Messages of the direct and NDJSON runs.
    #[arg(long, default_value_t = 2_000_000)]
    pub messages: u64,
    /// Messages (= requests) of the single-message run.
    #[arg(long, default_value_t = 100_000)]
    pub single: u64,
    /// Messages per NDJSON request and per direct send.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Requests (sends) in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Write to a durable store in a temporary directory.
    #[arg(long)]
    pub durable: bool,
}

#[derive(Clone, Copy)]
enum Run {
    Direct,
    Ndjson,
    Single,
}

fn transport(a: &IngestArgs, dir: &std::path::Path, i: usize) -> Result<Arc<Embedded>, BenchError> {
    let opts = EmbeddedOptions {
        name: "bench".into(),
        path: a.durable.then(|| dir.join(format!("run{i}"))),
        capacity: 100_000,
        ..Default::default()
    };
    let spec = EntitySpec { name: "in".into(), key: "in".into(), partitions: 4 };
    Ok(Arc::new(Embedded::open(opts, &[spec], &[])?))
}

fn payload(size: usize, i: u64) -> String {
    let id = format!("{{\"id\":{i},\"pad\":\"");
    let pad = size.saturating_sub(id.len() + 2);
    format!("{id}{}\"}}", "x".repeat(pad))
}

async fn one(a: &IngestArgs, run: Run, t: Arc<Embedded>) -> Result<(f64, f64, u64), BenchError> {
    let producer: Arc<dyn Producer> = t.producer();
    let stop = tokio_util::sync::CancellationToken::new();
    let ingest = Arc::new(Ingest {
        name: "bench".into(),
        entity: "in".into(),
        physical: "in".into(),
        producer: producer.clone(),
        listen: None,
        path: "/ingest".into(),
        token: None,
        tls: None,
        max_body_bytes: 64 << 20,
        max_in_flight: 1 << 20,
        headers: Vec::new(),
        timeout: Duration::from_secs(60),
        in_flight: Arc::new(tokio::sync::Semaphore::new(1 << 20)),
        metrics: Metrics::new(),
        health: Health::new().task("bench", "source"),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}/ingest", listener.local_addr()?);
    let server = tokio::spawn({
        let (app, stop) = (ingest.router(), stop.clone());
        async move { axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await }
    });
    let (total, per) = match run {
        Run::Single => (a.single, 1u64),
        _ => (a.messages, a.batch.max(1) as u64),
    };
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(a.concurrency).build()?;
    let next = Arc::new(AtomicU64::new(0));
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (client, next, url, producer, size) =
            (client.clone(), next.clone(), url.clone(), producer.clone(), a.payload);
        tasks.spawn(async move {
            loop {
                let start = next.fetch_add(per, Ordering::Relaxed);
                if start >= total {
                    return Ok::<(), BenchError>(());
                }
                let end = (start + per).min(total);
                match run {
                    Run::Direct => {
                        let batch = (start..end)
                            .map(|i| OutboundMessage { payload: Bytes::from(payload(size, i)), ..Default::default() })
                            .collect();
                        producer.send("in", batch).await?;
                    }
                    Run::Ndjson | Run::Single => {
                        let mut body = String::new();
                        for i in start..end {
                            body.push_str(&payload(size, i));
                            body.push('\n');
                        }
                        let mut req = client.post(&url).body(body);
                        if matches!(run, Run::Ndjson) {
                            req = req.header("content-type", "application/x-ndjson");
                        }
                        let r = req.send().await?;
                        if !r.status().is_success() {
                            return Err(BenchError::Status(r.status().as_u16()));
                        }
                        r.bytes().await?;
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    stop.cancel();
    let _ = server.await;
    let written: i64 = t.partitions("in").await?.iter().map(|p| p.next).sum();
    if written as u64 != total {
        return Err(BenchError::Stopped);
    }
    Ok((secs, cpu, total))
}

pub async fn run(a: IngestArgs) -> Result<(), BenchError> {
    let dir = std::env::temp_dir().join(format!("conveyor-bench-ingest-{}", std::process::id()));
    println!(
        "conveyor bench ingest: {} messages x {} B ({} single), batch {}, concurrency {}, {} transport",
        a.messages,
        a.payload,
        a.single,
        a.batch,
        a.concurrency,
        if a.durable { "durable" } else { "memory" }
    );
    let mut base = 0.0f64;
    for (i, (name, run)) in [("direct send", Run::Direct), ("HTTP NDJSON", Run::Ndjson), ("HTTP single", Run::Single)]
        .into_iter()
        .enumerate()
    {
        let t = transport(&a, &dir, i)?;
        let (secs, cpu, n) = one(&a, run, t.clone()).await?;
        t.close(Duration::from_secs(10)).await;
        let per_cpu = n as f64 / cpu.max(1e-9);
        if i == 0 {
            base = per_cpu;
        }
        println!(
            "{name:<12} {n:>8} msgs in {secs:6.2}s = {:>9.0} msgs/s; {cpu:6.2} CPU-s = {per_cpu:>9.0} msgs/CPU-s ({:.2}x direct per CPU-s)",
            n as f64 / secs,
            per_cpu / base.max(1e-9)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
