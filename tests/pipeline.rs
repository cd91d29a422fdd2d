//! In-process pipeline tests: real embedded transport, real workers and
//! supervisor, real HTTP sockets (port 0).

mod support;

use async_trait::async_trait;
use conveyor::classify::ErrorCategory;
use conveyor::dlq::Envelope;
use conveyor::runtime::{Options, Pipeline};
use conveyor::stages::{Emit, Stage, StageError};
use conveyor::transport::{OutboundMessage, PipelineMessage};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

fn topology(data: Option<&std::path::Path>, extra_worker: &str) -> String {
    let path = data.map(|d| format!(", path: \"{}\"", d.display())).unwrap_or_default();
    format!(
        r#"
service: {{ http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 10s }}
transports:
  local: {{ type: embedded{path} }}
entities:
  in:  {{ transport: local, partitions: 4 }}
  out: {{ transport: local, partitions: 4 }}
  dlq: {{ transport: local, partitions: 1 }}
workers:
  w:
    input: in
    outputs: {{ default: out }}
    dead_letter: dlq
    concurrency: 4
    batch_size: 16
{extra_worker}
"#
    )
}

fn opts(stage: Arc<dyn Stage>) -> Options {
    Options {
        stages: HashMap::from([("w".to_string(), stage)]),
        retry_backoff: Some(conveyor::backoff::Backoff::new(Duration::from_millis(5), Duration::from_millis(50))),
        ..Default::default()
    }
}

fn id_of(m: &PipelineMessage) -> String {
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
    v["id"].as_str().unwrap_or_default().to_string()
}

/// Forwards after a delay.
struct Slow(Duration);
#[async_trait]
impl Stage for Slow {
    async fn process(&self, m: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        tokio::time::sleep(self.0).await;
        out.push(Emit { output: 0, message: OutboundMessage::from_message(m) });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_never_loses_in_flight_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&topology(Some(dir.path()), ""));
    let want: BTreeSet<String> = (0..400).map(|i| format!("m{i}")).collect();
    {
        let rt = Pipeline::start(&cfg, 0, opts(Arc::new(Slow(Duration::from_millis(3))))).await.unwrap();
        produce_ids(&*rt.transport("local"), "in", want.iter().cloned()).await;
        // drain while messages are in flight
        let m = rt.metrics.clone();
        assert!(
            eventually(Duration::from_secs(10), async || metric_sum(
                &m.encode(),
                "conveyor_messages_consumed_total",
                ""
            ) >= 100.0)
            .await
        );
        rt.shutdown().await.expect("drains within grace");
    }
    let (committed_first, out_first) = {
        let t = open_store(dir.path(), &[("in", 4), ("out", 4), ("dlq", 1)], &[("in", "w")]);
        let committed: i64 = t.committed("in", "w").unwrap().iter().map(|c| c.unwrap()).sum();
        let out = ids(&read_all(&t, "out").await);
        (committed, out)
    };
    assert!(committed_first > 0 && committed_first < 400, "drained mid-stream: {committed_first}");
    // everything committed has its output; the rest is still to come
    assert!(
        out_first.len() as i64 >= committed_first,
        "committed {committed_first} but only {} outputs",
        out_first.len()
    );

    // restart: the rest is delivered, nothing is missing
    let rt = Pipeline::start(&cfg, 0, opts(Arc::new(Slow(Duration::from_millis(1))))).await.unwrap();
    let e = rt.transport("local");
    assert!(
        eventually(Duration::from_secs(20), async || {
            committed(&*e, "in", "w").await.iter().map(|c| c.unwrap()).sum::<i64>() == 400
        })
        .await
    );
    let out = ids(&read_all(&*rt.transport("local"), "out").await);
    rt.shutdown().await.unwrap();
    let got: BTreeSet<String> = out.iter().cloned().collect();
    assert_eq!(got, want, "every id arrives");
    // duplicates only from the uncommitted window of the drain
    assert!(out.len() - 400 <= out_first.len() - committed_first as usize, "dups {}", out.len() - 400);
}

