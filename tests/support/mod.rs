//! Shared helpers for the integration tests.
#![allow(dead_code)]

#[cfg(feature = "eventhubs")]
pub mod azure;
pub mod registry;

use conveyor::config::{self, Config, StartPosition};
use conveyor::transport::embedded::{Embedded, EmbeddedOptions};
use conveyor::transport::{Assignment, EntitySpec, GroupSpec, OutboundMessage, PipelineMessage, Transport};
use std::io::BufRead;
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
    let opts = EmbeddedOptions {
        name: "local".into(),
        path: Some(path.to_path_buf()),
        capacity: 65_536,
        ..Default::default()
    };
    let groups: Vec<GroupSpec> = groups
        .iter()
        .map(|(e, g)| GroupSpec {
            entity: e.to_string(),
            group: g.to_string(),
            start: StartPosition::Earliest,
            shared: false,
        })
        .collect();
    Embedded::open(opts, &specs, &groups).expect("open store")
}

/// A consumer group's committed position on each partition of `entity`,
/// read from the transport.
pub async fn committed(t: &dyn Transport, entity: &str, group: &str) -> Vec<Option<i64>> {
    t.group_positions(entity, group).await.expect("group positions").into_iter().map(|g| g.committed).collect()
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

/// Every message of `entity` present when called, read to the end as no
/// consumer group (`transport::scan`: a stalled partition is an error, never
/// a short read).
pub async fn read_everything(t: std::sync::Arc<dyn Transport>, entity: &str) -> Vec<PipelineMessage> {
    let mut out = Vec::new();
    conveyor::transport::scan::browse::<conveyor::transport::scan::ScanError>(&t, entity, entity, async |_, batch| {
        out.extend(batch);
        Ok(conveyor::transport::scan::Next::More)
    })
    .await
    .expect("read the entity to its end");
    out
}

/// NDJSON lines `{"id":"<prefix>-<i>"}` for `range`.
pub fn ndjson_ids(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("{{\"id\":\"{prefix}-{i}\"}}\n")).collect()
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

/// A real Apache Kafka broker for a test: the shared one named by
/// `CONVEYOR_TEST_KAFKA` (bootstrap address; `scripts/test.sh` starts it), or
/// a private one started with `scripts/kafka/start.sh` (always private when
/// `own` is set, e.g. to restart it). Stopped on drop when private.
pub struct KafkaBroker {
    pub bootstrap: String,
    dir: Option<tempfile::TempDir>,
}

impl KafkaBroker {
    pub fn get(own: bool) -> KafkaBroker {
        if !own && let Some(b) = std::env::var("CONVEYOR_TEST_KAFKA").ok().filter(|b| !b.is_empty()) {
            return KafkaBroker { bootstrap: b, dir: None };
        }
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = Self::start_in(dir.path(), "0");
        KafkaBroker { bootstrap, dir: Some(dir) }
    }

    fn script(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka").join(name)
    }

    fn start_in(dir: &Path, port: &str) -> String {
        let out = std::process::Command::new(Self::script("start.sh"))
            .args([port, &dir.display().to_string()])
            .env("KAFKA_OVERRIDES", "broker.session.timeout.ms=3000\nbroker.heartbeat.interval.ms=500")
            .output()
            .expect("run scripts/kafka/start.sh");
        assert!(out.status.success(), "kafka did not start: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("bootstrap="))
            .expect("bootstrap in start.sh output")
            .to_string()
    }

    /// Stops a private broker (data kept).
    pub fn stop(&self) {
        let dir = self.dir.as_ref().expect("only a private broker can be stopped");
        let ok = std::process::Command::new(Self::script("stop.sh")).arg(dir.path()).status().unwrap().success();
        assert!(ok, "stop.sh failed");
    }

    /// Starts a stopped private broker again on the same port and data.
    pub fn restart(&self) {
        let dir = self.dir.as_ref().expect("only a private broker can be restarted");
        let port = self.bootstrap.rsplit(':').next().unwrap().to_string();
        let b = Self::start_in(dir.path(), &port);
        assert_eq!(b, self.bootstrap);
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::process::Command::new(Self::script("stop.sh")).arg(dir.path()).status();
        }
    }
}

/// Committed offsets of `group` on `topic` (0 where none), read from the
/// broker (OffsetFetch; the group is not joined).
#[cfg(feature = "kafka")]
pub fn kafka_committed(
    bootstrap: &str,
    topic: &str,
    group: &str,
    partitions: i32,
) -> rdkafka::error::KafkaResult<Vec<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect())
}

/// [`kafka_committed`] and the high watermarks.
#[cfg(feature = "kafka")]
pub fn committed_and_high(bootstrap: &str, topic: &str, group: &str, partitions: i32) -> (Vec<i64>, Vec<i64>) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let committed = kafka_committed(bootstrap, topic, group, partitions).unwrap();
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let high = (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1).collect();
    (committed, high)
}

