//! Event Hubs checkpoint stores: where a consumer group's positions and
//! partition ownership live, so a restarted consumer resumes where it left
//! off and several Conveyor processes share a hub's partitions.
//!
//! Both stores implement the `azure_messaging_eventhubs` 0.16
//! [`CheckpointStore`] trait:
//! - [`blob::BlobStore`] (`checkpoint_store: { type: blob }`): Azure Blob
//!   Storage in the layout of Azure's own checkpoint stores —
//!   `<namespace>/<hub>/<group>/checkpoint/<partition>` with metadata
//!   `offset` + `sequencenumber`, and `.../ownership/<partition>` with
//!   `ownerid`, names lower-cased as the Python and .NET stores write them —
//!   so a consumer group run by the Python or .NET SDK hands over to Conveyor
//!   (and back) without replaying. Ownership claims are conditional on the
//!   blob's ETag (`If-Match`, or `If-None-Match: *` for a first claim); a
//!   claim that lost the race is left out of the result, never an error.
//! - [`file::FileStore`] (`type: file`): one small JSON file per blob name
//!   in a directory, for a single node. ETags are content versions checked
//!   under a process-wide lock; processes on one machine sharing the
//!   directory are not guarded against each other.
//!
//! Caveats: ownership expiry is decided by the readers
//! (`last_modified + ownership_expiration < now`), so every consumer of a
//! group must agree on the expiration; checkpoints are written
//! unconditionally (as Azure's stores do) — the balancer writes only for
//! partitions it still owns.

pub mod blob;
pub mod file;

use crate::classify::ErrorCategory;
use crate::config::CheckpointStoreConfig;
use crate::transport::TransportError;
pub use azure_messaging_eventhubs::CheckpointStore;
pub use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use std::sync::Arc;

/// `<ns>/<hub>/<group>/<kind>/` lower-cased (Python/.NET layout).
pub fn prefix(namespace: &str, hub: &str, group: &str, kind: &str) -> String {
    format!("{namespace}/{hub}/{group}/{kind}/").to_lowercase()
}

/// Opens the configured store; creates the blob container if missing.
pub async fn open(transport: &str, cfg: &CheckpointStoreConfig) -> Result<Arc<dyn CheckpointStore>, TransportError> {
    match cfg {
        CheckpointStoreConfig::File { path } => {
            Ok(Arc::new(file::FileStore::open(path).map_err(|e| TransportError::Open {
                transport: transport.to_string(),
                path: path.display().to_string(),
                message: e.to_string(),
            })?))
        }
        CheckpointStoreConfig::Blob(loc) => {
            let client = crate::azure::blob_client(loc).map_err(|e| TransportError::Other {
                category: ErrorCategory::Permanent,
                kind: "config",
                message: format!("transports.{transport}.checkpoint_store: {e}"),
            })?;
            client.create_container(&loc.container).await.map_err(|e| blob_error(transport, &e))?;
            Ok(Arc::new(blob::BlobStore::new(client, loc.container.clone())))
        }
    }
}

/// A `TransportError` from a blob call, keeping its category.
pub fn blob_error(transport: &str, e: &conveyor_blob::BlobError) -> TransportError {
    TransportError::Other {
        category: e.category().into(),
        kind: "checkpoint_store",
        message: format!("{transport}: checkpoint store: {e}"),
    }
}

/// A `TransportError` from a checkpoint-store call (an `azure_core` error
/// that may wrap a blob error).
pub fn store_error(transport: &str, e: azure_core::Error) -> TransportError {
    if let Some(b) = e.get_ref().and_then(|r| r.downcast_ref::<conveyor_blob::BlobError>()) {
        return blob_error(transport, b);
    }
    TransportError::Other {
        category: ErrorCategory::Transient,
        kind: "checkpoint_store",
        message: format!("{transport}: checkpoint store: {e}"),
    }
}

/// Wraps a store-specific error for the trait's `azure_core::Result`.
pub(crate) fn wrap<E: std::error::Error + Send + Sync + 'static>(e: E) -> azure_core::Error {
    azure_core::Error::new(azure_core::error::ErrorKind::Other, e)
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_is_the_lower_cased_azure_layout() {
        assert_eq!(
            super::prefix("NS.servicebus.windows.net", "Orders", "$Default", "checkpoint"),
            "ns.servicebus.windows.net/orders/$default/checkpoint/"
        );
    }
}
