//! Live config reload: only what changed restarts, an invalid config keeps
//! the running topology, an entity can move between transports, and the
//! systemd watchdog stops when a consumer loop is stuck.

mod support;

use async_trait::async_trait;
use conveyor::runtime::{Options, Pipeline};
use conveyor::stages::{Emit, Stage, StageError};
use conveyor::transport::{OutboundMessage, PipelineMessage};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const BASE: &str = r#"
service: { http: { listen: "127.0.0.1:0" } }
transports:
  t1: { type: embedded }
  t2: { type: embedded }
entities:
  a:   { transport: t1, partitions: 2 }
  mid: { transport: t1, partitions: 2 }
  out: { transport: t1, partitions: 2, }
sources:
  sim: { type: simulator, entity: a, rate: 1500, count: 3000 }
workers:
  w1: { input: a, outputs: { default: mid }, concurrency: 1 }
  w2: { input: mid, outputs: { default: out }, concurrency: 2 }
"#;

/// Forwards after a short pause, so backlogs build up.
struct Slow;
#[async_trait]
impl Stage for Slow {
    async fn process(&self, m: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        out.push(Emit { output: 0, message: OutboundMessage::from_message(m) });
        Ok(())
    }
}

fn slow_w2() -> Options {
    Options { stages: HashMap::from([("w2".to_string(), Arc::new(Slow) as Arc<dyn Stage>)]), ..Default::default() }
}

async fn out_ids(rt: &Pipeline, transport: &str) -> BTreeSet<String> {
    ids(&read_all(&*rt.transport(transport), "out").await).into_iter().collect()
}

