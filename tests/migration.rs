//! Migrations end to end: an entity moves from real Apache Kafka to the
//! local Event Hubs test broker through mirror → verify → cutover → done
//! while traffic flows, and back; every message is counted with an
//! independent reader, per-key order is checked, and `conveyor migrate
//! verify` / `status` run as a separate process against the live brokers.
#![cfg(all(feature = "kafka", feature = "eventhubs"))]

mod support;

use conveyor::runtime::{Options, Pipeline};
use conveyor::transport::{OutboundMessage, PipelineMessage};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::azure::*;
use support::*;

/// Keys per run, and messages per key.
const KEYS: u64 = 40;

fn yaml(bootstrap: &str, eh: &str, store: &Path, topics: &[String; 3], mid: &str) -> String {
    format!(
        r#"
service: {{ http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 20s }}
transports:
  kafka:
    type: kafka
    bootstrap_servers: "{bootstrap}"
    create_topics: true
    properties: {{ "session.timeout.ms": "6000", "heartbeat.interval.ms": "500" }}
  hubs:
    type: eventhubs
    connection_string: "{eh}"
    checkpoint_store: {{ type: file, path: "{store}" }}
    update_interval: 1s
    ownership_expiration: 4s
    checkpoint_interval: 200ms
entities:
  in:  {{ transport: kafka, partitions: 4, name: {t_in} }}
  mid: {{ transport: kafka, partitions: 4, name: {t_mid}{mid} }}
  out: {{ transport: kafka, partitions: 4, name: {t_out} }}
workers:
  first:  {{ input: in, outputs: {{ default: mid }}, batch_size: 50 }}
  second: {{ input: mid, outputs: {{ default: out }}, batch_size: 50 }}
"#,
        store = store.display(),
        t_in = topics[0],
        t_mid = topics[1],
        t_out = topics[2],
    )
}

/// Writes `KEYS` keys × `per_key` messages (`{"key":..,"seq":..}`) into
/// `in`, round-robin over the keys, about `rate` per second, until done or
/// `stop`; returns how many were written.
fn traffic(rt: &Pipeline, per_key: u64, rate: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let producer = rt.transport("kafka").producer();
    let topic = rt.snapshot().config.as_ref().unwrap().entities["in"].physical_name("in").to_string();
    tokio::spawn(async move {
        let mut sent = 0;
        let tick = Duration::from_millis(50);
        let per_tick = (rate / 20).max(1);
        'outer: for seq in 0..per_key {
            for k in 0..KEYS {
                let m = OutboundMessage {
                    key: Some(format!("k{k}").into_bytes().into()),
                    payload: format!("{{\"key\":\"k{k}\",\"seq\":{seq}}}").into_bytes().into(),
                    ..Default::default()
                };
                producer.send(&topic, vec![m]).await.expect("produce");
                sent += 1;
                if sent % per_tick == 0 {
                    tokio::time::sleep(tick).await;
                }
                if stop.load(Ordering::Relaxed) {
                    break 'outer;
                }
            }
        }
        sent
    })
}

/// (key, seq) of a message written by [`traffic`].
fn key_seq(m: &PipelineMessage) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    (v["key"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap())
}

/// Every (key, seq) in `msgs` with how often it arrived, and where the
/// first arrivals of a key are out of order (a redelivered duplicate after
/// a crash is not a reordering; a new message before an older one is).
fn tally(msgs: &[PipelineMessage]) -> (BTreeMap<(String, u64), u64>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut disorder = Vec::new();
    for m in msgs {
        let (k, s) = key_seq(m);
        let n = counts.entry((k.clone(), s)).or_insert(0);
        *n += 1;
        if *n > 1 {
            continue;
        }
        if let Some(prev) = last.insert(k.clone(), s)
            && s < prev
        {
            disorder.push(format!("{k}: {s} after {prev}"));
        }
    }
    (counts, disorder)
}

/// Everything `physical` holds, read to its end as no consumer group.
async fn read_to_end(t: &Arc<dyn conveyor::transport::Transport>, physical: &str) -> Vec<PipelineMessage> {
    use conveyor::transport::scan::{Next, ScanError, browse};
    let mut out = Vec::new();
    browse(
        t,
        "out",
        physical,
        async |_r: &mut Box<dyn conveyor::transport::PartitionReader>, batch: Vec<PipelineMessage>| {
            out.extend(batch);
            Ok::<_, ScanError>(Next::More)
        },
    )
    .await
    .expect("read to the end");
    out
}

