//! `conveyor bench`: embedded single-hop pass-through throughput (and, as
//! `conveyor bench kafka-naive`, the naive Kafka copy loop used by
//! `bench/kafka_passthrough.sh`).
//!
//! For each mode (memory, durable) it runs, in this one process and on the
//! same fresh transport setup:
//!
//! - **baseline** — a naive copy loop per partition straight on the transport
//!   API (fetch → send → commit), no worker machinery;
//! - **conveyor** — a real worker, built from a config by the daemon's own
//!   builder (`runtime::build`: passthrough stage, metrics, panic catching,
//!   lanes on the partition host), doing the same hop.
//!
//! A producer task writes N messages into `in` while the hop copies them to
//! `out`; the clock stops when the group has committed all N. It reports
//! wall-clock msgs/s, process CPU seconds (user+sys from `/proc/self/stat`,
//! so producer side included for both), msgs per CPU-second, the
//! conveyor/baseline ratio, and peak RSS of each run (`VmHWM`, reset between
//! runs). Figures, not assertions: compare ratios, not absolute numbers.

use crate::config::{ConfigError, StartPosition};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::runtime::build::{Options, Parts};
use crate::runtime::{RuntimeError, transports};
use crate::transport::{Assignment, OutboundMessage, Transport, TransportError};
use crate::worker::{self, WorkerError};
use bytes::Bytes;
use clap::Args;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub mod avro;
pub mod ingest;
#[cfg(feature = "kafka")]
pub mod kafka_naive;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start the async runtime: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP status {0}")]
    Status(u16),
    #[cfg(feature = "kafka")]
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[cfg(feature = "kafka")]
    #[error("a Kafka delivery was cancelled")]
    Cancelled,
    #[error("a benchmark task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("unknown mode {0:?} (memory, durable, both)")]
    Mode(String),
    #[error("the hop stopped before every message was committed")]
    Stopped,
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// The naive rdkafka copy loop (baseline of bench/kafka_passthrough.sh).
    #[cfg(feature = "kafka")]
    KafkaNaive(kafka_naive::NaiveArgs),
    /// The simulated APIs' round-trip ceiling (baseline of bench/pipeline.sh):
    /// the in-process simulator and a pooled HTTP client, nothing else.
    Http(HttpArgs),
    /// HTTP ingest (NDJSON batches and single requests) against the embedded
    /// transport's own produce rate.
    Ingest(ingest::IngestArgs),
    /// Decoding and encoding Confluent-framed Avro (the `decode` and
    /// `encode` stages) against a pass-through of the same bytes.
    Avro(avro::AvroArgs),
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
async fn http_ceiling(a: HttpArgs) -> Result<(), BenchError> {
    let cfg = crate::config::SimulationConfig {
        enabled: true,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Default::default(),
        error_rate: 0.0,
        attachment_bytes: a.attachment_bytes,
    };
    let stop = CancellationToken::new();
    let addr = crate::simulation::serve(&cfg, stop.clone()).await?;
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
                    return Ok::<(), BenchError>(());
                }
                let url = if i % 2 == 0 {
                    format!("http://{addr}/xact/enrich/C{i}")
                } else {
                    format!("http://{addr}/files/A{i}.pdf")
                };
                let r = client.get(url).send().await?;
                if !r.status().is_success() {
                    return Err(BenchError::Status(r.status().as_u16()));
                }
                r.bytes().await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
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
    /// Pairs (baseline, then conveyor) per mode; with more than one, a
    /// last line gives the median of the pairs' ratios (runs on 2 cores
    /// vary by ±15% with the scheduling of the tasks).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    cpu: f64,
    peak_rss_kb: u64,
}

