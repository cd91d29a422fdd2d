//! Schema registries end to end: Confluent-framed Avro on Kafka and
//! Azure-framed Avro on Event Hubs, cross-checked with the official Python
//! clients (confluent-kafka's Avro serde, azure-schemaregistry-avroencoder)
//! against the registry stand-ins; transcoding in a migration; and every
//! failure class (unknown id, undecodable payload, incompatible schema →
//! dead letter with the schema id; registry down or throttling → the
//! message waits; 401 → the worker pauses).

mod support;

use conveyor::avro::AvroSchema;
use conveyor::classify::ErrorCategory;
use conveyor::dlq::Envelope;
use conveyor::runtime::{Options, Pipeline};
use conveyor::schema::wire;
use conveyor::transport::OutboundMessage;
use serde_json::{Value, json};
use std::time::Duration;
use support::registry::*;
use support::*;

const USER: &str = "reg-user";
const PASSWORD: &str = "reg-Pa55word-do-not-log";

fn framed(id: u32, schema: &str, record: &Value) -> OutboundMessage {
    let body = AvroSchema::parse(schema).unwrap().encode(record).unwrap();
    OutboundMessage {
        key: Some(record["id"].as_str().unwrap_or("x").to_string().into()),
        payload: wire::confluent_frame(id, &body).into(),
        ..Default::default()
    }
}

async fn count(rt: &Pipeline, entity: &str) -> usize {
    read_all(&*rt.transport("local"), entity).await.len()
}

fn metric(rt: &Pipeline, name: &str, needle: &str) -> f64 {
    metric_sum(&rt.metrics.encode(), name, needle)
}

/// Every failure class of part 4, on an in-process pipeline (embedded
/// entities) and the Confluent stand-in with basic auth (which can also
/// fail on purpose: outage, throttling, 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_failures_are_classified_dead_lettered_with_their_id_or_waited_out() {
    let sr = Standin::start(&[("STANDIN_BASIC_AUTH", &format!("{USER}:{PASSWORD}"))]);
    failure_classes(&sr.confluent(Some((USER, PASSWORD))), Some(&sr)).await;
}

/// The permanent failure classes against a real registry (Apicurio's
/// Confluent API): unknown id, undecodable payload, incompatible schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_failures_against_a_real_registry() {
    let apicurio = Apicurio::start().await;
    failure_classes(&apicurio.confluent(), None).await;
}

