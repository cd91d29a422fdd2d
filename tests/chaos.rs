//! The proof suite: faults injected into running daemons, every id counted
//! end to end by an independent client (kcat for Kafka, the official Python
//! `azure-eventhub` SDK for Event Hubs, the result files and the embedded
//! store for the seed pipeline). Each scenario prints one row — messages,
//! faults, lost, duplicates, time to recover, RSS — and asserts 0 lost and
//! no secret anywhere (logs, `/metrics`, `/readyz`, dead letters).
//!
//! CI runs the small sizes; `bench/chaos.sh` runs the same scenarios at soak
//! sizes through the environment: `CHAOS_N` (messages per scenario),
//! `CHAOS_KILLS` (SIGKILLs in the crash scenarios), `CHAOS_OUTAGE_SECS`
//! (length of each outage), `CHAOS_FRESH_IDS=1` (a new instance id on every
//! restart: how recovery behaved before static membership), and
//! `CHAOS_REPORT=FILE` (rows appended as tab-separated lines).
//!
//! Recovery time after a crash is from the restart (process spawned) until
//! the restarted daemon owns all its partitions again and has committed a
//! position past the one before the kill: committed offsets read from the
//! broker for Kafka, checkpoint blobs read from Azurite for Event Hubs. For
//! the embedded seed pipeline (one process owns everything) it is until the
//! first output; after an outage, until `/readyz` is ready again.
#![cfg(all(feature = "kafka", feature = "eventhubs"))]

mod support;

use conveyor::transport::Transport;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::azure::*;
use support::*;

/// The scenarios take turns: each measures recovery times, and two daemons
/// restarting brokers and each other on 2 cores would measure the machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn my_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Scenario sizes (CI defaults; `bench/chaos.sh` raises them).
struct Sizes {
    n: usize,
    kills: usize,
    outage: Duration,
    fresh_ids: bool,
}

fn sizes() -> Sizes {
    let var = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    Sizes {
        n: var("CHAOS_N", 10_000) as usize,
        kills: var("CHAOS_KILLS", 10) as usize,
        outage: Duration::from_secs(var("CHAOS_OUTAGE_SECS", 20)),
        fresh_ids: var("CHAOS_FRESH_IDS", 0) == 1,
    }
}

/// One row of the report.
struct Row {
    scenario: &'static str,
    messages: usize,
    faults: String,
    lost: usize,
    duplicates: usize,
    recover: Vec<Duration>,
    rss_mb: f64,
}

impl Row {
    fn print(&self) {
        let mut r = self.recover.clone();
        r.sort();
        let fmt = |d: Option<&Duration>| d.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or_else(|| "-".into());
        let recover = match r.len() {
            0 => "-".to_string(),
            1..=3 => self.recover.iter().map(|d| fmt(Some(d))).collect::<Vec<_>>().join(", "),
            _ => format!("median {} (max {})", fmt(r.get(r.len() / 2)), fmt(r.last())),
        };
        let dup = if self.messages == 0 { 0.0 } else { 100.0 * self.duplicates as f64 / self.messages as f64 };
        let line = format!(
            "{}\t{}\t{}\t{}\t{} ({dup:.2}%)\t{recover}\t{:.0} MB",
            self.scenario, self.messages, self.faults, self.lost, self.duplicates, self.rss_mb
        );
        eprintln!("CHAOS\t{line}");
        if let Ok(path) = std::env::var("CHAOS_REPORT") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            writeln!(f, "{line}").unwrap();
        }
    }
}

/// Resident memory of a process, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Everything a daemon said or served: its log lines, `/metrics`, `/readyz`.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn logs(&mut self, d: &Daemon) {
        self.0.extend(d.logs.try_iter());
    }

    fn endpoints(&mut self, d: &Daemon) {
        for path in ["/metrics", "/readyz"] {
            if let Ok((_, body)) = get_blocking(d.addr, path) {
                self.0.push(body);
            }
        }
    }

    /// C7: none of `secrets` appears anywhere.
    fn assert_clean(&self, secrets: &[&str]) {
        for s in secrets {
            let hits = self.0.iter().filter(|t| t.contains(s)).count();
            assert_eq!(hits, 0, "secret leaked in {hits} texts, e.g. {:?}", self.0.iter().find(|t| t.contains(s)));
        }
    }

    fn panics(&self) -> usize {
        self.0.iter().filter(|l| l.contains("panicked") || l.contains("\"panic\"")).count()
    }
}

/// Takes what `d` said and served into `seen`, then stops it with SIGTERM
/// (it must drain and exit 0); returns its RSS just before, in MB.
fn finish(mut d: Daemon, seen: &mut Seen) -> f64 {
    seen.endpoints(&d);
    seen.logs(&d);
    let rss = rss_mb(d.child.id());
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(40)), Some(0), "a clean drain after SIGTERM");
    seen.logs(&d);
    rss
}

fn metric(d: &Daemon, name: &str, needle: &str) -> f64 {
    get_blocking(d.addr, "/metrics").map(|(_, m)| metric_sum(&m, name, needle)).unwrap_or(0.0)
}

/// Partitions `worker` of daemon `d` owns: one lag series per owned
/// partition (a lane that ends drops its series).
fn partitions_owned(d: &Daemon, worker: &str) -> usize {
    let m = get_blocking(d.addr, "/metrics").map(|r| r.1).unwrap_or_default();
    let needle = format!("worker=\"{worker}\"");
    m.lines().filter(|l| l.starts_with("conveyor_consumer_lag_messages{") && l.contains(&needle)).count()
}

fn readyz(d: &Daemon) -> Option<u16> {
    get_blocking(d.addr, "/readyz").ok().map(|(c, _)| c)
}

/// What a daemon says of itself, for a failure message: `/readyz` and its
/// last 40 log lines.
fn state_of(d: &Daemon) -> String {
    let body = get_blocking(d.addr, "/readyz").map(|r| r.1).unwrap_or_default();
    let logs: Vec<String> = d.logs.try_iter().collect();
    format!("\n/readyz: {body}\nlast log lines:\n{}", logs[logs.len().saturating_sub(40)..].join("\n"))
}

fn wait_for(what: &str, within: Duration, f: impl FnMut() -> bool) {
    wait_or_explain(what, within, f, String::new);
}

/// [`wait_for`], with `explain()` in the failure message.
fn wait_or_explain(what: &str, within: Duration, mut f: impl FnMut() -> bool, explain: impl Fn() -> String) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out after {within:?} waiting for {what} {}", explain());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills `d` with SIGKILL at a random moment after `worker` (any worker
/// when empty) consumed something.
fn kill_in_flight(d: &mut Daemon, worker: &str, seen: &mut Seen) {
    let needle = if worker.is_empty() { String::new() } else { format!("worker=\"{worker}\"") };
    wait_or_explain(
        "consumption before the kill",
        Duration::from_secs(90),
        || metric(d, "conveyor_messages_consumed_total", &needle) > 0.0,
        || state_of(d),
    );
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..300)));
    seen.logs(d);
    d.signal("-KILL");
    assert!(d.wait_exit(Duration::from_secs(10)).is_some(), "killed daemon exits");
    seen.logs(d);
}

