//! Cross-reference and value checks on a deserialized config, one function
//! per area (entities, transports, sources, workers, retry entities, Event
//! Hubs names, unconsumed entities). Stage settings check themselves
//! (`StageConfig::validate`). A reference to an entry that is in the file but
//! did not parse is not reported again: its own error says what is wrong.

use super::azure::BlobLocation;
use super::issues::{Issues, join, suggest};
use super::migrate::{MigrateConfig, Phase};
use super::model::*;
use std::collections::{BTreeMap, BTreeSet};

/// Every check, errors and warnings into `v`.
pub(super) fn validate(c: &Config, v: &mut Issues<'_>) {
    entities(c, v);
    for (name, r) in &c.schema_registries {
        r.validate(v, name);
    }
    for (name, t) in &c.transports {
        transport(v, name, t);
    }
    sources(c, v);
    let mut groups: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (name, w) in &c.workers {
        worker(c, v, name, w, &mut groups);
    }
    retry_entities(c, v);
    task_names(c, v);
    eventhubs_names(c, v);
    unconsumed(c, v);
    instance_id(c, v);
}

/// A config whose workers consume from Kafka or Event Hubs can run as
/// several processes sharing the groups; each must then have its own
/// instance id (`crate::instance`), which the default (`<host>-<name>`) does
/// not give two instances on one host.
fn instance_id(c: &Config, v: &mut Issues<'_>) {
    let explicit = c.service.instance_id.as_deref().is_some_and(|i| !i.trim().is_empty())
        || v.env(crate::instance::ENV).is_some_and(|i| !i.trim().is_empty());
    let shared = |entity: &str| {
        c.entities
            .get(entity)
            .and_then(|e| c.transports.get(&e.transport))
            .is_some_and(|t| matches!(t, TransportConfig::Kafka(_) | TransportConfig::Eventhubs(_)))
    };
    if explicit || !c.workers.values().any(|w| shared(&w.input)) {
        return;
    }
    let default = crate::instance::choose(None, None, &crate::instance::hostname(), &c.service.name);
    v.warn(
        &["service"],
        format!(
            "service.instance_id is not set: this process joins its Kafka/Event Hubs consumer groups as {default:?}; \
             two live processes must never share an instance id, so give each instance on one host its own \
             (service.instance_id, or the environment variable {})",
            crate::instance::ENV
        ),
    );
}

/// An error unless entity `name` exists (or is in the file but broken).
fn entity_ref(c: &Config, v: &mut Issues<'_>, at: &[&str], name: &str) {
    if !c.entities.contains_key(name) && !v.unparsed("entities", name) {
        let hint = suggest(name, c.entities.keys().map(String::as_str));
        v.error(at, format!("unknown entity {name:?}{hint}"));
    }
}

fn entities(c: &Config, v: &mut Issues<'_>) {
    for (name, e) in &c.entities {
        if !c.transports.contains_key(&e.transport) && !v.unparsed("transports", &e.transport) {
            let hint = suggest(&e.transport, c.transports.keys().map(String::as_str));
            v.error(&["entities", name, "transport"], format!("unknown transport {:?}{hint}", e.transport));
        }
        if e.partitions == 0 || e.partitions > 1024 {
            v.error(&["entities", name, "partitions"], "must be between 1 and 1024");
        }
        if let Some(m) = &e.migrate {
            migrate(c, v, name, e, m);
        }
    }
}

