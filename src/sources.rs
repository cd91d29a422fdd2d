//! Built-in sources: tasks that write into an entity from outside the
//! pipeline.
//!
//! - [`simulator`] (`type: simulator`): synthetic events at a fixed rate, so
//!   the default `config.yaml` works with nothing else installed;
//! - [`http`] (`type: http`): messages `POST`ed by anyone, acknowledged only
//!   once the transport has them.

pub mod http;
pub mod simulator;

pub use http::{Ingest, Routes};
pub use simulator::Simulator;