/// Panics on ids ending in 7, fails transiently twice on ids ending in 3.
struct Moody {
    attempts: Mutex<HashMap<String, u32>>,
}
#[async_trait]
impl Stage for Moody {
    async fn process(&self, m: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let id = id_of(m);
        if id.ends_with('7') {
            panic!("cannot handle {id}");
        }
        if id.ends_with('3') {
            let mut a = self.attempts.lock().unwrap();
            let n = a.entry(id.clone()).or_default();
            *n += 1;
            if *n <= 2 {
                return Err(StageError::other(ErrorCategory::Transient, "flaky", format!("try {n}")));
            }
        }
        out.push(Emit { output: 0, message: OutboundMessage::from_message(m) });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_dead_lettered_and_transient_failures_retried() {
    let cfg = config(&topology(None, ""));
    let rt = Pipeline::start(&cfg, 0, opts(Arc::new(Moody { attempts: Default::default() }))).await.unwrap();
    let t = rt.transport("local").clone();
    produce_ids(&*t, "in", (0..100).map(|i| format!("m{i}"))).await;
    let e = rt.transport("local");
    assert!(
        eventually(Duration::from_secs(10), async || {
            committed(&*e, "in", "w").await.iter().map(|c| c.unwrap()).sum::<i64>() == 100
        })
        .await
    );
    let out: BTreeSet<String> = ids(&read_all(&*t, "out").await).into_iter().collect();
    let dead = read_all(&*t, "dlq").await;
    let envelopes: Vec<Envelope> = dead.iter().map(|m| Envelope::parse(&m.payload).unwrap()).collect();
    let dead_ids: BTreeSet<String> = envelopes
        .iter()
        .map(|e| {
            let p: serde_json::Value = serde_json::from_slice(&e.original_payload().unwrap()).unwrap();
            p["id"].as_str().unwrap().to_string()
        })
        .collect();
    let want_dead: BTreeSet<String> = (0..100).filter(|i| i % 10 == 7).map(|i| format!("m{i}")).collect();
    let want_out: BTreeSet<String> = (0..100).filter(|i| i % 10 != 7).map(|i| format!("m{i}")).collect();
    assert_eq!(dead_ids, want_dead);
    assert_eq!(out, want_out);
    for e in &envelopes {
        assert_eq!(e.error.category, ErrorCategory::Permanent);
        assert_eq!(e.error.kind, "panic");
        assert!(e.error.message.contains("cannot handle"), "{}", e.error.message);
        assert_eq!(e.origin.worker, "w");
        assert_eq!(e.origin.consumer_group, "w");
        assert_eq!(e.origin.entity, "in");
        assert_eq!(e.origin.transport, "embedded");
    }
    let text = rt.metrics.encode();
    assert_eq!(metric_sum(&text, "conveyor_dead_lettered_total", "category=\"permanent\""), 10.0);
    assert_eq!(metric_sum(&text, "conveyor_messages_failed_total", "category=\"transient\""), 20.0);
    assert_eq!(rt.health.get("w").unwrap().restarts(), 0, "a stage panic does not restart the worker");
    rt.shutdown().await.unwrap();
}

/// Fails with `Auth` while the flag is down.
struct Locked(Arc<AtomicBool>, AtomicU32);
#[async_trait]
impl Stage for Locked {
    async fn process(&self, m: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        self.1.fetch_add(1, Ordering::Relaxed);
        if !self.0.load(Ordering::Relaxed) {
            return Err(StageError::other(ErrorCategory::Auth, "unauthorized", "401 from API"));
        }
        out.push(Emit { output: 0, message: OutboundMessage::from_message(m) });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_pauses_without_dead_lettering_and_recovers() {
    let cfg = config(&topology(None, ""));
    let open = Arc::new(AtomicBool::new(false));
    let stage = Arc::new(Locked(open.clone(), AtomicU32::new(0)));
    let rt = Pipeline::start(&cfg, 0, opts(stage.clone())).await.unwrap();
    let addr = rt.http_addr;
    produce_ids(&*rt.transport("local"), "in", (0..20).map(|i| format!("m{i}"))).await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            let (code, body) = get(addr, "/readyz").await.unwrap();
            code == 503 && body.contains("\"paused\"") && body.contains("\"auth\"")
        })
        .await
    );
    assert!(stage.1.load(Ordering::Relaxed) > 2, "keeps retrying");
    assert!(read_all(&*rt.transport("local"), "dlq").await.is_empty(), "auth failures are never dead-lettered");
    open.store(true, Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(5), async || get(addr, "/readyz").await.unwrap().0 == 200).await);
    let e = rt.transport("local");
    assert!(
        eventually(Duration::from_secs(5), async || {
            committed(&*e, "in", "w").await.iter().map(|c| c.unwrap()).sum::<i64>() == 20
        })
        .await
    );
    assert_eq!(read_all(&*rt.transport("local"), "out").await.len(), 20);
    rt.shutdown().await.unwrap();
}

