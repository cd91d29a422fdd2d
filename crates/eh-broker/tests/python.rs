//! Cross-check with the official Python SDK (`tests/py/eh_tool.py`, azure-eventhub 5.15).
//!
//! Needs the venv at `<repo>/.cache/pyenv` (made by `scripts/setup.sh`; or
//! `EH_PYTHON=/path/to/python`); the tests fail when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use conveyor_eh_broker::{Broker, BrokerConfig, hash::partition_for_key};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("EH_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo().join(".cache/pyenv/bin/python"));
    assert!(p.exists(), "no Python venv at {} (run scripts/setup.sh, or set EH_PYTHON)", p.display());
    Some(p)
}

async fn tool(py: &Path, args: Vec<String>) -> Output {
    let py = py.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(py).arg(repo().join("tests/py/eh_tool.py")).args(args).output().expect("run eh_tool.py")
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "eh_tool failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn broker() -> Broker {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Broker::start(BrokerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_round_trip_keys_partitions_props() {
    let Some(py) = python() else { return };
    let b = broker().await;
    let cs = b.connection_string();
    let out = tool(
        &py,
        args(&[
            "produce",
            "--conn",
            &cs,
            "--hub",
            "Py1",
            "--count",
            "20",
            "--prefix",
            "k",
            "--batch",
            "--partition-key",
            "k1",
        ]),
    )
    .await;
    assert_eq!(ok(&out).trim(), "produced 20");
    let out = tool(
        &py,
        args(&["produce", "--conn", &cs, "--hub", "py1", "--count", "8", "--prefix", "p", "--partition-id", "2"]),
    )
    .await;
    assert_eq!(ok(&out).trim(), "produced 8");

    let events = b.events("PY1");
    assert_eq!(events.len(), 28);
    let key_p = partition_for_key("k1", 4);
    assert!(
        events
            .iter()
            .filter(|e| e.body.starts_with(b"k"))
            .all(|e| e.partition == key_p && e.partition_key.as_deref() == Some("k1"))
    );
    assert!(events.iter().filter(|e| e.body.starts_with(b"p")).all(|e| e.partition == 2));

    let props = ok(&tool(&py, args(&["props", "--conn", &cs, "--hub", "py1"])).await);
    assert!(props.contains("\"partition_ids\""), "{props}");
    assert!(
        props.contains("\"last_enqueued_sequence_number\": 7")
            || props.contains("\"last_enqueued_sequence_number\": 19"),
        "{props}"
    );

    let out = ok(&tool(
        &py,
        args(&["consume", "--conn", &cs, "--hub", "py1", "--group", "$Default", "--expect", "28", "--timeout", "30"]),
    )
    .await);
    let mut got: Vec<(String, u32, i64)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, u32, i64)> = events
        .iter()
        .map(|e| (String::from_utf8_lossy(&e.body).into_owned(), e.partition, e.sequence_number))
        .collect();
    want.sort();
    assert_eq!(got, want);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_survives_faults() {
    let Some(py) = python() else { return };
    let b = broker().await;
    let cs = b.connection_string();

    // server-busy on one send: pyamqp retries the delivery once and succeeds.
    b.faults().server_busy_sends(1);
    let out = tool(&py, args(&["produce", "--conn", &cs, "--hub", "f", "--count", "10", "--prefix", "a"])).await;
    eprintln!("server-busy x1: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(b.faults().counts().server_busy, 1);
    assert_eq!(ok(&out).trim(), "produced 10");
    assert_eq!(b.events("f").len(), 10);
    // Persistent server-busy: the producer gives up with EventDataSendError (no data stored).
    b.faults().server_busy_sends(100);
    let out = tool(&py, args(&["produce", "--conn", &cs, "--hub", "f", "--count", "1", "--prefix", "z"])).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("server-busy"), "{err}");
    b.faults().server_busy_sends(0);
    assert_eq!(b.events("f").len(), 10);

    // A consumer that sees link detaches and a dropped connection mid-stream.
    let consumer = {
        let (py, cs) = (py.clone(), cs.clone());
        tokio::spawn(async move {
            tool(&py, args(&["consume", "--conn", &cs, "--hub", "f", "--expect", "30", "--timeout", "90"])).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    eprintln!("step: detach receivers");
    b.faults().detach_receivers("f");
    ok(&tool(&py, args(&["produce", "--conn", &cs, "--hub", "f", "--count", "10", "--prefix", "b"])).await);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    eprintln!("step: drop connections");
    b.faults().drop_connections();
    ok(&tool(&py, args(&["produce", "--conn", &cs, "--hub", "f", "--count", "10", "--prefix", "c"])).await);
    eprintln!("step: wait for the consumer");
    let out = consumer.await.unwrap();
    let stdout = ok(&out);
    let distinct: std::collections::BTreeSet<&str> = stdout.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(distinct.len(), 30, "{stdout}");
    let counts = b.faults().counts();
    assert!(counts.detached_receivers >= 1, "{counts:?}");
    assert!(counts.dropped_connections >= 1, "{counts:?}");

    // CBS 401: the producer fails (authentication is not retried).
    eprintln!("step: cbs 401");
    b.faults().cbs_unauthorized(100);
    let out = tool(&py, args(&["produce", "--conn", &cs, "--hub", "f", "--count", "1"])).await;
    assert!(!out.status.success(), "produce must fail with CBS 401");
    assert!(b.faults().counts().cbs_unauthorized >= 1);
    b.shutdown().await;
}
