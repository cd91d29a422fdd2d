//! Azure stand-ins for tests: the local Event Hubs broker (in-process),
//! Azurite (npm, via `scripts/azurite.sh`) and the official Python
//! `azure-eventhub` SDK (venv in `.cache/pyenv`, via `tests/py/eh_tool.py`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use conveyor_eh_broker::{Broker, BrokerConfig};

/// Azurite's well-known development account key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the Event Hubs test broker on a free port.
pub async fn broker(partitions: u32) -> Broker {
    Broker::start(BrokerConfig { listen: "127.0.0.1:0".parse().unwrap(), partitions, max_message_size: 1_048_576 })
        .await
        .expect("start the Event Hubs test broker")
}

/// The connection string both SDKs use for the local broker.
pub fn eh_conn(b: &Broker) -> String {
    eh_conn_port(b.local_addr().port())
}

/// [`eh_conn`] for a broker on `port` (which may be gone).
pub fn eh_conn_port(port: u16) -> String {
    format!(
        "Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=conveyor-test;SharedAccessKey=SuperSecretSasKey0123456789abcdef=;UseDevelopmentEmulator=true"
    )
}

/// The SAS key inside [`eh_conn`] (tests assert it never shows up).
pub const SAS_KEY: &str = "SuperSecretSasKey0123456789abcdef=";

/// A private Azurite blob service; killed on drop.
pub struct Azurite {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let child = Self::spawn(dir.path(), port);
        let a = Azurite { child, port, _dir: dir };
        a.wait_listening();
        a
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        Command::new("bash")
            .arg(root().join("scripts/azurite.sh"))
            .args(["start", dir.to_str().unwrap(), &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run scripts/azurite.sh (npm azurite; scripts/setup.sh installs it)")
    }

    fn wait_listening(&self) {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < end, "Azurite did not listen on {} within 30s", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a stopped Azurite again on the same port and data.
    pub fn restart(&mut self) {
        self.child = Self::spawn(self._dir.path(), self.port);
        self.wait_listening();
    }

    /// Storage connection string (Python and Conveyor accept it).
    pub fn conn(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
            self.port
        )
    }

    pub fn client(&self) -> conveyor_blob::BlobClient {
        conveyor_blob::BlobClient::from_connection_string(&self.conn()).unwrap()
    }

    pub fn stop(&mut self) {
        kill_tree(&mut self.child);
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

fn kill_tree(child: &mut Child) {
    // azurite.sh execs node, so the pid is node's
    let _ = child.kill();
    let _ = child.wait();
}

/// The venv's Python (created by `scripts/setup.sh`).
pub fn python() -> PathBuf {
    let p = root().join(".cache/pyenv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup.sh (installs azure-eventhub into .cache/pyenv)", p.display());
    p
}

/// Runs `tests/py/eh_tool.py ARGS`; returns (exit code, stdout).
pub fn eh_tool(args: &[&str]) -> (i32, String) {
    let out = Command::new(python())
        .arg(root().join("tests/py/eh_tool.py"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run eh_tool.py");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Async wrapper of [`eh_tool`].
pub async fn eh_tool_async(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        eh_tool(&a)
    })
    .await
    .unwrap()
}

/// Bodies printed by `eh_tool.py consume` (`BODY\t<partition>\t<seq>\t<partition key>`).
pub fn bodies(stdout: &str) -> Vec<String> {
    stdout.lines().filter_map(|l| l.split('\t').next()).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// An Event Hubs pass-through topology `input → output` (worker `copy`).
pub fn eh_yaml(conn: &str, store: &str, input: &str, output: &str, partitions: u32, group: &str) -> String {
    format!(
        r#"
service: {{ name: eh-test, http: {{ listen: "127.0.0.1:0" }}, shutdown_grace: 20s, log: {{ format: json, level: info }} }}
transports:
  hubs:
    type: eventhubs
    connection_string: "{conn}"
    checkpoint_store: {store}
    update_interval: 1s
    ownership_expiration: 4s
    checkpoint_interval: 200ms
entities:
  {input}: {{ transport: hubs, partitions: {partitions} }}
  {output}: {{ transport: hubs, partitions: {partitions} }}
workers:
  copy:
    input: {input}
    consumer_group: "{group}"
    stage: {{ type: passthrough }}
    outputs: {{ default: {output} }}
    batch_size: 200
"#
    )
}

/// `checkpoint_store:` YAML for Azurite.
pub fn blob_store_yaml(a: &Azurite, container: &str) -> String {
    format!("{{ type: blob, connection_string: \"{}\", container: {container} }}", a.conn())
}
