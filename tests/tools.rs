//! `conveyor tail`, `conveyor produce` and `conveyor dlq inspect` on every
//! transport, with the daemon running and stopped; logs for people on a
//! terminal.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// Runs `conveyor ARGS` with `stdin`: (exit code, stdout, stderr).
fn tool(args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run conveyor");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `tool` on a blocking thread (the test's runtime keeps serving brokers).
async fn tool_async(args: Vec<String>, stdin: Vec<u8>) -> (i32, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        tool(&a, &stdin)
    })
    .await
    .unwrap()
}

/// The JSON records `tail --format json` printed.
fn records(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn payload_ids(recs: &[serde_json::Value]) -> BTreeSet<String> {
    recs.iter()
        .filter_map(|r| r["payload"].as_str())
        .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect()
}

fn ndjson(prefix: &str, n: usize) -> Vec<u8> {
    ndjson_ids(prefix, 0..n).into_bytes()
}

#[test]
fn tail_produce_and_dlq_inspect_on_embedded_with_the_daemon_running_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
service: {{ name: tools-test, http: {{ listen: "127.0.0.1:{port}" }} }}
transports:
  disk: {{ type: embedded, path: "{}" }}
  mem: {{ type: embedded }}
entities:
  events: {{ transport: disk, partitions: 2 }}
  valid: {{ transport: disk, partitions: 2 }}
  dead: {{ transport: disk }}
  scratch: {{ transport: mem }}
workers:
  validate: {{ input: events, stage: {{ type: map, require: [id] }}, outputs: {{ default: valid }}, dead_letter: dead }}
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&cfg);
    let c = cfg.as_path();

    // produce through the daemon: 100 good lines and one without an id
    let mut input = ndjson("e", 100);
    input.extend_from_slice(b"{\"noid\":1}\n");
    let cs = c.to_str().unwrap();
    let (code, out, err) =
        tool(&["produce", "-c", cs, "--entity", "events", "--ndjson", "--key", "k", "--header", "h=v"], &input);
    assert_eq!(code, 0, "{err}");
    let positions: Vec<String> = String::from_utf8_lossy(&out).lines().map(str::to_string).collect();
    assert_eq!(positions.len(), 101, "one position per message: {positions:?}");
    assert!(positions.iter().all(|p| p.starts_with("events/") && p.contains('@')), "{positions:?}");
    assert_eq!(positions.iter().collect::<BTreeSet<_>>().len(), 101);

    // the dead letter, inspected while the daemon runs
    let inspect = ["dlq", "inspect", "--config", c.to_str().unwrap(), "--entity", "dead", "--json"];
    let mut envelopes = Vec::new();
    for _ in 0..200 {
        let (code, out, err) = tool(&inspect, b"");
        assert_eq!(code, 0, "dlq inspect while the daemon runs: {err}");
        envelopes = records(&out);
        if !envelopes.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(envelopes.len(), 1, "{envelopes:?}");
    assert_eq!(envelopes[0]["origin"]["entity"], "events");
    assert_eq!(envelopes[0]["error"]["category"], "permanent");

    // tail through the daemon
    let tail_all =
        ["tail", "--config", c.to_str().unwrap(), "--entity", "valid", "--from-beginning", "--format", "json"];
    let mut recs = Vec::new();
    for _ in 0..200 {
        let (code, out, err) = tool(&tail_all, b"");
        assert_eq!(code, 0, "{err}");
        recs = records(&out);
        if recs.len() >= 100 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(recs.len(), 100);
    assert_eq!(payload_ids(&recs), (0..100).map(|i| format!("e-{i}")).collect());
    assert!(recs.iter().all(|r| r["key"] == "k" && r["headers"] == serde_json::json!([["h", "v"]])), "{:?}", recs[0]);
    // --last 3 of one partition
    let (code, out, _) = tool(
        &[
            "tail",
            "-c",
            c.to_str().unwrap(),
            "--entity",
            "valid",
            "--partition",
            "1",
            "--last",
            "3",
            "--format",
            "json",
        ],
        b"",
    );
    assert_eq!(code, 0);
    let last = records(&out);
    assert!(last.len() <= 3 && last.iter().all(|r| r["partition"] == 1), "{last:?}");
    let (code, _, err) = tool(&["tail", "-c", c.to_str().unwrap(), "--entity", "valid", "--partition", "7"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("no partition 7"), "{err}");

    // --follow sees a message produced after it started
    let mut follow = Command::new(BIN)
        .args(["tail", "-c", c.to_str().unwrap(), "--entity", "valid", "--follow", "--last", "0", "--format", "raw"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, err) = tool(&["produce", "-c", c.to_str().unwrap(), "--entity", "events"], b"{\"id\":\"late\"}");
    assert_eq!(code, 0, "{err}");
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("--follow printed the new message");
    assert_eq!(line, "{\"id\":\"late\"}");
    let _ = follow.kill();
    let _ = follow.wait();

    // any bytes, on the daemon's memory-only transport
    let bytes = [0xffu8, 0x00, 0x41];
    let (code, out, err) = tool(&["produce", "-c", c.to_str().unwrap(), "--entity", "scratch"], &bytes);
    assert_eq!((code, String::from_utf8_lossy(&out).trim()), (0, "scratch/0@0"), "{err}");
    let (code, out, _) = tool(&["tail", "-c", c.to_str().unwrap(), "--entity", "scratch", "--format", "raw"], b"");
    assert_eq!(code, 0);
    assert_eq!(out, [0xff, 0x00, 0x41, b'\n']);
    let (_, out, _) = tool(&["tail", "-c", c.to_str().unwrap(), "--entity", "scratch", "--format", "json"], b"");
    assert_eq!(records(&out)[0]["payload"], serde_json::json!({"base64": "/wBB"}));

    // a batch larger than one request body of the entity API is split
    let big: String = (0..1000).map(|i| format!("{{\"id\":{i},\"pad\":\"{}\"}}\n", "p".repeat(20_000))).collect();
    let (code, out, err) =
        tool(&["produce", "-c", c.to_str().unwrap(), "--entity", "scratch", "--ndjson"], big.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out).lines().count(), 1000);
    let (code, _, err) = tool(&["dlq", "redrive", "-c", c.to_str().unwrap(), "--from", "dead", "--rate", "0"], b"");
    assert_eq!(code, 64, "a rate of 0 is refused: {err}");

    // a bad NDJSON line: named, nothing written
    let (code, _, err) =
        tool(&["produce", "-c", c.to_str().unwrap(), "--entity", "scratch", "--ndjson"], b"1\n{oops\n");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("line 2"), "{err}");

    // a redrive while the daemon holds the store: the daemon runs it
    let redrive = ["dlq", "redrive", "-c", c.to_str().unwrap(), "--from", "dead", "--to", "scratch"];
    let (code, out, err) = tool(&redrive, b"");
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("redrove 1 of 1"), "{}", String::from_utf8_lossy(&out));
    let (code, out, err) = tool(&redrive, b"");
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("redrove 0 of 0"), "its position was committed");
    let (_, out, _) = tool(&["tail", "-c", c.to_str().unwrap(), "--entity", "scratch", "--format", "raw"], b"");
    assert!(String::from_utf8_lossy(&out).lines().any(|l| l == "{\"noid\":1}"), "{}", String::from_utf8_lossy(&out));

    // the daemon stops: the store is read directly
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
    let (code, out, err) = tool(&tail_all, b"");
    assert_eq!(code, 0, "{err}");
    let recs = records(&out);
    assert_eq!(recs.len(), 101, "the late one too");
    let (code, out, err) = tool(&["produce", "-c", c.to_str().unwrap(), "--entity", "events"], b"{\"id\":\"offline\"}");
    assert_eq!(code, 0, "{err}");
    let at = String::from_utf8_lossy(&out).trim().to_string();
    let (p, _) = at.trim_start_matches("events/").split_once('@').unwrap();
    let (_, out, _) = tool(
        &["tail", "-c", c.to_str().unwrap(), "--entity", "events", "--partition", p, "--last", "1", "--format", "raw"],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out), "{\"id\":\"offline\"}\n");
    let (code, _, _) = tool(&inspect, b"");
    assert_eq!(code, 0, "dlq inspect with the daemon stopped");
    // a memory-only entity lives in the daemon: gone, and the tool says so
    let (code, _, err) = tool(&["tail", "-c", c.to_str().unwrap(), "--entity", "scratch"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("does not answer"), "{err}");
}

