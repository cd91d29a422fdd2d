//! Loading and validating the YAML topology.
//!
//! Loading is: read the file → interpolate `${VAR}` / `${VAR:-default}` →
//! parse YAML → deserialize each section entry on its own (so one bad worker
//! does not hide the errors of the next) → cross-check references. Every
//! problem found is reported at once, each with the file, line and column
//! and the YAML path it concerns, e.g.
//!
//! ```text
//! config.yaml:14:5: workers.orders-forward.input: unknown entity "orders.inn" (did you mean "orders.in"?)
//! ```

mod duration;
mod interpolate;
mod locate;
mod model;

pub use duration::Dur;
pub use model::*;

use locate::{PathIndex, Pos};
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    pub pos: Option<(usize, usize)>,
    /// YAML path, segments joined with `.` (`workers.w1.input`).
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.pos {
            write!(f, ":{l}:{c}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file (never empty).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(f, "{n} problem{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for i in &self.issues {
            writeln!(f, "  {i}")?;
        }
        Ok(())
    }
}

/// A warning: valid, but probably not what was meant.
pub type ConfigWarning = ConfigIssue;

/// A loaded, validated config plus what was noticed on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
    /// FNV-1a hash of the interpolated text: identifies a config generation.
    pub hash: u64,
}

/// Reads, interpolates (from the process environment) and validates `path`.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        issues: vec![ConfigIssue {
            file: path.to_path_buf(),
            pos: None,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    load_str(&text, path, |v| std::env::var(v).ok())
}

/// Like [`load_file`], for text already in memory; `file` is only used in
/// messages and to resolve relative paths in nothing (paths stay as written).
pub fn load_str(text: &str, file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    let mut cx = Cx { file: file.to_path_buf(), index: PathIndex::default(), issues: Vec::new() };
    let text = match interpolate::interpolate(text, env) {
        Ok(t) => t,
        Err(missing) => {
            for m in missing {
                cx.issues.push(ConfigIssue {
                    file: cx.file.clone(),
                    pos: Some((m.line, m.column)),
                    path: String::new(),
                    message: format!(
                        "environment variable {} is not set (write ${{{}:-default}} to give a default)",
                        m.var, m.var
                    ),
                });
            }
            return Err(ConfigError { issues: cx.issues });
        }
    };
    cx.index = PathIndex::build(&text);
    let root: Value = match serde_yaml::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            let pos = e.location().map(|l| (l.line(), l.column()));
            cx.issues.push(ConfigIssue {
                file: cx.file.clone(),
                pos,
                path: String::new(),
                message: format!("not valid YAML: {}", strip_location(&e.to_string())),
            });
            return Err(ConfigError { issues: cx.issues });
        }
    };
    let Value::Mapping(root) = root else {
        cx.error(&[], "the file must be a mapping with `transports`, `entities` and `workers`");
        return Err(ConfigError { issues: cx.issues });
    };

    let mut service = ServiceConfig::default();
    let mut transports = BTreeMap::new();
    let mut entities = BTreeMap::new();
    let mut sources = BTreeMap::new();
    let mut workers = BTreeMap::new();
    let mut simulation = None;
    let mut seen = BTreeSet::new();
    for (k, v) in root {
        let Some(key) = k.as_str().map(str::to_string) else {
            cx.error(&[], "top-level keys must be strings");
            continue;
        };
        seen.insert(key.clone());
        match key.as_str() {
            "service" => {
                if let Some(s) = cx.de::<ServiceConfig>(std::slice::from_ref(&key), v) {
                    service = s;
                }
            }
            "transports" => cx.section(&key, v, &mut transports),
            "entities" => cx.section(&key, v, &mut entities),
            "sources" => cx.section(&key, v, &mut sources),
            "workers" => cx.section(&key, v, &mut workers),
            "simulation" => {
                if let Some(sim) = cx.de::<SimulationConfig>(std::slice::from_ref(&key), v) {
                    simulation = Some(sim);
                }
            }
            other => {
                let hint = suggest(other, ["service", "transports", "entities", "sources", "workers", "simulation"]);
                cx.error(std::slice::from_ref(&key), &format!("unknown section{hint}"));
            }
        }
    }
    for required in ["transports", "entities"] {
        if !seen.contains(required) {
            cx.error(&[], &format!("missing section `{required}`"));
        }
    }
    let config = Config { service, transports, entities, sources, workers, simulation };
    let warnings = validate(&config, &mut cx);
    if cx.issues.is_empty() {
        Ok(Loaded { config, warnings, hash: fnv1a(text.as_bytes()) })
    } else {
        Err(ConfigError { issues: cx.issues })
    }
}

