//! Stages: what a worker does with each message.
//!
//! A stage sees a [`PipelineMessage`] and emits zero or more messages to the
//! worker's named outputs, or fails with a [`StageError`] whose category
//! decides what the worker does (see `classify`). Stages never see a
//! transport type. Stage kinds are selected by `stage: { type: ... }` in the
//! config; library users can also hand the runtime their own `Arc<dyn Stage>`.

mod chaos;
mod files;
mod http;
pub mod json;
mod map;
mod passthrough;
mod sink;

pub use chaos::{Chaos, fate as chaos_fate};
pub use files::{Download, Upload};
pub use http::HttpStage;
pub use map::MapStage;
pub use passthrough::Passthrough;
pub use sink::Sink;

use crate::classify::ErrorCategory;
use crate::config::StageConfig;
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;
use std::sync::Arc;

/// One message a stage emits, for the worker output with index `output`
/// (see [`Outputs::index`]).
#[derive(Debug, Clone)]
pub struct Emit {
    pub output: usize,
    pub message: OutboundMessage,
}

/// The names of a worker's outputs, in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    names: Vec<String>,
}

impl Outputs {
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Outputs { names: names.into_iter().collect() }
    }
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A per-message processing step.
#[async_trait]
pub trait Stage: Send + Sync {
    /// Processes `msg`, pushing what it emits to `out`. On error, whatever it
    /// pushed is discarded.
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError>;

    /// Makes what was processed of `partition` so far durable. Called once
    /// per batch by that partition's lane, after the batch's outputs are
    /// acknowledged and before its position is committed (a sink fsyncs
    /// here); an error keeps the batch uncommitted. Default: nothing to do.
    async fn flush(&self, partition: u32) -> Result<(), StageError> {
        let _ = partition;
        Ok(())
    }
}

/// Why a stage could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("this stage needs an output named `default`")]
    NoDefaultOutput,
    #[error("no output named {0:?}")]
    UnknownOutput(String),
    #[error("invalid JSON Schema: {0}")]
    Schema(String),
    #[error("bad method {0:?}")]
    Method(String),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error(transparent)]
    Azure(#[from] crate::azure::AzureError),
}

/// A stage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StageError {
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("required field {0:?} is missing")]
    MissingField(String),
    #[error("stage panicked: {0}")]
    Panic(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("{message}")]
    Other { category: ErrorCategory, kind: String, message: String },
}

impl StageError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            StageError::InvalidJson(_) | StageError::MissingField(_) | StageError::Panic(_) => ErrorCategory::Permanent,
            StageError::Io(_) => ErrorCategory::Transient,
            StageError::Other { category, .. } => *category,
        }
    }

    /// A short, stable name of the error kind (DLQ `error.type`).
    pub fn kind(&self) -> &str {
        match self {
            StageError::InvalidJson(_) => "invalid_json",
            StageError::MissingField(_) => "missing_field",
            StageError::Panic(_) => "panic",
            StageError::Io(_) => "io",
            StageError::Other { kind, .. } => kind,
        }
    }

    pub fn other(category: ErrorCategory, kind: &str, message: impl Into<String>) -> Self {
        StageError::Other { category, kind: kind.to_string(), message: message.into() }
    }
}

/// A message carrying `payload`, for stage unit tests.
#[cfg(test)]
pub(crate) fn test_message(payload: &[u8]) -> PipelineMessage {
    PipelineMessage {
        entity: "e".into(),
        partition: 0,
        position: 0,
        key: None,
        headers: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
        timestamp_ms: 0,
    }
}

/// Builds the stage a config asks for.
pub fn build(cfg: &StageConfig, outputs: &Outputs) -> Result<Arc<dyn Stage>, BuildError> {
    let default = || outputs.index("default").ok_or(BuildError::NoDefaultOutput);
    Ok(match cfg {
        StageConfig::Passthrough => Arc::new(Passthrough { output: default()? }),
        StageConfig::Map(m) => Arc::new(MapStage::new(m, outputs)?),
        StageConfig::Sink(c) => Arc::new(Sink::new(c.clone())),
        StageConfig::Http(c) => Arc::new(HttpStage::new(c, outputs)?),
        StageConfig::Download(c) => Arc::new(Download::new(c.clone(), default()?)?),
        StageConfig::Upload(c) => Arc::new(Upload::new(c.clone(), default()?)?),
        StageConfig::Chaos(c) => Arc::new(Chaos {
            transient: c.transient_ratio,
            permanent: c.permanent_ratio,
            panic: c.panic_ratio,
            delay: c.delay.get(),
            output: default()?,
        }),
    })
}