fn instance(base: &str, round: usize, s: &Sizes) -> String {
    if s.fresh_ids { format!("{base}-{round}") } else { base.to_string() }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `n` ids split into `parts` chunks.
fn chunks(prefix: &str, n: usize, parts: usize) -> Vec<Vec<String>> {
    let per = n.div_ceil(parts);
    (0..parts).map(|c| (c * per..((c + 1) * per).min(n)).map(|i| format!("{prefix}{i}")).collect()).collect()
}

fn json_pairs(ids: &[String]) -> Vec<(String, String)> {
    ids.iter().map(|i| (i.clone(), format!("{{\"id\":\"{i}\"}}"))).collect()
}

/// Lost and duplicated ids of `got` (every copy) against `want`.
fn tally(want: &BTreeSet<String>, got: &[String]) -> (usize, usize) {
    let distinct: BTreeSet<&String> = got.iter().collect();
    let lost = want.iter().filter(|w| !distinct.contains(w)).count();
    (lost, got.len() - distinct.len())
}

// ---------------------------------------------------------------- Kafka

fn kafka_three_stage(bootstrap: &str, data: &Path, tin: &str, tout: &str, props: &str) -> String {
    format!(
        r#"
service: {{ http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 20s }}
transports:
  kafka: {{ type: kafka, bootstrap_servers: "{bootstrap}", create_topics: true, commit_interval: 200ms{props} }}
  local: {{ type: embedded, path: "{}" }}
entities:
  in:   {{ transport: kafka, partitions: 4, name: {tin} }}
  mid1: {{ transport: local, partitions: 4 }}
  mid2: {{ transport: local, partitions: 4 }}
  out:  {{ transport: kafka, partitions: 4, name: {tout} }}
workers:
  first:  {{ input: in,   outputs: {{ default: mid1 }}, batch_size: 200, stage: {{ type: map, require: [id] }} }}
  second: {{ input: mid1, outputs: {{ default: mid2 }}, batch_size: 200 }}
  third:  {{ input: mid2, outputs: {{ default: out }},  batch_size: 200 }}
"#,
        data.display()
    )
}

/// The sum of `group`'s committed offsets on `topic` (-1 while the broker
/// cannot say).
fn committed_sum(bootstrap: &str, topic: &str, group: &str) -> i64 {
    kafka_committed(bootstrap, topic, group, 4).map(|c| c.iter().sum()).unwrap_or(-1)
}

/// Every key on `topic` once all of `want` arrived (or `within` passed).
fn kafka_wait_keys(bootstrap: &str, topic: &str, want: &BTreeSet<String>, within: Duration) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let keys = kcat_keys(bootstrap, topic);
        let distinct: BTreeSet<&String> = keys.iter().collect();
        if want.iter().all(|w| distinct.contains(w)) || t0.elapsed() > within {
            return keys;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// C1 on Kafka → embedded durable → Kafka, and fast recovery (static
/// membership): the default session timeout (45 s) is kept, so a restart
/// that had to wait for the dead member's eviction would show here.
#[test]
fn c1_kafka_embedded_kafka_killed_repeatedly_loses_nothing_and_recovers_fast() {
    let _turn = my_turn();
    let s = sizes();
    let broker = KafkaBroker::get(false);
    let (tin, tout) = (topic("c1-in"), topic("c1-out"));
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        write(dir.path(), "c1.yaml", &kafka_three_stage(&broker.bootstrap, &dir.path().join("data"), &tin, &tout, ""));
    let parts = chunks("k", s.n, s.kills + 1);
    let want: BTreeSet<String> = parts.iter().flatten().cloned().collect();
    let mut seen = Seen::default();
    let mut d = Daemon::start_as(&cfg, &instance("c1-kafka", 0, &s)); // creates the topics
    kcat_produce(&broker.bootstrap, &tin, json_pairs(&parts[0]));
    let mut recover = Vec::new();
    for k in 0..s.kills {
        kill_in_flight(&mut d, "first", &mut seen);
        let mut before = -1;
        wait_for("the committed offsets after the kill", Duration::from_secs(30), || {
            before = committed_sum(&broker.bootstrap, &tin, "first");
            before >= 0
        });
        // more input while it is down, so the restart has work to commit
        kcat_produce(&broker.bootstrap, &tin, json_pairs(&parts[k + 1]));
        let t0 = Instant::now();
        d = Daemon::start_as(&cfg, &instance("c1-kafka", k + 1, &s));
        wait_for("all partitions back and a commit after the restart", Duration::from_secs(120), || {
            partitions_owned(&d, "first") == 4 && committed_sum(&broker.bootstrap, &tin, "first") > before
        });
        recover.push(t0.elapsed());
    }
    let keys = kafka_wait_keys(&broker.bootstrap, &tout, &want, Duration::from_secs(120));
    let rss = finish(d, &mut seen);
    let (lost, duplicates) = tally(&want, &keys);
    Row {
        scenario: "C1 Kafka → embedded → Kafka",
        messages: s.n,
        faults: format!("{} × kill -9", s.kills),
        lost,
        duplicates,
        recover: recover.clone(),
        rss_mb: rss,
    }
    .print();
    assert_eq!(lost, 0);
    assert_eq!(seen.panics(), 0);
    if !s.fresh_ids {
        let slowest = recover.iter().max().unwrap();
        assert!(*slowest < Duration::from_secs(20), "a restart waited for the session timeout: {recover:?}");
    }
}

/// C2: the Kafka broker is down for `CHAOS_OUTAGE_SECS` mid-run: `/readyz`
/// goes unready, then ready, and nothing is lost.
#[test]
fn c2_kafka_broker_outage_goes_unready_then_ready_and_loses_nothing() {
    let _turn = my_turn();
    let s = sizes();
    let broker = KafkaBroker::get(true);
    let (tin, tout) = (topic("c2-in"), topic("c2-out"));
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        write(dir.path(), "c2.yaml", &kafka_three_stage(&broker.bootstrap, &dir.path().join("data"), &tin, &tout, ""));
    let parts = chunks("o", s.n, 2);
    let want: BTreeSet<String> = parts.iter().flatten().cloned().collect();
    let mut seen = Seen::default();
    let d = Daemon::start(&cfg);
    kcat_produce(&broker.bootstrap, &tin, json_pairs(&parts[0]));
    wait_for("consumption", Duration::from_secs(60), || {
        metric(&d, "conveyor_messages_consumed_total", "worker=\"first\"") > 0.0
    });
    broker.stop();
    wait_for("/readyz unready during the outage", s.outage.max(Duration::from_secs(30)), || readyz(&d) == Some(503));
    seen.endpoints(&d);
    let down_since = Instant::now();
    std::thread::sleep(s.outage.saturating_sub(Duration::from_secs(1)));
    broker.restart();
    let t0 = Instant::now();
    wait_or_explain(
        "/readyz ready after the outage",
        Duration::from_secs(120),
        || readyz(&d) == Some(200),
        || state_of(&d),
    );
    let ready_after = t0.elapsed();
    let outage = down_since.elapsed() - ready_after;
    kcat_produce(&broker.bootstrap, &tin, json_pairs(&parts[1]));
    let keys = kafka_wait_keys(&broker.bootstrap, &tout, &want, Duration::from_secs(120));
    let rss = finish(d, &mut seen);
    let (lost, duplicates) = tally(&want, &keys);
    Row {
        scenario: "C2 Kafka broker down",
        messages: s.n,
        faults: format!("broker stopped {}s", outage.as_secs()),
        lost,
        duplicates,
        recover: vec![ready_after],
        rss_mb: rss,
    }
    .print();
    assert_eq!(lost, 0);
}

/// C3: three daemons share the Kafka groups; one is SIGKILLed while input
/// flows, and its partitions move to the two survivors.
#[test]
fn c3_kafka_three_daemons_one_killed_partitions_move_and_nothing_is_lost() {
    let _turn = my_turn();
    let s = sizes();
    let broker = KafkaBroker::get(false);
    let (tin, tout) = (topic("c3-in"), topic("c3-out"));
    let dir = tempfile::tempdir().unwrap();
    // an embedded store admits one process: here every hop is on Kafka
    let cfg = write(
        dir.path(),
        "c3.yaml",
        &kafka_yaml(&broker.bootstrap, &tin, &tout, 6, "    stage: { type: map, require: [id] }"),
    );
    let parts = chunks("r", s.n, 10);
    let want: BTreeSet<String> = parts.iter().flatten().cloned().collect();
    let mut seen = Seen::default();
    let mut ds: Vec<Daemon> = (0..3).map(|i| Daemon::start_as(&cfg, &format!("c3-{i}"))).collect();
    let (b, t, p) = (broker.bootstrap.clone(), tin.clone(), parts.clone());
    let producer = std::thread::spawn(move || {
        for chunk in p {
            kcat_produce(&b, &t, json_pairs(&chunk));
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let mut victim = ds.remove(1);
    kill_in_flight(&mut victim, "copy", &mut seen);
    let killed = Instant::now();
    drop(victim);
    producer.join().unwrap();
    // the survivors own every partition once the dead member is evicted
    let owned = |ds: &[Daemon]| -> usize { ds.iter().map(|d| partitions_owned(d, "copy")).sum() };
    wait_or_explain(
        "the survivors to own all 6 partitions",
        Duration::from_secs(120),
        || owned(&ds) >= 6,
        || format!("(they own {:?})", ds.iter().map(|d| partitions_owned(d, "copy")).collect::<Vec<_>>()),
    );
    let moved = killed.elapsed();
    let keys = kafka_wait_keys(&broker.bootstrap, &tout, &want, Duration::from_secs(120));
    let rss = ds.into_iter().map(|d| finish(d, &mut seen)).fold(0.0, f64::max);
    let (lost, duplicates) = tally(&want, &keys);
    Row {
        scenario: "C3 Kafka 3 daemons, 1 killed",
        messages: s.n,
        faults: "1 of 3 kill -9".into(),
        lost,
        duplicates,
        recover: vec![moved],
        rss_mb: rss,
    }
    .print();
    assert_eq!(lost, 0);
}

// ----------------------------------------------------------- Event Hubs

fn eh_three_stage(conn: &str, store: &str, tag: &str, expiry: &str) -> String {
    format!(
        r#"
service: {{ name: chaos-eh, http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 20s, log: {{ format: json, level: info }} }}
transports:
  hubs:
    type: eventhubs
    connection_string: "{conn}"
    checkpoint_store: {store}
    checkpoint_interval: 200ms
    {expiry}
entities:
  {tag}-in:   {{ transport: hubs, partitions: 4 }}
  {tag}-mid1: {{ transport: hubs, partitions: 4 }}
  {tag}-mid2: {{ transport: hubs, partitions: 4 }}
  {tag}-out:  {{ transport: hubs, partitions: 4 }}
workers:
  first:  {{ input: {tag}-in,   outputs: {{ default: {tag}-mid1 }}, batch_size: 200 }}
  second: {{ input: {tag}-mid1, outputs: {{ default: {tag}-mid2 }}, batch_size: 200 }}
  third:  {{ input: {tag}-mid2, outputs: {{ default: {tag}-out }},  batch_size: 200 }}
"#
    )
}

/// Balancing settings for scenarios about something else than ownership
/// expiry (the defaults are 10 s and 60 s).
const FAST_BALANCING: &str = "update_interval: 1s\n    ownership_expiration: 4s";

/// A 3-stage Event Hubs scenario: a runtime for the test broker (4
/// partitions), Azurite for checkpoints (container `chaos-<tag>`), and the
/// config file of [`eh_three_stage`].
struct EhRig {
    rt: tokio::runtime::Runtime,
    b: Broker,
    az: Azurite,
    dir: tempfile::TempDir,
    cfg: PathBuf,
}

fn eh_rig(tag: &str, balancing: &str) -> EhRig {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let b = rt.block_on(broker(4));
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let store = blob_store_yaml(&az, &format!("chaos-{tag}"));
    let cfg = write(dir.path(), &format!("{tag}.yaml"), &eh_three_stage(&eh_conn(&b), &store, tag, balancing));
    EhRig { rt, b, az, dir, cfg }
}

/// Sum of the sequence numbers checkpointed for `group` on `hub`.
fn eh_checkpointed(rt: &tokio::runtime::Runtime, az: &Azurite, container: &str, hub: &str, group: &str) -> i64 {
    let needle = format!("/{hub}/{group}/checkpoint/").to_lowercase();
    rt.block_on(az.client().list(container, ""))
        .unwrap_or_default()
        .iter()
        .filter(|b| b.name.to_lowercase().contains(&needle))
        .filter_map(|b| b.metadata.get("sequencenumber").and_then(|s| s.parse::<i64>().ok()))
        .map(|s| s + 1)
        .sum()
}

async fn py_produce_ids(b: &Broker, hub: &str, count: usize, prefix: &str) {
    let (code, out) = eh_tool_async(
        ["produce", "--conn", &eh_conn(b), "--hub", hub, "--count", &count.to_string(), "--prefix", prefix, "--batch"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "python produce failed: {out}");
}

/// Every event body stored on `hub` at the test broker (every copy).
fn stored_bodies(b: &Broker, hub: &str) -> Vec<String> {
    b.events(hub).into_iter().map(|e| String::from_utf8_lossy(&e.body).into_owned()).collect()
}

/// Every body on `hub`, read with the Python SDK once `want` distinct bodies
/// arrived at the broker.
async fn py_bodies(b: &Broker, hub: &str, want: &BTreeSet<String>, within: Duration) -> Vec<String> {
    let end = Instant::now() + within;
    loop {
        let got: BTreeSet<String> = stored_bodies(b, hub).into_iter().collect();
        if want.is_subset(&got) || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out) = eh_tool_async(
        [
            "consume",
            "--conn",
            &eh_conn(b),
            "--hub",
            hub,
            "--group",
            "$Default",
            "--expect",
            &want.len().to_string(),
            "--timeout",
            "60",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    bodies(&out)
}

/// C1 on Event Hubs → Event Hubs (the local test broker, checkpoints and
/// ownership in Azurite), with the default ownership expiry (60 s): a
/// restart that had to wait for its own ownerships to expire would show.
#[test]
fn c1_event_hubs_killed_repeatedly_loses_nothing_and_recovers_fast() {
    let _turn = my_turn();
    let s = sizes();
    let EhRig { rt, b, az, dir: _dir, cfg } = eh_rig("c1", "");
    let parts = chunks("e", s.n, s.kills + 1);
    let want: BTreeSet<String> = parts.iter().flatten().cloned().collect();
    let produce = |k: usize| {
        let prefix = format!("e{k}-");
        rt.block_on(py_produce_ids(&b, "c1-in", parts[k].len(), &prefix));
        (0..parts[k].len()).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>()
    };
    let mut want_bodies: BTreeSet<String> = BTreeSet::new();
    let mut seen = Seen::default();
    let mut d = Daemon::start_as(&cfg, &instance("c1-eh", 0, &s));
    want_bodies.extend(produce(0));
    let mut recover = Vec::new();
    for k in 0..s.kills {
        kill_in_flight(&mut d, "first", &mut seen);
        let before = eh_checkpointed(&rt, &az, "chaos-c1", "c1-in", "first");
        want_bodies.extend(produce(k + 1));
        let t0 = Instant::now();
        d = Daemon::start_as(&cfg, &instance("c1-eh", k + 1, &s));
        wait_for("all partitions back and a checkpoint after the restart", Duration::from_secs(120), || {
            partitions_owned(&d, "first") == 4 && eh_checkpointed(&rt, &az, "chaos-c1", "c1-in", "first") > before
        });
        recover.push(t0.elapsed());
    }
    assert_eq!(want_bodies.len(), want.len());
    let got = rt.block_on(py_bodies(&b, "c1-out", &want_bodies, Duration::from_secs(120)));
    let rss = finish(d, &mut seen);
    let (lost, _) = tally(&want_bodies, &got);
    let stored = stored_bodies(&b, "c1-out");
    let (lost_at_broker, duplicates) = tally(&want_bodies, &stored);
    Row {
        scenario: "C1 Event Hubs → Event Hubs",
        messages: s.n,
        faults: format!("{} × kill -9", s.kills),
        lost,
        duplicates,
        recover: recover.clone(),
        rss_mb: rss,
    }
    .print();
    assert_eq!((lost, lost_at_broker), (0, 0));
    seen.assert_clean(&[SAS_KEY, AZURITE_KEY]);
    if !s.fresh_ids {
        let slowest = recover.iter().max().unwrap();
        assert!(*slowest < Duration::from_secs(20), "a restart waited for its ownerships to expire: {recover:?}");
    }
}

/// C2 on Event Hubs: the Event Hubs service restarts (the test broker stops
/// accepting and cuts every connection, its data kept), and Azurite (the
/// checkpoint store) is down: both for `CHAOS_OUTAGE_SECS`. Unready during
/// each, ready after, nothing lost.
#[test]
fn c2_event_hubs_service_restart_and_checkpoint_store_outage_lose_nothing() {
    let _turn = my_turn();
    let s = sizes();
    let EhRig { rt, mut b, mut az, dir: _dir, cfg } = eh_rig("c2", FAST_BALANCING);
    let mut seen = Seen::default();
    let d = Daemon::start(&cfg);
    let per = s.n / 3;
    let mut want = BTreeSet::new();
    let mut produce = |b: &Broker, k: usize| {
        let prefix = format!("o{k}-");
        rt.block_on(py_produce_ids(b, "c2-in", per, &prefix));
        want.extend((0..per).map(|i| format!("{prefix}{i}")));
    };
    let ready = |code: u16| move |d: &Daemon| readyz(d) == Some(code);
    produce(&b, 0);
    wait_for("consumption", Duration::from_secs(60), || {
        metric(&d, "conveyor_messages_consumed_total", "worker=\"first\"") > 0.0
    });
    let mut recover = Vec::new();
    // the service restarts
    rt.block_on(b.suspend());
    wait_for("unready while the service is down", s.outage.max(Duration::from_secs(30)), || ready(503)(&d));
    seen.endpoints(&d);
    std::thread::sleep(s.outage.saturating_sub(Duration::from_secs(1)));
    rt.block_on(b.resume()).unwrap();
    let t0 = Instant::now();
    wait_for("ready after the service is back", Duration::from_secs(120), || ready(200)(&d));
    recover.push(t0.elapsed());
    produce(&b, 1);
    // the checkpoint store goes away while events flow
    az.stop();
    produce(&b, 2);
    wait_for("unready while checkpoints fail", s.outage.max(Duration::from_secs(30)), || ready(503)(&d));
    seen.endpoints(&d);
    std::thread::sleep(s.outage.saturating_sub(Duration::from_secs(1)));
    az.restart();
    let t0 = Instant::now();
    wait_for("ready after the checkpoint store is back", Duration::from_secs(120), || ready(200)(&d));
    recover.push(t0.elapsed());
    let got = rt.block_on(py_bodies(&b, "c2-out", &want, Duration::from_secs(120)));
    let rss = finish(d, &mut seen);
    let (lost, _) = tally(&want, &got);
    let stored = stored_bodies(&b, "c2-out");
    let (_, duplicates) = tally(&want, &stored);
    Row {
        scenario: "C2 Event Hubs restart + Azurite down",
        messages: want.len(),
        faults: format!("service down {0}s, store down {0}s", s.outage.as_secs()),
        lost,
        duplicates,
        recover,
        rss_mb: rss,
    }
    .print();
    assert_eq!(lost, 0);
    seen.assert_clean(&[SAS_KEY, AZURITE_KEY]);
}

/// C3 on Event Hubs: three daemons share a consumer group (ownership in
/// Azurite); one is SIGKILLed and its partitions move to the survivors once
/// its ownerships expire.
#[test]
fn c3_event_hubs_three_daemons_one_killed_partitions_move_and_nothing_is_lost() {
    let _turn = my_turn();
    let s = sizes();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let b = rt.block_on(broker(6));
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c3eh.yaml",
        &eh_yaml(&eh_conn(&b), &blob_store_yaml(&az, "chaos-c3"), "c3-in", "c3-out", 6, "copy"),
    );
    let mut seen = Seen::default();
    let mut ds: Vec<Daemon> = (0..3).map(|i| Daemon::start_as(&cfg, &format!("c3eh-{i}"))).collect();
    let per = s.n / 5;
    let mut want = BTreeSet::new();
    for k in 0..2 {
        let prefix = format!("f{k}-");
        rt.block_on(py_produce_ids(&b, "c3-in", per, &prefix));
        want.extend((0..per).map(|i| format!("{prefix}{i}")));
    }
    let mut victim = ds.remove(0);
    kill_in_flight(&mut victim, "copy", &mut seen);
    let killed = Instant::now();
    drop(victim);
    for k in 2..5 {
        let prefix = format!("f{k}-");
        rt.block_on(py_produce_ids(&b, "c3-in", per, &prefix));
        want.extend((0..per).map(|i| format!("{prefix}{i}")));
    }
    let owned = |ds: &[Daemon]| -> usize { ds.iter().map(|d| partitions_owned(d, "copy")).sum() };
    wait_or_explain(
        "the survivors to own all 6 partitions",
        Duration::from_secs(120),
        || owned(&ds) >= 6,
        || format!("(they own {:?})", ds.iter().map(|d| partitions_owned(d, "copy")).collect::<Vec<_>>()),
    );
    let moved = killed.elapsed();
    let got = rt.block_on(py_bodies(&b, "c3-out", &want, Duration::from_secs(120)));
    let rss = ds.into_iter().map(|d| finish(d, &mut seen)).fold(0.0, f64::max);
    let (lost, _) = tally(&want, &got);
    let stored = stored_bodies(&b, "c3-out");
    let (_, duplicates) = tally(&want, &stored);
    Row {
        scenario: "C3 Event Hubs 3 daemons, 1 killed",
        messages: want.len(),
        faults: "1 of 3 kill -9".into(),
        lost,
        duplicates,
        recover: vec![moved],
        rss_mb: rss,
    }
    .print();
    assert_eq!(lost, 0);
    seen.assert_clean(&[SAS_KEY, AZURITE_KEY]);
}

// ------------------------------------------------------ the seed pipeline

/// Distinct keys of `entity` in a stopped daemon's embedded store.
fn store_keys(data: &Path, entity: &str, partitions: u32) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let t: std::sync::Arc<dyn Transport> = std::sync::Arc::new(open_store(data, &[(entity, partitions)], &[]));
        read_everything(t, entity)
            .await
            .iter()
            .filter_map(|m| m.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()))
            .collect()
    })
}

/// Every result row id in files named `prefix*` (every copy). `complete`:
/// the daemon has stopped, so every line must be whole JSON; while it runs a
/// sink may be mid-line, and such a line is skipped.
fn rows(dir: &Path, prefix: &str, complete: bool) -> Vec<String> {
    let mut ids = Vec::new();
    let files: Vec<PathBuf> = match std::fs::read_dir(dir.join("results")) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return ids,
    };
    for p in files {
        if p.file_name().unwrap().to_string_lossy().starts_with(prefix) {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            // a daemon killed mid-write leaves its file's last line torn (no
            // newline): that batch was never synced nor committed, and went
            // to a new file; anything else broken is a defect
            let torn_tail = !text.is_empty() && !text.ends_with('\n');
            let count = text.lines().count();
            for (i, l) in text.lines().enumerate() {
                match serde_json::from_str::<serde_json::Value>(l) {
                    Ok(v) => ids.push(v["id"].as_str().unwrap_or_default().to_string()),
                    Err(_) if torn_tail && i + 1 == count => {}
                    Err(e) => assert!(!complete, "a broken result line in {}: {e}: {l}", p.display()),
                }
            }
        }
    }
    ids
}

/// Writes `n` events into each source entity of the seed pipeline, shaped
/// as its simulators write them (1% malformed), keyed by id; returns the ids.
fn seed_sources(data: &Path, attachments: &str, n: usize) -> [BTreeSet<String>; 2] {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let t = open_store(data, &[("verisk_events", 4), ("claimx_events", 4)], &[]);
        let mut all = [BTreeSet::new(), BTreeSet::new()];
        for (k, (entity, kind)) in [("verisk_events", "xact"), ("claimx_events", "claimx")].into_iter().enumerate() {
            let msgs: Vec<conveyor::transport::OutboundMessage> = (0..n)
                .map(|seq| {
                    let id = format!("{kind}-chaos-{seq}");
                    all[k].insert(id.clone());
                    let payload = if seq % 100 == 99 {
                        format!("not json: {id}")
                    } else {
                        let task = ["itel_cabinet", "mitigation", "inspection"][seq % 3];
                        serde_json::json!({
                            "id": id, "seq": seq, "type": kind,
                            "claim_id": format!("{}-{:06}", kind.to_uppercase(), seq % 500),
                            "event_type": "document_added",
                            "task": { "type": task, "id": format!("T-{seq}") },
                            "attachment_url": format!("{attachments}/{id}.pdf"),
                            "ts": 1_700_000_000_000u64 + seq as u64,
                        })
                        .to_string()
                    };
                    conveyor::transport::OutboundMessage {
                        key: Some(id.into()),
                        payload: payload.into(),
                        ..Default::default()
                    }
                })
                .collect();
            for chunk in msgs.chunks(500) {
                t.producer().send(entity, chunk.to_vec()).await.unwrap();
            }
        }
        t.flush().await.unwrap();
        all
    })
}

