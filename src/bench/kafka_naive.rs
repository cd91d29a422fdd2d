//! `conveyor bench kafka-naive`: the minimal hand-written rdkafka copy loop
//! used as the lower bound in `bench/kafka_passthrough.sh` — StreamConsumer →
//! FutureProducer → store the offset after the delivery report → periodic
//! auto-commit of stored offsets. No batching logic, no metrics, no
//! classification, no DLQ: the naive limit Conveyor is compared against.

use super::BenchError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct NaiveArgs {
    #[arg(long)]
    pub bootstrap: String,
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub to: String,
    #[arg(long, default_value = "bench-naive")]
    pub group: String,
    /// Stop after copying this many messages.
    #[arg(long)]
    pub count: u64,
}

pub async fn run(a: NaiveArgs) -> Result<(), BenchError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &a.bootstrap)
        .set("group.id", &a.group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &a.bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    consumer.subscribe(&[&a.from])?;
    let t0 = Instant::now();
    let mut n = 0u64;
    // keep a window of deliveries in flight; store each offset once acked
    let mut inflight = std::collections::VecDeque::new();
    while n < a.count {
        let m = consumer.recv().await?;
        let f = loop {
            let mut rec: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&a.to).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            match producer.send_result(rec) {
                Ok(f) => break f,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err((e, _)) => return Err(e.into()),
            }
        };
        inflight.push_back((m.topic().to_string(), m.partition(), m.offset(), f));
        n += 1;
        while inflight.len() > 10_000 || (n == a.count && !inflight.is_empty()) {
            let Some((t, p, o, f)) = inflight.pop_front() else { break };
            f.await.map_err(|_| BenchError::Cancelled)?.map_err(|(e, _)| e)?;
            consumer.store_offset(&t, p, o)?;
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync)?;
    let s = t0.elapsed().as_secs_f64();
    println!("naive copy: {n} messages in {s:.2}s ({:.0} msgs/s)", n as f64 / s);
    Ok(())
}
