//! The schema registry stand-ins (`tests/py/registry_standin.py`: the
//! Confluent REST API over HTTP, the Azure Schema Registry API over HTTPS
//! with its own certificate, an App Service managed-identity token
//! endpoint) and the official Python clients (`tests/py/schema_tool.py`:
//! confluent-kafka's Avro serde, azure-schemaregistry-avroencoder).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A running stand-in; killed on drop (and it exits when its stdin closes).
pub struct Standin {
    child: Child,
    pub confluent: u16,
    pub azure: u16,
    /// The Azure port's certificate (CN localhost, SAN localhost and 127.0.0.1).
    pub ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Standin {
    /// Starts one; `env` e.g. `STANDIN_BASIC_AUTH=user:pass`.
    pub fn start(env: &[(&str, &str)]) -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let ok = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // an end-entity certificate (rustls refuses a CA one as a server's)
            .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl")
            .success();
        assert!(ok, "openssl could not make a certificate");
        let mut child = Command::new(super::azure::python())
            .arg(root().join("tests/py/registry_standin.py"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start registry_standin.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ports: Vec<u16> = line.split_whitespace().skip(1).filter_map(|p| p.parse().ok()).collect();
        assert_eq!(ports.len(), 2, "stand-in said {line:?}");
        Standin { child, confluent: ports[0], azure: ports[1], ca: cert, dir }
    }

    pub fn confluent_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.confluent)
    }

    /// The Azure registry's namespace (`localhost:PORT`, HTTPS).
    pub fn azure_ns(&self) -> String {
        format!("localhost:{}", self.azure)
    }

    /// The daemon's environment for an Entra ID managed identity that gets
    /// its tokens from the stand-in (App Service flow of `azure_identity`).
    pub fn identity_env(&self) -> Vec<(String, String)> {
        vec![
            ("IDENTITY_ENDPOINT".into(), format!("http://127.0.0.1:{}/msi/token", self.confluent)),
            ("IDENTITY_HEADER".into(), "standin".into()),
        ]
    }

    async fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/-/{path}", self.confluent);
        let r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "stand-in control {path}: {}", r.status());
        r.json().await.unwrap_or_default()
    }

    /// The next `count` requests (-1: all until cleared) to `api`
    /// (`confluent`, `azure`) are answered `status`.
    pub async fn fault(&self, api: &str, status: u16, count: i64) {
        self.control("fault", serde_json::json!({"api": api, "status": status, "count": count, "retry_after": 1}))
            .await;
    }

    pub async fn clear(&self) {
        self.control("clear", serde_json::json!({})).await;
    }

    pub async fn stats(&self) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/-/stats", self.confluent);
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }

    /// Writes `text` to a file in the stand-in's directory.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/py/schema_tool.py ARGS` (stdin: `input`); returns (exit
/// code, stdout lines as JSON where they are JSON).
pub async fn schema_tool(args: Vec<String>, input: Option<String>) -> (i32, Vec<serde_json::Value>, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(super::azure::python())
            .arg(root().join("tests/py/schema_tool.py"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run schema_tool.py");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            if let Some(i) = input {
                stdin.write_all(i.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (out.status.code().unwrap_or(-1), lines, text)
    })
    .await
    .unwrap()
}

/// Version 1 of the test record.
pub const CLAIM_V1: &str = r#"{"type":"record","name":"Claim","namespace":"com.acme.claims","fields":[
  {"name":"id","type":"string"},
  {"name":"n","type":"long"},
  {"name":"amount","type":["null","double"],"default":null},
  {"name":"status","type":{"type":"enum","name":"Status","symbols":["OPEN","CLOSED"]},"default":"OPEN"},
  {"name":"tags","type":{"type":"array","items":"string"},"default":[]}
]}"#;

/// Version 2: adds a field with a default (backward compatible).
pub const CLAIM_V2: &str = r#"{"type":"record","name":"Claim","namespace":"com.acme.claims","fields":[
  {"name":"id","type":"string"},
  {"name":"n","type":"long"},
  {"name":"amount","type":["null","double"],"default":null},
  {"name":"status","type":{"type":"enum","name":"Status","symbols":["OPEN","CLOSED"]},"default":"OPEN"},
  {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
  {"name":"source","type":"string","default":"legacy"}
]}"#;

