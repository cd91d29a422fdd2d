//! The Kafka transport against a real Apache Kafka broker (KRaft, from the
//! Maven Central jars; `scripts/kafka/start.sh`) and an independent client
//! (kcat).
#![cfg(feature = "kafka")]

mod support;

use conveyor::runtime::{Options, Pipeline};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

fn ids(n: usize, prefix: &str) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("{prefix}{i}"), format!("{{\"id\":\"{prefix}{i}\",\"n\":{i}}}"))).collect()
}

async fn wait_keys(bootstrap: &str, topic: &str, want: usize, within: Duration) -> BTreeSet<String> {
    let end = tokio::time::Instant::now() + within;
    loop {
        let b = bootstrap.to_string();
        let t = topic.to_string();
        let keys: BTreeSet<String> =
            tokio::task::spawn_blocking(move || kcat_keys(&b, &t)).await.unwrap().into_iter().collect();
        if keys.len() >= want || tokio::time::Instant::now() > end {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_on_real_kafka_delivers_exactly_the_produced_set() {
    let broker = KafkaBroker::get(false);
    let (tin, tout) = (topic("in"), topic("out"));
    let cfg = config(&kafka_yaml(&broker.bootstrap, &tin, &tout, 6, ""));
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let data = ids(20_000, "k");
    let want: BTreeSet<String> = data.iter().map(|(k, _)| k.clone()).collect();
    let b = broker.bootstrap.clone();
    let t2 = tin.clone();
    tokio::task::spawn_blocking(move || kcat_produce(&b, &t2, data)).await.unwrap();
    let got = wait_keys(&broker.bootstrap, &tout, want.len(), Duration::from_secs(60)).await;
    assert_eq!(got, want);
    let addr = rt.http_addr;
    assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);
    let m = rt.metrics.encode();
    assert_eq!(metric_sum(&m, "conveyor_messages_consumed_total", "worker=\"copy\""), 20_000.0);
    // lag comes from librdkafka's statistics: 0 once everything is committed
    assert!(
        eventually(Duration::from_secs(10), async || {
            let m = rt.metrics.encode();
            m.contains("conveyor_consumer_lag_messages{worker=\"copy\",entity=\"in\",partition=\"5\"}")
                && metric_sum(&m, "conveyor_consumer_lag_messages", "worker=\"copy\"") == 0.0
        })
        .await
    );
    rt.shutdown().await.unwrap();
    // after a clean drain the group's committed offsets are exactly the
    // high watermarks: nothing skipped, nothing left to redeliver
    let (b, t) = (broker.bootstrap.clone(), tin.clone());
    let (committed, high) = tokio::task::spawn_blocking(move || committed_and_high(&b, &t, "copy", 6)).await.unwrap();
    assert_eq!(committed, high);
}

/// The group's committed offsets and the high watermarks of `topic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_topology_kafka_to_embedded_and_back() {
    let broker = KafkaBroker::get(false);
    let (tin, tout) = (topic("mix-in"), topic("mix-out"));
    let text = format!(
        r#"
service: {{ http: {{ listen: "127.0.0.1:0" }} }}
transports:
  kafka: {{ type: kafka, bootstrap_servers: "{b}", create_topics: true }}
  local: {{ type: embedded }}
entities:
  in:  {{ transport: kafka, partitions: 3, name: {tin} }}
  mid: {{ transport: local, partitions: 2 }}
  out: {{ transport: kafka, partitions: 3, name: {tout} }}
workers:
  k2e: {{ input: in, outputs: {{ default: mid }} }}
  e2k: {{ input: mid, outputs: {{ default: out }} }}
"#,
        b = broker.bootstrap
    );
    let rt = Pipeline::start(&config(&text), 0, Options::default()).await.unwrap();
    let data = ids(3000, "m");
    let want: BTreeSet<String> = data.iter().map(|(k, _)| k.clone()).collect();
    let b = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || kcat_produce(&b, &tin, data)).await.unwrap();
    assert_eq!(wait_keys(&broker.bootstrap, &tout, want.len(), Duration::from_secs(60)).await, want);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_produce_errors_are_classified_retried_and_auth_pauses_without_dlq() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("m-out", 2, 1).unwrap();
    mock.create_topic("m-dlq", 1, 1).unwrap();
    // input on the embedded transport, outputs on the mock cluster: only
    // the worker's writes meet the injected produce errors
    let text = format!(
        r#"
service: {{ http: {{ listen: "127.0.0.1:0" }} }}
transports:
  local: {{ type: embedded }}
  kafka: {{ type: kafka, bootstrap_servers: "{}", properties: {{ "retry.backoff.ms": "20" }} }}
entities:
  in:  {{ transport: local, partitions: 2 }}
  out: {{ transport: kafka, partitions: 2, name: m-out }}
  dlq: {{ transport: kafka, partitions: 1, name: m-dlq }}
workers:
  copy: {{ input: in, outputs: {{ default: out }}, dead_letter: dlq }}
"#,
        mock.bootstrap_servers()
    );
    let opts = Options {
        backoff: Some(conveyor::backoff::Backoff { base: Duration::from_millis(100), max: Duration::from_millis(400) }),
        ..Default::default()
    };
    let rt = Pipeline::start(&config(&text), 0, opts).await.unwrap();
    let addr = rt.http_addr;
    let local = rt.transport("local").clone();
    let out_count = || metric_sum(&rt.metrics.encode(), "conveyor_messages_produced_total", "entity=\"out\"");

    // transient produce errors: retried (inside librdkafka, idempotent), delivered once
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    produce_ids(&*local, "in", (0..200).map(|i| format!("t{i}"))).await;
    assert!(eventually(Duration::from_secs(30), async || out_count() >= 200.0).await);
    assert_eq!(out_count(), 200.0);

    // the classification of an authorization failure
    let kafka = rt.transport("kafka").producer();
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]);
    let one = conveyor::transport::OutboundMessage { payload: "x".into(), partition: Some(0), ..Default::default() };
    let err = kafka.send("m-out", vec![one]).await.expect_err("refused while authorization fails");
    assert_eq!(err.category(), conveyor::classify::ErrorCategory::Auth, "{err}");

    // the worker meets it: unready with category auth, nothing dead-lettered, recovers by itself
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 16]);
    produce_ids(&*local, "in", (0..200).map(|i| format!("a{i}"))).await;
    assert!(
        eventually(Duration::from_secs(20), async || {
            let (code, body) = get(addr, "/readyz").await.unwrap();
            code == 503 && body.contains("\"last_error_category\": \"auth\"")
        })
        .await,
        "{}",
        get(addr, "/readyz").await.unwrap().1
    );
    assert!(
        eventually(Duration::from_secs(60), async || get(addr, "/readyz").await.unwrap().0 == 200).await,
        "recovers"
    );
    assert!(eventually(Duration::from_secs(30), async || out_count() >= 400.0).await);
    let m = rt.metrics.encode();
    assert_eq!(metric_sum(&m, "conveyor_dead_lettered_total", ""), 0.0, "auth failures are never dead-lettered");
    assert_eq!(metric_sum(&m, "conveyor_messages_produced_total", "entity=\"dlq\""), 0.0);
    assert!(metric_sum(&m, "conveyor_worker_restarts_total", "worker=\"copy\"") >= 1.0);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_when_partition_counts_differ_from_the_broker() {
    let broker = KafkaBroker::get(false);
    let (tin, tout) = (topic("chk-in"), topic("chk-out"));
    // create both topics with 3 partitions
    let rt = Pipeline::start(&config(&kafka_yaml(&broker.bootstrap, &tin, &tout, 3, "")), 0, Options::default())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = kafka_yaml(&broker.bootstrap, &tin, &topic("missing"), 5, "")
        .replace("create_topics: true", "create_topics: false");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "warnings do not fail check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("entities.in: topic \"{tin}\" has 3 partitions on the broker, the config says 5")),
        "{err}"
    );
    assert!(err.contains("entities.out: topic \"missing-") && err.contains("does not exist"), "{err}");
}