/// Cross-reference checks on an already deserialized config. Returns
/// warnings; errors go to `cx`.
fn validate(c: &Config, cx: &mut Cx) -> Vec<ConfigWarning> {
    let mut warnings = Vec::new();
    let entity_names: Vec<&str> = c.entities.keys().map(String::as_str).collect();
    let transport_names: Vec<&str> = c.transports.keys().map(String::as_str).collect();
    let check_entity = |cx: &mut Cx, path: &[&str], name: &str| {
        if !c.entities.contains_key(name) {
            let hint = suggest(name, entity_names.iter().copied());
            cx.error(&owned(path), &format!("unknown entity {name:?}{hint}"));
        }
    };

    for (name, e) in &c.entities {
        if !c.transports.contains_key(&e.transport) {
            let hint = suggest(&e.transport, transport_names.iter().copied());
            cx.error(&owned(&["entities", name, "transport"]), &format!("unknown transport {:?}{hint}", e.transport));
        }
        if e.partitions == 0 || e.partitions > 1024 {
            cx.error(&owned(&["entities", name, "partitions"]), "must be between 1 and 1024");
        }
    }
    for (name, t) in &c.transports {
        match t {
            TransportConfig::Embedded { capacity, .. } => {
                if *capacity == 0 {
                    cx.error(&owned(&["transports", name, "capacity"]), "must be at least 1");
                }
            }
            TransportConfig::Kafka(k) => {
                if k.bootstrap_servers.trim().is_empty() {
                    cx.error(&owned(&["transports", name, "bootstrap_servers"]), "must not be empty");
                }
                if !cfg!(feature = "kafka") {
                    cx.error(
                        &owned(&["transports", name, "type"]),
                        "this build has no Kafka support (cargo feature `kafka`)",
                    );
                }
                for reserved in ["enable.auto.offset.store", "group.id", "bootstrap.servers"] {
                    if k.properties.contains_key(reserved) {
                        cx.error(
                            &owned(&["transports", name, "properties", reserved]),
                            "is set by Conveyor (offsets are stored only after outputs are acknowledged; group and servers come from the config)",
                        );
                    }
                }
                let sec = &k.security;
                if sec.protocol.is_sasl() {
                    match sec.mechanism {
                        None => {
                            cx.error(&owned(&["transports", name, "security"]), "a sasl_* protocol needs `mechanism`")
                        }
                        Some(SaslMechanism::OauthBearer) => {}
                        Some(_) if sec.username.is_none() || sec.password.is_none() => cx.error(
                            &owned(&["transports", name, "security"]),
                            "PLAIN and SCRAM need `username` and `password`",
                        ),
                        Some(_) => {}
                    }
                } else if sec.mechanism.is_some() {
                    cx.error(
                        &owned(&["transports", name, "security", "mechanism"]),
                        "only applies to sasl_plaintext and sasl_ssl",
                    );
                }
            }
            TransportConfig::Eventhubs(e) => check_eventhubs(cx, name, e),
        }
    }
    for (name, s) in &c.sources {
        check_entity(cx, &["sources", name, "entity"], s.entity());
        let SourceConfig::Simulator { rate, malformed_ratio, .. } = s;
        if !(*rate > 0.0 && rate.is_finite()) {
            cx.error(&owned(&["sources", name, "rate"]), "must be a positive number of events per second");
        }
        if !(0.0..=1.0).contains(malformed_ratio) {
            cx.error(&owned(&["sources", name, "malformed_ratio"]), "must be between 0.0 and 1.0");
        }
    }
    let mut groups: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut consumed: BTreeSet<&str> = BTreeSet::new();
    for (name, w) in &c.workers {
        check_entity(cx, &["workers", name, "input"], &w.input);
        consumed.insert(&w.input);
        for (out, entity) in &w.outputs {
            check_entity(cx, &["workers", name, "outputs", out], entity);
            if *entity == w.input {
                cx.error(
                    &owned(&["workers", name, "outputs", out]),
                    "an output cannot be the worker's own input (it would loop forever)",
                );
            }
        }
        if let Some(dl) = &w.dead_letter {
            check_entity(cx, &["workers", name, "dead_letter"], dl);
            if *dl == w.input {
                cx.error(
                    &owned(&["workers", name, "dead_letter"]),
                    "the dead-letter entity cannot be the worker's input",
                );
            }
        }
        if let StageConfig::Chaos { transient_ratio, permanent_ratio, panic_ratio, .. } = &w.stage
            && ([transient_ratio, permanent_ratio, panic_ratio].iter().any(|r| !(0.0..=1.0).contains(*r))
                || transient_ratio + permanent_ratio + panic_ratio > 1.0)
        {
            cx.error(
                &owned(&["workers", name, "stage"]),
                "chaos ratios must each be within 0–1 and add up to at most 1",
            );
        }
        if let StageConfig::Map(m) = &w.stage {
            for (i, r) in m.route.iter().enumerate() {
                if !w.outputs.contains_key(&r.output) {
                    let names: Vec<&str> = w.outputs.keys().map(String::as_str).collect();
                    let hint = suggest(&r.output, names.iter().copied());
                    cx.error(
                        &owned(&["workers", name, "stage", "route", &i.to_string(), "output"]),
                        &format!("no output named {:?} in this worker's `outputs`{hint}", r.output),
                    );
                }
            }
            if let Some(schema) = &m.schema
                && let Err(e) = jsonschema::validator_for(schema)
            {
                cx.error(&owned(&["workers", name, "stage", "schema"]), &format!("not a valid JSON Schema: {e}"));
            }
        }
        if let StageConfig::Upload(UploadConfig { target: UploadTarget::Blob(loc), .. }) = &w.stage {
            check_blob_location(cx, &["workers", name, "stage", "target"], loc);
        }
        if let StageConfig::Http(h) = &w.stage {
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&h.method.to_ascii_uppercase().as_str()) {
                cx.error(&owned(&["workers", name, "stage", "method"]), "must be GET, POST, PUT, PATCH or DELETE");
            }
            if let Some(o) = &h.on_error
                && !w.outputs.contains_key(o)
            {
                cx.error(
                    &owned(&["workers", name, "stage", "on_error"]),
                    &format!("no output named {o:?} in this worker's `outputs`"),
                );
            }
            if let Some(a) = &h.auth {
                for var in a.bearer_env.iter().chain(a.env.iter()) {
                    if std::env::var(var).is_err() {
                        warnings.push(cx.issue(
                            &owned(&["workers", name, "stage", "auth"]),
                            &format!("environment variable {var} is not set: requests go out without credentials"),
                        ));
                    }
                }
            }
        }
        for (i, t) in w.tee.iter().enumerate() {
            if !w.outputs.contains_key(t) {
                cx.error(
                    &owned(&["workers", name, "tee", &i.to_string()]),
                    &format!("no output named {t:?} in this worker's `outputs`"),
                );
            }
        }
        let routes_only =
            matches!(&w.stage, StageConfig::Map(m) if !m.route.is_empty()) || matches!(&w.stage, StageConfig::Sink(_));
        if !w.outputs.contains_key("default") && !routes_only {
            cx.error(
                &owned(&["workers", name, "outputs"]),
                &format!(
                    "stage `{}` writes to the output named `default`; add `outputs: {{ default: <entity> }}`",
                    w.stage.kind()
                ),
            );
        }
        if w.concurrency == 0 || w.concurrency > 10_000 {
            cx.error(&owned(&["workers", name, "concurrency"]), "must be between 1 and 10000");
        }
        if w.batch_size == 0 || w.batch_size > 100_000 {
            cx.error(&owned(&["workers", name, "batch_size"]), "must be between 1 and 100000");
        }
        if let Some(r) = &w.retry {
            check_entity(cx, &["workers", name, "retry", "via"], &r.via);
            if r.via == w.input || w.outputs.values().any(|o| *o == r.via) || w.dead_letter.as_deref() == Some(&r.via) {
                cx.error(
                    &owned(&["workers", name, "retry", "via"]),
                    "the retry entity must differ from the worker's input, outputs and dead-letter entity",
                );
            }
            if r.schedule.is_empty() {
                cx.error(&owned(&["workers", name, "retry", "schedule"]), "needs at least one delay");
            }
            if r.max_attempts < 1 {
                cx.error(&owned(&["workers", name, "retry", "max_attempts"]), "must be at least 1");
            }
            if w.dead_letter.is_none() {
                cx.error(
                    &owned(&["workers", name, "retry"]),
                    "`retry` needs `dead_letter`: a message that exhausts its attempts goes there",
                );
            }
        }
        if let Some(l) = &w.dead_letter_limit {
            if !(0.0..=1.0).contains(&l.max_ratio) {
                cx.error(&owned(&["workers", name, "dead_letter_limit", "max_ratio"]), "must be between 0.0 and 1.0");
            }
            if l.window.get().is_zero() {
                cx.error(&owned(&["workers", name, "dead_letter_limit", "window"]), "must be longer than 0s");
            }
            if w.dead_letter.is_none() {
                cx.error(&owned(&["workers", name, "dead_letter_limit"]), "only applies with `dead_letter`");
            }
        }
        let group = w.group(name);
        if let Some(other) = groups.insert((w.input.as_str(), group), name) {
            cx.error(
                &owned(&["workers", name, "consumer_group"]),
                &format!("consumer group {group:?} on entity {:?} is already used by worker {other:?}; give each worker its own group", w.input),
            );
        }
        if w.dead_letter.is_none() && w.retry.is_none() {
            warnings.push(cx.issue(
                &owned(&["workers", name]),
                "no `dead_letter`: a message that fails permanently stops its partition until the worker is fixed",
            ));
        }
    }
    for (name, w) in &c.workers {
        if let Some(r) = &w.retry {
            if let Some((other, _)) = c.workers.iter().find(|(_, o)| o.input == r.via) {
                cx.error(
                    &owned(&["workers", name, "retry", "via"]),
                    &format!("entity {:?} is the input of worker {other:?}; a retry entity is read only by the retry scheduler", r.via),
                );
            }
            consumed.insert(&r.via);
        }
    }
    for (name, e) in &c.entities {
        let Some(TransportConfig::Eventhubs(eh)) = c.transports.get(&e.transport) else { continue };
        let hub = e.physical_name(name);
        if !valid_hub_name(hub) {
            cx.error(
                &owned(&["entities", name, if e.name.is_some() { "name" } else { "transport" }]),
                &format!("{hub:?} is not a valid event hub name (1–256 letters, digits, '.', '-', '_'; starting and ending with a letter or digit); set `name:`"),
            );
        }
        if consumed.contains(name.as_str()) && eh.checkpoint_store.is_none() {
            cx.error(
                &owned(&["transports", &e.transport]),
                &format!("entity {name:?} is consumed from this Event Hubs transport, which needs `checkpoint_store: {{ type: blob, ... }}` (or `type: file` for a single node) to keep checkpoints across restarts"),
            );
        }
    }
    for (name, w) in &c.workers {
        let on_eh = |key: &str| {
            c.entities
                .get(key)
                .and_then(|e| c.transports.get(&e.transport))
                .is_some_and(|t| matches!(t, TransportConfig::Eventhubs(_)))
        };
        if on_eh(&w.input) {
            let g = w.group(name);
            if !(g == "$Default"
                || (1..=50).contains(&g.len()) && g.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)))
            {
                cx.error(
                    &owned(&["workers", name, "consumer_group"]),
                    &format!("{g:?} is not a valid Event Hubs consumer group (1–50 letters, digits, '.', '-', '_', or $Default); the default is the worker's name"),
                );
            }
        }
    }
    for (name, e) in &c.entities {
        if consumed.contains(name.as_str()) {
            continue;
        }
        if let Some(TransportConfig::Embedded { path: None, capacity, .. }) = c.transports.get(&e.transport) {
            warnings.push(cx.issue(
                &owned(&["entities", name]),
                &format!("no worker consumes this entity and its transport is memory-only: only its newest {capacity} messages per partition are kept"),
            ));
        }
    }
    warnings
}