async fn failure_classes(reg: &Confluent, faults: Option<&Standin>) {
    let subject = format!("claims-{:08x}-value", fastrand::u32(..));
    let v1 = reg.register(&subject, CLAIM_V1).await;
    let files = tempfile::tempdir().unwrap();
    let bad_schema = files.path().join("bad.avsc");
    std::fs::write(&bad_schema, CLAIM_BAD).unwrap();
    let v2_schema = files.path().join("v2.avsc");
    std::fs::write(&v2_schema, CLAIM_V2).unwrap();
    let cfg = config(&format!(
        r#"
service: {{ http: {{ listen: "127.0.0.1:0" }} }}
schema_registries:
  conf: {registry}
  wrong_path: {wrong}
transports: {{ local: {{ type: embedded }} }}
entities:
  in: {{ transport: local, partitions: 2 }}
  out: {{ transport: local, partitions: 2 }}
  mapped: {{ transport: local, partitions: 2 }}
  json_in: {{ transport: local }}
  encoded: {{ transport: local }}
  retry: {{ transport: local }}
  dlq: {{ transport: local }}
workers:
  dec:
    input: in
    stage: {{ type: decode, registry: conf }}
    outputs: {{ default: out }}
    dead_letter: dlq
    retry: {{ via: retry, schedule: [20ms], max_attempts: 2 }}
  wrong_path:
    input: in
    stage: {{ type: decode, registry: wrong_path }}
    outputs: {{ default: out }}
    dead_letter: dlq
  mapper:
    input: in
    stage: {{ type: map, schema: {{ registry: conf, format: avro }}, require: [id], set: {{ mapped: true }} }}
    outputs: {{ default: mapped }}
    dead_letter: dlq
  enc:
    input: json_in
    stage: {{ type: encode, registry: conf, schema: {{ file: {bad} }}, register: true, subject: {subject} }}
    outputs: {{ default: encoded }}
    dead_letter: dlq
  enc_unregistered_bad:
    input: json_in
    stage: {{ type: encode, registry: conf, schema: {{ file: {bad} }}, subject: {subject} }}
    outputs: {{ default: encoded }}
    dead_letter: dlq
  enc_unregistered_new:
    input: json_in
    stage: {{ type: encode, registry: conf, schema: {{ file: {v2} }}, subject: {subject} }}
    outputs: {{ default: encoded }}
    dead_letter: dlq
"#,
        registry = reg.yaml(),
        wrong = Confluent { url: format!("{}/typo", reg.url), auth: reg.auth.clone() }.yaml(),
        bad = bad_schema.display(),
        v2 = v2_schema.display(),
    ));
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let p = rt.transport("local").producer();
    let good = claims("g", 5, 2);
    let mut batch: Vec<_> = good.iter().map(|r| framed(v1, CLAIM_V1, r)).collect();
    batch.push(framed(4242, CLAIM_V1, &json!({"id": "unknown-id", "n": 1}))); // id the registry never gave
    let mut garbage = framed(v1, CLAIM_V1, &json!({"id": "garbage", "n": 1}));
    garbage.payload =
        wire::confluent_frame(v1, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]).into();
    batch.push(garbage);
    batch.push(OutboundMessage {
        key: Some("plain".into()),
        payload: "{\"id\":\"plain\"}".into(),
        ..Default::default()
    });
    p.send("in", batch).await.unwrap();
    p.send(
        "json_in",
        vec![OutboundMessage { payload: json!({"id": "x", "n": 1}).to_string().into(), ..Default::default() }],
    )
    .await
    .unwrap();

    assert!(
        eventually(Duration::from_secs(20), async || count(&rt, "out").await == 5 && count(&rt, "dlq").await == 9)
            .await
    );
    let out: Vec<Value> = read_all(&*rt.transport("local"), "out")
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    for r in &good {
        assert!(out.contains(r), "{r} decoded as it was written; got {out:?}");
    }
    // a registry URL that answers what is not the registry's API (a 404 of
    // a wrong path) is the registry's fault: nothing dead-lettered, the
    // worker waits, with the reason shown
    assert!(
        eventually(Duration::from_secs(20), async || {
            metric(&rt, "conveyor_schema_registry_requests_total", "registry=\"wrong_path\",outcome=\"refused\"") >= 2.0
        })
        .await
    );
    let mapped = read_all(&*rt.transport("local"), "mapped").await;
    assert_eq!(mapped.len(), 5, "map with `schema: {{ registry }}` decodes too");
    assert!(mapped.iter().all(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["mapped"] == true));
    let dead: Vec<Envelope> =
        read_all(&*rt.transport("local"), "dlq").await.iter().map(|m| Envelope::parse(&m.payload).unwrap()).collect();
    let of = |key: &str, worker: &str| {
        dead.iter()
            .find(|e| e.original_key().ok().flatten().as_deref() == Some(key.as_bytes()) && e.origin.worker == worker)
            .unwrap_or_else(|| panic!("no dead letter of {key} by {worker}: {dead:#?}"))
    };
    let v1s = v1.to_string();
    let table = [
        ("unknown-id", "dec", "schema_unknown", Some("4242")),
        ("unknown-id", "mapper", "schema_unknown", Some("4242")),
        ("garbage", "dec", "schema_decode", Some(v1s.as_str())),
        ("plain", "dec", "schema_decode", None),
    ];
    for (key, worker, kind, id) in table {
        let e = of(key, worker);
        assert_eq!(
            (e.error.category, e.error.kind.as_str(), e.error.schema_id.as_deref(), e.error.attempts),
            (ErrorCategory::Permanent, kind, id, 1),
            "{key} by {worker}: {}",
            e.error.message
        );
    }
    // encode: registering an incompatible schema is refused (409); without
    // registering, the compatibility check tells an incompatible schema
    // from one only not registered yet
    assert!(dead.iter().all(|e| e.origin.worker != "wrong_path"), "nothing dead-lettered for a wrong registry URL");
    let encode_table = [
        ("enc", "schema_incompatible", "refuses the schema"),
        ("enc_unregistered_bad", "schema_incompatible", "incompatible with its latest version (versions: [1])"),
        ("enc_unregistered_new", "schema_unknown", "not registered there (versions: [1])"),
    ];
    for (worker, kind, says) in encode_table {
        let e = dead.iter().find(|e| e.origin.worker == worker).unwrap_or_else(|| panic!("{worker}'s dead letter"));
        assert_eq!((e.error.category, e.error.kind.as_str()), (ErrorCategory::Permanent, kind), "{worker}");
        assert!(e.error.message.contains(says) && e.error.message.contains(&subject), "{worker}: {}", e.error.message);
    }

    let Some(sr) = faults else {
        rt.shutdown().await.unwrap();
        return;
    };
    // the registry is down, then throttles: messages with a schema the
    // cache does not hold wait, however many attempts; nothing is dead-lettered
    let v2 = reg.register(&subject, CLAIM_V2).await;
    sr.fault("confluent", 503, -1).await;
    let later = claims("later", 3, 1);
    p.send("in", later.iter().map(|r| framed(v2, CLAIM_V2, r)).collect()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || {
            metric(&rt, "conveyor_schema_registry_requests_total", "outcome=\"unavailable\"") >= 6.0
        })
        .await
    );
    sr.fault("confluent", 429, -1).await;
    assert!(
        eventually(Duration::from_secs(20), async || {
            metric(&rt, "conveyor_schema_registry_requests_total", "outcome=\"throttled\"") >= 4.0
        })
        .await
    );
    assert_eq!(count(&rt, "out").await, 5, "nothing got through while the registry was out");
    assert_eq!(count(&rt, "dlq").await, 9, "and nothing was dead-lettered for it");
    assert!(
        metric(&rt, "conveyor_messages_failed_total", "worker=\"dec\",entity=\"in\",category=\"transient\"") >= 3.0
    );
    sr.clear().await;
    assert!(eventually(Duration::from_secs(30), async || count(&rt, "out").await == 8).await);
    assert_eq!(count(&rt, "dlq").await, 9, "the outage dead-lettered nothing");
    assert_eq!(count(&rt, "retry").await, 0, "nor sent anything through the retry entity");

    // 401: the workers pause (not ready) until the credentials work again
    let v3 = reg.register("other-value", CLAIM_V1.replace("\"Claim\"", "\"Other\"").as_str()).await;
    sr.fault("confluent", 401, -1).await;
    p.send("in", vec![framed(v3, &CLAIM_V1.replace("\"Claim\"", "\"Other\""), &json!({"id": "after-auth", "n": 9}))])
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || {
            metric(&rt, "conveyor_worker_ready", "worker=\"dec\"") == 0.0
                && metric(&rt, "conveyor_messages_failed_total", "worker=\"dec\",entity=\"in\",category=\"auth\"")
                    >= 1.0
        })
        .await,
        "the decode worker pauses on 401"
    );
    sr.clear().await;
    assert!(eventually(Duration::from_secs(30), async || count(&rt, "out").await == 9).await);
    assert!(
        eventually(Duration::from_secs(10), async || metric(&rt, "conveyor_worker_ready", "worker=\"dec\"") == 1.0)
            .await
    );
    assert_eq!(count(&rt, "dlq").await, 9);
    // the password went out as basic auth, and into no metric
    assert!(!rt.metrics.encode().contains(PASSWORD));
    rt.shutdown().await.unwrap();
}

