//! Migrations end to end: an entity moves from real Apache Kafka to the
//! local Event Hubs test broker through mirror → verify → cutover → done
//! while traffic flows, and back; every message is counted with an
//! independent reader, per-key order is checked, and `conveyor migrate
//! verify` / `status` run as a separate process against the live brokers.
#![cfg(all(feature = "kafka", feature = "eventhubs"))]

mod support;

use conveyor::runtime::{Options, Pipeline};
use conveyor::transport::{OutboundMessage, PipelineMessage};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::azure::*;
use support::*;

/// Keys per run, and messages per key.
const KEYS: u64 = 40;

/// The end-to-end tests here run one at a time: each loads both cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _turn = ONE_AT_A_TIME.lock().await;
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
    if std::env::var("MIG_TEST_LOG").is_ok() {
        conveyor::telemetry::init(&config(&plain).service.log);
    }
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

/// The seed pipeline on Kafka (`config/kafka.yaml`) moves to Event Hubs
/// (the local test broker, Azurite checkpoints) domain by domain — xact,
/// claimx, then the plugins — each through mirror → verify → cutover → done
/// by reload, the simulators writing 2 × 2000 events at 200 events/s in
/// all. Then every entity is rewritten as `transport: hubs`, Kafka leaves
/// the config and is stopped, and 2 × 500 more events go through Event Hubs
/// alone. At the end every simulated event is a result row or a dead
/// letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_pipeline_moves_to_event_hubs_domain_by_domain_and_runs_without_kafka() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let kafka = KafkaBroker::get(true);
    let hubs = broker(4).await;
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sim = format!("127.0.0.1:{}", free_port());
    let hubs_transport = format!(
        "  hubs:\n    type: eventhubs\n    connection_string: \"{}\"\n    checkpoint_store: {}\n    update_interval: 1s\n    ownership_expiration: 4s\n    checkpoint_interval: 200ms\n\nentities:",
        eh_conn(&hubs),
        blob_store_yaml(&az, "seed-checkpoints")
    );
    let base = std::fs::read_to_string(root.join("config/kafka.yaml"))
        .unwrap()
        .replace("${KAFKA_BOOTSTRAP:-127.0.0.1:9092}", &kafka.bootstrap)
        .replace("${CONVEYOR_LISTEN:-127.0.0.1:9464}", "127.0.0.1:0")
        .replace("${CONVEYOR_DATA:-./data}", &dir.path().display().to_string())
        .replace("${CONVEYOR_SIM_LISTEN:-127.0.0.1:9470}", &sim)
        .replace("${CONVEYOR_SIM_RATE:-20}", "100\n    count: 2000")
        .replace("\nentities:", &format!("\n{hubs_transport}"));
    type Domain<'a> = (&'a str, &'a dyn Fn(&str) -> bool);
    let domains: [Domain; 3] = [
        ("xact", &|e: &str| e == "verisk_events" || e.starts_with("xact.")),
        ("claimx", &|e: &str| e == "claimx_events" || (e.starts_with("claimx.") && !e.contains("mitigation"))),
        ("plugins", &|e: &str| e.starts_with("itel.") || e.contains("mitigation")),
    ];
    // each entity line `  name: { transport: kafka, partitions: N }` in the state wanted
    let render = |state: &dyn Fn(&str) -> Option<String>| -> String {
        base.lines()
            .map(|l| {
                let t = l.trim_start();
                let Some((name, rest)) = t.split_once(':') else { return l.to_string() };
                if !l.starts_with("  ") || l.starts_with("   ") || !rest.contains("transport: kafka, partitions:") {
                    return l.to_string();
                }
                let parts = rest.split("partitions:").nth(1).unwrap().trim().trim_end_matches('}').trim();
                match state(name) {
                    None => l.to_string(),
                    Some(s) if s == "hubs" => format!("  {name}: {{ transport: hubs, partitions: {parts} }}"),
                    Some(phase) => {
                        format!("  {name}: {{ transport: kafka, partitions: {parts}, migrate: {{ to: hubs, phase: {phase} }} }}")
                    }
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let path = dir.path().join("seed.yaml");
    std::fs::write(&path, &base).unwrap();
    let d = tokio::task::block_in_place(|| Daemon::start(&path));
    let readyz = async || -> serde_json::Value {
        serde_json::from_str(&get(d.addr, "/readyz").await.map(|r| r.1).unwrap_or_default()).unwrap_or_default()
    };
    let metrics = async || get(d.addr, "/metrics").await.map(|r| r.1).unwrap_or_default();
    wait_for("results on Kafka", Duration::from_secs(90), async || {
        metric_sum(&metrics().await, "conveyor_messages_produced_total", "worker=\"xact-upload\"") > 50.0
    })
    .await;
    let apply = async |text: String| {
        std::fs::write(&path, &text).unwrap();
        d.signal("-HUP");
        let want = readyz().await["config"]["generation"].as_u64().unwrap_or(0) + 1;
        wait_for("the reload", Duration::from_secs(60), async || {
            let r = readyz().await;
            r["config"]["generation"].as_u64().unwrap_or(0) >= want && r["config"]["last_reload_error"].is_null()
        })
        .await;
    };
    let entities_of = |domain: &dyn Fn(&str) -> bool| -> Vec<String> {
        config(&base).entities.keys().filter(|e| domain(e)).cloned().collect()
    };
    let mut done: Vec<&dyn Fn(&str) -> bool> = Vec::new();
    for (name, domain) in domains {
        let state = |phase: &'static str| {
            let done = done.clone();
            move |e: &str| {
                if done.iter().any(|d| d(e)) {
                    Some("done".to_string())
                } else if domain(e) {
                    Some(phase.to_string())
                } else {
                    None
                }
            }
        };
        apply(render(&state("mirror"))).await;
        // verify every entity of the domain while traffic flows
        for e in entities_of(domain) {
            let out = tokio::task::block_in_place(|| {
                std::process::Command::new(BIN)
                    .args(["migrate", "verify", "--format", "json", "--entity", &e, "--config"])
                    .arg(&path)
                    .output()
                    .unwrap()
            });
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name}: verify {e}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        apply(render(&state("cutover"))).await;
        let t0 = std::time::Instant::now();
        loop {
            let r = readyz().await;
            let ms: Vec<serde_json::Value> = r["migration"]
                .as_array()
                .map(|ms| ms.iter().filter(|m| domain(m["entity"].as_str().unwrap_or(""))).cloned().collect())
                .unwrap_or_default();
            let drained = !ms.is_empty()
                && ms.iter().all(|m| {
                    m["mirror_lag"] == 0 && m["old_remaining"].as_object().is_some_and(|o| o.values().all(|v| *v == 0))
                });
            if drained {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "{name}: the old sides did not drain: {ms:#?}\n{r:#}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        apply(render(&state("done"))).await;
        done.push(domain);
    }
    // the move is over: every entity on hubs, Kafka out of the config, then stopped
    let final_text = render(&|_| Some("hubs".to_string()));
    let kafka_block = final_text.find("  kafka:").unwrap();
    let hubs_block = final_text.find("  hubs:").unwrap();
    let without_kafka = format!("{}{}", &final_text[..kafka_block], &final_text[hubs_block..]);
    apply(without_kafka.clone()).await;
    kafka.stop();
    // more events, on Event Hubs alone
    apply(without_kafka.replace("count: 2000", "count: 2500")).await;
    wait_for("results without Kafka", Duration::from_secs(120), async || {
        let m = metrics().await;
        metric_sum(&m, "conveyor_source_events_total", "") >= 5000.0
    })
    .await;
    let m = metrics().await;
    let emitted = |src: &str| metric_sum(&m, "conveyor_source_events_total", &format!("source=\"{src}\"")) as usize;
    let (verisk, claimx) = (emitted("verisk-simulator"), emitted("claimx-simulator"));
    assert_eq!((verisk, claimx), (2500, 2500));
    let dead_keys = |hub: &str| -> BTreeSet<String> {
        hubs.events(hub)
            .iter()
            .filter_map(|e| {
                e.partition_key
                    .clone()
                    .or_else(|| e.properties.iter().find(|(n, _)| n == "conveyor-key").map(|(_, v)| v.clone()))
            })
            .collect()
    };
    let t0 = std::time::Instant::now();
    loop {
        let xact = result_ids(dir.path(), "xact-results").len() + dead_keys("xact.downloads.dlq").len();
        let cx = result_ids(dir.path(), "claimx-entities").len() + dead_keys("claimx.enrichment.dlq").len();
        if xact >= verisk && cx >= claimx {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "xact {xact} of {verisk}, claimx {cx} of {claimx}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let xact_rows = result_ids(dir.path(), "xact-results");
    let xact_dead = dead_keys("xact.downloads.dlq");
    assert!(xact_rows.is_disjoint(&xact_dead));
    assert_eq!(xact_rows.len() + xact_dead.len(), verisk, "every verisk event is a row or a dead letter");
    let cx_rows = result_ids(dir.path(), "claimx-entities");
    assert_eq!(cx_rows.len() + dead_keys("claimx.enrichment.dlq").len(), claimx);
    eprintln!(
        "seed move: {verisk} + {claimx} events, {} + {} rows, {} + {} dead letters",
        xact_rows.len(),
        cx_rows.len(),
        xact_dead.len(),
        dead_keys("claimx.enrichment.dlq").len()
    );
    d.signal("-TERM");
}

/// The daemon is SIGKILLed in the middle of a cut-over — producers already on
/// Event Hubs, the consumer still finishing a Kafka backlog — and restarted:
/// the cut-over resumes from the transports' own positions; nothing is lost
/// and per-key order holds (crash redeliveries aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_interrupted_by_sigkill_resumes_without_loss_or_reordering() {
    let _turn = ONE_AT_A_TIME.lock().await;
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