fn consumed(rt: &Pipeline, worker: &str) -> f64 {
    metric_sum(&rt.metrics.encode(), "conveyor_messages_consumed_total", &format!("worker=\"{worker}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_only_what_changed_and_loses_nothing() {
    let rt = Pipeline::start(&config(BASE), 1, slow_w2()).await.unwrap();
    assert!(eventually(Duration::from_secs(10), async || consumed(&rt, "w2") > 300.0).await);
    let report = rt
        .reload_text(&BASE.replace("concurrency: 2", "concurrency: 4"), Path::new("c.yaml"), |v| std::env::var(v).ok())
        .await
        .unwrap();
    assert_eq!(report.restarted, vec!["w2".to_string()]);
    assert!(report.unchanged.contains(&"w1".to_string()) && report.unchanged.contains(&"sim".to_string()));
    assert_eq!(rt.health.get("w1").unwrap().restarts(), 0, "untouched worker kept running");
    assert_eq!(rt.health.get("w2").unwrap().restarts(), 1);
    assert_eq!(rt.config_status().generation, 2);
    let want: BTreeSet<String> = (0..3000).map(|i| i.to_string()).collect();
    assert!(eventually(Duration::from_secs(20), async || out_ids(&rt, "t1").await.len() == 3000).await);
    let seqs: BTreeSet<String> = read_all(&*rt.transport("t1"), "out")
        .await
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["seq"].to_string())
        .collect();
    assert_eq!(seqs, want, "every simulated event arrives");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_running_topology_and_reports_it() {
    let rt = Pipeline::start(&config(BASE), 1, slow_w2()).await.unwrap();
    let addr = rt.http_addr;
    assert!(eventually(Duration::from_secs(10), async || consumed(&rt, "w2") > 100.0).await);
    let err = rt
        .reload_text(&BASE.replace("input: mid", "input: midd"), Path::new("c.yaml"), |v| std::env::var(v).ok())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown entity \"midd\""), "{err}");
    let st = rt.config_status();
    assert_eq!(st.generation, 1, "nothing applied");
    assert!(st.last_reload_error.as_deref().unwrap().contains("midd"));
    let before = consumed(&rt, "w2");
    assert!(eventually(Duration::from_secs(10), async || consumed(&rt, "w2") > before).await, "still consuming");
    let (code, body) = get(addr, "/readyz").await.unwrap();
    assert_eq!(code, 200, "the old topology is healthy: {body}");
    assert!(body.contains("last_reload_error") && body.contains("midd"), "{body}");
    let m = rt.metrics.encode();
    assert_eq!(metric_sum(&m, "conveyor_config_reload_failures_total", ""), 1.0);
    assert_eq!(rt.health.get("w2").unwrap().restarts(), 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_an_entity_to_another_transport_by_reload_loses_nothing() {
    let rt = Pipeline::start(&config(BASE), 1, slow_w2()).await.unwrap();
    // move while `mid` holds a backlog on t1
    assert!(
        eventually(Duration::from_secs(10), async || {
            consumed(&rt, "w1") > 1000.0 && consumed(&rt, "w1") - consumed(&rt, "w2") > 50.0
        })
        .await
    );
    let moved = BASE.replace("mid: { transport: t1", "mid: { transport: t2");
    let report = rt.reload_text(&moved, Path::new("c.yaml"), |v| std::env::var(v).ok()).await.unwrap();
    assert_eq!(report.restarted, vec!["w1".to_string(), "w2".to_string()]);
    assert!(
        eventually(Duration::from_secs(30), async || out_ids(&rt, "t1").await.len() == 3000).await,
        "{}",
        out_ids(&rt, "t1").await.len()
    );
    // the old `mid` was emptied before w2 switched (its committed positions,
    // read from t1, reached the end); the new one carries the rest
    assert!(report.not_drained.is_empty(), "nothing stranded on t1: {report:?}");
    let on_t2: i64 = rt.transport("t2").partitions("mid").await.unwrap().iter().map(|p| p.next).sum();
    assert!(on_t2 > 0, "new writes went to t2");
    rt.shutdown().await.unwrap();
}

#[test]
fn sighup_file_change_and_http_reload_in_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let text = BASE.replace("count: 3000", "count: 1000000").replace("rate: 1500", "rate: 200");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, &text).unwrap();
    let d = Daemon::start(&path);
    let ready = |d: &Daemon| get_blocking(d.addr, "/readyz").unwrap();
    let t0 = std::time::Instant::now();
    while ready(&d).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let generation = |d: &Daemon| {
        let v: serde_json::Value = serde_json::from_str(&ready(d).1).unwrap();
        v["config"]["generation"].as_u64().unwrap()
    };
    assert_eq!(generation(&d), 1);
    // SIGHUP after an edit
    std::fs::write(&path, text.replace("concurrency: 2", "concurrency: 3")).unwrap();
    d.signal("-HUP");
    let wait_gen = |want: u64| {
        let t0 = std::time::Instant::now();
        while generation(&d) < want {
            assert!(t0.elapsed() < Duration::from_secs(10), "generation {want} not reached");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_gen(2);
    // an invalid edit is refused (seen by the file watcher) and reported
    std::fs::write(&path, text.replace("input: mid", "input: nowhere")).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let body = ready(&d).1;
        if body.contains("nowhere") {
            assert!(generation(&d) >= 2);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "invalid file not reported: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // fix the file and ask over HTTP
    std::fs::write(&path, text.replace("concurrency: 2", "concurrency: 5")).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sf", "-X", "POST", &format!("http://{}/-/reload", d.addr)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("\"restarted\"") && body.contains("w2"), "{body}");
    let m = get_blocking(d.addr, "/metrics").unwrap().1;
    assert!(metric_sum(&m, "conveyor_config_reloads_total", "result=\"success\"") >= 2.0, "{m}");
    assert!(metric_sum(&m, "conveyor_config_reload_failures_total", "") >= 1.0);
    assert_eq!(metric_sum(&m, "conveyor_worker_restarts_total", "worker=\"w1\""), 0.0);
}

#[test]
fn watchdog_pings_stop_when_a_consumer_loop_is_stuck() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let cfg = r#"
service: { http: { listen: "127.0.0.1:0" }, watchdog_stall: 1s, shutdown_grace: 1s }
transports: { t: { type: embedded } }
entities:
  a: { transport: t }
  b: { transport: t }
sources:
  sim: { type: simulator, entity: a, rate: 5, count: 1 }
workers:
  stuck: { input: a, stage: { type: chaos, delay: 1h }, outputs: { default: b } }
"#;
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen: Vec<(std::time::Instant, String)> = Vec::new();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(4) {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push((std::time::Instant::now(), String::from_utf8_lossy(&buf[..n]).to_string()));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let pings: Vec<Duration> =
        seen.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).map(|(t, _)| t.duration_since(t0)).collect();
    assert!(seen.iter().any(|(_, m)| m.contains("READY=1")), "{seen:?}");
    assert!(!pings.is_empty(), "pings while healthy");
    let last = *pings.last().unwrap();
    assert!(last < Duration::from_millis(2000), "pings stopped once the loop was stuck for 1 s; last at {last:?}");
    assert!(
        seen.iter().any(|(_, m)| m.contains("STATUS=") && m.contains("msgs/s") && m.contains("stuck: stuck")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_reopen_a_transport_restores_the_previous_topology() {
    let dir = tempfile::tempdir().unwrap();
    let text = BASE
        .replace("t1: { type: embedded }", &format!("t1: {{ type: embedded, path: \"{}\" }}", dir.path().display()));
    let rt = Pipeline::start(&config(&text), 1, slow_w2()).await.unwrap();
    assert!(eventually(Duration::from_secs(10), async || consumed(&rt, "w2") > 100.0).await);
    // a data path that cannot be created: t1 is closed, reopening fails
    let broken = text.replace(&dir.path().display().to_string(), "/proc/conveyor-cannot-write-here");
    let err = rt.reload_text(&broken, Path::new("c.yaml"), |v| std::env::var(v).ok()).await.unwrap_err();
    assert!(err.to_string().contains("t1"), "{err}");
    assert_eq!(rt.config_status().generation, 1);
    // the previous topology runs again and nothing is lost
    let before = consumed(&rt, "w2");
    assert!(eventually(Duration::from_secs(10), async || consumed(&rt, "w2") > before).await, "restored");
    assert!(eventually(Duration::from_secs(30), async || out_ids(&rt, "t1").await.len() == 3000).await);
    rt.shutdown().await.unwrap();
}