/// `entities.<name>.migrate`: a known transport other than the entity's
/// own, a sensible partition count; `done` is better written as the plain
/// entity.
fn migrate(c: &Config, v: &mut Issues<'_>, name: &str, e: &EntityConfig, m: &MigrateConfig) {
    if !c.transports.contains_key(&m.to) && !v.unparsed("transports", &m.to) {
        let hint = suggest(&m.to, c.transports.keys().map(String::as_str));
        v.error(&["entities", name, "migrate", "to"], format!("unknown transport {:?}{hint}", m.to));
    } else if m.to == e.transport && m.name.as_deref().unwrap_or(name) == e.physical_name(name) {
        v.error(
            &["entities", name, "migrate", "to"],
            "the entity is already there: name another transport (or another `name`)",
        );
    }
    if m.partitions.is_some_and(|p| p == 0 || p > 1024) {
        v.error(&["entities", name, "migrate", "partitions"], "must be between 1 and 1024");
    }
    if let Some(t) = &m.transcode {
        let at = ["entities", name, "migrate", "transcode"];
        super::schema::registry_ref(v, &join(&at, &["from"]), &t.from, &["confluent"], &c.schema_registries);
        super::schema::registry_ref(v, &join(&at, &["to"]), &t.to, &["azure"], &c.schema_registries);
        if c.transports.get(&m.to).is_some_and(|t| !matches!(t, TransportConfig::Eventhubs(_))) {
            v.warn(
                &at,
                format!(
                    "the new side (transport {:?}) is not Event Hubs: its consumers get Azure-framed Avro with the schema id in a `content-type` header",
                    m.to
                ),
            );
        }
    }
    if m.phase == Phase::Done {
        let new = e.new_side(name).map(|s| s.transport).unwrap_or_default();
        let named = m.name.as_ref().map(|n| format!(", name: {n}")).unwrap_or_default();
        v.warn(
            &["entities", name, "migrate", "phase"],
            format!(
                "phase done: the entity lives on {new:?} alone; once `conveyor migrate status` shows nothing left, write it as `{{ transport: {new}{named}, partitions: {} }}`",
                m.partitions.unwrap_or(e.partitions)
            ),
        );
    }
}

fn transport(v: &mut Issues<'_>, name: &str, t: &TransportConfig) {
    match t {
        TransportConfig::Embedded { capacity, max_message_bytes, .. } => {
            if *capacity == 0 {
                v.error(&["transports", name, "capacity"], "must be at least 1");
            }
            if *max_message_bytes < 1024 {
                v.error(&["transports", name, "max_message_bytes"], "must be at least 1024");
            }
        }
        TransportConfig::Kafka(k) => k.validate(v, name),
        TransportConfig::Eventhubs(e) => e.validate(v, name),
    }
}

impl KafkaConfig {
    fn validate(&self, v: &mut Issues<'_>, name: &str) {
        if self.bootstrap_servers.trim().is_empty() {
            v.error(&["transports", name, "bootstrap_servers"], "must not be empty");
        }
        if !cfg!(feature = "kafka") {
            v.error(&["transports", name, "type"], "this build has no Kafka support (cargo feature `kafka`)");
        }
        for reserved in ["enable.auto.offset.store", "group.id", "bootstrap.servers"] {
            if self.properties.contains_key(reserved) {
                v.error(
                    &["transports", name, "properties", reserved],
                    "is set by Conveyor (offsets are stored only after outputs are acknowledged; group and servers come from the config)",
                );
            }
        }
        let sec = &self.security;
        if sec.protocol.is_sasl() {
            match sec.mechanism {
                None => v.error(&["transports", name, "security"], "a sasl_* protocol needs `mechanism`"),
                Some(SaslMechanism::OauthBearer) => {}
                Some(_) if sec.username.is_none() || sec.password.is_none() => {
                    v.error(&["transports", name, "security"], "PLAIN and SCRAM need `username` and `password`")
                }
                Some(_) => {}
            }
        } else if sec.mechanism.is_some() {
            v.error(&["transports", name, "security", "mechanism"], "only applies to sasl_plaintext and sasl_ssl");
        }
    }
}

