//! The configuration model. Every field's doc comment is its user
//! documentation (`docs/config.md` is generated from the same text by hand;
//! keep them in step).

use super::azure::{BlobLocation, EntraCredential};
use super::duration::Dur;
use super::migrate::{MigrateConfig, Phase};
use super::secret::Secret;
use super::stage::StageConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole topology file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings: name, HTTP listener, shutdown grace, logging.
    #[serde(default)]
    pub service: ServiceConfig,
    /// Named transports (`type: embedded` today). Entities refer to them by name.
    pub transports: BTreeMap<String, TransportConfig>,
    /// Named entities (topics / event hubs / embedded logs), each on one transport.
    pub entities: BTreeMap<String, EntityConfig>,
    /// Built-in sources that write into entities (e.g. the simulator).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Named schema registries (`type: confluent` or `type: azure`) the
    /// schema stages and migrations refer to.
    #[serde(default)]
    pub schema_registries: BTreeMap<String, super::schema::SchemaRegistryConfig>,
    /// Workers: each consumes one input entity, runs a stage per message and
    /// produces to named outputs.
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerConfig>,
    /// A local HTTP server inside the daemon that plays the enrichment and
    /// plugin APIs and serves attachment files, for demos and tests.
    #[serde(default)]
    pub simulation: Option<SimulationConfig>,
}

/// `simulation:` — the built-in stand-in for the external services.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimulationConfig {
    /// Turn it off to point the stages at real services.
    #[serde(default = "yes_sim")]
    pub enabled: bool,
    /// Listen address of the simulated APIs. Default `127.0.0.1:9470`.
    #[serde(default = "default_sim_listen")]
    pub listen: SocketAddr,
    /// Added to every API response.
    #[serde(default)]
    pub latency: Dur,
    /// Share (0–1) of API calls answered `503` (retried by the workers).
    #[serde(default)]
    pub error_rate: f64,
    /// Size of each served attachment. Default 4096.
    #[serde(default = "default_attachment_bytes")]
    pub attachment_bytes: usize,
}

fn yes_sim() -> bool {
    true
}
fn default_sim_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9470))
}
fn default_attachment_bytes() -> usize {
    4096
}

/// `service:` — process-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name, used in logs and as `service` in `/readyz`. Default `conveyor`.
    #[serde(default = "default_name")]
    pub name: String,
    /// This process's stable identity in consumer groups: its Kafka static
    /// membership (`group.instance.id`, per group) and its Event Hubs owner
    /// id, so a restart after a crash gets its partitions back at once.
    /// Default `<hostname>-<name>`; the environment variable
    /// `CONVEYOR_INSTANCE_ID` overrides both. Two live processes must never
    /// share it: give each instance on one host its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// HTTP endpoints (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default)]
    pub http: HttpConfig,
    /// How long a drain (SIGTERM/SIGINT) may take before in-flight work is
    /// aborted and the process exits non-zero. Default `30s`.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// systemd watchdog: pings (`WATCHDOG=1`) stop when a consumer loop has
    /// held one batch for longer than this, so systemd restarts a stuck
    /// service. Idle loops (waiting for messages) are healthy. Default `2m`.
    #[serde(default = "default_stall")]
    pub watchdog_stall: Dur,
}

fn default_stall() -> Dur {
    Dur::secs(120)
}

fn default_name() -> String {
    "conveyor".into()
}
fn default_grace() -> Dur {
    Dur::secs(30)
}

impl ServiceConfig {
    /// How the daemon joins consumer groups: as its stable instance id
    /// (`crate::instance`).
    pub fn membership(&self) -> crate::instance::Membership {
        crate::instance::Membership::daemon(self.instance_id.as_deref(), &self.name)
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            name: default_name(),
            instance_id: None,
            http: HttpConfig::default(),
            shutdown_grace: default_grace(),
            log: LogConfig::default(),
            watchdog_stall: default_stall(),
        }
    }
}