fn sink_rows(dir: &std::path::Path) -> Vec<Value> {
    let mut rows = Vec::new();
    for p in std::fs::read_dir(dir).map(|rd| rd.map(|e| e.unwrap().path()).collect::<Vec<_>>()).unwrap_or_default() {
        for l in std::fs::read_to_string(&p).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(l) {
                rows.push(v);
            }
        }
    }
    rows
}

async fn wait_rows(dir: &std::path::Path, n: usize, within: Duration) -> Vec<Value> {
    let ok = eventually(within, async || sink_rows(dir).len() >= n).await;
    let rows = sink_rows(dir);
    assert!(ok, "{} of {n} rows in {}", rows.len(), dir.display());
    rows
}

/// The `n` rows a sink wrote to `dir`, by id (the daemon's log on a timeout).
async fn decoded_rows(daemon: &Daemon, dir: &std::path::Path, n: usize) -> std::collections::BTreeMap<String, Value> {
    if !eventually(Duration::from_secs(60), async || sink_rows(dir).len() >= n).await {
        let logs: Vec<String> = daemon.logs.try_iter().collect();
        panic!("{} of {n} decoded rows; the daemon said:\n{}", sink_rows(dir).len(), logs.join("\n"));
    }
    let rows = by_id(&sink_rows(dir));
    assert_eq!(rows.len(), n, "each record once");
    rows
}