impl EventHubsConfig {
    fn validate(&self, v: &mut Issues<'_>, name: &str) {
        let at = |field: &'static str| ["transports", name, field];
        if !cfg!(feature = "eventhubs") {
            v.error(&at("type"), "this build has no Event Hubs support (cargo feature `eventhubs`)");
        }
        match (&self.connection_string, &self.namespace, &self.credential) {
            (Some(cs), _, None) => {
                let lower = cs.expose().to_ascii_lowercase();
                if !lower.contains("endpoint=") {
                    v.error(&at("connection_string"), "has no `Endpoint=sb://...` part (is the variable set?)");
                } else if !lower.contains("sharedaccesskey=") && !lower.contains("sharedaccesssignature=") {
                    v.error(
                        &at("connection_string"),
                        "needs `SharedAccessKeyName`/`SharedAccessKey` or `SharedAccessSignature`",
                    );
                }
            }
            (Some(_), _, Some(_)) => {
                v.error(&at("credential"), "use either `connection_string` or `credential`, not both")
            }
            (None, Some(_), Some(_)) => {}
            (None, None, Some(_)) => {
                v.error(&at("namespace"), "`credential` needs `namespace: NS.servicebus.windows.net`")
            }
            (None, _, None) => v.error(
                &["transports", name],
                "needs `connection_string` (SAS) or `namespace` + `credential` (Entra ID)",
            ),
        }
        if let Some(ep) = &self.custom_endpoint
            && !(ep.starts_with("amqp://") || ep.starts_with("amqps://"))
        {
            v.error(&at("custom_endpoint"), "must start with amqp:// or amqps://");
        }
        if self.update_interval.get().is_zero() {
            v.error(&at("update_interval"), "must be longer than 0s");
        }
        if self.ownership_expiration.get() < self.update_interval.get() * 2 {
            v.error(
                &at("ownership_expiration"),
                "must be at least twice `update_interval` (or owners lose partitions between renewals)",
            );
        }
        if self.prefetch == 0 {
            v.error(&at("prefetch"), "must be at least 1");
        }
        if let Some(CheckpointStoreConfig::Blob(loc)) = &self.checkpoint_store {
            loc.validate(v, &["transports", name, "checkpoint_store"]);
        }
    }
}

impl BlobLocation {
    /// One way in, and a valid container name (checkpoint stores and upload
    /// targets alike).
    pub(super) fn validate(&self, v: &mut Issues<'_>, at: &[&str]) {
        match (&self.connection_string, &self.endpoint, &self.credential) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => v.error(at, "needs `connection_string`, or `endpoint` + `credential` (Entra ID)"),
        }
        let c = &self.container;
        let valid = (3..=63).contains(&c.len())
            && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            && !c.starts_with('-')
            && !c.ends_with('-')
            && !c.contains("--");
        if !valid {
            v.error(&join(at, &["container"]), "must be 3–63 lower-case letters, digits and single hyphens");
        }
    }
}

/// Most messages an ingest source may have in flight.
const MAX_IN_FLIGHT: usize = 10_000_000;
/// Longest wait of an ingest source for acknowledgements.
const MAX_INGEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Routes of the admin listener an ingest `path` may not take.
const ADMIN_ROUTES: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/-/", "/v1/"];

/// Worker and source names become task names, beside the generated
/// `retry:<entity>` and `mirror:<entity>`: those prefixes are taken.
fn task_names(c: &Config, v: &mut Issues<'_>) {
    let names = c.workers.keys().map(|n| ("workers", n)).chain(c.sources.keys().map(|n| ("sources", n)));
    for (section, name) in names {
        if name.starts_with("retry:") || name.starts_with("mirror:") {
            v.error(&[section, name], "names starting with `retry:` or `mirror:` are the built-in tasks'");
        }
    }
}

