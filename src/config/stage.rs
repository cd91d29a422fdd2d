//! The `stage:` section of a worker: one variant per stage kind, each
//! checking its own settings ([`StageConfig::validate`]) against the
//! worker's outputs. Field doc comments are the user documentation.

use super::Dur;
use super::azure::BlobLocation;
use super::issues::{Issues, join};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `stage:` — the per-message processing step.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StageConfig {
    /// Forwards every message unchanged (payload, key, headers) to `default`.
    #[default]
    Passthrough,
    /// JSON in, JSON out: validate (`require`, `schema`), reshape (`rename`,
    /// `drop`, `set`), compute an idempotency id (`id`) and route to named
    /// outputs (`route`). Steps run in that order. A payload that is not a
    /// JSON object, misses a required field or fails the schema fails as
    /// `Permanent` (→ dead letter). Without reshaping, the payload bytes are
    /// forwarded unchanged.
    Map(MapConfig),
    /// Calls an HTTP API per message (enrichment, plugin actions) and merges
    /// the JSON response into the message.
    Http(HttpStageConfig),
    /// Streams the file at a URL from the message into a local cache
    /// directory (size limit, content-type allow-list, SHA-256); idempotent.
    Download(DownloadConfig),
    /// Puts a cached file into storage (a directory today); idempotent
    /// names; the cache file is removed only after success.
    Upload(UploadConfig),
    /// Appends each message (a JSON object) as one line to rotated JSON Lines
    /// files; positions are committed only after the file is fsync'd.
    Sink(SinkConfig),
    /// Reads schema-framed records (Confluent or Azure Avro) into JSON for
    /// the next stages, to `default` (see `docs/schemas.md`).
    Decode(super::schema::DecodeConfig),
    /// Writes JSON payloads as Avro records with a registered schema, framed
    /// for the registry (Confluent bytes, or Azure content type), to `default`.
    Encode(super::schema::EncodeConfig),
    /// Turns Confluent-framed Avro into Azure-framed Avro (the schema is
    /// registered in the Azure group; record bytes kept), to `default`.
    Transcode(super::schema::TranscodeConfig),
    /// Fault injection for drills and tests: fails a fixed share of messages,
    /// chosen by a hash of the payload (so a message fails the same way every
    /// time), and forwards the rest unchanged to `default`.
    Chaos(ChaosConfig),
}

impl StageConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Passthrough => "passthrough",
            StageConfig::Map(_) => "map",
            StageConfig::Sink(_) => "sink",
            StageConfig::Http(_) => "http",
            StageConfig::Download(_) => "download",
            StageConfig::Upload(_) => "upload",
            StageConfig::Chaos(_) => "chaos",
            StageConfig::Decode(_) => "decode",
            StageConfig::Encode(_) => "encode",
            StageConfig::Transcode(_) => "transcode",
        }
    }
}

/// `stage: { type: chaos, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ChaosConfig {
    /// Share (0–1) failing as `transient` (retried, then dead-lettered).
    #[serde(default)]
    pub transient_ratio: f64,
    /// Share (0–1) failing as `permanent` (dead-lettered at once).
    #[serde(default)]
    pub permanent_ratio: f64,
    /// Share (0–1) on which the stage panics (caught: `permanent`).
    #[serde(default)]
    pub panic_ratio: f64,
    /// Time each message takes (simulates a slow or stuck dependency).
    #[serde(default)]
    pub delay: Dur,
}

/// `stage: { type: map, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// Fields (dotted paths, `claim.id`) that must be present and not null.
    #[serde(default)]
    pub require: Vec<String>,
    /// A JSON Schema (inline, any draft the `jsonschema` crate supports) the
    /// payload must satisfy; or `{ registry, format: avro }`: the payload
    /// is a schema-framed record, decoded into JSON (as `type: decode`
    /// does) before the other steps.
    #[serde(default)]
    pub schema: Option<MapSchema>,
    /// Renames: old path → new path.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Paths to remove.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Path → constant JSON value to set (objects are created on the way).
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
    /// An idempotency id: the SHA-256 (hex) of the JSON of the `from` paths,
    /// written to `into`.
    #[serde(default)]
    pub id: Option<IdConfig>,
    /// Routing rules, first match wins; unmatched messages go to `default`
    /// (or fail as `Permanent` when there is no `default` output).
    #[serde(default)]
    pub route: Vec<RouteRule>,
}