#[test]
fn sasl_password_never_appears_in_logs_readyz_or_metrics() {
    let broker = KafkaBroker::get(false);
    let secret = "s3cr3t-PASSWORD-do-not-print";
    let dir = tempfile::tempdir().unwrap();
    let text = kafka_yaml(&broker.bootstrap, &topic("sec-in"), &topic("sec-out"), 1, "")
        .replace(
            "create_topics: true,",
            "security: { protocol: sasl_plaintext, mechanism: PLAIN, username: bob, password: \"${KAFKA_PASSWORD}\" },",
        )
        .replace(r#"listen: "127.0.0.1:0" }"#, r#"listen: "127.0.0.1:0" }, log: { level: debug }"#);
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("KAFKA_PASSWORD", secret)
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut logs = Vec::new();
    let t0 = std::time::Instant::now();
    let mut addr = None;
    while t0.elapsed() < Duration::from_secs(8) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            if addr.is_none() && l.contains("HTTP endpoints up") {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                addr = v["listen"].as_str().map(|a| a.parse::<std::net::SocketAddr>().unwrap());
            }
            logs.push(l);
        }
    }
    let addr = addr.expect("daemon started");
    let (code, ready) = get_blocking(addr, "/readyz").unwrap();
    let (_, metrics) = get_blocking(addr, "/metrics").unwrap();
    let _ = child.kill();
    let _ = child.wait();
    logs.extend(rx.try_iter());
    assert_eq!(code, 503, "SASL against a plaintext listener cannot work: {ready}");
    assert!(logs.len() > 5, "the daemon logged: {logs:?}");
    assert!(logs.iter().any(|l| l.to_lowercase().contains("kafka")), "errors were logged");
    for (what, text) in [("logs", logs.join("\n")), ("readyz", ready), ("metrics", metrics)] {
        assert!(!text.contains(secret), "the SASL password leaked into {what}");
    }
}