fn sources(c: &Config, v: &mut Issues<'_>) {
    let mut paths: BTreeMap<&str, &str> = BTreeMap::new();
    let mut listens: BTreeMap<std::net::SocketAddr, &str> = BTreeMap::new();
    for (name, s) in &c.sources {
        // sources and workers run as tasks named by their keys: one name,
        // one task (a clash would leave one of them not running at all)
        if c.workers.contains_key(name) {
            v.error(
                &["sources", name],
                format!("a worker is named {name:?} too: sources and workers run as tasks named by their keys, give them different names"),
            );
        }
        entity_ref(c, v, &["sources", name, "entity"], s.entity());
        match s {
            SourceConfig::Simulator { rate, malformed_ratio, .. } => {
                if !(*rate > 0.0 && rate.is_finite()) {
                    v.error(&["sources", name, "rate"], "must be a positive number of events per second");
                }
                if !(0.0..=1.0).contains(malformed_ratio) {
                    v.error(&["sources", name, "malformed_ratio"], "must be between 0.0 and 1.0");
                }
            }
            SourceConfig::Http(h) => {
                let path_ok = h.path.starts_with('/')
                    && h.path.len() > 1
                    && h.path.chars().all(|ch| ch.is_ascii_alphanumeric() || "/-_.".contains(ch))
                    && !h.path.contains("//");
                if !path_ok {
                    v.error(
                        &["sources", name, "path"],
                        "must be a route such as /ingest (a '/', then letters, digits, '/', '-', '_', '.')",
                    );
                } else if h.listen.is_none() {
                    if let Some(r) =
                        ADMIN_ROUTES.iter().find(|r| h.path == r.trim_end_matches('/') || h.path.starts_with(*r))
                    {
                        v.error(
                            &["sources", name, "path"],
                            format!("{r} belongs to the admin endpoints; choose another path or a `listen` of its own"),
                        );
                    } else if let Some(other) = paths.insert(&h.path, name) {
                        v.error(
                            &["sources", name, "path"],
                            format!("source {other:?} already takes {} on the admin listener", h.path),
                        );
                    }
                }
                match h.listen {
                    Some(a) if a.port() != 0 => {
                        if a == c.service.http.listen {
                            v.error(
                                &["sources", name, "listen"],
                                "is the admin listener's address; omit `listen` to add a route there",
                            );
                        } else if let Some(other) = listens.insert(a, name) {
                            v.error(&["sources", name, "listen"], format!("source {other:?} already listens on {a}"));
                        }
                    }
                    Some(_) => {}
                    None if h.tls.is_some() => {
                        v.error(
                            &["sources", name, "tls"],
                            "needs a `listen` of its own (the admin listener is plain HTTP)",
                        );
                    }
                    None => {}
                }
                if h.max_body_bytes == 0 {
                    v.error(&["sources", name, "max_body_bytes"], "must be at least 1");
                }
                if !(1..=MAX_IN_FLIGHT).contains(&h.max_in_flight) {
                    v.error(&["sources", name, "max_in_flight"], format!("must be between 1 and {MAX_IN_FLIGHT}"));
                }
                for (i, hd) in h.headers.iter().enumerate() {
                    if axum::http::HeaderName::from_bytes(hd.as_bytes()).is_err() {
                        v.error(&["sources", name, "headers", &i.to_string()], "is not a valid HTTP header name");
                    }
                }
                if h.timeout.get().is_zero() || h.timeout.get() > MAX_INGEST_TIMEOUT {
                    v.error(&["sources", name, "timeout"], "must be longer than 0s and at most 1h");
                }
            }
        }
    }
}