/// C1 on the embedded seed pipeline (the default `config.yaml`, its
/// simulated APIs failing 2% of calls): killed while its 13 workers run;
/// every event of both source entities ends as a result row or a dead
/// letter.
#[test]
fn c1_the_seed_pipeline_killed_repeatedly_loses_nothing() {
    let _turn = my_turn();
    let s = sizes();
    let dir = tempfile::tempdir().unwrap();
    let cfg = default_config_in(dir.path(), 1, Some(0)); // sources idle: the input is seeded
    let text = std::fs::read_to_string(&cfg).unwrap();
    let attachments = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("attachments: \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the simulators' attachment URL")
        .to_string();
    let data = dir.path().join("embedded");
    let per_source = (s.n / 4).max(100);
    let wants = seed_sources(&data, &attachments, per_source);
    let results = |prefix: &str| rows(dir.path(), prefix, false).into_iter().collect::<BTreeSet<String>>().len();
    // every worker ready too: a worker waiting out a restart backoff has no
    // lag series at all, so its unread messages would look like none
    let quiet = |d: &Daemon| {
        let m = get_blocking(d.addr, "/metrics").map(|r| r.1).unwrap_or_default();
        readyz(d) == Some(200)
            && metric_sum(&m, "conveyor_consumer_lag_messages", "") == 0.0
            && metric_sum(&m, "conveyor_in_flight_messages", "") == 0.0
            && metric_sum(&m, "conveyor_retry_pending_messages", "") == 0.0
    };
    // drained: quiet twice, 2 s apart (pending retries re-deliver within that)
    let drained = |d: &Daemon| {
        results("xact-results") + results("claimx-entities") > 0 && quiet(d) && {
            std::thread::sleep(Duration::from_secs(2));
            quiet(d)
        }
    };
    let mut seen = Seen::default();
    let mut d = Daemon::start_as(&cfg, "seed");
    let mut recover = Vec::new();
    let mut kills = 0;
    for k in 0..s.kills {
        let t0 = Instant::now();
        // kill while work is in flight; stop once the pipeline ran dry
        let busy = || {
            let m = get_blocking(d.addr, "/metrics").map(|r| r.1).unwrap_or_default();
            metric_sum(&m, "conveyor_messages_consumed_total", "") > 0.0
        };
        while !busy() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !busy() && drained(&d) {
            break;
        }
        kill_in_flight(&mut d, "", &mut seen);
        kills += 1;
        let t0 = Instant::now();
        d = Daemon::start_as(&cfg, &instance("seed", k + 1, &s));
        let mut produced = false;
        wait_for("output after the restart, or nothing left to do", Duration::from_secs(60), || {
            let m = get_blocking(d.addr, "/metrics").map(|r| r.1).unwrap_or_default();
            produced = metric_sum(&m, "conveyor_messages_produced_total", "")
                + metric_sum(&m, "conveyor_dead_lettered_total", "")
                > 0.0;
            produced || (t0.elapsed() > Duration::from_secs(3) && drained(&d))
        });
        if produced {
            recover.push(t0.elapsed());
        }
    }
    wait_for("the pipeline to drain", Duration::from_secs(300), || drained(&d));
    let drained_at_ms = conveyor::transport::now_ms();
    let rss = finish(d, &mut seen);
    let mut lost = 0;
    let mut duplicates = 0;
    for (want, results, dlqs) in [
        (&wants[0], "xact-results", &["xact.downloads.dlq"][..]),
        (&wants[1], "claimx-entities", &["claimx.enrichment.dlq", "claimx.downloads.dlq"][..]),
    ] {
        let mut got = rows(dir.path(), results, true);
        for q in dlqs {
            got.extend(store_keys(&data, q, 1));
        }
        let (l, dup) = tally(want, &got);
        let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
        eprintln!("{results}: {} events, {} results and dead letters, {l} lost {missing:?}", want.len(), got.len());
        if !missing.is_empty() {
            trail(&cfg, &data, &missing);
            eprintln!("drained at {drained_at_ms} ms");
        }
        lost += l;
        duplicates += dup;
    }
    Row {
        scenario: "C1 seed pipeline (embedded)",
        messages: 2 * per_source,
        faults: format!("{kills} × kill -9"),
        lost,
        duplicates,
        recover,
        rss_mb: rss,
    }
    .print();
    assert_eq!(lost, 0);
    assert_eq!(seen.panics(), 0);
}