#[test]
fn the_seed_pipeline_runs_on_kafka_unchanged() {
    let broker = KafkaBroker::get(false);
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sim = format!("127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(root.join("config/kafka.yaml"))
        .unwrap()
        .replace("${KAFKA_BOOTSTRAP:-127.0.0.1:9092}", &broker.bootstrap)
        .replace("${CONVEYOR_LISTEN:-127.0.0.1:9464}", "127.0.0.1:0")
        .replace("${CONVEYOR_DATA:-./data}", &dir.path().display().to_string())
        .replace("${CONVEYOR_SIM_LISTEN:-127.0.0.1:9470}", &sim)
        .replace("${CONVEYOR_SIM_RATE:-20}", "200\n    count: 100");
    let path = dir.path().join("kafka.yaml");
    std::fs::write(&path, text).unwrap();
    let mut d = Daemon::start(&path);
    let t0 = std::time::Instant::now();
    while metric_sum(&d.metrics(), "conveyor_messages_produced_total", "worker=\"xact-upload\"") < 90.0 {
        assert!(t0.elapsed() < Duration::from_secs(90), "xact results did not flow on Kafka");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = d.metrics();
    assert!(metric_sum(&m, "conveyor_messages_produced_total", "entity=\"claimx.entities.rows\"") > 0.0);
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(40)), Some(0));
}

