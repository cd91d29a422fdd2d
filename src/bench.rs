//! `conveyor bench`: embedded single-hop pass-through throughput (and, as
//! `conveyor bench kafka-naive`, the naive Kafka copy loop used by
//! `bench/kafka_passthrough.sh`).
//!
//! For each mode (memory, durable) it runs, in this one process and on the
//! same fresh transport setup:
//!
//! - **baseline** — a naive copy loop per partition straight on the transport
//!   API (fetch → send → commit), no worker machinery;
//! - **conveyor** — a real worker (`worker::run`, passthrough stage, metrics,
//!   panic catching, lanes) doing the same hop.
//!
//! A producer task writes N messages into `in` while the hop copies them to
//! `out`; the clock stops when the group has committed all N. It reports
//! wall-clock msgs/s, process CPU seconds (user+sys from `/proc/self/stat`,
//! so producer side included for both), msgs per CPU-second, the
//! conveyor/baseline ratio, and peak RSS of each run (`VmHWM`, reset between
//! runs). Figures, not assertions: compare ratios, not absolute numbers.

use crate::config::StartPosition;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::stages::Passthrough;
use crate::transport::embedded::{Embedded, EmbeddedOptions, EntitySpec};
use crate::transport::{Assignment, OutboundMessage, Transport};
use crate::worker::{self, OutputTarget, WorkerSpec};
use bytes::Bytes;
use clap::Args;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "kafka")]
pub mod kafka_naive;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// The naive rdkafka copy loop (baseline of bench/kafka_passthrough.sh).
    #[cfg(feature = "kafka")]
    KafkaNaive(kafka_naive::NaiveArgs),
    /// The simulated APIs' round-trip ceiling (baseline of bench/pipeline.sh):
    /// the in-process simulator and a pooled HTTP client, nothing else.
    Http(HttpArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Requests in all.
    #[arg(long, default_value_t = 40_000)]
    pub requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Body bytes of the attachment requests (every other request fetches
    /// one; the rest are enrichment calls, as in the seed pipeline).
    #[arg(long, default_value_t = 8192)]
    pub attachment_bytes: usize,
}

/// `conveyor bench http`: GETs against the simulated APIs, alternating an
/// enrichment call and an attachment download, as fast as `concurrency`
/// allows; prints requests/s and requests per CPU-second of this process.
async fn http_ceiling(a: HttpArgs) -> Result<(), String> {
    let cfg = crate::config::SimulationConfig {
        enabled: true,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Default::default(),
        error_rate: 0.0,
        attachment_bytes: a.attachment_bytes,
    };
    let stop = CancellationToken::new();
    let addr = crate::simulation::serve(&cfg, stop.clone()).await.map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (client, next, total) = (client.clone(), next.clone(), a.requests);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), String>(());
                }
                let url = if i % 2 == 0 {
                    format!("http://{addr}/xact/enrich/C{i}")
                } else {
                    format!("http://{addr}/files/A{i}.pdf")
                };
                let r = client.get(url).send().await.map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("HTTP {}", r.status()));
                }
                r.bytes().await.map_err(|e| e.to_string())?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    stop.cancel();
    let n = a.requests as f64;
    println!(
        "simulated API round trips: {} requests in {secs:.2}s = {:.0} req/s; {cpu:.2} CPU-s ({:.0} req per CPU-s)",
        a.requests,
        n / secs,
        n / cpu.max(1e-9)
    );
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Messages per run.
    #[arg(long, default_value_t = 2_000_000)]
    pub messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Partitions of `in` and `out`.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Worker batch size.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// `memory`, `durable` or `both`.
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// Directory for durable runs (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    cpu: f64,
    peak_rss_kb: u64,
}

pub fn main(args: BenchArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    match args.command.clone() {
        #[cfg(feature = "kafka")]
        Some(BenchCommand::KafkaNaive(a)) => return rt.block_on(kafka_naive::run(a)),
        Some(BenchCommand::Http(a)) => return rt.block_on(http_ceiling(a)),
        None => {}
    }
    let modes: Vec<bool> = match args.mode.as_str() {
        "memory" => vec![false],
        "durable" => vec![true],
        "both" => vec![false, true],
        m => return Err(format!("unknown mode {m:?} (memory, durable, both)")),
    };
    let base_dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("conveyor-bench-{}", std::process::id())),
    };
    println!(
        "conveyor bench: {} messages x {} B, {} partitions, batch {}, {} cores",
        args.messages,
        args.payload,
        args.partitions,
        args.batch,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    for durable in modes {
        let mode = if durable { "durable" } else { "memory" };
        let mut results = Vec::new();
        for (i, hop) in ["baseline", "conveyor"].into_iter().enumerate() {
            let dir = durable.then(|| base_dir.join(format!("{mode}-{hop}-{i}")));
            if let Some(d) = &dir {
                let _ = std::fs::remove_dir_all(d);
            }
            let s = rt.block_on(run_once(&args, dir.clone(), hop == "conveyor"))?;
            if let Some(d) = &dir {
                let _ = std::fs::remove_dir_all(d);
            }
            let n = args.messages as f64;
            println!(
                "{mode:8} {hop:9} {:>12.0} msgs/s  {:>7.2} CPU-s  {:>12.0} msgs/CPU-s  peak RSS {:>7.1} MB",
                n / s.secs,
                s.cpu,
                n / s.cpu.max(1e-9),
                s.peak_rss_kb as f64 / 1024.0
            );
            results.push(s);
        }
        let (b, c) = (results[0], results[1]);
        println!(
            "{mode:8} ratio conveyor/baseline: {:.2}x wall-clock, {:.2}x per CPU-second",
            b.secs / c.secs,
            (b.cpu / c.cpu.max(1e-9))
        );
    }
    let _ = std::fs::remove_dir_all(&base_dir);
    Ok(())
}

