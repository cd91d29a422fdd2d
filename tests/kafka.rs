//! The Kafka transport against a real Apache Kafka broker (KRaft, from the
//! Maven Central jars; `scripts/kafka/start.sh`) and an independent client
//! (kcat).
#![cfg(feature = "kafka")]

mod support;

use conveyor::app::{Options, Runtime};
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
    let rt = Runtime::start(&cfg, 0, Options::default()).await.unwrap();
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
}

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
    let rt = Runtime::start(&config(&text), 0, Options::default()).await.unwrap();
    let data = ids(3000, "m");
    let want: BTreeSet<String> = data.iter().map(|(k, _)| k.clone()).collect();
    let b = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || kcat_produce(&b, &tin, data)).await.unwrap();
    assert_eq!(wait_keys(&broker.bootstrap, &tout, want.len(), Duration::from_secs(60)).await, want);
    rt.shutdown().await.unwrap();
}