fn owned(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

struct Cx {
    file: PathBuf,
    index: PathIndex,
    issues: Vec<ConfigIssue>,
}

impl Cx {
    fn issue(&self, path: &[String], message: &str) -> ConfigIssue {
        let pos = self.index.find(path).map(|Pos { line, column }| (line, column));
        ConfigIssue { file: self.file.clone(), pos, path: path.join("."), message: message.to_string() }
    }

    fn error(&mut self, path: &[String], message: &str) {
        let i = self.issue(path, message);
        self.issues.push(i);
    }

    /// Deserializes `v` at `path`, recording a located error on failure.
    fn de<T: DeserializeOwned>(&mut self, path: &[String], v: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut full = path.to_vec();
                for seg in e.path().iter() {
                    use serde_path_to_error::Segment;
                    match seg {
                        Segment::Seq { index } => full.push(index.to_string()),
                        Segment::Map { key } => full.push(key.clone()),
                        Segment::Enum { variant } => full.push(variant.clone()),
                        Segment::Unknown => {}
                    }
                }
                let msg = e.into_inner().to_string();
                // unknown fields: point at the offending key itself and suggest
                if let Some(field) = between(&msg, "unknown field `", "`") {
                    let mut at = full.clone();
                    if at.last().map(String::as_str) != Some(field) {
                        at.push(field.to_string());
                    }
                    let expected = expected_list(&msg);
                    let hint = suggest(field, expected.iter().map(String::as_str));
                    self.error(&at, &format!("unknown field{hint}; expected one of: {}", expected.join(", ")));
                } else if let Some(variant) = between(&msg, "unknown variant `", "`") {
                    let expected = expected_list(&msg);
                    let hint = suggest(variant, expected.iter().map(String::as_str));
                    self.error(
                        &full,
                        &format!("unknown kind {variant:?}{hint}; expected one of: {}", expected.join(", ")),
                    );
                } else {
                    self.error(&full, &strip_location(&msg));
                }
                None
            }
        }
    }

    /// Deserializes every entry of a section mapping separately.
    fn section<T: DeserializeOwned>(&mut self, key: &str, v: Value, into: &mut BTreeMap<String, T>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    let Some(name) = k.as_str().map(str::to_string) else {
                        self.error(&[key.to_string()], "entry names must be strings");
                        continue;
                    };
                    if let Some(t) = self.de::<T>(&[key.to_string(), name.clone()], v) {
                        into.insert(name, t);
                    }
                }
            }
            Value::Null => {}
            _ => self.error(&[key.to_string()], "must be a mapping of names to definitions"),
        }
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)?;
    Some(&s[i..i + j])
}

