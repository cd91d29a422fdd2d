//! The Event Hubs transport against the local Event Hubs test broker
//! (`conveyor-eh-broker`), with checkpoints in Azurite and the official
//! Python SDK (`azure-eventhub`, `azure-eventhub-checkpointstoreblob-aio`) as
//! the independent client on both sides.
#![cfg(feature = "eventhubs")]

mod support;

use conveyor::runtime::{Options, Pipeline};
use conveyor::transport::eventhub::EventHubsTransport;
use conveyor::transport::{EntitySpec, OutboundMessage, Transport};
use std::collections::BTreeSet;
use std::time::Duration;
use support::azure::*;
use support::*;

fn out_bodies(b: &Broker, hub: &str) -> Vec<String> {
    b.events(hub).into_iter().map(|e| String::from_utf8_lossy(&e.body).into_owned()).collect()
}

async fn wait_out(b: &Broker, hub: &str, want: usize, within: Duration) -> Vec<String> {
    let end = tokio::time::Instant::now() + within;
    loop {
        let got = out_bodies(b, hub);
        if got.len() >= want || tokio::time::Instant::now() > end {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn expect(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

async fn py_produce(b: &Broker, hub: &str, n: usize, prefix: &str) {
    let (code, out) = eh_tool_async(vec![
        "produce".into(),
        "--conn".into(),
        eh_conn(b),
        "--hub".into(),
        hub.into(),
        "--count".into(),
        n.to_string(),
        "--prefix".into(),
        prefix.into(),
        "--batch".into(),
    ])
    .await;
    assert_eq!(code, 0, "python produce failed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_to_conveyor_to_python_and_a_restart_resumes_from_blob_checkpoints() {
    let b = broker(4).await;
    let az = Azurite::start();
    let yaml = eh_yaml(&eh_conn(&b), &blob_store_yaml(&az, "checkpoints"), "in", "out", 4, "copy");
    let cfg = config(&yaml);
    py_produce(&b, "in", 2000, "a").await;
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let got = wait_out(&b, "out", 2000, Duration::from_secs(60)).await;
    assert_eq!(set(&got), expect("a", 2000), "Conveyor copied the Python-produced set");
    assert_eq!(got.len(), 2000, "no duplicates without failures");
    // the independent client reads what Conveyor produced
    let (code, out) = eh_tool_async(
        [
            "consume",
            "--conn",
            &eh_conn(&b),
            "--hub",
            "out",
            "--group",
            "$Default",
            "--expect",
            "2000",
            "--timeout",
            "60",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "python consumer saw too few events");
    assert_eq!(set(&bodies(&out)), expect("a", 2000));
    assert_eq!(get(rt.http_addr, "/readyz").await.unwrap().0, 200);
    rt.shutdown().await.unwrap();

    // checkpoints in the Azure layout, lower-cased, one per partition
    let ns = format!("127.0.0.1:{}", b.local_addr().port());
    let cps = az.client().list("checkpoints", &format!("{ns}/in/copy/checkpoint/")).await.unwrap();
    assert!(!cps.is_empty() && cps.len() <= 4, "{:?}", cps.iter().map(|c| &c.name).collect::<Vec<_>>());
    let total: i64 = cps.iter().map(|c| c.metadata["sequencenumber"].parse::<i64>().unwrap() + 1).sum();
    assert_eq!(total, 2000, "checkpoints cover exactly the consumed events");
    assert!(cps.iter().all(|c| c.metadata.contains_key("offset")));
    // ownership released on shutdown
    let owners = az.client().list("checkpoints", &format!("{ns}/in/copy/ownership/")).await.unwrap();
    assert!(owners.iter().all(|o| o.metadata.get("ownerid").is_none_or(|s| s.is_empty())), "released");

    // restart: only the new events come through, nothing replayed
    py_produce(&b, "in", 500, "b").await;
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    let got = wait_out(&b, "out", 2500, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got2 = out_bodies(&b, "out");
    assert_eq!(got2.len(), 2500, "restart replayed {} events", got2.len().saturating_sub(2500));
    let mut want = expect("a", 2000);
    want.extend(expect("b", 500));
    assert_eq!(set(&got), want);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_written_by_the_python_sdk_are_honoured() {
    let b = broker(4).await;
    let az = Azurite::start();
    az.client().create_container("pycp").await.unwrap();
    py_produce(&b, "orders", 300, "old").await;
    // the Python processor (azure-eventhub-checkpointstoreblob-aio) consumes and checkpoints
    let (code, out) = eh_tool_async(
        [
            "consume",
            "--conn",
            &eh_conn(&b),
            "--hub",
            "orders",
            "--group",
            "$Default",
            "--expect",
            "300",
            "--timeout",
            "60",
            "--checkpoint-store",
            &az.conn(),
            "--container",
            "pycp",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "python consumer: {out}");
    py_produce(&b, "orders", 200, "new").await;
    // Conveyor takes over the same consumer group
    let yaml = eh_yaml(&eh_conn(&b), &blob_store_yaml(&az, "pycp"), "orders", "copies", 4, "$Default");
    let rt = Pipeline::start(&config(&yaml), 0, Options::default()).await.unwrap();
    let _ = wait_out(&b, "copies", 200, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = out_bodies(&b, "copies");
    assert_eq!(set(&got), expect("new", 200), "resumed after Python's checkpoints, no replay of the 300 old events");
    assert_eq!(got.len(), 200);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_faults_are_retried_or_surfaced_and_nothing_is_lost() {
    let b = broker(2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{{ type: file, path: {:?} }}", dir.path().join("cp"));
    let cfg = config(&eh_yaml(&eh_conn(&b), &store, "src", "dst", 2, "copy"));
    if std::env::var("EH_TEST_LOG").is_ok() {
        conveyor::telemetry::init(&cfg.service.log);
    }
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    py_produce(&b, "src", 500, "p").await;
    assert_eq!(wait_out(&b, "dst", 500, Duration::from_secs(60)).await.len(), 500);
    // throttled sends (com.microsoft:server-busy) from Conveyor's producer: retried, not lost
    let conveyor::config::TransportConfig::Eventhubs(ehc) = &cfg.transports["hubs"] else { unreachable!() };
    let t = EventHubsTransport::open(
        "hubs",
        ehc,
        &[EntitySpec { key: "side".into(), name: "side".into(), partitions: 2 }],
        Default::default(),
    )
    .await
    .unwrap();
    let p = t.producer();
    p.send("side", vec![OutboundMessage { payload: "warm".into(), ..Default::default() }]).await.unwrap();
    b.faults().server_busy_sends(2);
    let r = p
        .send(
            "side",
            (0..10).map(|i| OutboundMessage { payload: format!("busy{i}").into(), ..Default::default() }).collect(),
        )
        .await;
    assert!(b.faults().counts().server_busy >= 1, "the fault was applied");
    match r {
        // retried inside the SDK: every event arrived
        Ok(_) => assert!(set(&out_bodies(&b, "side")).is_superset(&expect("busy", 10))),
        // or surfaced as retryable (throttling, or a send timeout): the worker backs off and resends
        Err(e) => {
            use conveyor::classify::ErrorCategory::*;
            assert!(matches!(e.category(), Throttling | Transient), "{e}");
            p.send("side", vec![OutboundMessage { payload: "after".into(), ..Default::default() }]).await.unwrap();
        }
    }
    t.close(Duration::from_secs(10)).await;
    py_produce(&b, "src", 300, "q").await;
    // links detached and connections dropped while events flow
    b.faults().detach_receivers("src");
    py_produce(&b, "src", 300, "r").await;
    b.faults().drop_connections();
    py_produce(&b, "src", 300, "s").await;
    // another consumer steals partition 0 (epoch): released, then reclaimed
    b.faults().steal_partition("src", "copy", 0);
    py_produce(&b, "src", 300, "t").await;
    let mut want = expect("p", 500);
    for p in ["q", "r", "s", "t"] {
        want.extend(expect(p, 300));
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got = set(&out_bodies(&b, "dst"));
        if got == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "missing {} (extra {}), e.g. {:?}",
            want.difference(&got).count(),
            got.difference(&want).count(),
            want.difference(&got).take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = b.faults().counts();
    assert!(counts.server_busy >= 1 && counts.dropped_connections >= 1 && counts.detached_receivers >= 1, "{counts:?}");
    // duplicates only from re-sends of in-flight batches, never a replay of the stream
    let all = out_bodies(&b, "dst");
    assert!(all.len() < want.len() + 600, "{} copies of {} events: a replay", all.len(), want.len());
    assert!(eventually(Duration::from_secs(20), async || get(rt.http_addr, "/readyz").await.unwrap().0 == 200).await);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_make_the_worker_unready_until_they_work() {
    let b = broker(2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{{ type: file, path: {:?} }}", dir.path().join("cp"));
    let cfg = config(&eh_yaml(&eh_conn(&b), &store, "in", "out", 2, "copy"));
    b.faults().cbs_unauthorized(1_000_000);
    let rt = Pipeline::start(&cfg, 0, Options::default()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            let (code, body) = get(rt.http_addr, "/readyz").await.unwrap();
            code == 503 && body.contains("auth")
        })
        .await,
        "unready with an auth error: {:?}",
        get(rt.http_addr, "/readyz").await.unwrap()
    );
    let (_, body) = get(rt.http_addr, "/readyz").await.unwrap();
    assert!(!body.contains(SAS_KEY));
    b.faults().cbs_unauthorized(0);
    py_produce(&b, "in", 100, "k").await;
    assert_eq!(set(&wait_out(&b, "out", 100, Duration::from_secs(90)).await), expect("k", 100));
    assert!(eventually(Duration::from_secs(20), async || get(rt.http_addr, "/readyz").await.unwrap().0 == 200).await);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_pipeline_runs_on_event_hubs_with_uploads_to_azurite() {
    let b = broker(4).await;
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let n = 60u64;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let blob = format!("{{ type: blob, connection_string: \"{}\", container: attachments }}", az.conn());
    let text = std::fs::read_to_string(root.join("config/eventhubs.yaml"))
        .unwrap()
        .replace("${CONVEYOR_LISTEN:-127.0.0.1:9464}", "127.0.0.1:0")
        .replace("${CONVEYOR_DATA:-./data}", &dir.path().display().to_string())
        .replace("${CONVEYOR_SIM_LISTEN:-127.0.0.1:9470}", &format!("127.0.0.1:{}", free_port()))
        .replace("${CONVEYOR_SIM_RATE:-20}", &format!("100\n    count: {n}"))
        .replace(
            "${EVENTHUB_CONNECTION_STRING:-Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=dev;SharedAccessKey=dev;UseDevelopmentEmulator=true}",
            &eh_conn(&b),
        )
        .replace("${CHECKPOINT_STORAGE_CONNECTION_STRING:-UseDevelopmentStorage=true}", &az.conn())
        .replace(&format!("target: {{ type: dir, path: \"{}/uploads\" }}", dir.path().display()), &format!("target: {blob}"));
    assert!(text.contains("type: blob, connection_string") && !text.contains("type: dir"), "upload targets rewritten");
    let cfg = dir.path().join("eventhubs.yaml");
    std::fs::write(&cfg, text).unwrap();
    let mut d = Daemon::start(&cfg);
    let rows = |prefix: &str| result_ids(dir.path(), prefix);
    let t0 = std::time::Instant::now();
    loop {
        let m = get(d.addr, "/metrics").await.unwrap().1;
        let xact_dead = metric_sum(&m, "conveyor_dead_lettered_total", "worker=\"xact-");
        let claimx_dead = metric_sum(&m, "conveyor_dead_lettered_total", "worker=\"claimx-e");
        if rows("xact-results").len() as f64 + xact_dead >= n as f64
            && rows("claimx-entities").len() as f64 + claimx_dead >= n as f64
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "not every event arrived: xact {} rows + {xact_dead} dead, claimx {} rows + {claimx_dead} dead of {n}",
            rows("xact-results").len(),
            rows("claimx-entities").len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(40)), Some(0));
    // the results went through the hubs and every attachment is a blob in Azurite
    let xact = rows("xact-results");
    assert!(!xact.is_empty());
    let blobs = az.client().list("attachments", "xact/").await.unwrap();
    assert_eq!(blobs.len(), xact.len(), "one upload per xact result");
    for hub in ["xact-enrichment-pending", "xact-downloads-cached", "claimx-entities-rows", "itel-cabinet-tracking"] {
        assert!(!b.events(hub).is_empty(), "{hub} carried events");
    }
    // checkpoints in Azurite for the workers' consumer groups
    let ns = format!("127.0.0.1:{}", b.local_addr().port());
    let cps = az
        .client()
        .list("conveyor-checkpoints", &format!("{ns}/xact-downloads-pending/xact-download/checkpoint/"))
        .await
        .unwrap();
    assert!(!cps.is_empty());
}

/// `conveyor check` reads each hub's partition count from the namespace and
/// warns when the config says otherwise; an unreachable namespace is one
/// warning, without its key; neither fails the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_compares_hub_partition_counts_with_the_namespace() {
    let b = broker(4).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{{ type: file, path: \"{}\" }}", dir.path().join("cp").display());
    let path = dir.path().join("c.yaml");
    let run_check = move |text: String| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::write(&path, text).unwrap();
            let out = std::process::Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
            assert_eq!(out.status.code(), Some(0), "warnings do not fail check");
            String::from_utf8_lossy(&out.stderr).to_string()
        })
    };
    let err = run_check(eh_yaml(&eh_conn(&b), &store, "chk-in", "chk-out", 3, "$Default")).await.unwrap();
    assert!(err.contains("entities.chk-in: event hub \"chk-in\" has 4 partitions on hubs, the config says 3"), "{err}");
    let matching = run_check(eh_yaml(&eh_conn(&b), &store, "chk-in", "chk-out", 4, "$Default")).await.unwrap();
    assert!(!matching.contains("partitions on hubs"), "{matching}");
    let port = b.local_addr().port();
    drop(b);
    let gone = run_check(eh_yaml(&eh_conn_port(port), &store, "chk-in", "chk-out", 4, "$Default")).await.unwrap();
    assert!(gone.contains("partition counts not compared"), "{gone}");
    assert_eq!(gone.matches("partition counts not compared").count(), 1, "{gone}");
    assert!(!gone.contains(SAS_KEY), "{gone}");
}

/// Keyed messages go to the partition the service's hash assigns their key
/// (computed by Conveyor), many keys to a batch; every event keeps its own
/// partition key and its key's order, as the Python SDK reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_go_to_their_keys_partitions_many_keys_to_a_batch() {
    conveyor::runtime::install_tls_provider();
    let b = broker(4).await;
    // a fresh hub per attempt: a send that fails as transient (the first
    // send of a new producer to the test broker is now and then cut with
    // "connection dropped") is retried, as a worker would, on a clean hub
    let hubs: Vec<String> = (0..3).map(|i| format!("keyed-{i}")).collect();
    for h in &hubs {
        b.create_hub(h, 4);
    }
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{{ type: file, path: \"{}\" }}", dir.path().join("cp").display());
    let cfg = config(&eh_yaml(&eh_conn(&b), &store, "in", "out", 4, "copy"));
    let conveyor::config::TransportConfig::Eventhubs(ehc) = &cfg.transports["hubs"] else { unreachable!() };
    let specs: Vec<EntitySpec> =
        hubs.iter().map(|h| EntitySpec { key: h.clone(), name: h.clone(), partitions: 4 }).collect();
    let t = EventHubsTransport::open("hubs", ehc, &specs, Default::default()).await.unwrap();
    let key_of = |i: usize| format!("claim-{}", i % 200);
    let msgs: Vec<OutboundMessage> = (0..800)
        .map(|i| OutboundMessage {
            key: Some(key_of(i).into_bytes().into()),
            payload: format!("m{i}").into_bytes().into(),
            ..Default::default()
        })
        .collect();
    let mut sent = None;
    for h in &hubs {
        let before = b.deliveries();
        match t.producer().send(h, msgs.clone()).await {
            Ok(_) => {
                sent = Some((h.clone(), b.deliveries() - before));
                break;
            }
            Err(e) if e.category() == conveyor::classify::ErrorCategory::Transient => eprintln!("retrying: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
    let (hub, sends) = sent.expect("a send succeeded within 3 attempts");
    // one batch per partition; a batch per key would be 200 sends
    assert!(sends <= 4, "{sends} sends for 800 messages of 200 keys on 4 partitions");

    let (code, out) = eh_tool_async(
        ["consume", "--conn", &eh_conn(&b), "--hub", &hub, "--expect", "800", "--timeout", "60"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "python consumer saw too few events");
    let mut last_seq: std::collections::HashMap<String, (i64, usize)> = Default::default();
    let mut seen = 0;
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (body, partition, seq, key) = (f[0], f[1], f[2].parse::<i64>().unwrap(), f[3]);
        let i: usize = body.trim_start_matches('m').parse().unwrap();
        assert_eq!(key, key_of(i), "{body}: the event keeps its own partition key");
        let want = conveyor_eh_hash::partition_for_key(key, 4);
        assert_eq!(partition, want.to_string(), "{body} (key {key}) on partition {partition}, its key's is {want}");
        if let Some((s, j)) = last_seq.insert(key.to_string(), (seq, i)) {
            assert!(seq > s && i > j, "{key}: m{i} at {seq} after m{j} at {s}: out of order");
        }
        seen += 1;
    }
    assert_eq!(seen, 800);
    t.close(Duration::from_secs(5)).await;
}