/// `schema:` of a map stage: an object with a `registry` key is a registry
/// reference (and must be a valid one: a typo is an error, never an inline
/// JSON Schema that accepts anything); anything else is an inline JSON
/// Schema.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum MapSchema {
    /// `{ registry, format }`: decode through a schema registry.
    Registry(MapRegistrySchema),
    /// An inline JSON Schema.
    Json(serde_json::Value),
}

impl<'de> Deserialize<'de> for MapSchema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if v.get("registry").is_some() {
            serde_json::from_value(v).map(MapSchema::Registry).map_err(serde::de::Error::custom)
        } else {
            Ok(MapSchema::Json(v))
        }
    }
}

/// `schema: { registry, format: avro }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MapRegistrySchema {
    /// The registry (or registries) of the messages, as for `type: decode`.
    pub registry: super::schema::Names,
    /// `avro` (the default, and the only one today).
    #[serde(default)]
    pub format: super::schema::SchemaFormat,
}

/// `id: { into, from }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdConfig {
    pub into: String,
    pub from: Vec<String>,
}

/// `route: [{ output, when }]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// The worker output to send matching messages to.
    pub output: String,
    pub when: Condition,
}

/// A test on one field; every given test must hold.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Dotted path of the field.
    pub field: String,
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub not_equals: Option<serde_json::Value>,
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub exists: Option<bool>,
    #[serde(default)]
    pub gt: Option<f64>,
    #[serde(default)]
    pub lt: Option<f64>,
}

/// `stage: { type: sink, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Directory of the files (created if missing).
    pub dir: PathBuf,
    /// File name prefix; files are `<prefix>-<UTC time>-<n>.jsonl`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Start a new file past this size. Default 64 MiB.
    #[serde(default = "default_file_bytes")]
    pub max_file_bytes: u64,
    /// Start a new file after this long. Default `1h`.
    #[serde(default = "default_file_age")]
    pub max_file_age: Dur,
}

fn default_prefix() -> String {
    "rows".into()
}
fn default_file_bytes() -> u64 {
    64 << 20
}
fn default_file_age() -> Dur {
    Dur::secs(3600)
}

/// `stage: { type: http, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpStageConfig {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`. Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// URL template: `{{path}}` is replaced by the message field at that
    /// dotted path (percent-encoded), e.g. `http://api/claims/{{claim.id}}`.
    pub url: String,
    /// Header templates (same `{{path}}` syntax, not encoded).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body: `message` (the payload as it is; default for POST, PUT,
    /// PATCH), `none`, or a template string.
    #[serde(default)]
    pub body: Option<String>,
    /// Whole-request timeout. Default `10s`.
    #[serde(default = "default_http_timeout")]
    pub timeout: Dur,
    /// Most requests per second for the whole worker (all partitions).
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Credentials from the environment (never logged).
    #[serde(default)]
    pub auth: Option<HttpAuth>,
    /// Where the JSON response goes in the message (dotted path). Without
    /// it the message is forwarded unchanged on success.
    #[serde(default)]
    pub merge_into: Option<String>,
    /// Output for requests that fail permanently (4xx other than 401, 403,
    /// 408, 429): the message with an `http_error` field goes there instead
    /// of the dead-letter entity (plugins' `*.errors` entities).
    #[serde(default)]
    pub on_error: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_http_timeout() -> Dur {
    Dur::secs(10)
}

/// `auth:` of an HTTP stage.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth {
    /// `Authorization: Bearer $VAR`.
    #[serde(default)]
    pub bearer_env: Option<String>,
    /// A header carrying `$env` (an API key), e.g. `X-Api-Key`.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
}