/// A unique topic name.
pub fn topic(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// Produces `key|value` lines with kcat (an independent client).
pub fn kcat_produce(bootstrap: &str, topic: &str, pairs: impl IntoIterator<Item = (String, String)>) {
    use std::io::Write;
    let mut child = std::process::Command::new("kcat")
        .args(["-P", "-b", bootstrap, "-t", topic, "-K", "|", "-z", "lz4"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat (apt install kcat)");
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
        for (k, v) in pairs {
            writeln!(stdin, "{k}|{v}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "kcat produce failed");
}

/// Every key in `topic`, read with kcat from the beginning to the end.
pub fn kcat_keys(bootstrap: &str, topic: &str) -> Vec<String> {
    let out = std::process::Command::new("kcat")
        .args(["-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k\\n"])
        .output()
        .expect("kcat");
    assert!(out.status.success(), "kcat consume failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// Creates a topic with kcat's admin-less way: produce nothing, rely on
/// Conveyor's `create_topics`. (Kept for symmetry.)
pub fn kafka_yaml(bootstrap: &str, input: &str, output: &str, partitions: u32, extra_worker: &str) -> String {
    format!(
        r#"
service: {{ http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 30s }}
transports:
  kafka: {{ type: kafka, bootstrap_servers: "{bootstrap}", create_topics: true,
           properties: {{ "session.timeout.ms": "6000", "heartbeat.interval.ms": "500" }} }}
entities:
  in:  {{ transport: kafka, partitions: {partitions}, name: {input} }}
  out: {{ transport: kafka, partitions: {partitions}, name: {output} }}
workers:
  copy:
    input: in
    outputs: {{ default: out }}
    batch_size: 200
{extra_worker}
"#
    )
}

pub const BIN: &str = env!("CARGO_BIN_EXE_conveyor");

/// The `conveyor` binary running `run --config FILE`; killed on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub logs: std::sync::mpsc::Receiver<String>,
}

impl Daemon {
    /// A daemon with an instance id of its own (several may share groups).
    pub fn start(config: &Path) -> Daemon {
        Self::start_as(config, &format!("test-{:08x}", fastrand::u32(..)))
    }

    /// A daemon with instance id `id`: a restart with the same id rejoins
    /// its groups as the member it was.
    pub fn start_as(config: &Path, id: &str) -> Daemon {
        Self::start_with(config, id, &[])
    }

    /// [`Daemon::start_as`] with extra environment variables.
    pub fn start_with(config: &Path, id: &str, env: &[(&str, &str)]) -> Daemon {
        let mut child = std::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("CONVEYOR_INSTANCE_ID", id)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start conveyor");
        let (tx, logs) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut said = Vec::new();
        let addr = loop {
            let Ok(line) = logs.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) else {
                panic!("the daemon did not log its address; it said: {said:#?}");
            };
            said.push(line.clone());
            if line.contains("HTTP endpoints up") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
                break v["listen"].as_str().unwrap().parse().unwrap();
            }
        };
        Daemon { child, addr, logs }
    }

    pub fn signal(&self, sig: &str) {
        let ok =
            std::process::Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let end = std::time::Instant::now() + within;
        while std::time::Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn metrics(&self) -> String {
        get_blocking(self.addr, "/metrics").unwrap().1
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The repository's `config.yaml`, made private to a test: HTTP on port 0,
/// data in `dir`, the simulated APIs on a free port, sources at `rate`
/// events/s (and stopping after `count` events each, when given).
pub fn default_config_in(dir: &Path, rate: u32, count: Option<u64>) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sim = format!("127.0.0.1:{}", free_port());
    let rate_line = match count {
        Some(c) => format!("{rate}\n    count: {c}"),
        None => rate.to_string(),
    };
    let text = std::fs::read_to_string(root.join("config.yaml"))
        .unwrap()
        .replace("${CONVEYOR_LISTEN:-127.0.0.1:9464}", "127.0.0.1:0")
        .replace("${CONVEYOR_DATA:-./data}", &dir.display().to_string())
        .replace("${CONVEYOR_SIM_LISTEN:-127.0.0.1:9470}", &sim)
        .replace("${CONVEYOR_SIM_RATE:-20}", &rate_line);
    let p = dir.join("config.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Writes `ids` into `entity` of a durable embedded store at `path` (the
/// daemon must not be running on it) and makes them durable.
pub fn seed_store(path: &Path, entities: &[(&str, u32)], entity: &str, ids: impl IntoIterator<Item = String>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let t = open_store(path, entities, &[]);
        produce_ids(&t, entity, ids).await;
        t.flush().await.unwrap();
    });
}

/// Ids of the result rows a sink wrote under `dir/results` to files whose
/// names start with `prefix` (lines that do not parse are skipped: a sink may
/// be mid-write).
pub fn result_ids(dir: &Path, prefix: &str) -> std::collections::BTreeSet<String> {
    let mut ids = std::collections::BTreeSet::new();
    let files = std::fs::read_dir(dir.join("results")).map(|rd| rd.map(|e| e.unwrap().path()).collect::<Vec<_>>());
    for p in files.unwrap_or_default() {
        if p.file_name().unwrap().to_string_lossy().starts_with(prefix) {
            for l in std::fs::read_to_string(&p).unwrap_or_default().lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                    ids.insert(v["id"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    ids
}
