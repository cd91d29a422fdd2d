//! Failure handling end to end: dead letters, delayed retries, the
//! dead-letter circuit breaker and DLQ redrive.

mod support;

use async_trait::async_trait;
use conveyor::classify::ErrorCategory;
use conveyor::dlq::Envelope;
use conveyor::runtime::{Options, Pipeline};
use conveyor::stages::{Emit, Stage, StageError};
use conveyor::transport::{OutboundMessage, PipelineMessage};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_conveyor");

async fn committed_sum(rt: &Pipeline, entity: &str, group: &str) -> i64 {
    committed(&*rt.transport("local"), entity, group).await.iter().map(|c| c.unwrap_or(0)).sum()
}

fn key_str(m: &PipelineMessage) -> String {
    String::from_utf8(m.key.as_ref().unwrap().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_through_three_stages_land_in_the_dlq_with_complete_envelopes() {
    let cfg = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports: { local: { type: embedded } }
entities:
  a: { transport: local, partitions: 3 }
  b: { transport: local, partitions: 3 }
  c: { transport: local, partitions: 3 }
  out: { transport: local, partitions: 3 }
  dlq: { transport: local }
workers:
  s1: { input: a, stage: { type: map, require: [id] }, outputs: { default: b }, dead_letter: dlq, concurrency: 4 }
  s2: { input: b, stage: { type: map, require: [id, n] }, outputs: { default: c }, dead_letter: dlq }
  s3: { input: c, stage: { type: passthrough }, outputs: { default: out }, dead_letter: dlq }
"#,
    );
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let t = rt.transport("local").clone();
    let n = 3000;
    let mut msgs = Vec::new();
    let mut bad = BTreeSet::new();
    for i in 0..n {
        let id = format!("e{i}");
        let payload = if i % 100 == 42 {
            bad.insert(id.clone());
            // not JSON, with bytes that are not UTF-8 either
            let mut p = format!("garbage {id} ").into_bytes();
            p.extend_from_slice(&[0xff, 0x00, 0xfe]);
            p
        } else {
            format!("{{\"id\":\"{id}\",\"n\":{i}}}").into_bytes()
        };
        let mut m = OutboundMessage { key: Some(id.into()), payload: payload.into(), ..Default::default() };
        m.headers.set("trace", format!("t{i}"));
        msgs.push(m);
    }
    t.producer().send("a", msgs.clone()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || {
            committed_sum(&rt, "a", "s1").await == n
                && committed_sum(&rt, "b", "s2").await == n - 30
                && committed_sum(&rt, "c", "s3").await == n - 30
        })
        .await
    );
    let out: BTreeSet<String> = read_all(&*t, "out").await.iter().map(key_str).collect();
    let dead = read_all(&*t, "dlq").await;
    assert_eq!(bad.len(), 30);
    assert_eq!(dead.len(), 30, "each poison message dead-lettered once");
    let good: BTreeSet<String> = (0..n).map(|i| format!("e{i}")).filter(|id| !bad.contains(id)).collect();
    assert_eq!(out, good, "all good ones out, no poison among them");
    for m in &dead {
        let e = Envelope::parse(&m.payload).unwrap();
        let id = key_str(m);
        assert!(bad.contains(&id));
        let i: usize = id[1..].parse().unwrap();
        assert_eq!(e.original_payload().unwrap(), msgs[i].payload.to_vec(), "payload bytes preserved");
        assert_eq!(e.original_key().unwrap().unwrap(), id.as_bytes());
        assert_eq!(e.headers.len(), 1);
        assert_eq!(e.envelope_version, 1);
        assert_eq!(
            (e.origin.entity.as_str(), e.origin.worker.as_str(), e.origin.consumer_group.as_str()),
            ("a", "s1", "s1")
        );
        assert_eq!(e.origin.transport, "embedded");
        assert!(e.origin.position >= 0 && e.origin.partition < 3);
        assert_eq!(e.error.category, ErrorCategory::Permanent);
        assert_eq!(e.error.kind, "invalid_json");
        assert_eq!(e.error.attempts, 1);
        assert!(!e.error.first_failure.is_empty() && e.error.first_failure <= e.error.last_failure);
        assert_eq!(e.trace_id.len(), 32);
        assert_eq!(e.conveyor_version, env!("CARGO_PKG_VERSION"));
    }
    let text = rt.metrics.encode();
    assert_eq!(
        metric_sum(&text, "conveyor_dead_lettered_total", "worker=\"s1\",entity=\"a\",category=\"permanent\""),
        30.0
    );
    rt.shutdown().await.unwrap();
}