/// Where ids the seed pipeline lost stand: every record of every entity
/// whose key or payload names one, and each consumer group's committed
/// positions on those entities (printed, for the failure's report).
fn trail(cfg: &Path, data: &Path, ids: &[&String]) {
    let c = conveyor::config::load_file(cfg).expect("the test's config").config;
    let entities: Vec<(&str, u32)> = c.entities.iter().map(|(k, e)| (k.as_str(), e.partitions)).collect();
    let mut groups: Vec<(&str, &str)> =
        c.workers.iter().map(|(n, w)| (w.input.as_str(), w.consumer_group.as_deref().unwrap_or(n.as_str()))).collect();
    let retry_vias: BTreeSet<&str> =
        c.workers.values().filter_map(|w| w.retry.as_ref().map(|r| r.via.as_str())).collect();
    groups.extend(retry_vias.into_iter().map(|v| (v, conveyor::retry::GROUP)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let t: std::sync::Arc<dyn Transport> = std::sync::Arc::new(open_store(data, &entities, &groups));
        for (e, _) in &entities {
            let msgs = read_everything(t.clone(), e).await;
            for m in &msgs {
                let key = m.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let payload = String::from_utf8_lossy(&m.payload);
                for id in ids {
                    if key.contains(id.as_str()) || payload.contains(id.as_str()) {
                        eprintln!(
                            "trail {id}: {e}/{}@{} at {} ms key={key:?} headers={:?}",
                            m.partition, m.position, m.timestamp_ms, m.headers
                        );
                    }
                }
            }
        }
        for (e, g) in &groups {
            let committed = t
                .group_positions(e, g)
                .await
                .map(|ps| ps.iter().map(|p| (p.info.partition, p.committed, p.info.next)).collect::<Vec<_>>());
            eprintln!("trail group {g} on {e}: (partition, committed, end) {committed:?}");
        }
    });
}