/// The shared producer reports every message's own partition and offset, in
/// the order sent, and places keys with the Java client's (and aiokafka's)
/// murmur2 hash, so a key stays on its partition whichever side of a
/// migration produced it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_results_follow_send_order_and_keys_hash_like_the_java_client() {
    use conveyor::transport::kafka::KafkaTransport;
    use conveyor::transport::{EntitySpec, OutboundMessage, Producer, Transport, key_partition};
    let broker = KafkaBroker::get(false);
    let t = topic("keys");
    let cfg: conveyor::config::KafkaConfig =
        serde_yaml::from_str(&format!("bootstrap_servers: \"{}\"\ncreate_topics: true", broker.bootstrap)).unwrap();
    let entity = EntitySpec { key: "keys".into(), name: t.clone(), partitions: 6 };
    let kafka = KafkaTransport::open("kafka", &cfg, &[entity], Default::default()).await.unwrap();
    let msg = |i: usize| OutboundMessage {
        key: Some(format!("key-{i}").into_bytes().into()),
        headers: Default::default(),
        payload: format!("{{\"n\":{i}}}").into_bytes().into(),
        partition: None,
        timestamp_ms: None,
    };
    let mut last: std::collections::HashMap<u32, i64> = Default::default();
    for round in 0..3 {
        let batch: Vec<OutboundMessage> = (round * 500..(round + 1) * 500).map(msg).collect();
        let results = kafka.send(&t, batch).await.unwrap();
        assert_eq!(results.len(), 500);
        for (j, r) in results.iter().enumerate() {
            let i = round * 500 + j;
            assert_eq!(r.partition, key_partition(format!("key-{i}").as_bytes(), 6), "message {i}");
            let prev = last.insert(r.partition, r.position).unwrap_or(-1);
            assert!(r.position > prev, "message {i}: offset {} after {prev} on partition {}", r.position, r.partition);
        }
    }
    // every offset handed out exists: the partitions' high watermarks are
    // exactly one past the last offsets reported
    let (b, t2) = (broker.bootstrap.clone(), t.clone());
    let high: Vec<i64> = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
        (0..6).map(|p| c.fetch_watermarks(&t2, p, Duration::from_secs(10)).unwrap().1).collect()
    })
    .await
    .unwrap();
    for (p, h) in high.iter().enumerate() {
        assert_eq!(*h, last.get(&(p as u32)).map_or(0, |o| o + 1), "partition {p}");
    }
    kafka.close(Duration::from_secs(10)).await;
}

/// `dlq inspect` and `dlq redrive` on Kafka read every envelope present when
/// they start — a consumer group's join and the first fetch take seconds
/// there, which once made them report "0 examined" and exit 0 — and a
/// second redrive with the same group finds nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_tools_on_kafka_read_every_envelope_and_redrive_commits() {
    use conveyor::dlq::{Context, Envelope, Failure};
    use conveyor::transport::{OutboundMessage, PipelineMessage};
    let broker = KafkaBroker::get(false);
    let (tin, tout, tdlq) = (topic("in"), topic("out"), topic("dlq"));
    let text = kafka_yaml(&broker.bootstrap, &tin, &tout, 2, "")
        .replace("workers:", &format!("  dlq: {{ transport: kafka, partitions: 3, name: {tdlq} }}\nworkers:"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, &text).unwrap();
    let cfg = config(&text);
    let transports = conveyor::runtime::Transports::open(&cfg).await.unwrap();
    let (t, _) = transports.entity(&cfg, "dlq").unwrap();
    let now = std::time::SystemTime::now();
    let envelopes: Vec<OutboundMessage> = (0..30)
        .map(|i| {
            let m = PipelineMessage {
                entity: "in".into(),
                partition: 0,
                position: i,
                key: Some(format!("d{i}").into_bytes().into()),
                headers: Default::default(),
                payload: format!("{{\"id\":\"d{i}\"}}").into_bytes().into(),
                timestamp_ms: 0,
            };
            let message = format!("failed: {}", "é".repeat(60)); // clipped in the table at a char boundary
            let f = Failure {
                category: conveyor::classify::ErrorCategory::Permanent,
                kind: "missing_field",
                message: &message,
                first_failure: now,
                last_failure: now,
                attempts: 1,
                schema_id: None,
            };
            let cx = Context { transport: "kafka", consumer_group: "copy", worker: "copy" };
            Envelope::new(&m, &f, &cx).to_message(m.key.clone())
        })
        .collect();
    t.producer().send(&tdlq, envelopes).await.unwrap();
    transports.close(Duration::from_secs(10)).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).arg("--config").arg(&path).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json = run(&["dlq", "inspect", "--entity", "dlq", "--json", "--limit", "1000"]);
    assert_eq!(json.lines().count(), 30, "{json}");
    let table = run(&["dlq", "inspect", "--entity", "dlq"]);
    assert_eq!(table.lines().count(), 31, "{table}");
    let done = run(&["dlq", "redrive", "--from", "dlq", "--group", "redrive-test"]);
    assert!(done.contains("redrove 30 of 30"), "{done}");
    let again = run(&["dlq", "redrive", "--from", "dlq", "--group", "redrive-test"]);
    assert!(again.contains("redrove 0 of 0"), "{again}");
    let keys = wait_keys(&broker.bootstrap, &tin, 30, Duration::from_secs(30)).await;
    assert_eq!(keys, (0..30).map(|i| format!("d{i}")).collect::<BTreeSet<_>>());
}