/// Fails transiently `k` times per id, where k comes from the id.
struct Flaky(Mutex<HashMap<String, u32>>);
#[async_trait]
impl Stage for Flaky {
    async fn process(&self, m: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let id = key_str(m);
        let i: u32 = id[1..].parse().unwrap();
        let k = match i % 10 {
            0..=3 => 0,
            4..=7 => 2,
            _ => 100, // never succeeds
        };
        let mut seen = self.0.lock().unwrap();
        let n = seen.entry(id).or_default();
        *n += 1;
        if *n <= k {
            let cat = if i.is_multiple_of(2) { ErrorCategory::Transient } else { ErrorCategory::Throttling };
            return Err(StageError::other(cat, "flaky", format!("attempt {n}")));
        }
        out.push(Emit { output: 0, message: OutboundMessage::from_message(m) });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_stage_retries_through_the_retry_entity_then_dead_letters_exhausted() {
    let cfg = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports: { local: { type: embedded } }
entities:
  in: { transport: local, partitions: 2 }
  out: { transport: local, partitions: 2 }
  retry: { transport: local, partitions: 2 }
  dlq: { transport: local }
workers:
  w:
    input: in
    outputs: { default: out }
    dead_letter: dlq
    retry: { via: retry, schedule: [20ms, 40ms], max_attempts: 3 }
"#,
    );
    let stage = Arc::new(Flaky(Mutex::new(HashMap::new())));
    let opts =
        Options { stages: HashMap::from([("w".to_string(), stage.clone() as Arc<dyn Stage>)]), ..Default::default() };
    let rt = Pipeline::start(&cfg, 0, opts).await.unwrap();
    let t = rt.transport("local").clone();
    let n = 200;
    produce_ids(&*t, "in", (0..n).map(|i| format!("f{i}"))).await;
    let ok: BTreeSet<String> = (0..n).filter(|i| i % 10 < 8).map(|i| format!("f{i}")).collect();
    let exhausted: BTreeSet<String> = (0..n).filter(|i| i % 10 >= 8).map(|i| format!("f{i}")).collect();
    assert!(
        eventually(Duration::from_secs(20), async || {
            read_all(&*t, "out").await.len() == ok.len() && read_all(&*t, "dlq").await.len() == exhausted.len()
        })
        .await,
        "out {} dlq {}",
        read_all(&*t, "out").await.len(),
        read_all(&*t, "dlq").await.len()
    );
    let out = read_all(&*t, "out").await;
    let got: BTreeSet<String> = out.iter().map(key_str).collect();
    assert_eq!(got, ok);
    assert!(out.iter().all(|m| m.headers.is_empty()), "retry bookkeeping never reaches outputs");
    let dead: Vec<Envelope> = read_all(&*t, "dlq").await.iter().map(|m| Envelope::parse(&m.payload).unwrap()).collect();
    let dead_ids: BTreeSet<String> =
        dead.iter().map(|e| String::from_utf8(e.original_key().unwrap().unwrap()).unwrap()).collect();
    assert_eq!(dead_ids, exhausted);
    for e in &dead {
        assert_eq!(e.error.attempts, 3);
        assert!(e.error.first_failure < e.error.last_failure, "{} {}", e.error.first_failure, e.error.last_failure);
        assert!(e.headers.is_empty(), "bookkeeping headers not in the envelope: {:?}", e.headers);
    }
    // attempts visible in metrics: 2 retries per flaky message and per exhausted one
    let text = rt.metrics.encode();
    let scheduled = metric_sum(&text, "conveyor_retries_scheduled_total", "worker=\"w\"");
    assert_eq!(scheduled, (80 * 2 + 40 * 2) as f64);
    assert_eq!(metric_sum(&text, "conveyor_retry_redelivered_total", "entity=\"retry\""), scheduled);
    assert!(metric_sum(&text, "conveyor_messages_failed_total", "category=\"throttling\"") > 0.0);
    assert_eq!(metric_sum(&text, "conveyor_dead_lettered_total", "category=\"transient\""), 20.0);
    assert_eq!(metric_sum(&text, "conveyor_dead_lettered_total", "category=\"throttling\""), 20.0);
    assert!(
        eventually(Duration::from_secs(5), async || committed_sum(&rt, "retry", "conveyor-retry").await
            == scheduled as i64)
        .await
    );
    rt.shutdown().await.unwrap();
}

struct AlwaysBroken;
#[async_trait]
impl Stage for AlwaysBroken {
    async fn process(&self, _m: &PipelineMessage, _out: &mut Vec<Emit>) -> Result<(), StageError> {
        Err(StageError::MissingField("id".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_limit_stops_dead_lettering_and_pauses_the_worker() {
    let cfg = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports: { local: { type: embedded } }
entities:
  in: { transport: local }
  out: { transport: local }
  dlq: { transport: local }
workers:
  w:
    input: in
    outputs: { default: out }
    dead_letter: dlq
    batch_size: 10
    dead_letter_limit: { max_consecutive: 5, cooldown: 30s }
"#,
    );
    let opts = Options {
        stages: HashMap::from([("w".to_string(), Arc::new(AlwaysBroken) as Arc<dyn Stage>)]),
        ..Default::default()
    };
    let rt = Pipeline::start(&cfg, 0, opts).await.unwrap();
    produce_ids(&*rt.transport("local"), "in", (0..100).map(|i| format!("x{i}"))).await;
    let addr = rt.http_addr;
    assert!(
        eventually(Duration::from_secs(5), async || {
            let (code, body) = get(addr, "/readyz").await.unwrap();
            code == 503 && body.contains("dead-letter limit exceeded") && body.contains("\"paused\"")
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(read_all(&*rt.transport("local"), "dlq").await.is_empty(), "nothing dead-lettered once tripped");
    assert_eq!(committed_sum(&rt, "in", "w").await, 0, "the batch stays uncommitted");
    assert_eq!(metric_sum(&rt.metrics.encode(), "conveyor_dead_letter_limit_trips_total", "worker=\"w\""), 1.0);
    rt.shutdown().await.unwrap();
}

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("c.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_dead_letters_back_to_their_origin_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
service: {{ http: {{ listen: "127.0.0.1:0" }} }}
transports: {{ local: {{ type: embedded, path: "{}" }} }}
entities:
  in: {{ transport: local, partitions: 2 }}
  out: {{ transport: local, partitions: 2 }}
  dlq: {{ transport: local }}
workers:
  w: {{ input: in, outputs: {{ default: out }}, dead_letter: dlq }}
"#,
        dir.path().join("data").display()
    );
    let cfg = config(&text);
    let path = write(dir.path(), &text);
    let ids: BTreeSet<String> = (0..50).map(|i| format!("r{i}")).collect();
    {
        let opts = Options {
            stages: HashMap::from([("w".to_string(), Arc::new(AlwaysBroken) as Arc<dyn Stage>)]),
            ..Default::default()
        };
        let rt = Pipeline::start(&cfg, 0, opts).await.unwrap();
        produce_ids(&*rt.transport("local"), "in", ids.iter().cloned()).await;
        assert!(eventually(Duration::from_secs(10), async || committed_sum(&rt, "in", "w").await == 50).await);
        rt.shutdown().await.unwrap();
    }
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).arg("--config").arg(&path).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&["dlq", "inspect", "--entity", "dlq", "--limit", "5"]);
    assert_eq!(table.lines().count(), 6, "header + 5 rows: {table}");
    assert!(table.contains("in/") && table.contains("missing_field"), "{table}");
    let json = run(&["dlq", "inspect", "--entity", "dlq", "--json", "--limit", "1000"]);
    assert_eq!(json.lines().count(), 50);

    let dry = run(&["dlq", "redrive", "--from", "dlq", "--dry-run"]);
    assert!(dry.contains("would redrive 50 of 50"), "{dry}");
    let (in_count, redrive_committed) = {
        let t =
            open_store(&dir.path().join("data"), &[("in", 2), ("out", 2), ("dlq", 1)], &[("dlq", "conveyor-redrive")]);
        let n = read_all(&t, "in").await.len();
        let c = t.committed("dlq", "conveyor-redrive").unwrap()[0].unwrap();
        (n, c)
    };
    assert_eq!((in_count, redrive_committed), (50, 0), "dry run changes nothing");

    let filtered =
        run(&["dlq", "redrive", "--from", "dlq", "--filter", "category=transient", "--group", "only-transient"]);
    assert!(filtered.contains("redrove 0 of 50"), "{filtered}");
    let done = run(&["dlq", "redrive", "--from", "dlq", "--rate", "1000"]);
    assert!(done.contains("redrove 50 of 50") && done.contains("50 -> in"), "{done}");
    let again = run(&["dlq", "redrive", "--from", "dlq"]);
    assert!(again.contains("redrove 0 of 0"), "the redrive position was committed: {again}");

    // the origin worker, fixed now, processes them
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let t = rt.transport("local").clone();
    assert!(eventually(Duration::from_secs(10), async || read_all(&*t, "out").await.len() == 50).await);
    let out = read_all(&*t, "out").await;
    assert_eq!(out.iter().map(key_str).collect::<BTreeSet<_>>(), ids);
    assert!(out.iter().all(|m| m.headers.get_str("conveyor-redrive-count") == Some("1")));
    rt.shutdown().await.unwrap();
}

/// An output that refuses a message for good (too large) gets it
/// dead-lettered instead; an envelope too large for the DLQ is written
/// trimmed (size and SHA-256 instead of the payload). Nothing restarts,
/// nothing is lost, every position is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_refusing_a_message_dead_letters_it_with_a_trimmed_envelope_and_nothing_restarts() {
    let cfg = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports:
  big: { type: embedded }
  small: { type: embedded, max_message_bytes: 4096 }
entities:
  in: { transport: big, partitions: 1 }
  out: { transport: small, partitions: 1 }
  dlq: { transport: small }
workers:
  w: { input: in, outputs: { default: out }, dead_letter: dlq }
"#,
    );
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let big = "€".repeat(4000); // 12,000 bytes: too large for `out`, and its envelope for `dlq`
    let msgs: Vec<OutboundMessage> = [("a", "small-a".to_string()), ("b", big.clone()), ("c", "small-c".to_string())]
        .into_iter()
        .map(|(k, p)| OutboundMessage {
            key: Some(k.as_bytes().to_vec().into()),
            payload: p.into(),
            ..Default::default()
        })
        .collect();
    rt.transport("big").producer().send("in", msgs).await.unwrap();
    let big_t = rt.transport("big");
    let done = async || committed(&*big_t, "in", "w").await.iter().map(|c| c.unwrap_or(0)).sum::<i64>();
    assert!(eventually(Duration::from_secs(10), async || done().await == 3).await);
    let small = rt.transport("small");
    let out: Vec<String> = read_all(&*small, "out").await.iter().map(key_str).collect();
    assert_eq!(out, ["a", "c"]);
    let dlq = read_all(&*small, "dlq").await;
    assert_eq!(dlq.len(), 1);
    let env = Envelope::parse(&dlq[0].payload).unwrap();
    assert!(env.payload_truncated && env.payload.is_empty(), "trimmed");
    assert_eq!(env.payload_size, Some(big.len() as u64));
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(big.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(env.payload_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(env.error.kind, "too_large");
    let text = rt.metrics.encode();
    assert_eq!(metric_sum(&text, "conveyor_output_refused_total", "worker=\"w\""), 1.0, "{text}");
    assert_eq!(metric_sum(&text, "conveyor_dead_letters_trimmed_total", "worker=\"w\""), 1.0);
    assert_eq!(rt.health.get("w").unwrap().restarts(), 0, "no restart loop");
    rt.shutdown().await.unwrap();
}

/// Without a dead-letter entity, a message an output refuses for good holds
/// its partition: the worker turns unready, says why, counts it as
/// undeliverable and keeps the batch uncommitted — it never restarts in a
/// loop and never drops the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dead_letter_a_refused_message_pauses_the_lane_instead_of_a_restart_loop() {
    let cfg = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports:
  big: { type: embedded }
  small: { type: embedded, max_message_bytes: 4096 }
entities:
  in: { transport: big, partitions: 1 }
  out: { transport: small, partitions: 1 }
workers:
  w: { input: in, outputs: { default: out } }
"#,
    );
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let msgs = vec![
        OutboundMessage { payload: "x".repeat(10_000).into(), ..Default::default() },
        OutboundMessage { payload: "fine".into(), ..Default::default() },
    ];
    rt.transport("big").producer().send("in", msgs).await.unwrap();
    let addr = rt.http_addr;
    assert!(
        eventually(Duration::from_secs(10), async || {
            let (code, body) = get(addr, "/readyz").await.unwrap();
            code == 503 && body.contains("cannot deliver")
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = rt.metrics.encode();
    assert_eq!(metric_sum(&text, "conveyor_undeliverable_messages", "worker=\"w\""), 1.0, "{text}");
    assert_eq!(rt.health.get("w").unwrap().restarts(), 0, "paused, not restarting");
    let held: i64 = committed(&*rt.transport("big"), "in", "w").await.iter().map(|c| c.unwrap_or(0)).sum();
    assert_eq!(held, 0, "the batch stays uncommitted");
    assert!(rt.health.stalled(Duration::from_millis(500)).is_empty(), "a paused lane does not trip the watchdog");
    rt.shutdown().await.unwrap();
}

/// Retries a reload left behind are never skipped silently: a retry
/// addressed to a worker that no longer exists is taken over by the only
/// worker on its input, or — with several workers on the input, where no one
/// can tell whose path it was on — dead-lettered once (by the first worker by
/// name) for redrive. Both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_worker_that_no_longer_exists_are_adopted_or_dead_lettered() {
    use conveyor::retry::{H_ATTEMPT, H_FIRST_FAILURE, H_WORKER};
    use conveyor::transport::Headers;
    let retried = |id: &str, worker: &str| {
        let mut headers = Headers::default();
        headers.set("traceparent", "00-abc-def-01");
        headers.set(H_WORKER, worker.to_string());
        headers.set(H_ATTEMPT, "2");
        headers.set(H_FIRST_FAILURE, "1700000000000");
        OutboundMessage {
            key: Some(id.as_bytes().to_vec().into()),
            headers,
            payload: format!("{{\"id\":\"{id}\"}}").into(),
            ..Default::default()
        }
    };
    // one worker on the input: it adopts the retries of the renamed one
    let one = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports: { local: { type: embedded } }
entities:
  in: { transport: local }
  out: { transport: local }
  dlq: { transport: local }
workers:
  renamed: { input: in, outputs: { default: out }, dead_letter: dlq }
"#,
    );
    let rt = Pipeline::start(&one, 0, Options::default()).await.unwrap();
    let t = rt.transport("local");
    t.producer().send("in", vec![retried("r1", "old-name"), retried("r2", "old-name")]).await.unwrap();
    assert!(eventually(Duration::from_secs(10), async || read_all(&*t, "out").await.len() == 2).await);
    let out = read_all(&*t, "out").await;
    assert!(out.iter().all(|m| m.headers.get_str(H_WORKER).is_none()), "bookkeeping stripped");
    assert!(out.iter().all(|m| m.headers.get_str("traceparent") == Some("00-abc-def-01")));
    assert_eq!(metric_sum(&rt.metrics.encode(), "conveyor_retries_adopted_total", "worker=\"renamed\""), 2.0);
    rt.shutdown().await.unwrap();

    // two workers on the input: dead-lettered once, by the first by name
    let two = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports: { local: { type: embedded } }
entities:
  in: { transport: local }
  out-a: { transport: local }
  out-b: { transport: local }
  dlq: { transport: local }
workers:
  a: { input: in, outputs: { default: out-a }, dead_letter: dlq }
  b: { input: in, outputs: { default: out-b }, dead_letter: dlq }
"#,
    );
    let rt = Pipeline::start(&two, 0, Options::default()).await.unwrap();
    let t = rt.transport("local");
    t.producer().send("in", vec![retried("g1", "gone"), retried("mine", "b")]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            committed_sum(&rt, "in", "a").await == 2 && committed_sum(&rt, "in", "b").await == 2
        })
        .await
    );
    let dlq = read_all(&*t, "dlq").await;
    assert_eq!(dlq.len(), 1, "dead-lettered once, not by both workers");
    let env = Envelope::parse(&dlq[0].payload).unwrap();
    assert_eq!((env.error.kind.as_str(), env.origin.worker.as_str()), ("retry_orphaned", "a"));
    assert_eq!(env.error.attempts, 2);
    assert!(read_all(&*t, "out-a").await.is_empty(), "a skips b's retry and dead-letters the orphan");
    assert_eq!(read_all(&*t, "out-b").await.iter().map(key_str).collect::<Vec<_>>(), ["mine"]);
    let text = rt.metrics.encode();
    assert_eq!(metric_sum(&text, "conveyor_retries_orphaned_total", "worker=\"a\""), 1.0, "{text}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_header_claiming_the_most_attempts_dead_letters_instead_of_overflowing() {
    // `conveyor-retry-attempt` comes from the message: u32::MAX must not
    // overflow the attempt count (a panic outside the stage: restart loop)
    let cfg = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports: { local: { type: embedded } }
entities:
  in: { transport: local, partitions: 1 }
  out: { transport: local, partitions: 1 }
  retry: { transport: local, partitions: 1 }
  dlq: { transport: local }
workers:
  w:
    input: in
    stage: { type: chaos, transient_ratio: 1.0 }
    outputs: { default: out }
    dead_letter: dlq
    retry: { via: retry, schedule: [10ms], max_attempts: 3 }
"#,
    );
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let t = rt.transport("local").clone();
    let mut headers = conveyor::transport::Headers::default();
    headers.set(conveyor::retry::H_ATTEMPT, u32::MAX.to_string());
    let m = OutboundMessage { key: Some("k".into()), payload: "{}".into(), headers, ..Default::default() };
    t.producer().send("in", vec![m]).await.unwrap();
    assert!(eventually(Duration::from_secs(20), async || read_all(&*t, "dlq").await.len() == 1).await, "dead-lettered");
    let env = Envelope::parse(&read_all(&*t, "dlq").await[0].payload).unwrap();
    assert_eq!(env.error.attempts, u32::MAX);
    let (_, m) = get(rt.http_addr, "/metrics").await.unwrap();
    assert_eq!(metric_sum(&m, "conveyor_worker_restarts_total", "") + 0.0, 0.0, "no restart");
    rt.shutdown().await.unwrap();
}