pub fn main(args: BenchArgs) -> Result<(), BenchError> {
    let rt = crate::runtime::executor()?;
    match args.command.clone() {
        #[cfg(feature = "kafka")]
        Some(BenchCommand::KafkaNaive(a)) => return rt.block_on(kafka_naive::run(a)),
        Some(BenchCommand::Http(a)) => return rt.block_on(http_ceiling(a)),
        Some(BenchCommand::Ingest(a)) => return rt.block_on(ingest::run(a)),
        Some(BenchCommand::Avro(a)) => return rt.block_on(avro::run(a)),
        None => {}
    }
    let modes: Vec<bool> = match args.mode.as_str() {
        "memory" => vec![false],
        "durable" => vec![true],
        "both" => vec![false, true],
        m => return Err(BenchError::Mode(m.to_string())),
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
        let (mut wall, mut per_cpu) = (Vec::new(), Vec::new());
        for run in 0..args.runs.max(1) {
            let mut results = Vec::new();
            for (i, hop) in ["baseline", "conveyor"].into_iter().enumerate() {
                let dir = durable.then(|| base_dir.join(format!("{mode}-{hop}-{run}-{i}")));
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
            let (w, p) = (b.secs / c.secs, b.cpu / c.cpu.max(1e-9));
            println!("{mode:8} ratio conveyor/baseline: {w:.2}x wall-clock, {p:.2}x per CPU-second");
            wall.push(w);
            per_cpu.push(p);
        }
        if wall.len() > 1 {
            println!(
                "{mode:8} median of {} pairs, conveyor/baseline: {:.2}x wall-clock, {:.2}x per CPU-second",
                wall.len(),
                median(&mut wall),
                median(&mut per_cpu)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base_dir);
    Ok(())
}

/// The benchmark's topology: `in` → worker `bench` (passthrough) → `out`
/// on one embedded transport, durable in `dir` when given.
fn bench_config(args: &BenchArgs, dir: Option<&std::path::Path>) -> Result<crate::config::Config, ConfigError> {
    let path = dir.map(|d| format!(", path: {:?}", d.display().to_string())).unwrap_or_default();
    let text = format!(
        "transports: {{ bench: {{ type: embedded, capacity: 10000{path} }} }}\n\
         entities:\n  in: {{ transport: bench, partitions: {p} }}\n  out: {{ transport: bench, partitions: {p} }}\n\
         workers:\n  bench: {{ input: in, outputs: {{ default: out }}, batch_size: {b} }}\n",
        p = args.partitions,
        b = args.batch
    );
    Ok(crate::config::load_str(&text, std::path::Path::new("bench.yaml"), |_| None)?.config)
}

async fn run_once(args: &BenchArgs, dir: Option<std::path::PathBuf>, conveyor: bool) -> Result<Sample, BenchError> {
    let cfg = bench_config(args, dir.as_deref())?;
    let live = BTreeMap::from([(
        "bench".to_string(),
        transports::open(&cfg, "bench", &crate::instance::Membership::Dynamic).await?,
    )]);
    let t = live["bench"].transport.clone();
    // `out` has no consumer: keep its memory bounded like a real sink would
    reset_peak_rss();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let cancel = CancellationToken::new();

    // the producer
    let producer = t.producer();
    let (n, size, batch) = (args.messages, args.payload, args.batch);
    let prod = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < n {
            let k = (n - sent).min(batch as u64);
            // one buffer per batch, a slice of it per message (as a fetched
            // batch shares its buffer); a single buffer for every message
            // would have both tasks contend for its reference count
            let buf = Bytes::from(vec![b'x'; size * k as usize]);
            let msgs: Vec<OutboundMessage> = (0..k as usize)
                .map(|i| OutboundMessage { payload: buf.slice(i * size..(i + 1) * size), ..Default::default() })
                .collect();
            producer.send("in", msgs).await?;
            sent += k;
        }
        Ok::<_, BenchError>(())
    });

    // the hop
    let hop = if conveyor {
        let (metrics, health) = (Metrics::new(), Health::new());
        let opts = Options::default();
        let parts = Parts {
            cfg: &cfg,
            transports: &live,
            metrics: &metrics,
            health: &health,
            opts: &opts,
            grace: Duration::from_secs(30),
            routes: &crate::sources::Routes::new(),
            registries: Default::default(),
        };
        let spec = parts.worker("bench")?;
        let c = cancel.clone();
        tokio::spawn(async move { Ok(worker::run(spec, c).await?) })
    } else {
        let (t2, c, batch) = (t.clone(), cancel.clone(), args.batch);
        tokio::spawn(async move { baseline(t2, batch, c).await })
    };

    // wait until everything is committed
    loop {
        let done: i64 = t.group_positions("in", "bench").await?.iter().map(|g| g.committed.unwrap_or(0)).sum();
        if done as u64 >= args.messages {
            break;
        }
        if hop.is_finished() {
            hop.await??;
            return Err(BenchError::Stopped);
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let peak = peak_rss_kb();
    cancel.cancel();
    prod.await??;
    hop.await??;
    t.close(Duration::from_secs(30)).await;
    Ok(Sample { secs, cpu, peak_rss_kb: peak })
}

/// The naive loop: one task per partition, fetch → send → commit.
async fn baseline(t: Arc<dyn Transport>, batch: usize, cancel: CancellationToken) -> Result<(), BenchError> {
    let mut sub = t.subscribe("in", "bench", StartPosition::Earliest).await?;
    let mut tasks = Vec::new();
    let parts = t.partitions("in").await?.len();
    while tasks.len() < parts {
        let Assignment::Assigned(mut r) = sub.next().await? else { continue };
        let producer = t.producer();
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(batch);
            loop {
                buf.clear();
                tokio::select! {
                    _ = c.cancelled() => return Ok::<_, BenchError>(()),
                    r2 = r.fetch(batch, &mut buf) => r2?,
                }
                let out: Vec<OutboundMessage> = buf.iter().map(OutboundMessage::from_message).collect();
                producer.send("out", out).await?;
                if let Some(last) = buf.last() {
                    r.commit(last).await?;
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts() {
        for (mut v, m) in [(vec![0.9, 0.7, 1.1], 0.9), (vec![1.0, 0.5, 0.8, 0.6], 0.7), (vec![2.0], 2.0)] {
            assert!((super::median(&mut v) - m).abs() < 1e-12, "{v:?}");
        }
        assert!(super::median(&mut []).is_nan());
    }
}
