//! The command-line tools beside `conveyor run`: each opens what it needs
//! from a config and does one job.
//!
//! - [`check`]: validate a config and compare it with the brokers it names;
//! - [`dlq`]: inspect and redrive dead-letter entities;
//! - [`graph`]: draw the topology;
//! - [`migrate`]: parity check and status of migrations;
//! - [`tail`] and [`produce`]: read and write any entity of any transport.

pub mod check;
pub mod dlq;
mod error;
pub mod graph;
pub mod migrate;
pub mod produce;
pub mod tail;

pub use error::ToolError;