/// Always fails permanently.
struct Broken;
#[async_trait]
impl Stage for Broken {
    async fn process(&self, _m: &PipelineMessage, _out: &mut Vec<Emit>) -> Result<(), StageError> {
        Err(StageError::MissingField("id".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dead_letter_a_permanent_failure_holds_the_partition() {
    let text = topology(None, "").replace("    dead_letter: dlq\n", "");
    let cfg = config(&text);
    let rt = Pipeline::start(&cfg, 0, opts(Arc::new(Broken))).await.unwrap();
    produce_ids(&*rt.transport("local"), "in", (0..10).map(|i| format!("m{i}"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let committed: i64 = committed(&*rt.transport("local"), "in", "w").await.iter().map(|c| c.unwrap()).sum();
    assert_eq!(committed, 0, "nothing is skipped");
    let text = rt.metrics.encode();
    assert!(metric_sum(&text, "conveyor_messages_failed_total", "category=\"permanent\"") >= 4.0, "{text}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_over_real_sockets() {
    let extra = "  sim-check:\n    input: out\n    outputs: { default: dlq }\n";
    let cfg = config(
        &topology(None, extra)
            .replace("workers:", "sources:\n  sim: { type: simulator, entity: in, rate: 500 }\nworkers:"),
    );
    let rt = Pipeline::start(&cfg, 0xabc, Options::default()).await.unwrap();
    let addr = rt.http_addr;
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
    assert!(eventually(Duration::from_secs(2), async || get(addr, "/readyz").await.unwrap().0 == 200).await);
    let (_, body) = get(addr, "/readyz").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["config_hash"], "0000000000000abc");
    assert_eq!(v["workers"]["w"]["state"], "ready");
    assert_eq!(v["workers"]["sim"]["kind"], "source");
    let (code, m1) = get(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, m2) = get(addr, "/metrics").await.unwrap();
    let c = |t: &str| metric_sum(t, "conveyor_messages_consumed_total", "worker=\"w\"");
    let p = |t: &str| metric_sum(t, "conveyor_messages_produced_total", "worker=\"w\"");
    assert!(c(&m2) > c(&m1) && p(&m2) > p(&m1), "counters grow: {} -> {}", c(&m1), c(&m2));
    assert!(m2.contains("conveyor_consumer_lag_messages{worker=\"w\",entity=\"in\",partition=\"0\"}"));
    assert!(m2.contains("conveyor_handler_duration_seconds_bucket{"));
    assert_eq!(get(addr, "/nope").await.unwrap().0, 404);
    rt.shutdown().await.unwrap();
    assert!(get(addr, "/healthz").await.is_err(), "server is gone after shutdown");
}