/// [`tally`] of the pipeline's `out`.
async fn outcome(rt: &Pipeline) -> (BTreeMap<(String, u64), u64>, Vec<String>) {
    let topic = rt.snapshot().config.as_ref().unwrap().entities["out"].physical_name("out").to_string();
    tally(&read_to_end(&rt.transport("kafka"), &topic).await)
}

async fn wait_for(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    assert!(eventually(within, async || f().await).await, "timed out waiting for {what}");
}

fn conveyor(args: &[&str], cfg: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(BIN).args(args).arg("--config").arg(cfg).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_moves_from_kafka_to_event_hubs_and_back_while_traffic_flows() {
    let kafka = KafkaBroker::get(false);
    let hubs = broker(4).await;
    let dir = tempfile::tempdir().unwrap();
    let topics = [topic("mig-in"), topic("mig-mid"), topic("mig-out")];
    let base = yaml(&kafka.bootstrap, &eh_conn(&hubs), &dir.path().join("checkpoints"), &topics, "__MIGRATE__");
    let cfg_path = dir.path().join("c.yaml");
    let write = |text: &str| std::fs::write(&cfg_path, text).unwrap();
    let plain = base.replace("__MIGRATE__", "");
    let with = |phase: &str| base.replace("__MIGRATE__", &format!(", migrate: {{ to: hubs, name: mid-hub, {phase} }}"));
    let reload = async |rt: &Pipeline, text: &str| {
        rt.reload_text(text, Path::new("c.yaml"), |v| std::env::var(v).ok()).await.unwrap()
    };

    write(&plain);
    let rt = Pipeline::start(&config(&plain), 0, Options::default()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let per_key = 75; // 3000 messages at ~150/s: traffic through every phase
    let producing = traffic(&rt, per_key, 150, stop.clone());
    let consumed = || metric_sum(&rt.metrics.encode(), "conveyor_messages_consumed_total", "worker=\"second\"");
    wait_for("traffic", Duration::from_secs(30), async || consumed() > 200.0).await;

    // 1. mirror: copies flow to the new side; workers stay on Kafka
    let text = with("phase: mirror");
    write(&text);
    reload(&rt, &text).await;
    let mirrored = || metric_sum(&rt.metrics.encode(), "conveyor_messages_produced_total", "worker=\"mirror:mid\"");
    wait_for("the mirror", Duration::from_secs(60), async || mirrored() > 300.0).await;
    let (code, out, err) = conveyor(&["migrate", "verify", "--entity", "mid", "--format", "json"], &cfg_path);
    assert_eq!(code, 0, "verify during traffic: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["equal"], true, "{out}");
    assert!(v["old_counts"].as_object().unwrap().values().map(|c| c.as_u64().unwrap()).sum::<u64>() > 300, "{out}");
    let (code, status, err) = conveyor(&["migrate", "status", "--format", "json"], &cfg_path);
    assert_eq!(code, 0, "{err}");
    assert!(status.contains("\"phase\": \"mirror\"") && status.contains("\"mirror_lag\""), "{status}");
    let addr = rt.http_addr;
    let (_, readyz) = get(addr, "/readyz").await.unwrap();
    assert!(readyz.contains("\"migration\"") && readyz.contains("\"mid\""), "{readyz}");

    // 2. cutover: producers to Event Hubs; `second` finishes Kafka first
    let text = with("phase: cutover");
    write(&text);
    reload(&rt, &text).await;
    let hub_natives =
        || hubs.events("mid-hub").iter().filter(|e| !e.properties.iter().any(|(n, _)| n == "conveyor-origin")).count();
    wait_for("writes on the new side", Duration::from_secs(60), async || hub_natives() > 100).await;
    let (_, status, _) = conveyor(&["migrate", "status", "--format", "json"], &cfg_path);
    assert!(status.contains("\"fence\": ["), "the fence is shown: {status}");

    // 3. rollback: producers back to Kafka, `second` finishes the hub first
    let text = with("phase: mirror, rollback: true");
    write(&text);
    reload(&rt, &text).await;
    let before = rt.metrics.encode();
    wait_for("writes back on Kafka", Duration::from_secs(60), async || {
        metric_sum(&rt.metrics.encode(), "conveyor_messages_produced_total", "worker=\"first\",entity=\"mid\"")
            > metric_sum(&before, "conveyor_messages_produced_total", "worker=\"first\",entity=\"mid\"") + 100.0
    })
    .await;

    // 4. forward again, to the end
    for phase in ["phase: cutover", "phase: done"] {
        let text = with(phase);
        write(&text);
        reload(&rt, &text).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let sent = producing.await.unwrap();
    assert_eq!(sent, KEYS * per_key);
    wait_for("every message in out", Duration::from_secs(120), async || outcome(&rt).await.0.len() as u64 == sent)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (counts, disorder) = outcome(&rt).await;
    let lost: Vec<_> = (0..KEYS)
        .flat_map(|k| (0..per_key).map(move |s| (format!("k{k}"), s)))
        .filter(|ks| !counts.contains_key(ks))
        .collect();
    let duplicates: u64 = counts.values().map(|n| n - 1).sum();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(disorder.is_empty(), "per-key order: {disorder:?}");
    // nothing is processed twice because of a switch: no mirrored copy was
    // processed (it would have carried its origin into `out`)
    let topic = rt.snapshot().config.as_ref().unwrap().entities["out"].physical_name("out").to_string();
    let out = read_to_end(&rt.transport("kafka"), &topic).await;
    let copies = out.iter().filter(|m| m.headers.get("conveyor-origin").is_some()).count();
    assert_eq!(copies, 0, "mirrored copies were processed");
    // without a crash, duplicates can only come from a producer's retried
    // send (Event Hubs has no idempotent producer); the switches add none
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(ks, _)| ks.clone()).collect();
    assert!(duplicates <= 50, "duplicates: {twice:?}");
    eprintln!("move and rollback: {sent} sent, 0 lost, {duplicates} duplicates");
    let (_, readyz) = get(addr, "/readyz").await.unwrap();
    assert!(readyz.contains("\"phase\": \"done\""), "{readyz}");
    stop.store(true, Ordering::Relaxed);
    rt.shutdown().await.unwrap();
}

#[test]
fn migration_configs_are_checked_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let base = r#"
transports:
  kafka: { type: kafka, bootstrap_servers: "127.0.0.1:1" }
  local: { type: embedded }
entities:
  e: { transport: kafka, partitions: 2__M__ }
  out: { transport: local }
workers:
  w: { input: e, outputs: { default: out } }
"#;
    // an unknown target transport, with its line and a suggestion
    let p = write("a.yaml", &base.replace("__M__", ", migrate: { to: locl, phase: mirror }"));
    let (code, _, err) = conveyor(&["check"], &p);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("a.yaml:6:")
            && err.contains("entities.e.migrate.to: unknown transport \"locl\" (did you mean \"local\"?)"),
        "{err}"
    );
    // a phase moving back without `rollback: true`, against the previous config
    let prev = write("prev.yaml", &base.replace("__M__", ", migrate: { to: local, phase: cutover }"));
    let next = write("next.yaml", &base.replace("__M__", ", migrate: { to: local, phase: mirror }"));
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&next)
        .arg("--previous")
        .arg(&prev)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("next.yaml:6:") && err.contains("entities.e.migrate.phase") && err.contains("rollback: true"),
        "{err}"
    );
    let ok = write("ok.yaml", &base.replace("__M__", ", migrate: { to: local, phase: mirror, rollback: true }"));
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&ok)
        .arg("--previous")
        .arg(&prev)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // verify on an entity that does not migrate: bad usage
    let (code, _, err) = conveyor(&["migrate", "verify", "--entity", "out"], &p.with_file_name("prev.yaml"));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("\"out\" does not migrate"), "{err}");
}