/// `stage: { type: download, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DownloadConfig {
    /// Dotted path of the URL in the message.
    pub url_field: String,
    /// Cache directory (created if missing). A file is named by the SHA-256
    /// of its URL, so a URL already cached is not fetched again.
    pub cache_dir: PathBuf,
    /// Largest file accepted, in bytes. Default 100 MiB.
    #[serde(default = "default_max_download")]
    pub max_bytes: u64,
    /// Accepted content types (`application/pdf`, `image/*`); empty: any.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Whole-download timeout. Default `60s`.
    #[serde(default = "default_download_timeout")]
    pub timeout: Dur,
    /// Where `{path, size, sha256, content_type, url}` goes in the message.
    #[serde(default = "default_cached")]
    pub into: String,
}

fn default_max_download() -> u64 {
    100 << 20
}
fn default_download_timeout() -> Dur {
    Dur::secs(60)
}
fn default_cached() -> String {
    "cached".into()
}

/// `stage: { type: upload, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Dotted path of the cached file's path in the message (what
    /// `download` wrote). Default `cached.path`.
    #[serde(default = "default_path_field")]
    pub path_field: String,
    /// Where files go.
    pub target: UploadTarget,
    /// Object name template (`{{path}}` placeholders), e.g.
    /// `{{claim.id}}/{{cached.sha256}}`: the same message always maps to the
    /// same name, so a retried upload overwrites nothing new.
    pub name: String,
    /// Where `{target, name, size}` goes in the message. Default `result`.
    #[serde(default = "default_result")]
    pub into: String,
    /// Remove the cache file once uploaded. Default true.
    #[serde(default = "yes")]
    pub remove_cache: bool,
}

fn default_path_field() -> String {
    "cached.path".into()
}
fn default_result() -> String {
    "result".into()
}
fn yes() -> bool {
    true
}

/// Upload targets.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum UploadTarget {
    /// A local (or mounted) directory.
    Dir { path: PathBuf },
    /// An Azure Blob Storage container (created if missing). Names are the
    /// blob names; an existing blob of the same size is not uploaded again.
    Blob(BlobLocation),
}

impl StageConfig {
    /// Checks this stage's settings; `at` is the path of the `stage:` key and
    /// `outputs` the worker's outputs. Errors and warnings go to `issues`.
    pub(super) fn validate(
        &self,
        issues: &mut Issues<'_>,
        at: &[&str],
        outputs: &BTreeMap<String, String>,
        registries: &BTreeMap<String, super::schema::SchemaRegistryConfig>,
    ) {
        use super::schema::{SchemaRegistryConfig as R, registry_list, registry_ref};
        match self {
            StageConfig::Passthrough | StageConfig::Sink(_) | StageConfig::Download(_) => {}
            StageConfig::Map(m) => {
                m.validate(issues, at, outputs);
                if let Some(MapSchema::Registry(r)) = &m.schema {
                    registry_list(issues, &join(at, &["schema", "registry"]), &r.registry, registries);
                }
            }
            StageConfig::Decode(d) => {
                registry_list(issues, &join(at, &["registry"]), &d.registry, registries);
                if let Some(r) = &d.reader_schema {
                    let _ = check_avro(issues, &join(at, &["reader_schema"]), r);
                }
            }
            StageConfig::Encode(e) => {
                registry_ref(issues, &join(at, &["registry"]), &e.registry, &["confluent", "azure"], registries);
                let named = check_avro(issues, &join(at, &["schema"]), &e.schema).map(|s| s.full_name().is_some());
                match (registries.get(&e.registry), &e.subject) {
                    (Some(R::Azure(_)), Some(_)) => issues.error(
                        &join(at, &["subject"]),
                        "subjects are for Confluent registries: an Azure schema's name is its record's full name",
                    ),
                    (Some(R::Azure(_)), None) if named == Some(false) => issues.error(
                        &join(at, &["schema"]),
                        "an Azure schema is named by its top-level type: give the schema a named (record) top level",
                    ),
                    (Some(R::Confluent(c)), None)
                        if named == Some(false) && c.subject_strategy != super::schema::SubjectStrategy::TopicName =>
                    {
                        issues.error(
                            &join(at, &["schema"]),
                            format!(
                                "subject_strategy {:?} needs a schema whose top level is a named type",
                                c.subject_strategy
                            ),
                        )
                    }
                    (_, Some(s)) if s.is_empty() || s == "." || s == ".." => {
                        issues.error(&join(at, &["subject"]), "must be a subject name")
                    }
                    _ => {}
                }
            }
            StageConfig::Transcode(t) => {
                registry_ref(issues, &join(at, &["from"]), &t.from, &["confluent"], registries);
                registry_ref(issues, &join(at, &["to"]), &t.to, &["azure"], registries);
            }
            StageConfig::Http(h) => h.validate(issues, at, outputs),
            StageConfig::Upload(u) => {
                if let UploadTarget::Blob(loc) = &u.target {
                    loc.validate(issues, &join(at, &["target"]));
                }
            }
            StageConfig::Chaos(c) => c.validate(issues, at),
        }
    }

