//! The HTTP ingest source (`type: http`) over real sockets: what it answers
//! and what lands on the entity.

mod support;

use conveyor::runtime::{Options, Pipeline};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use support::*;

const TOKEN: &str = "ingest-T0ken-that-must-never-be-logged";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

use support::ndjson_ids as lines;

async fn post(
    url: &str,
    token: Option<&str>,
    ndjson: bool,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let mut req = client().post(url).body(body);
    if ndjson {
        req = req.header("content-type", "application/x-ndjson");
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("the ingest source answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_ndjson_messages_are_on_disk_exactly_once_when_the_answers_come() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
service: {{ name: ingest-test, http: {{ listen: "127.0.0.1:{port}" }} }}
transports: {{ disk: {{ type: embedded, path: "{}" }} }}
entities: {{ inbox: {{ transport: disk, partitions: 4 }} }}
sources:
  web: {{ type: http, entity: inbox, token: "{TOKEN}", headers: [x-batch] }}
"#,
            data.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&cfg);
    let url = format!("http://{}/ingest", d.addr);
    assert!(
        support::eventually(Duration::from_secs(10), async || post(&url, Some(TOKEN), true, "{\"id\":\"warm-up\"}\n")
            .await
            .0
            == 200)
        .await,
        "the ingest route comes up"
    );
    // wrong and missing tokens: 401, nothing written
    let (code, body) = post(&url, Some("not-the-token"), true, lines("no", 0..10)).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = post(&url, None, true, lines("no", 0..10)).await;
    assert_eq!(code, 401);
    // 5 concurrent batches of 2000 lines
    let mut sends = Vec::new();
    for b in 0..5 {
        let url = url.clone();
        sends.push(tokio::spawn(async move {
            let resp = client()
                .post(&url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/x-ndjson")
                .header("x-batch", b.to_string())
                .body(lines("m", b * 2000..(b + 1) * 2000))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }));
    }
    for s in sends {
        let (code, body) = s.await.unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["accepted"], 2000, "{body}");
    }
    let metrics = get(d.addr, "/metrics").await.unwrap().1;
    assert_eq!(metric_sum(&metrics, "conveyor_ingest_messages_total", "source=\"web\""), 10_001.0);
    assert_eq!(metric_sum(&metrics, "conveyor_ingest_rejections_total", "reason=\"unauthorized\""), 2.0);
    let readyz = get(d.addr, "/readyz").await.unwrap().1;
    // the answers are in: kill the daemon at once, with no drain
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let logs: Vec<String> = d.logs.try_iter().collect();
    for text in logs.iter().chain([&metrics, &readyz]) {
        assert!(!text.contains(TOKEN), "the token leaked: {text}");
    }
    assert!(logs.iter().any(|l| l.contains("without the right bearer token")), "401s are logged: {logs:#?}");

    let store = open_store(&data, &[("inbox", 4)], &[]);
    let msgs = read_all(&store, "inbox").await;
    let got = ids(&msgs);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 10_001, "every acknowledged message, once");
    assert_eq!(unique.len(), 10_001);
    assert!(!got.iter().any(|i| i.starts_with("no-")), "nothing of a refused request");
    let batch0 = msgs.iter().filter(|m| m.headers.get_str("x-batch") == Some("0")).count();
    assert_eq!(batch0, 2000, "the configured header is carried onto every message of its request");
}

