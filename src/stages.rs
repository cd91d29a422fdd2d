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
pub mod schema;
mod sink;

pub use chaos::{Chaos, fate as chaos_fate};
pub use files::{Download, Upload};
pub use http::HttpStage;
pub use map::MapStage;
pub use passthrough::Passthrough;
pub use schema::{Decode, Encode, SCHEMA_ID_HEADER, Transcode};
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

    /// The same as [`Stage::process`], for a stage that can tell without
    /// waiting: `Some` with the result, or `None` (the default) when
    /// `process` must run. Saves a boxed future per message on the hot path;
    /// a stage that answers `Some` must do exactly what `process` does.
    fn process_now(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Option<Result<(), StageError>> {
        let _ = (msg, out);
        None
    }

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
    #[error("unknown schema registry {0:?}")]
    UnknownRegistry(String),
    #[error("schema registry {name:?} is of type {kind}; this needs {want}")]
    RegistryKind { name: String, kind: &'static str, want: &'static str },
    #[error(transparent)]
    Avro(#[from] crate::config::SchemaSourceError),
    #[error(transparent)]
    Subject(crate::schema::SchemaError),
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
    /// The storage lost or refused writes (a directory sync failed with
    /// EIO, ENOSPC, EDQUOT or EROFS): an outage, not the message's fault.
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("{message}")]
    Other { category: ErrorCategory, kind: String, message: String },
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
}

impl StageError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            StageError::InvalidJson(_) | StageError::MissingField(_) | StageError::Panic(_) => ErrorCategory::Permanent,
            StageError::Io(_) | StageError::Storage(_) => ErrorCategory::Transient,
            StageError::Other { category, .. } => *category,
            StageError::Schema(e) => e.category(),
        }
    }

    /// Whether a dependency every message needs is out (a schema registry
    /// that does not answer, storage that lost writes): the message waits
    /// and is never dead-lettered for it (`worker::policy::decide_outage`).
    pub fn is_outage(&self) -> bool {
        match self {
            StageError::Schema(e) => e.is_outage(),
            StageError::Storage(_) => true,
            _ => false,
        }
    }

    /// The schema id the failure concerns (dead-letter envelopes carry it).
    pub fn schema_id(&self) -> Option<&str> {
        match self {
            StageError::Schema(e) => e.schema_id(),
            _ => None,
        }
    }

    /// A short, stable name of the error kind (DLQ `error.type`).
    pub fn kind(&self) -> &str {
        match self {
            StageError::InvalidJson(_) => "invalid_json",
            StageError::MissingField(_) => "missing_field",
            StageError::Panic(_) => "panic",
            StageError::Io(_) => "io",
            StageError::Storage(_) => "storage",
            StageError::Other { kind, .. } => kind,
            StageError::Schema(e) => e.kind(),
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

/// What stages are built with besides their config.
#[derive(Default)]
pub struct Context {
    /// The configured schema registries.
    pub registries: crate::schema::Registries,
    /// Each output's entity name on its transport (its Kafka topic),
    /// indexed like the `Outputs`.
    pub topics: Vec<String>,
}

impl Context {
    fn registry(
        &self,
        name: &str,
        want: Option<crate::schema::registry::Kind>,
    ) -> Result<Arc<crate::schema::Registry>, BuildError> {
        let r = self.registries.get(name).ok_or_else(|| BuildError::UnknownRegistry(name.into()))?;
        match want {
            Some(k) if r.kind() != k => {
                Err(BuildError::RegistryKind { name: name.into(), kind: r.kind().as_str(), want: k.as_str() })
            }
            _ => Ok(r),
        }
    }

    /// A decoder over the registries `names`, resolving to `reader`.
    pub fn decoder(
        &self,
        names: &crate::config::Names,
        reader: Option<&crate::config::SchemaSource>,
    ) -> Result<crate::schema::codec::Decoder, BuildError> {
        let registries = names.list().into_iter().map(|n| self.registry(n, None)).collect::<Result<_, _>>()?;
        let reader = match reader {
            Some(r) => Some(r.load()?),
            None => None,
        };
        Ok(crate::schema::codec::Decoder { registries, reader })
    }

    /// A Confluent → Azure transcoder.
    pub fn transcoder(&self, cfg: &crate::config::TranscodeConfig) -> Result<crate::schema::Transcoder, BuildError> {
        use crate::schema::registry::Kind;
        Ok(crate::schema::Transcoder::new(
            self.registry(&cfg.from, Some(Kind::Confluent))?,
            self.registry(&cfg.to, Some(Kind::Azure))?,
        ))
    }
}

/// Builds the stage a config asks for.
pub fn build(cfg: &StageConfig, outputs: &Outputs, cx: &Context) -> Result<Arc<dyn Stage>, BuildError> {
    let default = || outputs.index("default").ok_or(BuildError::NoDefaultOutput);
    Ok(match cfg {
        StageConfig::Passthrough => Arc::new(Passthrough { output: default()? }),
        StageConfig::Map(m) => Arc::new(MapStage::new(m, outputs, cx)?),
        StageConfig::Decode(d) => {
            Arc::new(Decode { decoder: cx.decoder(&d.registry, d.reader_schema.as_ref())?, output: default()? })
        }
        StageConfig::Encode(e) => {
            let output = default()?;
            let registry = cx.registry(&e.registry, None)?;
            let schema = e.schema.load()?;
            let subject = match &e.subject {
                Some(s) => s.clone(),
                None => {
                    let topic = cx.topics.get(output).map(String::as_str).unwrap_or("default");
                    registry.subject(topic, &schema).map_err(BuildError::Subject)?
                }
            };
            Arc::new(Encode {
                encoder: crate::schema::Encoder { registry, schema, subject, register: e.register },
                output,
            })
        }
        StageConfig::Transcode(t) => Arc::new(Transcode { transcoder: cx.transcoder(t)?, output: default()? }),
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
