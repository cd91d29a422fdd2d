//! Where Azure services are reached, shared by the Event Hubs transport's
//! checkpoint store and the upload stage's blob target.

use super::secret::Secret;
use serde::{Deserialize, Serialize};

/// An Entra ID credential (`azure_identity`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EntraCredential {
    /// Azure CLI / Azure Developer CLI login of the developer.
    Developer,
    /// The VM's / App Service's managed identity (`client_id` for a
    /// user-assigned one).
    ManagedIdentity {
        #[serde(default)]
        client_id: Option<String>,
    },
    /// Kubernetes workload identity (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE` from the environment).
    WorkloadIdentity,
}

/// An Azure Blob Storage container and how to reach it (checkpoint stores,
/// upload targets).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlobLocation {
    /// Storage connection string (`AccountName=..;AccountKey=..`,
    /// `BlobEndpoint=..;SharedAccessSignature=..`, or
    /// `UseDevelopmentStorage=true` for Azurite), as `${VAR}`. Or use
    /// `endpoint` + `credential`.
    #[serde(default)]
    pub connection_string: Option<Secret>,
    /// Blob endpoint (`https://ACCOUNT.blob.core.windows.net`) for Entra ID.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Entra ID credential for `endpoint` (needs the `eventhubs` feature,
    /// which brings `azure_identity`).
    #[serde(default)]
    pub credential: Option<EntraCredential>,
    /// Container (created if missing).
    pub container: String,
}