/// Across rebalances (members joining and leaving while messages are read),
/// every reader hands out its partition from the group's committed offset
/// on, in order and without gaps: a message that reached the consumer's
/// main queue before its partition queue was split off (a *stray*) is read
/// first, never after a later offset (which would store that later offset
/// before the earlier message was processed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_hand_out_their_partition_in_order_from_the_committed_offset_across_rebalances() {
    use conveyor::transport::{Assignment, OutboundMessage, StartPosition};
    use std::sync::{Arc, Mutex};
    let broker = KafkaBroker::get(false);
    let t = topic("order");
    let text = kafka_yaml(&broker.bootstrap, &t, &topic("unused"), 4, "");
    let cfg = config(&text);
    let transports = conveyor::runtime::Transports::open(&cfg).await.unwrap();
    let (kafka, physical) = transports.entity(&cfg, "in").unwrap();
    let msgs: Vec<OutboundMessage> = (0..8000)
        .map(|i| OutboundMessage { payload: format!("{i}").into(), partition: Some(i % 4), ..Default::default() })
        .collect();
    kafka.producer().send(&physical, msgs).await.unwrap();
    /// (partition, offsets read by one reader, committed offset when it was assigned)
    type Read = (u32, Vec<i64>, Option<i64>);
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let member = |stop_after: Duration| {
        let (kafka, physical, reads) = (kafka.clone(), physical.clone(), reads.clone());
        tokio::spawn(async move {
            let mut sub = kafka.subscribe(&physical, "order-check", StartPosition::Earliest).await.unwrap();
            let end = tokio::time::Instant::now() + stop_after;
            let mut lanes = tokio::task::JoinSet::new();
            let mut stops = std::collections::HashMap::new();
            loop {
                let next = tokio::select! {
                    n = sub.next() => n.unwrap(),
                    _ = tokio::time::sleep_until(end) => break,
                };
                match next {
                    Assignment::Assigned(mut r) => {
                        let p = r.partition();
                        let committed = kafka
                            .group_positions(&physical, "order-check")
                            .await
                            .unwrap()
                            .into_iter()
                            .find(|g| g.info.partition == p)
                            .and_then(|g| g.committed);
                        let stop = tokio_util::sync::CancellationToken::new();
                        stops.insert(p, stop.clone());
                        let reads = reads.clone();
                        lanes.spawn(async move {
                            let mut seen = Vec::new();
                            loop {
                                let mut batch = Vec::new();
                                tokio::select! {
                                    _ = stop.cancelled() => break,
                                    r2 = r.fetch(5, &mut batch) => r2.unwrap(),
                                }
                                seen.extend(batch.iter().map(|m| m.position));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                r.commit(batch.last().unwrap()).await.unwrap();
                            }
                            reads.lock().unwrap().push((p, seen, committed));
                        });
                    }
                    Assignment::Revoked { partition, done } => {
                        if let Some(s) = stops.remove(&partition) {
                            s.cancel();
                        }
                        // the lane ends at its next fetch; give it that long
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = done.send(());
                    }
                    Assignment::Health(_) => {}
                }
            }
            for s in stops.values() {
                s.cancel();
            }
            while lanes.join_next().await.is_some() {}
            drop(sub);
        })
    };
    let a = member(Duration::from_secs(14));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = member(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = member(Duration::from_secs(6));
    for m in [a, b, c] {
        m.await.unwrap();
    }
    transports.close(Duration::from_secs(10)).await;
    let reads = reads.lock().unwrap().clone();
    assert!(reads.len() >= 6, "rebalances happened: {} readers", reads.len());
    let mut read_any = 0;
    for (p, seen, committed) in &reads {
        if let Some(first) = seen.first() {
            read_any += 1;
            assert_eq!(Some(*first), Some(committed.unwrap_or(0)), "partition {p} starts at its committed offset");
        }
        for w in seen.windows(2) {
            assert_eq!(w[1], w[0] + 1, "partition {p}: offsets in order and without gaps: {seen:?}");
        }
    }
    assert!(read_any >= 4, "{reads:?}");
}
