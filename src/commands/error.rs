//! Why a command-line tool failed.

use crate::runtime::RuntimeError;
use crate::transport::TransportError;
use crate::transport::scan::ScanError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("entity {0:?} is not in the config")]
    UnknownEntity(String),
    #[error("{entity:?}: {source}")]
    Transport { entity: String, source: TransportError },
    #[error("bad --filter {0:?}: write key=value with key one of category, worker, origin, type")]
    BadFilter(String),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(
        "{entity:?}: consumer group {group:?} was not given partition(s) {missing:?} within {waited:?} (does another process hold them?)"
    )]
    NotAssigned { entity: String, group: String, missing: Vec<u32>, waited: Duration },
    #[error("{entity:?} has no partition {partition} (it has {partitions})")]
    NoPartition { entity: String, partition: u32, partitions: usize },
    #[error("input: {0}")]
    Input(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}