async fn run_once(args: &BenchArgs, dir: Option<std::path::PathBuf>, conveyor: bool) -> Result<Sample, String> {
    let entities = [
        EntitySpec { name: "in".into(), key: "in".into(), partitions: args.partitions },
        EntitySpec { name: "out".into(), key: "out".into(), partitions: args.partitions },
    ];
    let groups = [("in".to_string(), "bench".to_string(), StartPosition::Earliest)];
    let opts = EmbeddedOptions { name: "bench".into(), path: dir, capacity: 10_000 };
    let t = Embedded::open(opts, &entities, &groups).map_err(|e| e.to_string())?;
    // `out` has no consumer: keep its memory bounded like a real sink would
    reset_peak_rss();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let cancel = CancellationToken::new();

    // the producer
    let producer = t.producer();
    let (n, size, batch) = (args.messages, args.payload, args.batch);
    let prod = tokio::spawn(async move {
        let payload = Bytes::from(vec![b'x'; size]);
        let mut sent = 0u64;
        while sent < n {
            let k = (n - sent).min(batch as u64);
            let msgs: Vec<OutboundMessage> =
                (0..k).map(|_| OutboundMessage { payload: payload.clone(), ..Default::default() }).collect();
            producer.send("in", msgs).await.map_err(|e| e.to_string())?;
            sent += k;
        }
        Ok::<_, String>(())
    });

    // the hop
    let hop = if conveyor {
        let metrics = Metrics::new();
        let wm = metrics.worker("bench", "in");
        let spec = Arc::new(WorkerSpec {
            name: "bench".into(),
            input: "in".into(),
            input_physical: "in".into(),
            transport: Arc::new(t.clone()),
            group: "bench".into(),
            start: StartPosition::Earliest,
            stage: Arc::new(Passthrough { output: 0 }),
            outputs: vec![OutputTarget {
                entity: "out".into(),
                physical: "out".into(),
                producer: t.producer(),
                produced: wm.produced("out"),
            }],
            tee: None,
            dead_letter: None,
            concurrency: 1,
            batch_size: args.batch,
            metrics: wm,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            retry: None,
            breaker: None,
        });
        let health = Health::new().task("bench", "worker");
        let c = cancel.clone();
        tokio::spawn(async move { worker::run(spec, health, c).await.map_err(|e| e.to_string()) })
    } else {
        let t2 = t.clone();
        let c = cancel.clone();
        let batch = args.batch;
        tokio::spawn(async move { baseline(t2, batch, c).await })
    };

    // wait until everything is committed
    loop {
        let done: i64 = t.committed("in", "bench").map_err(|e| e.to_string())?.iter().map(|c| c.unwrap_or(0)).sum();
        if done as u64 >= args.messages {
            break;
        }
        if hop.is_finished() {
            return Err("the hop stopped early".into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let peak = peak_rss_kb();
    cancel.cancel();
    prod.await.map_err(|e| e.to_string())??;
    hop.await.map_err(|e| e.to_string())??;
    t.close().await;
    Ok(Sample { secs, cpu, peak_rss_kb: peak })
}

/// The naive loop: one task per partition, fetch → send → commit.
async fn baseline(t: Embedded, batch: usize, cancel: CancellationToken) -> Result<(), String> {
    let mut sub = t.subscribe("in", "bench", StartPosition::Earliest).await.map_err(|e| e.to_string())?;
    let mut tasks = Vec::new();
    let parts = t.partitions("in").await.map_err(|e| e.to_string())?.len();
    for _ in 0..parts {
        let Assignment::Assigned(mut r) = sub.next().await.map_err(|e| e.to_string())? else {
            return Err("unexpected revoke".into());
        };
        let producer = t.producer();
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(batch);
            loop {
                buf.clear();
                tokio::select! {
                    _ = c.cancelled() => return Ok::<_, String>(()),
                    r2 = r.fetch(batch, &mut buf) => r2.map_err(|e| e.to_string())?,
                }
                let out: Vec<OutboundMessage> = buf.iter().map(OutboundMessage::from_message).collect();
                producer.send("out", out).await.map_err(|e| e.to_string())?;
                r.commit(buf.last().unwrap()).await.map_err(|e| e.to_string())?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// User + system CPU seconds of this process.
pub fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // fields after the parenthesised command name; utime and stime are 14th and 15th
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size (kB) since the last reset.
pub fn peak_rss_kb() -> u64 {
    status_kb("VmHWM:")
}

/// Current resident set size (kB).
pub fn rss_kb() -> u64 {
    status_kb("VmRSS:")
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
