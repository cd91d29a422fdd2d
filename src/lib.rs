//! Conveyor: a whole multi-stage event pipeline as supervised tasks in one
//! process, over transports that workers never see.
//!
//! # Architecture
//!
//! - [`config`]: the YAML topology (transports, entities, sources,
//!   workers), validated with every error located by file, line and path.
//! - [`transport`]: the transport-agnostic API ([`transport::PipelineMessage`],
//!   producer, subscription and reader traits) and its implementations
//!   ([`transport::embedded`], `transport::kafka`, `transport::eventhub`).
//! - [`consume`]: the partition host — one lane per assigned partition —
//!   that workers and retry schedulers both run on.
//! - [`worker`]: consume → stage → deliver → commit, with the failure policy
//!   as a pure function ([`worker::policy`]).
//! - [`stages`]: what a worker does with a message.
//! - [`avro`]: Avro records ↔ JSON; [`schema`]: schema registries (Confluent, Azure), Avro ↔ JSON, and the
//!   decode / encode / transcode of framed messages.
//! - [`classify`]: every failure is `Transient`, `Auth`, `Permanent` or
//!   `Throttling`; the category decides retry, dead-letter or pause.
//! - [`dlq`]: the dead-letter envelope; [`retry`]: delayed retries through
//!   retry entities and their scheduler.
//! - [`sources`]: built-in producers; [`simulation`]: the simulated APIs.
//! - [`supervisor`]: restarts with [`backoff`], panic containment, bounded
//!   drain; [`health`]: task states and their gauges.
//! - [`instance`]: the stable instance id a daemon joins consumer groups
//!   with (fast recovery after a crash).
//! - [`runtime`]: builds the pipeline from a config, reloads it live, drains
//!   it; [`daemon`]: signals, file watch and reload triggers around it.
//! - [`admin`], [`metrics`], [`telemetry`], [`systemd`], [`watch`]:
//!   operations (endpoints, metrics, logs, systemd, config file watching).
//! - [`commands`]: `check`, `dlq`, `graph`; [`bench`]: `conveyor bench`.
//! - Helpers with one job each: [`text`] (char-boundary-safe clipping),
//!   [`fsync`] (durable file operations), [`azure`] (Blob and Entra ID
//!   clients).
//!
//! # Delivery guarantee
//!
//! At least once. A consumed position is committed only after every output
//! and dead-letter write of that message is acknowledged by its transport;
//! a crash anywhere redelivers what was not committed, and nothing is
//! dropped silently: a message is either produced, dead-lettered with a full
//! envelope, or retried.

// No unsafe code, except one audited block: the Kafka consumer's zero-copy
// payloads (`transport::kafka::hold`).
#![deny(unsafe_code)]

pub mod admin;
pub mod avro;
pub mod azure;
pub mod backoff;
pub mod bearer;
pub mod bench;
pub mod classify;
pub mod cli;
pub mod commands;
pub mod config;
pub mod consume;
pub mod daemon;
pub mod dlq;
pub mod fsync;
pub mod health;
pub mod instance;
pub mod metrics;
pub mod migration;
pub mod redrive;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod simulation;
pub mod sources;
pub mod stages;
pub mod supervisor;
pub mod systemd;
pub mod telemetry;
pub mod text;
pub mod transport;
pub mod watch;
pub mod worker;