/// C5: Event Hubs service faults from the test broker: server-busy on sends,
/// receive links detached, connections dropped, a partition stolen by a
/// higher epoch, and put-token answered 401. Throttling and transient
/// faults are retried without loss; a 401 makes the daemon unready with an
/// `auth` reason until the credentials work again.
#[test]
fn c5_event_hubs_service_faults_are_classified_retried_or_paused_and_lose_nothing() {
    let _turn = my_turn();
    let s = sizes();
    let EhRig { rt, b, az: _az, dir: _dir, cfg } = eh_rig("c5", FAST_BALANCING);
    let mut seen = Seen::default();
    let d = Daemon::start(&cfg);
    let per = (s.n / 5).max(100);
    let mut want = BTreeSet::new();
    let mut round = 0;
    let mut produce = |b: &Broker| {
        let prefix = format!("c5-{round}-");
        round += 1;
        rt.block_on(py_produce_ids(b, "c5-in", per, &prefix));
        want.extend((0..per).map(|i| format!("{prefix}{i}")));
    };
    produce(&b);
    wait_for("consumption", Duration::from_secs(60), || {
        metric(&d, "conveyor_messages_consumed_total", "worker=\"first\"") > 0.0
    });
    // server-busy on the daemon's sends (disarmed before the Python
    // producer sends again)
    produce(&b);
    b.faults().server_busy_sends(5);
    wait_for("a send answered server-busy", Duration::from_secs(30), || b.faults().counts().server_busy >= 1);
    b.faults().server_busy_sends(0);
    b.faults().detach_receivers("c5-mid1");
    produce(&b);
    b.faults().drop_connections();
    produce(&b);
    b.faults().steal_partition("c5-in", "first", 0);
    // rejected credentials: unready, with the reason, until they work
    b.faults().cbs_unauthorized(1_000_000);
    b.faults().drop_connections();
    wait_for("unready with an auth reason", Duration::from_secs(60), || {
        get_blocking(d.addr, "/readyz").is_ok_and(|(c, body)| c == 503 && body.contains("auth"))
    });
    seen.endpoints(&d);
    b.faults().cbs_unauthorized(0);
    let t0 = Instant::now();
    wait_or_explain(
        "ready once the credentials work",
        Duration::from_secs(120),
        || readyz(&d) == Some(200),
        || state_of(&d),
    );
    let recovered = t0.elapsed();
    produce(&b);
    let got = rt.block_on(py_bodies(&b, "c5-out", &want, Duration::from_secs(120)));
    let counts = b.faults().counts();
    let m = d.metrics();
    let rss = finish(d, &mut seen);
    let (lost, _) = tally(&want, &got);
    let stored = stored_bodies(&b, "c5-out");
    let (_, duplicates) = tally(&want, &stored);
    let by_category = |c: &str| metric_sum(&m, "conveyor_messages_failed_total", &format!("category=\"{c}\"")) + 0.0;
    eprintln!(
        "C5 faults applied: {counts:?}; failures by category: throttling {}, transient {}, auth {}, permanent {}",
        by_category("throttling"),
        by_category("transient"),
        by_category("auth"),
        by_category("permanent")
    );
    Row {
        scenario: "C5 Event Hubs service faults",
        messages: want.len(),
        faults: "server-busy, detach, drop, steal, 401".into(),
        lost,
        duplicates,
        recover: vec![recovered],
        rss_mb: rss,
    }
    .print();
    assert_eq!(lost, 0);
    assert!(
        counts.dropped_connections >= 1 && counts.detached_receivers >= 1 && counts.stolen_receivers >= 1,
        "{counts:?}"
    );
    assert!(counts.cbs_unauthorized >= 1, "{counts:?}");
    assert_eq!(by_category("permanent"), 0.0, "no service fault is taken for a bad message");
    assert_eq!(metric_sum(&m, "conveyor_dead_lettered_total", ""), 0.0, "nothing dead-lettered for a service fault");
    seen.assert_clean(&[SAS_KEY, AZURITE_KEY]);
}