/// The daemon is SIGKILLed in the middle of a cut-over — producers already on
/// Event Hubs, the consumer still finishing a Kafka backlog — and restarted:
/// the cut-over resumes from the transports' own positions; nothing is lost
/// and per-key order holds (crash redeliveries aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_interrupted_by_sigkill_resumes_without_loss_or_reordering() {
    let kafka = KafkaBroker::get(false);
    let hubs = broker(4).await;
    let dir = tempfile::tempdir().unwrap();
    let topics = [topic("kill-in"), topic("kill-mid"), topic("kill-out")];
    let base = yaml(&kafka.bootstrap, &eh_conn(&hubs), &dir.path().join("checkpoints"), &topics, "__MIGRATE__")
        // a slow consumer: a backlog builds up on the old side
        .replace(
            "second: { input: mid, outputs: { default: out }, batch_size: 50 }",
            "second: { input: mid, outputs: { default: out }, batch_size: 20, stage: { type: chaos, delay: 40ms } }",
        );
    let with =
        |phase: &str| base.replace("__MIGRATE__", &format!(", migrate: {{ to: hubs, name: mid-hub, phase: {phase} }}"));
    let cfg_path = dir.path().join("c.yaml");
    std::fs::write(&cfg_path, with("mirror")).unwrap();
    let cfg = config(&with("mirror"));
    let producer_side = conveyor::runtime::Transports::open(&cfg).await.unwrap();
    let (kafka_t, t_in) = producer_side.entity(&cfg, "in").unwrap();
    let per_key = 60u64;
    let producing = tokio::spawn(async move {
        for seq in 0..per_key {
            let batch: Vec<OutboundMessage> = (0..KEYS)
                .map(|k| OutboundMessage {
                    key: Some(format!("k{k}").into_bytes().into()),
                    payload: format!("{{\"key\":\"k{k}\",\"seq\":{seq}}}").into_bytes().into(),
                    ..Default::default()
                })
                .collect();
            kafka_t.producer().send(&t_in, batch).await.expect("produce");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let d = tokio::task::block_in_place(|| Daemon::start(&cfg_path));
    let t0 = std::time::Instant::now();
    while metric_sum(
        &get(d.addr, "/metrics").await.unwrap().1,
        "conveyor_messages_produced_total",
        "worker=\"mirror:mid\"",
    ) < 1000.0
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "the mirror made no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // cut over, and kill while `second` still finishes the Kafka side
    std::fs::write(&cfg_path, with("cutover")).unwrap();
    d.signal("-HUP");
    let t1 = std::time::Instant::now();
    loop {
        let (_, readyz) = get(d.addr, "/readyz").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&readyz).unwrap_or_default();
        let m = &v["migration"][0];
        let left = m["old_remaining"]["second"].as_u64().unwrap_or(0);
        if m["phase"] == "cutover" && m["fence"].is_array() && left > 50 {
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "no cut-over with a backlog: {readyz}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.signal("-KILL");
    drop(d);
    let mut d = tokio::task::block_in_place(|| Daemon::start(&cfg_path));
    producing.await.unwrap();
    let sent = KEYS * per_key;
    let out_topic = topics[2].clone();
    let read_out = async || {
        let (t, _) = producer_side.entity(&cfg, "out").unwrap();
        tally(&read_to_end(&t, &out_topic).await)
    };
    let t2 = std::time::Instant::now();
    loop {
        let (counts, _) = read_out().await;
        if counts.len() as u64 >= sent {
            break;
        }
        assert!(t2.elapsed() < Duration::from_secs(180), "{} of {sent} arrived", counts.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (counts, disorder) = read_out().await;
    let lost: Vec<_> = (0..KEYS)
        .flat_map(|k| (0..per_key).map(move |s| (format!("k{k}"), s)))
        .filter(|ks| !counts.contains_key(ks))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(disorder.is_empty(), "per-key order: {disorder:?}");
    let duplicates: u64 = counts.values().map(|n| n - 1).sum();
    let (t, _) = producer_side.entity(&cfg, "out").unwrap();
    let copies =
        read_to_end(&t, &out_topic).await.iter().filter(|m| m.headers.get("conveyor-origin").is_some()).count();
    assert_eq!(copies, 0, "mirrored copies were processed");
    // redelivered after the crash: at most what was in flight (a batch per
    // partition per stage, and the mirror's)
    assert!(duplicates <= 4 * (20 + 50 + 500), "{duplicates} duplicates");
    eprintln!("cut-over under SIGKILL: {sent} sent, 0 lost, {duplicates} duplicates");
    d.signal("-TERM");
    assert_eq!(tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30))), Some(0));
    producer_side.close(Duration::from_secs(10)).await;
}