    /// The schema registries the stage uses.
    pub fn registries(&self) -> Vec<&str> {
        match self {
            StageConfig::Decode(d) => d.registry.list(),
            StageConfig::Map(MapConfig { schema: Some(MapSchema::Registry(r)), .. }) => r.registry.list(),
            StageConfig::Encode(e) => vec![e.registry.as_str()],
            StageConfig::Transcode(t) => vec![t.from.as_str(), t.to.as_str()],
            _ => vec![],
        }
    }

    /// Whether the stage sends to the output named `default` (a map with
    /// routes and a sink do not need one).
    pub fn needs_default_output(&self) -> bool {
        match self {
            StageConfig::Map(m) => m.route.is_empty(),
            StageConfig::Sink(_) => false,
            _ => true,
        }
    }
}

/// The schema `source` gives, or an error at `at`.
fn check_avro(
    issues: &mut Issues<'_>,
    at: &[&str],
    source: &super::schema::SchemaSource,
) -> Option<crate::avro::AvroSchema> {
    source.load().map_err(|e| issues.error(at, e.to_string())).ok()
}

/// An error at `at.field` when `output` is not one of the worker's outputs.
fn check_output(issues: &mut Issues<'_>, at: &[&str], output: &str, outputs: &BTreeMap<String, String>) {
    if !outputs.contains_key(output) {
        let hint = super::issues::suggest(output, outputs.keys().map(String::as_str));
        issues.error(at, format!("no output named {output:?} in this worker's `outputs`{hint}"));
    }
}

impl MapConfig {
    fn validate(&self, issues: &mut Issues<'_>, at: &[&str], outputs: &BTreeMap<String, String>) {
        for (i, r) in self.route.iter().enumerate() {
            let i = i.to_string();
            check_output(issues, &join(at, &["route", &i, "output"]), &r.output, outputs);
        }
        if let Some(MapSchema::Json(schema)) = &self.schema
            && let Err(e) = jsonschema::validator_for(schema)
        {
            issues.error(&join(at, &["schema"]), format!("not a valid JSON Schema: {e}"));
        }
    }
}

impl HttpStageConfig {
    fn validate(&self, issues: &mut Issues<'_>, at: &[&str], outputs: &BTreeMap<String, String>) {
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&self.method.to_ascii_uppercase().as_str()) {
            issues.error(&join(at, &["method"]), "must be GET, POST, PUT, PATCH or DELETE");
        }
        if let Some(o) = &self.on_error {
            check_output(issues, &join(at, &["on_error"]), o, outputs);
        }
        if let Some(r) = self.rate_limit
            && !(r > 0.0 && r.is_finite())
        {
            issues.error(&join(at, &["rate_limit"]), "must be a positive number of requests per second");
        }
        if let Some(a) = &self.auth {
            for var in a.bearer_env.iter().chain(a.env.iter()) {
                if issues.env(var).is_none() {
                    issues.warn(
                        &join(at, &["auth"]),
                        format!("environment variable {var} is not set: requests go out without credentials"),
                    );
                }
            }
        }
    }
}

impl ChaosConfig {
    fn validate(&self, issues: &mut Issues<'_>, at: &[&str]) {
        let ratios = [self.transient_ratio, self.permanent_ratio, self.panic_ratio];
        if ratios.iter().any(|r| !(0.0..=1.0).contains(r)) || ratios.iter().sum::<f64>() > 1.0 {
            issues.error(at, "chaos ratios must each be within 0–1 and add up to at most 1");
        }
    }
}