// ------------------------------------------------------- hostile input

/// A stand-in API on a real socket: `503` with a long non-ASCII body for ids
/// ending in `7` (always: retried, then dead-lettered), `200` otherwise.
fn hostile_api() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    let mut auth = String::new();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if h.to_ascii_lowercase().starts_with("authorization:") {
                            auth = h["authorization:".len()..].trim().to_string();
                        }
                    }
                    let mut body = vec![0; len];
                    let _ = r.read_exact(&mut body);
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (status, text) = if path.ends_with('7') {
                        // the request's credentials echoed first (an API may
                        // do that): they must not reach a log or a dead letter
                        let echo = format!("you sent {auth}; ");
                        ("503 Service Unavailable", echo + &"Überlastet — bitte später erneut versuchen ✋ ".repeat(40))
                    } else {
                        ("200 OK", "{\"ok\":true}".to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if c.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The API token of C4's HTTP stage (C7: it must appear nowhere).
const API_TOKEN: &str = "chaos-api-token-5f1d0c9e7b";

/// C4: 1% malformed JSON, an API answering 503 with non-ASCII bodies, payloads
/// over the output's size limit and headers at their limits: every input
/// ends as an output or a dead letter, nothing panics or restarts.
#[test]
fn c4_poison_and_hostile_input_each_end_as_an_output_or_a_dead_letter() {
    let _turn = my_turn();
    let s = sizes();
    let broker = KafkaBroker::get(false);
    let tin = topic("c4-in");
    let dir = tempfile::tempdir().unwrap();
    let api = hostile_api();
    let data = dir.path().join("data");
    let cfg = write(
        dir.path(),
        "c4.yaml",
        &format!(
            r#"
service: {{ http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 20s }}
transports:
  kafka: {{ type: kafka, bootstrap_servers: "{}", create_topics: true }}
  local: {{ type: embedded, path: "{}", max_message_bytes: 4096 }}
entities:
  in:    {{ transport: kafka, partitions: 4, name: {tin} }}
  valid: {{ transport: local, partitions: 4 }}
  out:   {{ transport: local, partitions: 4 }}
  retry: {{ transport: local, partitions: 2 }}
  dlq:   {{ transport: local, partitions: 1 }}
workers:
  validate:
    input: in
    stage: {{ type: map, require: [id] }}
    outputs: {{ default: valid }}
    dead_letter: dlq
  enrich:
    input: valid
    stage: {{ type: http, method: POST, url: "http://{api}/items/{{{{id}}}}", timeout: 2s, merge_into: api,
              auth: {{ bearer_env: CHAOS_API_TOKEN }} }}
    outputs: {{ default: out }}
    dead_letter: dlq
    concurrency: 8
    retry: {{ via: retry, schedule: [50ms, 100ms], max_attempts: 3 }}
"#,
            broker.bootstrap,
            data.display()
        ),
    );
    let n = s.n.min(5_000);
    let d = Daemon::start_with(&cfg, "c4", &[("CHAOS_API_TOKEN", API_TOKEN)]);
    let mut want = BTreeSet::new();
    let mut lines = Vec::new();
    for i in 0..n {
        let id = format!("h{i}");
        let body = match i % 100 {
            // 1% malformed JSON (keyed, so the dead letter names it)
            13 => format!("{{\"id\": \"{id}\", broken"),
            // over the output's 4 KiB limit: the output refuses it
            42 => format!("{{\"id\":\"{id}\",\"blob\":\"{}\"}}", "ß".repeat(3000)),
            _ => format!("{{\"id\":\"{id}\",\"note\":\"naïve café ☕\"}}"),
        };
        want.insert(id.clone());
        lines.push((id, body));
    }
    kcat_produce(&broker.bootstrap, &tin, lines);
    // headers: long names and multi-byte values just inside the output's
    // size limit (delivered), and far over it (refused: dead-lettered)
    kcat_produce_with_headers(&broker.bootstrap, &tin, "h-headers-fit", 8, 150);
    kcat_produce_with_headers(&broker.bootstrap, &tin, "h-headers-over", 200, 1000);
    want.insert("h-headers-fit".into());
    want.insert("h-headers-over".into());
    let mut seen = Seen::default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    wait_for("every input as an output or a dead letter", Duration::from_secs(180), || {
        let m = get_blocking(d.addr, "/metrics").map(|r| r.1).unwrap_or_default();
        let out = metric_sum(&m, "conveyor_messages_produced_total", "entity=\"out\"");
        let dead = metric_sum(&m, "conveyor_dead_lettered_total", "");
        out + dead >= want.len() as f64
    });
    let m = d.metrics();
    let restarts = metric_sum(&m, "conveyor_worker_restarts_total", "");
    let rss = finish(d, &mut seen);
    let envelopes = rt.block_on(async {
        let t: std::sync::Arc<dyn Transport> = std::sync::Arc::new(open_store(&data, &[("out", 4), ("dlq", 1)], &[]));
        let out = read_everything(t.clone(), "out").await;
        let dlq = read_everything(t, "dlq").await;
        (out, dlq)
    });
    let (out, dlq) = envelopes;
    let key = |m: &conveyor::transport::PipelineMessage| {
        m.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default()
    };
    let mut got: Vec<String> = out.iter().map(key).collect();
    got.extend(dlq.iter().map(key));
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for e in &dlq {
        seen.0.push(String::from_utf8_lossy(&e.payload).into_owned());
        let env = conveyor::dlq::Envelope::parse(&e.payload).expect("every dead letter is a complete envelope");
        let k = format!("{:?}/{} ({} attempts)", env.error.category, env.error.kind, env.error.attempts);
        *kinds.entry(k).or_default() += 1;
    }
    eprintln!("C4 dead letters by kind: {kinds:?}");
    let (lost, duplicates) = tally(&want, &got);
    Row {
        scenario: "C4 poison and hostile input",
        messages: want.len(),
        faults: "1% bad JSON, 503 non-ASCII, oversize, header limits".into(),
        lost,
        duplicates,
        recover: Vec::new(),
        rss_mb: rss,
    }
    .print();
    assert_eq!(lost, 0);
    seen.assert_clean(&[API_TOKEN]);
    assert_eq!(seen.panics(), 0, "no panic");
    assert_eq!(restarts, 0.0, "no worker restarted");
    let count = |k: &str| kinds.get(k).copied().unwrap_or(0);
    assert_eq!(count("Permanent/invalid_json (1 attempts)"), n / 100, "malformed JSON: {kinds:?}");
    assert_eq!(count("Permanent/too_large (1 attempts)"), n / 100 + 1, "oversize payloads and headers: {kinds:?}");
    assert_eq!(count("Throttling/http_status (3 attempts)"), n / 10, "503s retried, then dead-lettered: {kinds:?}");
    let fit = out.iter().find(|m| m.key.as_deref() == Some(&b"h-headers-fit"[..])).expect("headers within limits pass");
    assert_eq!(fit.headers.0.iter().filter(|(k, _)| k.starts_with("xxxx")).count(), 8, "every header carried");
}

/// One keyed message with `count` headers of `value_len` bytes each (kcat
/// `-H`), the embedded store's limits on name length respected.
fn kcat_produce_with_headers(bootstrap: &str, topic: &str, key: &str, count: usize, value_len: usize) {
    use std::io::Write;
    let mut args: Vec<String> = ["-P", "-b", bootstrap, "-t", topic, "-K", "|"].map(String::from).to_vec();
    for i in 0..count {
        args.push("-H".into());
        args.push(format!("{}{i:03}=é{}", "x".repeat(200), "v".repeat(value_len.saturating_sub(2))));
    }
    let mut child =
        std::process::Command::new("kcat").args(&args).stdin(std::process::Stdio::piped()).spawn().expect("kcat");
    writeln!(child.stdin.take().unwrap(), "{key}|{{\"id\":\"{key}\"}}").unwrap();
    assert!(child.wait().unwrap().success());
}

// ------------------------------------------------------- bad configuration

/// One random mutation of `text`: a line deleted, duplicated, swapped,
/// re-indented or truncated, a character range replaced with junk
/// (multi-byte included), or a key misspelt.
fn mutate(text: &str, rng: &mut fastrand::Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return "x".into();
    }
    let i = rng.usize(..lines.len());
    match rng.u8(..7) {
        0 => {
            lines.remove(i);
        }
        1 => lines.insert(i, lines[i].clone()),
        2 => {
            let j = rng.usize(..lines.len());
            lines.swap(i, j);
        }
        3 => lines[i] = format!("{}{}", " ".repeat(rng.usize(0..7)), lines[i].trim_start()),
        4 => {
            let chars: Vec<char> = lines[i].chars().collect();
            let cut = rng.usize(..=chars.len());
            lines[i] = chars[..cut].iter().collect();
        }
        5 => {
            const JUNK: &[&str] =
                &["{", "}", "[", ":", "\"", "'", "-", "ü", "☕", "\t", "${", "!!", "&a", "*a", "0x", "1e999", "?"];
            let chars: Vec<char> = lines[i].chars().collect();
            let at = rng.usize(..=chars.len());
            let end = (at + rng.usize(0..4)).min(chars.len());
            let junk: String = (0..rng.usize(1..4)).map(|_| JUNK[rng.usize(..JUNK.len())]).collect();
            lines[i] =
                format!("{}{junk}{}", chars[..at].iter().collect::<String>(), chars[end..].iter().collect::<String>());
        }
        _ => {
            if let Some(colon) = lines[i].find(':') {
                lines[i].insert(colon, 'x');
            }
        }
    }
    lines.join("\n")
}

/// C6: mutated copies of every shipped config through `conveyor check`:
/// exit 0 or 64 only, never a panic, and every rejection names a line (or,
/// for a section missing from the whole file, the section). Then a daemon
/// given bad configs by SIGHUP keeps running its topology.
#[test]
fn c6_mutated_configs_are_accepted_or_rejected_with_a_line_and_a_bad_reload_keeps_the_topology() {
    let _turn = my_turn();
    let per_file: usize = std::env::var("CHAOS_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("C6 mutation seed {seed} (CHAOS_SEED={seed} repeats it)");
    let dir = tempfile::tempdir().unwrap();
    let files = [
        "config.yaml",
        "config/kafka.yaml",
        "config/orders.yaml",
        "config/eventhubs.yaml",
        "config/mixed.yaml",
        "config/migration.yaml",
    ];
    let located = regex_lite_located();
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(f, file)| {
                let text = std::fs::read_to_string(root.join(file)).unwrap();
                let dir = dir.path().to_path_buf();
                let located = &located;
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(seed ^ f as u64);
                    let mut counts = (0usize, 0usize, 0usize);
                    for m in 0..per_file {
                        let bad = mutate(&text, &mut rng);
                        let path = dir.join(format!("m{f}-{}.yaml", m % 8));
                        std::fs::write(&path, &bad).unwrap();
                        let out = std::process::Command::new(BIN)
                            .args(["check", "--offline", "--config"])
                            .arg(&path)
                            .env("KAFKA_BOOTSTRAP", "127.0.0.1:1")
                            .output()
                            .unwrap();
                        let err = String::from_utf8_lossy(&out.stderr);
                        let ctx = || format!("{file} mutation {m} (seed {seed}):\n{bad}\n---\n{err}");
                        assert!(!err.contains("panicked"), "panic: {}", ctx());
                        match out.status.code() {
                            Some(0) => counts.0 += 1,
                            Some(64) => {
                                let problems: Vec<&str> =
                                    err.lines().filter(|l| l.starts_with("  ")).map(str::trim).collect();
                                assert!(!problems.is_empty(), "a rejection lists its problems: {}", ctx());
                                for p in problems {
                                    if located(p) {
                                        counts.1 += 1;
                                    } else {
                                        assert!(
                                            p.contains("missing section"),
                                            "a problem without a line: {p}\n{}",
                                            ctx()
                                        );
                                        counts.2 += 1;
                                    }
                                }
                            }
                            other => panic!("exit {other:?}: {}", ctx()),
                        }
                    }
                    counts
                })
            })
            .collect();
        for h in handles {
            let (ok, at_line, whole_file) = h.join().unwrap();
            *tally.entry("accepted").or_default() += ok;
            *tally.entry("problems with a line").or_default() += at_line;
            *tally.entry("missing sections").or_default() += whole_file;
        }
    });
    eprintln!("C6: {} mutations in {:.0?}: {tally:?}", per_file * files.len(), t0.elapsed());

    // a running daemon given bad configs keeps its topology
    let run = tempfile::tempdir().unwrap();
    let cfg = default_config_in(run.path(), 50, None);
    let good = std::fs::read_to_string(&cfg).unwrap();
    let d = Daemon::start(&cfg);
    let mut seen = Seen::default();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rejected = 0;
    while rejected < 5 {
        let bad = mutate(&good, &mut rng);
        let probe = run.path().join("probe.yaml");
        std::fs::write(&probe, &bad).unwrap();
        let ok = std::process::Command::new(BIN)
            .args(["check", "--offline", "--config"])
            .arg(&probe)
            .output()
            .unwrap()
            .status
            .success();
        if ok {
            continue;
        }
        let failures = metric(&d, "conveyor_config_reload_failures_total", "");
        let before = metric(&d, "conveyor_messages_consumed_total", "");
        std::fs::write(&cfg, &bad).unwrap();
        d.signal("-HUP");
        wait_for("the reload to be refused", Duration::from_secs(30), || {
            metric(&d, "conveyor_config_reload_failures_total", "") > failures
        });
        wait_for("the old topology to keep consuming", Duration::from_secs(30), || {
            metric(&d, "conveyor_messages_consumed_total", "") > before
        });
        assert_eq!(readyz(&d), Some(200));
        assert_eq!(metric(&d, "conveyor_config_generation", ""), 1.0, "still the first config");
        rejected += 1;
    }
    std::fs::write(&cfg, &good).unwrap();
    seen.logs(&d);
    seen.endpoints(&d);
    assert_eq!(seen.panics(), 0);
    Row {
        scenario: "C6 mutated configs + bad reloads",
        messages: per_file * files.len(),
        faults: format!("{} mutations, {rejected} bad SIGHUP reloads", per_file * files.len()),
        lost: 0,
        duplicates: 0,
        recover: Vec::new(),
        rss_mb: rss_mb(d.child.id()),
    }
    .print();
}

/// Whether a problem line names its position (`FILE:LINE:COL: …`).
fn regex_lite_located() -> impl Fn(&str) -> bool {
    |p: &str| {
        p.split(": ").next().is_some_and(|loc| {
            let mut parts = loc.rsplitn(3, ':');
            let col = parts.next().unwrap_or_default();
            let line = parts.next().unwrap_or_default();
            !col.is_empty()
                && col.chars().all(|c| c.is_ascii_digit())
                && !line.is_empty()
                && line.chars().all(|c| c.is_ascii_digit())
        })
    }
}