/// Throttles every message whose key starts with `t`.
struct ThrottlesT;
#[async_trait]
impl Stage for ThrottlesT {
    async fn process(&self, m: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        if key_str(m).starts_with('t') {
            return Err(StageError::other(ErrorCategory::Throttling, "throttled", "slow down".to_string()));
        }
        out.push(Emit { output: 0, message: OutboundMessage::from_message(m) });
        Ok(())
    }
}

/// A lane that waits out throttling before its next fetch shows the
/// messages that arrive meanwhile as lag (before: the gauge moved only on
/// commits, so a throttled worker looked idle with work waiting — and a
/// drain check that trusts it stopped the daemon early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_lane_shows_the_backlog_that_waits_for_it() {
    let cfg = config(
        r#"
service: { http: { listen: "127.0.0.1:0" } }
transports: { local: { type: embedded } }
entities:
  in: { transport: local, partitions: 1 }
  out: { transport: local, partitions: 1 }
  retry: { transport: local, partitions: 1 }
  dlq: { transport: local }
workers:
  w:
    input: in
    outputs: { default: out }
    dead_letter: dlq
    batch_size: 1
    retry: { via: retry, schedule: [1h], max_attempts: 2 }
"#,
    );
    let opts = Options {
        stages: HashMap::from([("w".to_string(), Arc::new(ThrottlesT) as Arc<dyn Stage>)]),
        ..Default::default()
    };
    let rt = Pipeline::start(&cfg, 0, opts).await.unwrap();
    let t = rt.transport("local").clone();
    let scheduled = || metric_sum(&rt.metrics.encode(), "conveyor_retries_scheduled_total", "worker=\"w\"");
    // four throttled batches in a row: the lane now waits 0.5 + 1 + 2 + 4 s
    for k in 1..=4 {
        produce_ids(&*t, "in", [format!("t{k}")]).await;
        assert!(eventually(Duration::from_secs(20), async || scheduled() >= k as f64).await, "throttled {k}");
    }
    produce_ids(&*t, "in", ["m1".to_string()]).await;
    let lag = || metric_sum(&rt.metrics.encode(), "conveyor_consumer_lag_messages", "worker=\"w\"");
    assert!(
        eventually(Duration::from_millis(1500), async || lag() >= 1.0).await,
        "the waiting message shows as lag while the lane waits out the throttling"
    );
    assert!(read_all(&*t, "out").await.is_empty(), "still waiting: the lag was seen during the wait");
    assert!(eventually(Duration::from_secs(10), async || read_all(&*t, "out").await.len() == 1).await);
    assert!(eventually(Duration::from_secs(3), async || lag() == 0.0).await, "and back to 0 once done");
    rt.shutdown().await.unwrap();
}
