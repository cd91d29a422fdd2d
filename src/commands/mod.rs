//! The command-line tools beside `conveyor run`: each opens what it needs
//! from a config and does one job.
//!
//! - [`check`]: validate a config and compare it with the brokers it names;
//! - [`dlq`]: inspect and redrive dead-letter entities;
//! - [`graph`]: draw the topology;
//! - [`migrate`]: parity check and status of migrations.

pub mod check;
pub mod dlq;
pub mod graph;
pub mod migrate;