/// Incompatible with both: `n` changes type.
pub const CLAIM_BAD: &str = r#"{"type":"record","name":"Claim","namespace":"com.acme.claims","fields":[
  {"name":"id","type":"string"},
  {"name":"n","type":"string"}
]}"#;

/// `count` v1 records as NDJSON, `key` cycling over `keys` keys.
pub fn claims(prefix: &str, count: usize, keys: usize) -> Vec<serde_json::Value> {
    (0..count)
        .map(|i| {
            serde_json::json!({
                "id": format!("{prefix}{i}"),
                "n": i as i64,
                "amount": if i % 3 == 0 { serde_json::Value::Null } else { serde_json::json!(i as f64 * 1.5) },
                "status": if i % 2 == 0 { "OPEN" } else { "CLOSED" },
                "tags": [format!("k{}", i % keys.max(1)), "é€"],
            })
        })
        .collect()
}

pub fn ndjson(records: &[serde_json::Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// A registry with the Confluent API that a test runs against.
#[derive(Clone)]
pub struct Confluent {
    pub url: String,
    pub auth: Option<(String, String)>,
}

impl Confluent {
    /// Registers `schema` under `subject` (as a schema's owner would).
    pub async fn register(&self, subject: &str, schema: &str) -> u32 {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        let mut req = reqwest::Client::new().post(url).json(&serde_json::json!({ "schema": schema }));
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "register: {}", r.status());
        r.json::<serde_json::Value>().await.unwrap()["id"].as_u64().unwrap() as u32
    }

    /// The registry's entry under `schema_registries:` (a flow mapping).
    pub fn yaml(&self) -> String {
        let auth = match &self.auth {
            Some((u, p)) => format!(", basic_auth: {{ username: {u}, password: \"{p}\" }}"),
            None => String::new(),
        };
        format!("{{ type: confluent, url: \"{}\"{auth} }}", self.url)
    }

    /// `schema_tool.py` arguments that reach it.
    pub fn tool_args(&self) -> Vec<String> {
        let mut v = vec!["--registry".to_string(), self.url.clone()];
        if let Some((u, p)) = &self.auth {
            v.extend(["--basic-auth".to_string(), format!("{u}:{p}")]);
        }
        v
    }
}

impl Standin {
    /// Its Confluent API, with the basic auth it was started with.
    pub fn confluent(&self, auth: Option<(&str, &str)>) -> Confluent {
        Confluent { url: self.confluent_url(), auth: auth.map(|(u, p)| (u.to_string(), p.to_string())) }
    }
}

/// A real Apicurio Registry 2.4 (in-memory storage), built by
/// `scripts/apicurio/fetch.sh` (run by `scripts/setup.sh`): its Confluent
/// API under `/apis/ccompat/v7`, with BACKWARD compatibility set (its
/// default is NONE). Killed on drop.
pub struct Apicurio {
    child: Child,
    pub port: u16,
}

impl Apicurio {
    pub async fn start() -> Apicurio {
        let jar = root().join(".cache/apicurio/target/quarkus-app/quarkus-run.jar");
        assert!(jar.exists(), "{} missing: run scripts/setup.sh (scripts/apicurio/fetch.sh)", jar.display());
        let port = super::free_port();
        let child = Command::new("java")
            .arg(format!("-Dquarkus.http.port={port}"))
            .arg("-Dquarkus.http.host=127.0.0.1")
            .arg("-Xmx256m")
            .arg("-jar")
            .arg(&jar)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Apicurio (java)");
        let a = Apicurio { child, port };
        let url = format!("{}/subjects", a.confluent().url);
        let up = super::eventually(std::time::Duration::from_secs(90), async || {
            reqwest::get(&url).await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "Apicurio did not answer on port {port}");
        let r = reqwest::Client::new()
            .put(format!("{}/config", a.confluent().url))
            .json(&serde_json::json!({"compatibility": "BACKWARD"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "Apicurio config: {}", r.status());
        a
    }

    pub fn confluent(&self) -> Confluent {
        Confluent { url: format!("http://127.0.0.1:{}/apis/ccompat/v7", self.port), auth: None }
    }
}

impl Drop for Apicurio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
