//! Why a command-line tool failed.

use crate::runtime::RuntimeError;
use crate::transport::TransportError;
use crate::transport::scan::ScanError;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("entity {0:?} is not in the config")]
    UnknownEntity(String),
    #[error("{entity:?}: {source}")]
    Transport { entity: String, source: TransportError },
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Redrive(#[from] crate::redrive::RedriveError),
    #[error("{entity:?} has no partition {partition} (it has {partitions})")]
    NoPartition { entity: String, partition: u32, partitions: usize },
    #[error("input: {0}")]
    Input(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}