#[cfg(feature = "kafka")]
#[test]
fn tail_and_produce_on_kafka_agree_with_kcat() {
    let broker = KafkaBroker::get(false);
    let dir = tempfile::tempdir().unwrap();
    let t = topic("tools");
    let cfg = dir.path().join("k.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
transports: {{ kafka: {{ type: kafka, bootstrap_servers: "{}" }} }}
entities: {{ orders: {{ transport: kafka, name: {t} }} }}
"#,
            broker.bootstrap
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    kcat_produce(&broker.bootstrap, &t, (0..5).map(|i| (format!("kc-{i}"), format!("{{\"id\":\"kc-{i}\"}}"))));
    let (code, out, err) = tool(&["tail", "-c", c, "--entity", "orders", "--from-beginning", "--format", "json"], b"");
    assert_eq!(code, 0, "{err}");
    let recs = records(&out);
    assert_eq!(payload_ids(&recs), (0..5).map(|i| format!("kc-{i}")).collect());
    assert!(recs.iter().all(|r| r["key"].as_str().unwrap().starts_with("kc-")), "{recs:?}");

    let (code, out, err) =
        tool(&["produce", "-c", c, "--entity", "orders", "--ndjson", "--key", "ck"], &ndjson("c", 20));
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out).lines().count(), 20);
    let keys = kcat_keys(&broker.bootstrap, &t);
    assert_eq!(keys.iter().filter(|k| *k == "ck").count(), 20, "{keys:?}");
    assert_eq!(keys.len(), 25);
    let (_, out, _) = tool(&["tail", "-c", c, "--entity", "orders", "--last", "20", "--format", "raw"], b"");
    let raw: Vec<String> = String::from_utf8_lossy(&out).lines().map(str::to_string).collect();
    assert_eq!(raw, (0..20).map(|i| format!("{{\"id\":\"c-{i}\"}}")).collect::<Vec<_>>(), "in order");
}