/// `service.http:`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address, e.g. `127.0.0.1:9464`; port `0` picks a free port
    /// (the chosen address is logged). Default `127.0.0.1:9464`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token the entity API (`/v1/entities/...`, used by `conveyor
    /// tail`, `produce` and `dlq inspect` while the daemon runs) requires.
    /// Without it, that API answers loopback clients only. Never logged.
    #[serde(default)]
    pub token: Option<Secret>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_listen(), token: None }
    }
}

/// `service.log:`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (the default: coloured text when stderr is a terminal, JSON
    /// otherwise), `json` (one object per line, for collectors) or `text`
    /// (for people).
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, or per module
    /// (`info,conveyor::worker=debug`). `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Auto, level: default_level() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON elsewhere.
    #[default]
    Auto,
    Json,
    Text,
}

/// `transports.<name>:` — one variant per transport kind.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TransportConfig {
    /// The in-process partitioned log. Memory-only without `path`; durable
    /// (crash-safe, `redb` file) with it.
    Embedded {
        /// Data directory. When set, every acknowledged message and committed
        /// position is on disk (fsync'd) and survives a crash or SIGKILL.
        #[serde(default)]
        path: Option<PathBuf>,
        /// Per-partition bound on messages not yet committed by every
        /// consumer group of the entity (memory mode), and on queued writes
        /// (durable mode). Producers wait when it is reached. Default 10000.
        #[serde(default = "default_capacity")]
        capacity: usize,
        /// Largest message accepted (payload, key and headers together), in
        /// bytes. A bigger one fails as `permanent` (the worker dead-letters
        /// it, with a trimmed envelope when the envelope itself is too big).
        /// Default 8 MiB.
        #[serde(default = "default_max_message")]
        max_message_bytes: usize,
    },
    /// Apache Kafka (and Event Hubs' Kafka endpoint) through librdkafka.
    Kafka(KafkaConfig),
    /// Azure Event Hubs over AMQP (`azure_messaging_eventhubs`): one namespace;
    /// each entity is one event hub.
    Eventhubs(EventHubsConfig),
}

/// `transports.<name>: { type: eventhubs, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventHubsConfig {
    /// A namespace connection string with a SAS key
    /// (`Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=...`),
    /// usually `${EVENTHUB_CONNECTION_STRING}`. Without it, `namespace` and
    /// `credential` (Entra ID) are used. With `UseDevelopmentEmulator=true`
    /// and no `custom_endpoint`, Conveyor dials plain AMQP at the endpoint's
    /// host and port (the local test broker, `conveyor dev eventhubs`).
    #[serde(default)]
    pub connection_string: Option<Secret>,
    /// Fully qualified namespace (`NS.servicebus.windows.net`), for Entra ID.
    /// Also the namespace part of checkpoint blob names (default: the
    /// connection string endpoint's host[:port], as the Python SDK does).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Entra ID credential when there is no connection string.
    #[serde(default)]
    pub credential: Option<EntraCredential>,
    /// Dial this address instead of the namespace (`amqp://127.0.0.1:5672`
    /// for a local broker: plain TCP; `amqps://...` for a gateway).
    #[serde(default)]
    pub custom_endpoint: Option<String>,
    /// Where consumer checkpoints and partition ownership live. Needed when
    /// a worker consumes from this transport.
    #[serde(default)]
    pub checkpoint_store: Option<CheckpointStoreConfig>,
    /// How often partition ownership is renewed and rebalanced. Default `10s`.
    #[serde(default = "default_eh_update")]
    pub update_interval: Dur,
    /// An ownership not renewed for this long is taken over by others.
    /// Must exceed `update_interval` (at least 2×). Default `60s`.
    #[serde(default = "default_eh_expiry")]
    pub ownership_expiration: Dur,
    /// How often acknowledged positions are written as checkpoints
    /// (also on partition loss and shutdown). Default `1s`.
    #[serde(default = "default_commit_interval")]
    pub checkpoint_interval: Dur,
    /// Events the client prefetches per partition. Default 300.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
}