/// A `POST` with a chunked body of `chunks` × `size` bytes, over a raw
/// socket (no `Content-Length`); the answer's status.
async fn chunked_post(addr: std::net::SocketAddr, path: &str, chunks: usize, size: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for _ in 0..chunks {
        req += &format!("{size:x}\r\n{}\r\n", "y".repeat(size));
    }
    req += "0\r\n\r\n";
    // the server may answer 413 and close before the whole body is sent
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn memory_yaml(extra: &str) -> String {
    format!(
        r#"
service: {{ name: ingest-test, http: {{ listen: "127.0.0.1:0" }} }}
transports: {{ mem: {{ type: embedded }} }}
entities: {{ inbox: {{ transport: mem, partitions: 2 }} }}
sources:
  web: {{ type: http, entity: inbox, path: /in, max_body_bytes: 2000, max_in_flight: 5{extra} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_with_reasons_and_write_nothing() {
    let rt = Pipeline::start(&config(&memory_yaml("")), 0, Options::default()).await.unwrap();
    let url = format!("http://{}/in", rt.http_addr);
    assert!(support::eventually(Duration::from_secs(10), async || rt.health.report().ready).await);

    let (code, body) = post(&url, None, true, "{\"a\":1}\n{\"b\":\n[3]\n").await;
    assert_eq!((code, body["line"].as_u64()), (400, Some(2)), "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("line 2:"), "{body}");
    let (code, body) = post(&url, None, false, "x".repeat(2001)).await;
    assert_eq!(code, 413, "{body}");
    // a body without a length (chunked) over the limit
    assert_eq!(chunked_post(rt.http_addr, "/in", 30, 100).await, 413);
    let (code, body) = post(&url, None, true, lines("x", 0..6)).await;
    assert_eq!(code, 413, "6 messages over max_in_flight 5: {body}");
    let (code, _) = post(&url, None, false, "").await;
    assert_eq!(code, 400);
    let (code, _) = post(&url, None, true, "\n\n").await;
    assert_eq!(code, 400);
    let wrong_method = client().get(&url).send().await.unwrap().status().as_u16();
    assert_eq!(wrong_method, 405);
    let nowhere = client().post(format!("http://{}/elsewhere", rt.http_addr)).body("x").send().await.unwrap();
    assert_eq!(nowhere.status().as_u16(), 404);

    let t = rt.transport("mem");
    let ps = t.partitions("inbox").await.unwrap();
    assert!(ps.iter().all(|p| p.next == 0), "nothing written: {ps:?}");

    // good requests: chunked, single (keyed), NDJSON
    assert_eq!(chunked_post(rt.http_addr, "/in", 3, 100).await, 200, "a chunked body under the limit");
    let resp = client().post(&url).header("conveyor-key", "k1").body("plain text").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (code, body) = post(&url, None, true, lines("ok", 0..5)).await;
    assert_eq!((code, body["accepted"].as_u64()), (200, Some(5)), "{body}");
    let msgs = read_everything(t.clone(), "inbox").await;
    assert_eq!(msgs.len(), 7);
    let plain = msgs.iter().find(|m| &m.payload[..] == b"plain text").expect("the plain message");
    assert_eq!(plain.key.as_deref(), Some(&b"k1"[..]));
    let m = rt.metrics.encode_text();
    for (reason, n) in [("bad_request", 3.0), ("too_large", 3.0)] {
        assert_eq!(metric_sum(&m, "conveyor_ingest_rejections_total", &format!("reason=\"{reason}\"")), n, "{m}");
    }
    assert_eq!(metric_sum(&m, "conveyor_ingest_requests_total", "code=\"200\""), 3.0);
    rt.shutdown().await.unwrap();
}

#[cfg(feature = "eventhubs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_answers_503_and_says_what_was_acknowledged() {
    use support::azure::{broker, eh_conn};
    let mut b = broker(2).await;
    let yaml = format!(
        r#"
service: {{ name: ingest-test, http: {{ listen: "127.0.0.1:0" }} }}
transports: {{ hubs: {{ type: eventhubs, connection_string: "{}" }} }}
entities: {{ inbox: {{ transport: hubs, partitions: 2 }} }}
sources:
  web: {{ type: http, entity: inbox, timeout: 4s }}
"#,
        eh_conn(&b)
    );
    let rt = Pipeline::start(&config(&yaml), 0, Options::default()).await.unwrap();
    let url = format!("http://{}/ingest", rt.http_addr);
    // the first send of a fresh producer may fail once (see tests/eventhubs.rs)
    assert!(
        support::eventually(Duration::from_secs(30), async || post(&url, None, true, lines("up", 0..3)).await.0 == 200)
            .await,
        "ingest works while the broker is up"
    );
    let before = b.events("inbox").len();
    b.suspend().await;
    let (code, body) = post(&url, None, true, lines("down", 0..3)).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["acknowledged"], 0, "{body}");
    assert_eq!(body["acknowledged_through_line"], 0, "{body}");
    b.resume().await.unwrap();
    assert!(
        support::eventually(Duration::from_secs(60), async || post(&url, None, true, lines("back", 0..2)).await.0
            == 200)
        .await,
        "ingest recovers once the broker is back"
    );
    let events = b.events("inbox");
    let bodies: Vec<String> = events.iter().map(|e| String::from_utf8_lossy(&e.body).into_owned()).collect();
    assert!(bodies.iter().filter(|x| x.contains("\"back-")).count() >= 2, "{bodies:?}");
    assert!(events.len() >= before + 2);
    let m = rt.metrics.encode_text();
    assert!(metric_sum(&m, "conveyor_ingest_rejections_total", "reason=\"unavailable\"") >= 1.0, "{m}");
    rt.shutdown().await.unwrap();
    b.shutdown().await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_gets_429_for_more_than_max_in_flight_and_503_after_the_timeout() {
    use rdkafka::mocking::MockCluster;
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("m-in", 2, 1).unwrap();
    let yaml = format!(
        r#"
service: {{ name: ingest-test, http: {{ listen: "127.0.0.1:0" }} }}
transports: {{ kafka: {{ type: kafka, bootstrap_servers: "{}" }} }}
entities: {{ inbox: {{ transport: kafka, partitions: 2, name: m-in }} }}
sources:
  web: {{ type: http, entity: inbox, timeout: 2s, max_in_flight: 3 }}
"#,
        mock.bootstrap_servers()
    );
    let rt = Pipeline::start(&config(&yaml), 0, Options::default()).await.unwrap();
    let url = format!("http://{}/ingest", rt.http_addr);
    assert!(
        support::eventually(Duration::from_secs(30), async || post(&url, None, true, lines("up", 0..3)).await.0 == 200)
            .await
    );
    mock.broker_round_trip_time(1, Duration::from_secs(4)).unwrap();
    let slow = tokio::spawn({
        let url = url.clone();
        async move { post(&url, None, true, lines("slow", 0..3)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // the 3 messages in flight hold max_in_flight: back-pressure
    let (code, body) = post(&url, None, true, lines("busy", 0..1)).await;
    assert_eq!(code, 429, "{body}");
    let (code, body) = slow.await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("timeout"), "{body}");
    assert_eq!(body["acknowledged"], 0, "{body}");
    let m = rt.metrics.encode_text();
    assert_eq!(metric_sum(&m, "conveyor_ingest_rejections_total", "reason=\"busy\""), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "conveyor_ingest_requests_total", "code=\"429\""), 1.0, "{m}");
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    rt.shutdown().await.unwrap();
}

fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl made a certificate");
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_on_a_listener_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let port = free_port();
    let yaml = memory_yaml("").replace(
        "max_in_flight: 5",
        &format!(
            "max_in_flight: 5, listen: \"127.0.0.1:{port}\", tls: {{ cert: \"{}\", key: \"{}\" }}",
            cert.display(),
            key.display()
        ),
    );
    let rt = Pipeline::start(&config(&yaml), 0, Options::default()).await.unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let tls = reqwest::Client::builder().no_proxy().add_root_certificate(ca).build().unwrap();
    let url = format!("https://127.0.0.1:{port}/in");
    assert!(
        support::eventually(Duration::from_secs(10), async || tls
            .post(&url)
            .header("content-type", "application/x-ndjson")
            .body(lines("tls", 0..3))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200))
        .await,
        "HTTPS ingest answers 200: {:?} {:?}",
        tls.post(&url).body("x").send().await,
        rt.health.report().workers
    );
    // plain HTTP to the TLS port is no request
    let plain = client().post(format!("http://127.0.0.1:{port}/in")).body("x").send().await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() != 200);
    // the admin listener does not carry a source that has its own
    let admin = client().post(format!("http://{}/in", rt.http_addr)).body("x").send().await.unwrap();
    assert_eq!(admin.status().as_u16(), 404);
    let msgs = read_everything(rt.transport("mem"), "inbox").await;
    assert_eq!(ids(&msgs).into_iter().collect::<BTreeSet<_>>().len(), 3);
    rt.shutdown().await.unwrap();
}