fn worker<'c>(
    c: &'c Config,
    v: &mut Issues<'_>,
    name: &'c str,
    w: &'c WorkerConfig,
    groups: &mut BTreeMap<(&'c str, &'c str), &'c str>,
) {
    entity_ref(c, v, &["workers", name, "input"], &w.input);
    for (out, entity) in &w.outputs {
        entity_ref(c, v, &["workers", name, "outputs", out], entity);
        if *entity == w.input {
            v.error(
                &["workers", name, "outputs", out],
                "an output cannot be the worker's own input (it would loop forever)",
            );
        }
    }
    // dead letters and retries are envelopes, not Avro records
    let transcodes =
        |e: &str| c.entities.get(e).and_then(|e| e.migrate.as_ref()).is_some_and(|m| m.transcode.is_some());
    for (at, e) in [("dead_letter", w.dead_letter.as_deref()), ("retry", w.retry.as_ref().map(|r| r.via.as_str()))] {
        if let Some(e) = e.filter(|e| transcodes(e)) {
            v.error(
                &["workers", name, at],
                format!(
                    "entity {e:?} migrates with `transcode`, which is for entities of Avro records, not for dead letters or retries"
                ),
            );
        }
    }
    if let Some(dl) = &w.dead_letter {
        entity_ref(c, v, &["workers", name, "dead_letter"], dl);
        if *dl == w.input {
            v.error(&["workers", name, "dead_letter"], "the dead-letter entity cannot be the worker's input");
        }
    }
    w.stage.validate(v, &["workers", name, "stage"], &w.outputs, &c.schema_registries);
    for (i, t) in w.tee.iter().enumerate() {
        if !w.outputs.contains_key(t) {
            let i = i.to_string();
            v.error(&["workers", name, "tee", &i], format!("no output named {t:?} in this worker's `outputs`"));
        }
    }
    if !w.outputs.contains_key("default") && w.stage.needs_default_output() {
        v.error(
            &["workers", name, "outputs"],
            format!(
                "stage `{}` writes to the output named `default`; add `outputs: {{ default: <entity> }}`",
                w.stage.kind()
            ),
        );
    }
    if w.concurrency == 0 || w.concurrency > 10_000 {
        v.error(&["workers", name, "concurrency"], "must be between 1 and 10000");
    }
    if w.batch_size == 0 || w.batch_size > 100_000 {
        v.error(&["workers", name, "batch_size"], "must be between 1 and 100000");
    }
    if let Some(r) = &w.retry {
        entity_ref(c, v, &["workers", name, "retry", "via"], &r.via);
        if r.via == w.input || w.outputs.values().any(|o| *o == r.via) || w.dead_letter.as_deref() == Some(&r.via) {
            v.error(
                &["workers", name, "retry", "via"],
                "the retry entity must differ from the worker's input, outputs and dead-letter entity",
            );
        }
        if r.schedule.is_empty() {
            v.error(&["workers", name, "retry", "schedule"], "needs at least one delay");
        }
        if r.max_attempts < 1 {
            v.error(&["workers", name, "retry", "max_attempts"], "must be at least 1");
        }
        if w.dead_letter.is_none() {
            v.error(
                &["workers", name, "retry"],
                "`retry` needs `dead_letter`: a message that exhausts its attempts goes there",
            );
        }
    }
    if let Some(l) = &w.dead_letter_limit {
        if !(0.0..=1.0).contains(&l.max_ratio) {
            v.error(&["workers", name, "dead_letter_limit", "max_ratio"], "must be between 0.0 and 1.0");
        }
        if l.window.get().is_zero() {
            v.error(&["workers", name, "dead_letter_limit", "window"], "must be longer than 0s");
        }
        if w.dead_letter.is_none() {
            v.error(&["workers", name, "dead_letter_limit"], "only applies with `dead_letter`");
        }
    }
    let group = w.group(name);
    if let Some(other) = groups.insert((w.input.as_str(), group), name) {
        v.error(
            &["workers", name, "consumer_group"],
            format!(
                "consumer group {group:?} on entity {:?} is already used by worker {other:?}; give each worker its own group",
                w.input
            ),
        );
    }
    if w.dead_letter.is_none() && w.retry.is_none() {
        v.warn(
            &["workers", name],
            "no `dead_letter`: a message that fails permanently stops its partition until the worker is fixed",
        );
    }
}

/// Every entity some task consumes: worker inputs and retry entities.
fn consumed(c: &Config) -> BTreeSet<&str> {
    let mut out: BTreeSet<&str> = c.workers.values().map(|w| w.input.as_str()).collect();
    out.extend(c.workers.values().filter_map(|w| w.retry.as_ref()).map(|r| r.via.as_str()));
    out
}