fn default_eh_update() -> Dur {
    Dur::secs(10)
}
fn default_eh_expiry() -> Dur {
    Dur::secs(60)
}
fn default_prefetch() -> u32 {
    300
}

/// `checkpoint_store:` of an Event Hubs transport.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum CheckpointStoreConfig {
    /// Azure Blob Storage, in the layout of Azure's own checkpoint stores
    /// (`<namespace>/<hub>/<group>/checkpoint/<partition>`, lower-cased),
    /// so consumers written with the Python or .NET SDKs can hand over to
    /// Conveyor without replaying. Ownership claims use ETags.
    Blob(BlobLocation),
    /// A local directory, for a single node: no sharing across machines.
    File {
        /// Directory; one small JSON file per checkpoint and ownership.
        path: PathBuf,
    },
}

/// `transports.<name>: { type: kafka, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// How to connect and authenticate. Default: plaintext.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// librdkafka properties passed unchanged (`linger.ms`,
    /// `partition.assignment.strategy: cooperative-sticky`,
    /// `queue.buffering.max.kbytes`, ...). Conveyor sets
    /// `enable.auto.offset.store=false` itself and refuses to change it.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
    /// Create missing topics at start with the entity's partition count
    /// (replication factor 1; for development).
    #[serde(default)]
    pub create_topics: bool,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    /// Offsets are also committed on partition revoke and on shutdown.
    /// Default `1s`.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Dur,
}

fn default_commit_interval() -> Dur {
    Dur::secs(1)
}

/// `security:` of a Kafka transport.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub protocol: KafkaProtocol,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or
    /// `OAUTHBEARER`.
    #[serde(default)]
    pub mechanism: Option<SaslMechanism>,
    /// SASL user name (`$ConnectionString` for Event Hubs' Kafka endpoint).
    #[serde(default)]
    pub username: Option<String>,
    /// SASL password (the connection string for Event Hubs). Write
    /// `${VAR}`; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// CA bundle for TLS (`ssl.ca.location`); default: the system's.
    #[serde(default)]
    pub ca_location: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            KafkaProtocol::Plaintext => "plaintext",
            KafkaProtocol::Ssl => "ssl",
            KafkaProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaProtocol::SaslSsl => "sasl_ssl",
        }
    }
    pub fn is_sasl(self) -> bool {
        matches!(self, KafkaProtocol::SaslPlaintext | KafkaProtocol::SaslSsl)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

fn default_capacity() -> usize {
    10_000
}

fn default_max_message() -> usize {
    8 << 20
}

impl TransportConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            TransportConfig::Embedded { .. } => "embedded",
            TransportConfig::Kafka(_) => "kafka",
            TransportConfig::Eventhubs(_) => "eventhubs",
        }
    }
}

/// `entities.<name>:` — a topic, event hub or embedded log.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// Name of the transport that holds this entity.
    pub transport: String,
    /// Partition count (embedded: created with this many; brokers: checked).
    #[serde(default = "one")]
    pub partitions: u32,
    /// Name on the transport, when it differs from the entity key
    /// (e.g. `xact.downloads.pending` → `xact-downloads-pending`).
    #[serde(default)]
    pub name: Option<String>,
    /// A move to another transport in progress (`{ to, name, phase }`).
    #[serde(default)]
    pub migrate: Option<MigrateConfig>,
}

fn one() -> u32 {
    1
}

/// Where an entity is: a transport, the entity's name and partition count
/// there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Side {
    pub transport: String,
    pub physical: String,
    pub partitions: u32,
}