fn expected_list(msg: &str) -> Vec<String> {
    let Some(i) = msg.find("expected ") else {
        return Vec::new();
    };
    msg[i..].split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// ` (did you mean "x"?)` when a known name is close to `name`.
fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(d, k)| *d <= (k.len().max(name.len()) / 3).max(2))
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests;

/// Event Hubs names: 1–256 characters, letters, digits, `.`, `-`, `_`,
/// starting and ending with a letter or digit.
fn valid_hub_name(n: &str) -> bool {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=256).contains(&n.len())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        && ok_end(n.chars().next())
        && ok_end(n.chars().last())
}

fn check_eventhubs(cx: &mut Cx, name: &str, e: &EventHubsConfig) {
    let at = |field: &str| owned(&["transports", name, field]);
    if !cfg!(feature = "eventhubs") {
        cx.error(&at("type"), "this build has no Event Hubs support (cargo feature `eventhubs`)");
    }
    match (&e.connection_string, &e.namespace, &e.credential) {
        (Some(cs), _, None) => {
            let lower = cs.expose().to_ascii_lowercase();
            if !lower.contains("endpoint=") {
                cx.error(&at("connection_string"), "has no `Endpoint=sb://...` part (is the variable set?)");
            } else if !lower.contains("sharedaccesskey=") && !lower.contains("sharedaccesssignature=") {
                cx.error(
                    &at("connection_string"),
                    "needs `SharedAccessKeyName`/`SharedAccessKey` or `SharedAccessSignature`",
                );
            }
        }
        (Some(_), _, Some(_)) => {
            cx.error(&at("credential"), "use either `connection_string` or `credential`, not both")
        }
        (None, Some(_), Some(_)) => {}
        (None, None, Some(_)) => {
            cx.error(&at("namespace"), "`credential` needs `namespace: NS.servicebus.windows.net`")
        }
        (None, _, None) => cx.error(
            &owned(&["transports", name]),
            "needs `connection_string` (SAS) or `namespace` + `credential` (Entra ID)",
        ),
    }
    if let Some(ep) = &e.custom_endpoint
        && !(ep.starts_with("amqp://") || ep.starts_with("amqps://"))
    {
        cx.error(&at("custom_endpoint"), "must start with amqp:// or amqps://");
    }
    if e.update_interval.get().is_zero() {
        cx.error(&at("update_interval"), "must be longer than 0s");
    }
    if e.ownership_expiration.get() < e.update_interval.get() * 2 {
        cx.error(
            &at("ownership_expiration"),
            "must be at least twice `update_interval` (or owners lose partitions between renewals)",
        );
    }
    if e.prefetch == 0 {
        cx.error(&at("prefetch"), "must be at least 1");
    }
    if let Some(CheckpointStoreConfig::Blob(loc)) = &e.checkpoint_store {
        check_blob_location(cx, &["transports", name, "checkpoint_store"], loc);
    }
}

/// A blob location needs one way in, and a valid container name.
fn check_blob_location(cx: &mut Cx, at: &[&str], loc: &BlobLocation) {
    match (&loc.connection_string, &loc.endpoint, &loc.credential) {
        (Some(_), None, None) | (None, Some(_), Some(_)) => {}
        _ => cx.error(&owned(at), "needs `connection_string`, or `endpoint` + `credential` (Entra ID)"),
    }
    let c = &loc.container;
    let valid = (3..=63).contains(&c.len())
        && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        && !c.starts_with('-')
        && !c.ends_with('-')
        && !c.contains("--");
    if !valid {
        let mut path = at.to_vec();
        path.push("container");
        cx.error(&owned(&path), "must be 3–63 lower-case letters, digits and single hyphens");
    }
}
