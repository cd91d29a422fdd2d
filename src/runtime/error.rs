//! Why the pipeline could not start, change or stop cleanly.

use crate::config::{ConfigError, Dur};
use crate::stages::BuildError;
use crate::transport::TransportError;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("transport {name:?}: {source}")]
    Transport { name: String, source: Box<TransportError> },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("entity {entity:?} is on transport {transport:?}, which is not open")]
    NotOpen { entity: String, transport: String },
    #[error("worker {worker:?}: {source}")]
    Stage { worker: String, source: Box<BuildError> },
    #[error(
        "drain did not finish within the shutdown grace of {0}; in-flight work was aborted (it is redelivered on the next start)"
    )]
    GraceExceeded(Dur),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Registry(Box<crate::schema::registry::SetupError>),
    #[error("the pipeline is shutting down; the reload was not applied")]
    ShuttingDown,
    #[error(
        "transport {transport:?} lives in the running daemon, but service.http.listen has port 0, so its address is unknown; give the daemon a fixed port"
    )]
    NoDaemonAddress { transport: String },
}
