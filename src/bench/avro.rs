//! `conveyor bench avro`: what decoding and encoding Confluent-framed Avro
//! costs a worker, against passing the same bytes through.
//!
//! One process, one task: the stages themselves (`decode`, `decode` then
//! `encode`, and `passthrough` as the baseline) run over the same framed
//! messages, their schema served by a minimal Confluent REST API on a real
//! socket in this process (asked once: the registry caches by id and by
//! content, as in a worker). It prints msgs/s, msgs per CPU-second and the
//! ratio to the pass-through. Figures, not assertions.

use super::{BenchError, cpu_seconds};
use crate::avro::AvroSchema;
use crate::config::{ConfluentRegistryConfig, Dur, SchemaRegistryConfig, SubjectStrategy};
use crate::schema::{Encoder, Registries, codec::Decoder, wire};
use crate::stages::{Decode, Emit, Encode, Passthrough, Stage};
use crate::transport::PipelineMessage;
use clap::Args;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct AvroArgs {
    /// Distinct messages (each run passes over them until it spent a CPU-second).
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
}

/// A claim as the seed pipeline's events carry it (~30 fields' worth of
/// strings, numbers, a union, an enum, an array and a map).
const SCHEMA: &str = r#"{"type":"record","name":"ClaimEvent","namespace":"bench","fields":[
  {"name":"id","type":"string"},{"name":"seq","type":"long"},{"name":"source","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"amount","type":["null","double"],"default":null},
  {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","OPEN","CLOSED"]}},
  {"name":"claimant","type":{"type":"record","name":"Party","fields":[
    {"name":"name","type":"string"},{"name":"postcode","type":"string"},{"name":"policy","type":"string"}]}},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"attrs","type":{"type":"map","values":"string"}}
]}"#;

const STATUS: [&str; 3] = ["NEW", "OPEN", "CLOSED"];

fn record(i: usize) -> serde_json::Value {
    json!({
        "id": format!("evt-{i:08}"), "seq": i, "source": "verisk", "ts": 1_765_000_000_000_i64 + i as i64,
        "amount": if i.is_multiple_of(4) { serde_json::Value::Null } else { json!(i as f64 * 1.25) },
        "status": STATUS[i % 3],
        "claimant": {"name": "Ada Lovelace", "postcode": "EC1A 1BB", "policy": format!("P-{:06}", i % 9973)},
        "tags": ["water", "kitchen"], "attrs": {"region": "north", "channel": "web"},
    })
}

/// A minimal Confluent REST API: schema 1 by id, any registration is 1.
async fn serve() -> Result<std::net::SocketAddr, BenchError> {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route("/schemas/ids/{id}", get(|| async { axum::Json(json!({ "schema": SCHEMA })) }))
        .route("/subjects/{s}/versions", post(|| async { axum::Json(json!({ "id": 1 })) }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(addr)
}

/// Runs `stages` over `msgs`, pass after pass until at least a CPU-second
/// was spent (the process's CPU clock ticks in 10 ms), and prints the rates.
async fn run_stage(name: &str, stages: &[Arc<dyn Stage>], msgs: &[PipelineMessage], base: Option<f64>) -> f64 {
    let mut out: Vec<Emit> = Vec::with_capacity(1);
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let (mut done, mut bytes) = (0usize, 0usize);
    while done == 0 || cpu_seconds() - c0 < 1.0 {
        for m in msgs {
            let mut cur = m.clone();
            for s in stages {
                out.clear();
                if let Err(e) = s.process(&cur, &mut out).await {
                    panic!("{name}: {e}");
                }
                let e = out.pop().expect("one emit");
                cur.payload = e.message.payload;
                cur.headers = e.message.headers;
            }
            bytes += cur.payload.len();
        }
        done += msgs.len();
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), (cpu_seconds() - c0).max(0.01));
    let per_cpu = done as f64 / cpu;
    let ratio = base.map(|b| format!("{:.3}", per_cpu / b)).unwrap_or_else(|| "1.000".into());
    println!(
        "{name:<16} {:>10.0} msgs/s {:>10.0} msgs/CPU-s  ratio {ratio}  ({:.0} output bytes a message)",
        done as f64 / wall,
        per_cpu,
        bytes as f64 / done as f64
    );
    per_cpu
}

pub async fn run(a: AvroArgs) -> Result<(), BenchError> {
    let addr = serve().await?;
    let mut cfg = std::collections::BTreeMap::new();
    cfg.insert(
        "conf".to_string(),
        SchemaRegistryConfig::Confluent(ConfluentRegistryConfig {
            url: format!("http://{addr}"),
            basic_auth: None,
            tls: None,
            subject_strategy: SubjectStrategy::TopicName,
            timeout: Dur::secs(10),
        }),
    );
    let registries = Registries::build(&cfg, None).map_err(|e| BenchError::Setup(e.to_string()))?;
    let registry = registries.get("conf").expect("built above");
    let schema = AvroSchema::parse(SCHEMA).map_err(|e| BenchError::Setup(e.to_string()))?;
    let msgs: Vec<PipelineMessage> = (0..a.messages)
        .map(|i| {
            let body = schema.encode(&record(i)).expect("the bench record fits its schema");
            PipelineMessage {
                entity: "bench".into(),
                partition: 0,
                position: i as i64,
                key: None,
                headers: Default::default(),
                payload: wire::confluent_frame(1, &body).into(),
                timestamp_ms: 0,
            }
        })
        .collect();
    let avg = msgs.iter().map(|m| m.payload.len()).sum::<usize>() / msgs.len().max(1);
    println!("{} Confluent-framed Avro messages of {avg} bytes on average, one task", msgs.len());
    let decode: Arc<dyn Stage> =
        Arc::new(Decode { decoder: Decoder { registries: vec![registry.clone()], reader: None }, output: 0 });
    let encode: Arc<dyn Stage> = Arc::new(Encode {
        encoder: Encoder { registry: registry.clone(), schema, subject: "bench-value".into(), register: true },
        output: 0,
    });
    let pass: Arc<dyn Stage> = Arc::new(Passthrough { output: 0 });
    // warm the caches once: the schema by id, the id by content
    let mut out = Vec::new();
    decode.process(&msgs[0], &mut out).await.map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut json = msgs[0].clone();
    json.payload = out.pop().expect("one emit").message.payload;
    encode.process(&json, &mut out).await.map_err(|e| BenchError::Setup(e.to_string()))?;
    let base = run_stage("passthrough", &[pass], &msgs, None).await;
    run_stage("decode", std::slice::from_ref(&decode), &msgs, Some(base)).await;
    run_stage("decode+encode", &[decode, encode], &msgs, Some(base)).await;
    Ok(())
}