fn retry_entities(c: &Config, v: &mut Issues<'_>) {
    for (name, w) in &c.workers {
        let Some(r) = &w.retry else { continue };
        if let Some((other, _)) = c.workers.iter().find(|(_, o)| o.input == r.via) {
            v.error(
                &["workers", name, "retry", "via"],
                format!(
                    "entity {:?} is the input of worker {other:?}; a retry entity is read only by the retry scheduler",
                    r.via
                ),
            );
        }
    }
}

/// Event Hubs names of entities and consumer groups, and the checkpoint
/// store a consumed hub needs.
fn eventhubs_names(c: &Config, v: &mut Issues<'_>) {
    let consumed = consumed(c);
    let on_eh = |key: &str| {
        c.entities.get(key).and_then(|e| c.transports.get(&e.transport)).and_then(|t| match t {
            TransportConfig::Eventhubs(eh) => Some(eh),
            _ => None,
        })
    };
    for (name, e) in &c.entities {
        if let Some(new) = e.new_side(name)
            && let Some(TransportConfig::Eventhubs(eh)) = c.transports.get(&new.transport)
        {
            if !valid_hub_name(&new.physical) {
                v.error(
                    &["entities", name, "migrate", if e.migrate.as_ref().is_some_and(|m| m.name.is_some()) { "name" } else { "to" }],
                    format!("{:?} is not a valid event hub name (1–256 letters, digits, '.', '-', '_'; starting and ending with a letter or digit); set `migrate.name`", new.physical),
                );
            }
            if consumed.contains(name.as_str()) && eh.checkpoint_store.is_none() {
                v.error(
                    &["transports", &new.transport],
                    format!("entity {name:?} migrates to this Event Hubs transport and is consumed, which needs `checkpoint_store: {{ type: blob, ... }}` (or `type: file` for a single node)"),
                );
            }
        }
        let Some(eh) = on_eh(name) else { continue };
        let hub = e.physical_name(name);
        if !valid_hub_name(hub) {
            v.error(
                &["entities", name, if e.name.is_some() { "name" } else { "transport" }],
                format!("{hub:?} is not a valid event hub name (1–256 letters, digits, '.', '-', '_'; starting and ending with a letter or digit); set `name:`"),
            );
        }
        if consumed.contains(name.as_str()) && eh.checkpoint_store.is_none() {
            v.error(
                &["transports", &e.transport],
                format!("entity {name:?} is consumed from this Event Hubs transport, which needs `checkpoint_store: {{ type: blob, ... }}` (or `type: file` for a single node) to keep checkpoints across restarts"),
            );
        }
    }
    for (name, w) in &c.workers {
        if on_eh(&w.input).is_none() {
            continue;
        }
        let g = w.group(name);
        let valid = g == "$Default"
            || (1..=50).contains(&g.len()) && g.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
        if !valid {
            v.error(
                &["workers", name, "consumer_group"],
                format!("{g:?} is not a valid Event Hubs consumer group (1–50 letters, digits, '.', '-', '_', or $Default); the default is the worker's name"),
            );
        }
    }
}

/// A memory-only entity nothing consumes keeps only its newest messages.
fn unconsumed(c: &Config, v: &mut Issues<'_>) {
    let consumed = consumed(c);
    for (name, e) in &c.entities {
        if consumed.contains(name.as_str()) {
            continue;
        }
        if let Some(TransportConfig::Embedded { path: None, capacity, .. }) = c.transports.get(&e.transport) {
            v.warn(
                &["entities", name],
                format!("no worker consumes this entity and its transport is memory-only: only its newest {capacity} messages per partition are kept"),
            );
        }
    }
}

/// Event Hubs names: 1–256 characters, letters, digits, `.`, `-`, `_`,
/// starting and ending with a letter or digit.
fn valid_hub_name(n: &str) -> bool {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=256).contains(&n.len())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        && ok_end(n.chars().next())
        && ok_end(n.chars().last())
}