/// `count` records Python writes with schema v2.
fn v2_claims(prefix: &str, count: usize) -> Vec<Value> {
    let mut v = claims(prefix, count, 1);
    for r in &mut v {
        r["source"] = json!("python-v2");
    }
    v
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn by_id(rows: &[Value]) -> std::collections::BTreeMap<String, Value> {
    rows.iter().map(|r| (r["id"].as_str().unwrap().to_string(), r.clone())).collect()
}

/// Confluent side: records written by Python's `AvroSerializer` (schema v1,
/// then v2 with a field added with a default) are decoded by Conveyor, which
/// encodes them again with v2 for Python's `AvroDeserializer` to read, with
/// the writer's schema and with v1 as reader schema (evolution both ways);
/// Conveyor's own decode with a v1 reader schema reads v2 records.
/// Against the stand-in, with basic auth (the password read from the
/// environment, and shown nowhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_avro_round_trips_with_the_python_serializers() {
    let sr = Standin::start(&[("STANDIN_BASIC_AUTH", &format!("{USER}:{PASSWORD}"))]);
    confluent_round_trip(&sr.confluent(Some((USER, PASSWORD)))).await;
    assert!(sr.stats().await["confluent_requests"].as_u64().unwrap() > 0);
}

/// Against a real registry: Apicurio's Confluent API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_avro_round_trips_through_a_real_registry() {
    let apicurio = Apicurio::start().await;
    confluent_round_trip(&apicurio.confluent()).await;
}