impl EntityConfig {
    /// The entity's name on its (old) transport.
    pub fn physical_name<'a>(&'a self, key: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(key)
    }

    /// Its old side: `transport`, `name`, `partitions`.
    pub fn old_side(&self, key: &str) -> Side {
        Side {
            transport: self.transport.clone(),
            physical: self.physical_name(key).to_string(),
            partitions: self.partitions,
        }
    }

    /// Its new side, when it migrates: `migrate.to`, `migrate.name`,
    /// `migrate.partitions`.
    pub fn new_side(&self, key: &str) -> Option<Side> {
        self.migrate.as_ref().map(|m| Side {
            transport: m.to.clone(),
            physical: m.name.clone().unwrap_or_else(|| key.to_string()),
            partitions: m.partitions.unwrap_or(self.partitions),
        })
    }

    /// Where producers write: the old side until `cutover`, then the new one.
    pub fn write_side(&self, key: &str) -> Side {
        match (&self.migrate, self.new_side(key)) {
            (Some(m), Some(new)) if m.phase >= Phase::Cutover => new,
            _ => self.old_side(key),
        }
    }
}

/// `sources.<name>:` — built-in producers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Emits synthetic JSON events `{"id","seq","source","ts","amount"}` at a
    /// fixed rate into an entity.
    Simulator {
        /// Entity to write into.
        entity: String,
        /// Events per second. Default 10.
        #[serde(default = "default_rate")]
        rate: f64,
        /// Stop after this many events (default: never).
        #[serde(default)]
        count: Option<u64>,
        /// Share of events (0.0–1.0) that are deliberately malformed (not
        /// JSON), to exercise dead-lettering. Default 0.
        #[serde(default)]
        malformed_ratio: f64,
        /// Extra payload bytes per event (a `pad` field). Default 0.
        #[serde(default)]
        pad_bytes: usize,
        /// `generic` (the fields above), `verisk` (xact events with an
        /// attachment) or `claimx` (ClaimX events with a task type).
        #[serde(default)]
        kind: SimKind,
        /// URL prefix of attachments in `verisk`/`claimx` events
        /// (`<prefix>/<id>.pdf`), e.g. the simulation server's `/files`.
        #[serde(default)]
        attachments: Option<String>,
    },
    /// Accepts messages over HTTP: `POST` one message per request, or NDJSON
    /// (`Content-Type: application/x-ndjson`) with one message per line. The
    /// answer is `200` only after the transport acknowledged every message.
    Http(HttpSourceConfig),
}

/// `sources.<name>:` of `type: http`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Entity to write into.
    pub entity: String,
    /// Address of a listener of its own, e.g. `127.0.0.1:8080` (port `0`
    /// picks one; the chosen address is logged). Default: a route on the
    /// admin listener (`service.http.listen`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Route that accepts `POST`s. Default `/ingest`.
    #[serde(default = "default_ingest_path")]
    pub path: String,
    /// Bearer token every request must carry (`Authorization: Bearer ...`);
    /// `401` otherwise. Never logged.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Largest request body in bytes; larger ones get `413`. Default 4 MiB.
    #[serde(default = "default_ingest_body")]
    pub max_body_bytes: usize,
    /// Most messages being written at once across requests; a request that
    /// would exceed it gets `429` with `Retry-After`. Default 10000.
    #[serde(default = "default_ingest_in_flight")]
    pub max_in_flight: usize,
    /// Request headers copied onto every message of the request (names,
    /// case-insensitive). `Conveyor-Key` always sets the key.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Longest wait for the transport's acknowledgement; then `503` naming
    /// the lines that were acknowledged. Default 30s.
    #[serde(default = "default_ingest_timeout")]
    pub timeout: Dur,
    /// Serve HTTPS with this certificate chain and key (PEM files). Only
    /// with `listen`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn default_ingest_path() -> String {
    "/ingest".into()
}
fn default_ingest_body() -> usize {
    4 << 20
}
fn default_ingest_in_flight() -> usize {
    10_000
}
fn default_ingest_timeout() -> Dur {
    Dur::secs(30)
}

/// What a simulator emits.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SimKind {
    #[default]
    Generic,
    Verisk,
    Claimx,
}

fn default_rate() -> f64 {
    10.0
}

impl SourceConfig {
    pub fn entity(&self) -> &str {
        match self {
            SourceConfig::Simulator { entity, .. } => entity,
            SourceConfig::Http(h) => &h.entity,
        }
    }