#[cfg(feature = "eventhubs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_produce_on_event_hubs_agree_with_the_python_sdk() {
    use support::azure::{bodies, broker, eh_conn, eh_tool_async};
    let b = broker(2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("e.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
transports: {{ hubs: {{ type: eventhubs, connection_string: "{}" }} }}
entities: {{ claims: {{ transport: hubs, partitions: 2, name: tools-hub }} }}
"#,
            eh_conn(&b)
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap().to_string();
    // the first send of a fresh producer may fail once (see tests/eventhubs.rs)
    let mut done = None;
    for _ in 0..3 {
        let r = tool_async(
            vec!["produce".into(), "-c".into(), c.clone(), "--entity".into(), "claims".into(), "--ndjson".into()],
            ndjson("cv", 20),
        )
        .await;
        if r.0 == 0 {
            done = Some(r);
            break;
        }
    }
    let (_, out, _) = done.expect("conveyor produce to Event Hubs");
    assert_eq!(String::from_utf8_lossy(&out).lines().count(), 20);
    let (code, py) = eh_tool_async(
        ["consume", "--conn", &eh_conn(&b), "--hub", "tools-hub", "--expect", "20", "--timeout", "60"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{py}");
    let got: BTreeSet<String> = bodies(&py).into_iter().collect();
    assert_eq!(got, (0..20).map(|i| format!("{{\"id\":\"cv-{i}\"}}")).collect());

    let (code, py) = eh_tool_async(
        ["produce", "--conn", &eh_conn(&b), "--hub", "tools-hub", "--count", "10", "--prefix", "py"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{py}");
    let (code, out, err) = tool_async(
        ["tail", "-c", &c, "--entity", "claims", "--from-beginning", "--format", "json"].map(String::from).to_vec(),
        Vec::new(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let recs = records(&out);
    assert_eq!(recs.len(), 30, "{recs:?}");
    let py_bodies = recs.iter().filter(|r| r["payload"].as_str().is_some_and(|p| p.contains("py"))).count();
    assert_eq!(py_bodies, 10, "{recs:?}");
    b.shutdown().await;
}

/// Runs the daemon on `cfg` under a pseudo-terminal (Python's `pty`) until
/// it says how to stop, then stops it; what it wrote to the terminal.
fn on_a_terminal(cfg: &Path) -> String {
    let script = r#"
import os, pty, select, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "run", "--config", sys.argv[2]])
out, end = b"", time.time() + 20
while time.time() < end and b"stop: Ctrl-C" not in out:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            out += os.read(fd, 65536)
        except OSError:
            break
os.kill(pid, signal.SIGTERM)
os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
"#;
    let out = Command::new("python3").args(["-c", script, BIN]).arg(cfg).output().expect("python3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn logs_are_coloured_text_on_a_terminal_json_elsewhere_and_an_explicit_format_wins() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, log: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                r#"
service: {{ name: tty-test, http: {{ listen: "127.0.0.1:0" }}{log} }}
transports: {{ mem: {{ type: embedded }} }}
entities: {{ a: {{ transport: mem }}, b: {{ transport: mem }}, dead: {{ transport: mem }} }}
workers: {{ copy: {{ input: a, outputs: {{ default: b }}, dead_letter: dead }} }}
"#
            ),
        )
        .unwrap();
        p
    };
    let auto = on_a_terminal(&write("auto.yaml", ""));
    assert!(auto.contains("\u{1b}["), "colours on a terminal: {auto}");
    assert!(!auto.lines().any(|l| l.trim_start().starts_with('{')), "no JSON on a terminal: {auto}");
    for said in ["runs \"tty-test\"", "metrics: http://127.0.0.1:", "results: b", "dead letters: dead", "stop: Ctrl-C"]
    {
        assert!(auto.contains(said), "the first lines say {said:?}: {auto}");
    }
    let json = on_a_terminal(&write("json.yaml", ", log: { format: json }"));
    let first = json.lines().find(|l| l.contains("HTTP endpoints up")).expect("a startup line");
    assert!(serde_json::from_str::<serde_json::Value>(first.trim()).is_ok(), "an explicit json wins: {first}");
    // not a terminal: JSON (the Daemon helper parses its address from it)
    let d = Daemon::start(&write("piped.yaml", ""));
    drop(d);
}

#[test]
fn a_daemon_without_a_fixed_port_stops_only_the_tools_that_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
service: {{ http: {{ listen: "127.0.0.1:0" }} }}
transports:
  disk: {{ type: embedded, path: "{}" }}
  mem: {{ type: embedded }}
entities: {{ d: {{ transport: disk }}, m: {{ transport: mem }} }}
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    // the memory-only transport is opened too, but never used: no error
    let (code, out, err) = tool(&["produce", "-c", c, "--entity", "d"], b"x");
    assert_eq!((code, String::from_utf8_lossy(&out).trim()), (0, "d/0@0"), "{err}");
    let (code, out, _) = tool(&["tail", "-c", c, "--entity", "d", "--format", "raw"], b"");
    assert_eq!((code, out), (0, b"x\n".to_vec()));
    let (code, _, err) = tool(&["tail", "-c", c, "--entity", "m"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("port 0") && err.contains("\"mem\""), "{err}");
}
