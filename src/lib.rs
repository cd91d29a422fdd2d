//! Conveyor: a whole multi-stage event pipeline as supervised tasks in one
//! process, over transports that workers never see.
//!
//! # Architecture
//!
//! - [`config`]: the YAML topology (transports, entities, sources,
//!   workers), validated with every error located by file, line and path.
//! - [`transport`]: the transport-agnostic API ([`transport::PipelineMessage`],
//!   [`transport::ProduceResult`], [`transport::PartitionInfo`], producer and
//!   consumer traits) and its implementations ([`transport::embedded`],
//!   `transport::kafka` with the `kafka` feature).
//! - [`worker`]: consume → stage → produce → commit, one lane per partition.
//! - [`stages`]: what a worker does with a message.
//! - [`classify`]: every failure is `Transient`, `Auth`, `Permanent` or
//!   `Throttling`; the category decides retry, dead-letter or pause.
//! - [`dlq`]: the dead-letter envelope; [`retry`]: delayed retries through
//!   retry entities and their scheduler.
//! - [`supervisor`]: restarts with backoff, panic containment, bounded drain.
//! - [`http`], [`metrics`], [`health`], [`telemetry`], [`notify`],
//!   [`watchdog`], [`watch`]: operations (endpoints, metrics, systemd,
//!   live reload).
//! - [`app`]: builds and runs all of the above from a config.
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

pub mod app;
pub mod bench;
#[cfg(feature = "eventhubs")]
pub mod checkpoint;
pub mod classify;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod graph;
pub mod health;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod retry;
pub mod simulation;
pub mod sources;
pub mod stages;
pub mod supervisor;
pub mod telemetry;
pub mod transport;
pub mod watch;
pub mod watchdog;
pub mod worker;