    /// The `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Simulator { .. } => "simulator",
            SourceConfig::Http(_) => "http",
        }
    }
}

/// `workers.<name>:` — consume, process, produce, commit.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Entity to consume.
    pub input: String,
    /// Consumer group (Kafka group / Event Hubs consumer group / embedded
    /// group). Default: the worker's name.
    #[serde(default)]
    pub consumer_group: Option<String>,
    /// What to do with each message.
    #[serde(default)]
    pub stage: StageConfig,
    /// Named outputs → entity. The stage picks an output by name; `default`
    /// is the usual one.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Outputs that also receive a copy of every message the stage sends to
    /// `default` (fan-out: one event feeding several stages).
    #[serde(default)]
    pub tee: Vec<String>,
    /// Entity that receives a structured envelope for each message that
    /// cannot be processed. Without it, a failed message stops the partition
    /// (it is retried with backoff, never skipped).
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Messages of one partition processed at once. Outputs are still
    /// produced and positions committed in partition order. Default 1.
    #[serde(default = "one_usize")]
    pub concurrency: usize,
    /// Most messages fetched, produced and committed as one batch. Default 500.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Where a group with no committed position starts. Default `earliest`.
    #[serde(default)]
    pub start_position: StartPosition,
    /// Delayed retries through a retry entity: a `transient` or `throttling`
    /// failure sends the message there with its attempt count and due time,
    /// and the built-in scheduler re-delivers it to this worker's input when
    /// due, so a slow retry never blocks the partition. Without it, failures
    /// are retried in place. Needs `dead_letter`.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Circuit breaker on dead-lettering: when exceeded (say a bad deploy makes
    /// every message fail) the worker stops, writes nothing to the DLQ, goes
    /// unready and logs why, instead of emptying the stream into the DLQ.
    #[serde(default)]
    pub dead_letter_limit: Option<DeadLetterLimit>,
}

/// `workers.<name>.retry:`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Entity holding pending retries (e.g. `xact.retry`). Several workers
    /// may share one; each message names the worker it returns to.
    pub via: String,
    /// Delay before the 2nd, 3rd, … attempt; the last one repeats.
    /// Default `[10s, 1m, 5m, 30m]`.
    #[serde(default = "default_schedule")]
    pub schedule: Vec<Dur>,
    /// Attempts in all (the first included) before the message is
    /// dead-lettered. Default 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_schedule() -> Vec<Dur> {
    vec![Dur::secs(10), Dur::secs(60), Dur::secs(300), Dur::secs(1800)]
}
fn default_max_attempts() -> u32 {
    5
}

/// `workers.<name>.dead_letter_limit:`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterLimit {
    /// Highest share (0–1) of processed messages that may be dead-lettered
    /// within `window`. Default 0.5.
    #[serde(default = "half")]
    pub max_ratio: f64,
    /// The sliding window of `max_ratio`. Default `1m`.
    #[serde(default = "minute")]
    pub window: Dur,
    /// Most messages dead-lettered in a row. Default 100.
    #[serde(default = "hundred")]
    pub max_consecutive: u32,
    /// Messages the window must hold before `max_ratio` applies. Default 20.
    #[serde(default = "twenty")]
    pub min_messages: u32,
    /// How long the worker stays paused before it tries again (a config
    /// reload also resumes it). Default `5m`.
    #[serde(default = "five_minutes")]
    pub cooldown: Dur,
}

fn half() -> f64 {
    0.5
}
fn minute() -> Dur {
    Dur::secs(60)
}
fn hundred() -> u32 {
    100
}
fn twenty() -> u32 {
    20
}
fn five_minutes() -> Dur {
    Dur::secs(300)
}

fn one_usize() -> usize {
    1
}
fn default_batch() -> usize {
    500
}

impl WorkerConfig {
    pub fn group<'a>(&'a self, worker: &'a str) -> &'a str {
        self.consumer_group.as_deref().unwrap_or(worker)
    }
}

/// Where a consumer group with no committed position begins.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
}