async fn confluent_round_trip(reg: &Confluent) {
    let kafka = KafkaBroker::get(false);
    let dir = tempfile::tempdir().unwrap();
    let (t_in, t_dec, t_out) = (topic("sr-in"), topic("sr-dec"), topic("sr-out"));
    let (v1, v2) = (dir.path().join("v1.avsc"), dir.path().join("v2.avsc"));
    std::fs::write(&v1, CLAIM_V1).unwrap();
    std::fs::write(&v2, CLAIM_V2).unwrap();
    let yaml = format!(
        r#"
service: {{ name: sr-test, http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 10s, log: {{ format: json, level: info }} }}
schema_registries:
  conf: {registry}
transports:
  kafka: {{ type: kafka, bootstrap_servers: "{bootstrap}", create_topics: true,
           properties: {{ "session.timeout.ms": "6000", "heartbeat.interval.ms": "500" }} }}
entities:
  in: {{ transport: kafka, name: {t_in} }}
  decoded: {{ transport: kafka, name: {t_dec} }}
  out: {{ transport: kafka, name: {t_out} }}
workers:
  decode:
    consumer_group: {t_in}-decode
    input: in
    stage: {{ type: decode, registry: conf }}
    outputs: {{ default: decoded }}
  rows:
    consumer_group: {t_in}-rows
    input: decoded
    stage: {{ type: sink, dir: {rows} }}
  old_reader:
    consumer_group: {t_in}-old_reader
    input: in
    stage: {{ type: decode, registry: conf, reader_schema: {{ file: {v1} }} }}
    outputs: {{ default: old }}
  old_rows:
    consumer_group: {t_in}-old_rows
    input: old
    stage: {{ type: sink, dir: {old_rows} }}
  encode:
    consumer_group: {t_in}-encode
    input: decoded
    stage: {{ type: encode, registry: conf, schema: {{ file: {v2} }}, register: true }}
    outputs: {{ default: out }}
"#,
        registry = reg.yaml().replace(PASSWORD, "${SR_PASSWORD}"),
        bootstrap = kafka.bootstrap,
        rows = dir.path().join("rows").display(),
        old_rows = dir.path().join("old").display(),
        v1 = v1.display(),
        v2 = v2.display(),
    )
    .replace("  out: {", &format!("  old: {{ transport: kafka, name: {t_dec}-old }}\n  out: {{"));
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let daemon = Daemon::start_with(&cfg, &topic("sr-test"), &[("SR_PASSWORD", PASSWORD)]);
    assert!(
        eventually(Duration::from_secs(30), async || get(daemon.addr, "/readyz").await.is_ok_and(|(c, _)| c == 200))
            .await
    );

    let first = claims("c", 20, 4);
    let produce = |schema: &std::path::Path, records: &[Value]| {
        let args = vec![
            s("confluent-produce"),
            s("--bootstrap"),
            kafka.bootstrap.clone(),
            s("--topic"),
            t_in.clone(),
            s("--schema"),
            schema.display().to_string(),
            s("--key-field"),
            s("id"),
        ];
        let args = [args, reg.tool_args()].concat();
        schema_tool(args, Some(ndjson(records)))
    };
    let second = v2_claims("d", 5);
    for (schema, records) in [(&v1, &first), (&v2, &second)] {
        let (code, _, text) = produce(schema, records).await;
        assert_eq!(code, 0, "{text}");
    }

    // Conveyor decoded what Python wrote, each record as its writer schema has it
    let rows = decoded_rows(&daemon, &dir.path().join("rows"), 25).await;
    for r in first.iter().chain(&second) {
        assert_eq!(&rows[r["id"].as_str().unwrap()], r, "decoded as written");
    }
    // ... and with v1 as its reader schema, v2 records lose the new field
    let old = by_id(&wait_rows(&dir.path().join("old"), 25, Duration::from_secs(60)).await);
    for r in &second {
        let mut want = r.clone();
        want.as_object_mut().unwrap().remove("source");
        assert_eq!(old[r["id"].as_str().unwrap()], want, "read with the old schema");
    }

    // Python reads what Conveyor wrote with v2 (v1 records get the default)
    let consume = |reader: Option<&std::path::Path>| {
        let mut args = vec![
            s("confluent-consume"),
            s("--bootstrap"),
            kafka.bootstrap.clone(),
            s("--topic"),
            t_out.clone(),
            s("--expect"),
            s("25"),
            s("--timeout"),
            s("60"),
        ];
        if let Some(r) = reader {
            args.extend([s("--reader-schema"), r.display().to_string()]);
        }
        args.extend(reg.tool_args());
        schema_tool(args, None)
    };
    let (code, lines, text) = consume(None).await;
    assert_eq!(code, 0, "{text}");
    let ids: std::collections::BTreeSet<u64> = lines.iter().map(|l| l["schema_id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one writer schema (v2): {ids:?}");
    for l in &lines {
        assert!(l.get("error").is_none(), "{l}");
        let v = &l["value"];
        let id = v["id"].as_str().unwrap();
        let mut want = rows[id].clone();
        if want.get("source").is_none() {
            want["source"] = json!("legacy");
        }
        assert_eq!(v, &want);
        assert_eq!(l["key"].as_str(), Some(id), "key kept");
    }
    let (code, lines, text) = consume(Some(&v1)).await;
    assert_eq!(code, 0, "{text}");
    assert!(lines.iter().all(|l| l["value"].get("source").is_none() && l["value"]["n"].is_i64()), "v1 reader: {text}");

    // the registry password is in no log line, metric or readiness answer
    let logs: Vec<String> = daemon.logs.try_iter().collect();
    assert!(!logs.is_empty());
    assert!(logs.iter().all(|l| !l.contains(PASSWORD)));
    assert!(!get(daemon.addr, "/metrics").await.unwrap().1.contains(PASSWORD));
    assert!(!get(daemon.addr, "/readyz").await.unwrap().1.contains(PASSWORD));
    let m = get(daemon.addr, "/metrics").await.unwrap().1;
    assert!(metric_sum(&m, "conveyor_schema_registry_requests_total", "registry=\"conf\",outcome=\"ok\"") >= 2.0);
}

fn azure_registry_yaml(sr: &Standin) -> String {
    format!(
        "  az:\n    type: azure\n    namespace: {ns}\n    group: claims\n    credential: {{ type: managed_identity }}\n    tls: {{ ca: {ca} }}\n",
        ns = sr.azure_ns(),
        ca = sr.ca.display()
    )
}

/// Python's `azure-consume` of `hub`: the decoded lines, sorted by
/// (partition, sequence number).
async fn azure_consume(conn: &str, hub: &str, sr: &Standin, expect: usize) -> Vec<Value> {
    let args = vec![
        s("azure-consume"),
        s("--conn"),
        conn.to_string(),
        s("--hub"),
        hub.to_string(),
        s("--registry-ns"),
        sr.azure_ns(),
        s("--ca"),
        sr.ca.display().to_string(),
        s("--expect"),
        expect.to_string(),
        s("--timeout"),
        s("90"),
    ];
    let (code, mut lines, text) = schema_tool(args, None).await;
    assert_eq!(code, 0, "azure-consume: {text}");
    assert!(lines.iter().all(|l| l.get("error").is_none()), "Python could not decode: {text}");
    lines.sort_by_key(|l| (l["partition"].as_str().unwrap_or_default().to_string(), l["seq"].as_i64()));
    lines
}

fn azure_id(content_type: &Value) -> String {
    let ct = content_type.as_str().unwrap_or_default();
    let id = ct.strip_prefix("avro/binary+").unwrap_or_else(|| panic!("content type {ct:?}"));
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{ct}");
    id.to_string()
}

/// Azure side: events Python's `AvroEncoder` wrote to the local Event Hubs
/// broker are decoded by Conveyor; Conveyor encodes them again (registering
/// v2 in the group, authenticated by an Entra ID managed identity) and
/// Python decodes what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_avro_round_trips_with_the_python_encoder() {
    let b = azure::broker(2).await;
    let conn = azure::eh_conn(&b);
    let sr = Standin::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (sr.file("v1.avsc", CLAIM_V1), sr.file("v2.avsc", CLAIM_V2));
    let yaml = format!(
        r#"
service: {{ name: az-test, http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 10s, log: {{ format: json, level: info }} }}
schema_registries:
{registry}
transports:
  hubs:
    type: eventhubs
    connection_string: "{conn}"
    checkpoint_store: {{ type: file, path: {cp} }}
    update_interval: 1s
    ownership_expiration: 4s
  local: {{ type: embedded }}
entities:
  in: {{ transport: hubs, partitions: 2, name: az-in }}
  decoded: {{ transport: local, partitions: 2 }}
  out: {{ transport: hubs, partitions: 2, name: az-out }}
workers:
  decode:
    input: in
    stage: {{ type: decode, registry: az }}
    outputs: {{ default: decoded }}
  rows:
    input: decoded
    stage: {{ type: sink, dir: {rows} }}
  encode:
    input: decoded
    stage: {{ type: encode, registry: az, schema: {{ file: {v2} }}, register: true }}
    outputs: {{ default: out }}
"#,
        registry = azure_registry_yaml(&sr),
        cp = dir.path().join("cp").display(),
        rows = dir.path().join("rows").display(),
        v2 = v2.display(),
    );
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let env = sr.identity_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let daemon = Daemon::start_with(&cfg, &topic("az-test"), &env);

    let produce = |schema: &std::path::Path, records: &[Value]| {
        let args = vec![
            s("azure-produce"),
            s("--conn"),
            conn.clone(),
            s("--hub"),
            s("az-in"),
            s("--registry-ns"),
            sr.azure_ns(),
            s("--group"),
            s("claims"),
            s("--schema"),
            schema.display().to_string(),
            s("--ca"),
            sr.ca.display().to_string(),
            s("--key-field"),
            s("id"),
        ];
        schema_tool(args, Some(ndjson(records)))
    };
    let (first, second) = (claims("a", 12, 3), v2_claims("b", 3));
    for (schema, records) in [(&v1, &first), (&v2, &second)] {
        let (code, _, text) = produce(schema, records).await;
        assert_eq!(code, 0, "{text}");
    }

    let rows = decoded_rows(&daemon, &dir.path().join("rows"), 15).await;
    for r in first.iter().chain(&second) {
        assert_eq!(&rows[r["id"].as_str().unwrap()], r, "decoded as Python wrote it");
    }

    let lines = azure_consume(&conn, "az-out", &sr, 15).await;
    let ids: std::collections::BTreeSet<String> = lines.iter().map(|l| azure_id(&l["content_type"])).collect();
    assert_eq!(ids.len(), 1, "one schema (v2) for everything Conveyor wrote: {ids:?}");
    for l in &lines {
        let v = &l["value"];
        let mut want = rows[v["id"].as_str().unwrap()].clone();
        if want.get("source").is_none() {
            want["source"] = json!("legacy");
        }
        assert_eq!(v, &want);
        assert_eq!(l["key"].as_str(), v["id"].as_str(), "partition key kept");
    }
    let stats = sr.stats().await;
    let tokens: Vec<&str> = stats["tokens"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(tokens.contains(&"py-token"), "{tokens:?}");
    assert!(tokens.iter().any(|t| t.starts_with("tok-")), "Conveyor's managed-identity token: {tokens:?}");
    assert!(stats["msi_requests"].as_u64().unwrap() >= 1);
}

/// Transcoding at cut-over: Confluent Avro written by Python to Kafka is
/// mirrored to Event Hubs Azure-framed (the migration's `transcode`), read
/// back by Python's Azure encoder with the same records in the same order
/// per key; after the reload into `cutover`, a Conveyor producer's
/// Confluent-framed output lands on Event Hubs Azure-framed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_transcodes_confluent_avro_into_azure_avro() {
    let kafka = KafkaBroker::get(false);
    let b = azure::broker(2).await;
    let conn = azure::eh_conn(&b);
    let sr = Standin::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let v1 = sr.file("v1.avsc", CLAIM_V1);
    let t = topic("sr-claims");
    let hub = format!("h{}", &t[t.len() - 8..]);
    let yaml = |phase: &str| {
        format!(
            r#"
service: {{ name: tc-test, http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 10s, log: {{ format: json, level: info }} }}
schema_registries:
  conf: {{ type: confluent, url: {url} }}
{registry}
transports:
  kafka: {{ type: kafka, bootstrap_servers: "{bootstrap}", create_topics: true,
           properties: {{ "session.timeout.ms": "6000", "heartbeat.interval.ms": "500" }} }}
  hubs:
    type: eventhubs
    connection_string: "{conn}"
    checkpoint_store: {{ type: file, path: {cp} }}
    update_interval: 1s
    ownership_expiration: 4s
  local: {{ type: embedded }}
entities:
  claims:
    transport: kafka
    partitions: 2
    name: {t}
    migrate: {{ to: hubs, name: {hub}, phase: {phase}, transcode: {{ from: conf, to: az }} }}
  json_in: {{ transport: local }}
  raw_in: {{ transport: local }}
  dlq: {{ transport: local }}
sources:
  ingest: {{ type: http, entity: json_in, path: /ingest/claims }}
  raw_ingest: {{ type: http, entity: raw_in, path: /ingest/raw }}
workers:
  raw:
    consumer_group: {t}-raw
    input: raw_in
    stage: {{ type: passthrough }}
    outputs: {{ default: claims }}
    dead_letter: dlq
  encode:
    consumer_group: {t}-encode
    input: json_in
    stage: {{ type: encode, registry: conf, schema: {{ file: {v1} }}, register: true }}
    outputs: {{ default: claims }}
"#,
            url = sr.confluent_url(),
            registry = azure_registry_yaml(&sr),
            bootstrap = kafka.bootstrap,
            cp = dir.path().join("cp").display(),
            v1 = v1.display(),
        )
    };
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml("mirror")).unwrap();
    let env = sr.identity_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut daemon = Daemon::start_with(&cfg, &topic("tc-test"), &env);

    // Python writes Confluent Avro to Kafka, 4 keys interleaved
    let mut records = claims("m", 40, 4);
    for r in &mut records {
        let key = r["tags"][0].clone();
        r["key"] = key;
    }
    let args = vec![
        s("confluent-produce"),
        s("--bootstrap"),
        kafka.bootstrap.clone(),
        s("--topic"),
        t.clone(),
        s("--registry"),
        sr.confluent_url(),
        s("--schema"),
        v1.display().to_string(),
        s("--key-field"),
        s("key"),
    ];
    let (code, _, text) = schema_tool(args, Some(ndjson(&records))).await;
    assert_eq!(code, 0, "{text}");

    let lines = azure_consume(&conn, &hub, &sr, 40).await;
    let ids: std::collections::BTreeSet<String> = lines.iter().map(|l| azure_id(&l["content_type"])).collect();
    assert_eq!(ids.len(), 1, "one Azure schema for the one Confluent schema: {ids:?}");
    let mut per_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in &lines {
        // the copy keeps the partition index, so its key travels as a
        // property, not as the partition key: the record says its key
        let key = l["value"]["tags"][0].as_str().unwrap().to_string();
        per_key.entry(key).or_default().push(l["value"]["id"].as_str().unwrap().into());
    }
    for r in &records {
        let mut want = r.clone();
        want.as_object_mut().unwrap().remove("key");
        assert!(lines.iter().any(|l| l["value"] == want), "{want} arrives as written");
    }
    for (key, got) in &per_key {
        let want: Vec<String> = records
            .iter()
            .filter(|r| r["key"] == key.as_str())
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, &want, "order of key {key}");
    }
    assert!(daemon.logs.try_iter().any(|l| l.contains("schema_mapped")), "the id mapping is logged");

    // the parity check compares records, not framing: equal
    let (cfg_path, env_owned) = (cfg.clone(), sr.identity_env());
    let verify = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["migrate", "verify", "--config"])
            .arg(&cfg_path)
            .args(["--entity", "claims", "--format", "json"])
            .envs(env_owned)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(0), "verify: {report} {}", String::from_utf8_lossy(&verify.stderr));
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["equal"], true, "{report}");

    // cut-over: producers write the new side, Azure-framed
    std::fs::write(&cfg, yaml("cutover")).unwrap();
    daemon.signal("-HUP");
    assert!(
        eventually(Duration::from_secs(30), async || {
            get(daemon.addr, "/metrics")
                .await
                .is_ok_and(|(_, m)| m.contains("conveyor_migration_phase{entity=\"claims\"} 2"))
        })
        .await
    );
    let more = claims("n", 6, 2);
    let body = ndjson(&more);
    let url = format!("http://{}/ingest/claims", daemon.addr);
    assert!(
        eventually(Duration::from_secs(30), async || {
            reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    let lines = azure_consume(&conn, &hub, &sr, 46).await;
    for r in &more {
        let l = lines.iter().find(|l| l["value"]["id"] == r["id"]).unwrap_or_else(|| panic!("{r} on Event Hubs"));
        assert_eq!(&l["value"], r);
        azure_id(&l["content_type"]);
    }
    // what a producer writes that cannot be transcoded (not Confluent Avro)
    // is dead-lettered by that worker, never sent to Event Hubs as it is
    let r = reqwest::Client::new()
        .post(format!("http://{}/ingest/raw", daemon.addr))
        .body("{\"not\": \"avro\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let dead_url = format!("http://{}/v1/entities/dlq/messages?partition=0&from=0&wait_ms=20000", daemon.addr);
    let dead = reqwest::get(&dead_url).await.unwrap().text().await.unwrap();
    let Some(first) = dead.lines().next() else {
        let logs: Vec<String> = daemon.logs.try_iter().collect();
        panic!("no dead letter ({dead:?}); the daemon said:\n{}", logs[logs.len().saturating_sub(30)..].join("\n"));
    };
    let record: Value = serde_json::from_str(first).unwrap();
    let envelope = Envelope::parse(record["payload"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(
        (envelope.origin.worker.as_str(), envelope.error.kind.as_str()),
        ("raw", "schema_decode"),
        "{envelope:?}"
    );
    assert_eq!(envelope.original_payload().unwrap(), b"{\"not\": \"avro\"}");
    assert!(daemon.wait_exit(Duration::ZERO).is_none(), "still running");
}
