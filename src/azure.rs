//! Azure clients shared by the Event Hubs transport (checkpoint stores) and
//! the stages (blob upload targets): a Blob Storage client for a
//! [`BlobLocation`] — its connection string, or its endpoint with an Entra
//! ID credential — and the Entra ID credentials themselves (with the
//! `eventhubs` feature, which brings `azure_identity`).

use crate::config::BlobLocation;
#[cfg(feature = "eventhubs")]
use crate::config::EntraCredential;
#[cfg(feature = "eventhubs")]
use std::sync::Arc;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    #[error("{0}")]
    Blob(#[from] conveyor_blob::BlobError),
    #[error("Entra ID credential: {0}")]
    Credential(String),
    #[error("blob storage needs `connection_string` (or `endpoint` + `credential` with Entra ID)")]
    NoWayIn,
}

/// A Blob Storage client for `loc`.
pub fn blob_client(loc: &BlobLocation) -> Result<conveyor_blob::BlobClient, AzureError> {
    match (&loc.connection_string, &loc.endpoint, &loc.credential) {
        (Some(cs), _, _) => Ok(conveyor_blob::BlobClient::from_connection_string(cs.expose())?),
        #[cfg(feature = "eventhubs")]
        (None, Some(ep), Some(c)) => {
            let source = entra_token_source(c)?;
            Ok(conveyor_blob::BlobClient::new(ep, conveyor_blob::Credentials::Bearer(source))?)
        }
        _ => Err(AzureError::NoWayIn),
    }
}

/// An Entra ID credential of `azure_identity`.
#[cfg(feature = "eventhubs")]
pub fn entra_credential(c: &EntraCredential) -> Result<Arc<dyn azure_core::credentials::TokenCredential>, AzureError> {
    use azure_identity::*;
    let cred = |r: azure_core::Result<Arc<dyn azure_core::credentials::TokenCredential>>| {
        r.map_err(|e| AzureError::Credential(e.to_string()))
    };
    match c {
        EntraCredential::Developer => cred(DeveloperToolsCredential::new(None).map(|c| c as _)),
        EntraCredential::ManagedIdentity { client_id } => {
            let options = client_id.as_ref().map(|id| ManagedIdentityCredentialOptions {
                user_assigned_id: Some(UserAssignedId::ClientId(id.clone())),
                ..Default::default()
            });
            cred(ManagedIdentityCredential::new(options).map(|c| c as _))
        }
        EntraCredential::WorkloadIdentity => cred(WorkloadIdentityCredential::new(None).map(|c| c as _)),
    }
}

/// Blob Storage bearer tokens from an Entra ID credential.
#[cfg(feature = "eventhubs")]
struct EntraTokens(Arc<dyn azure_core::credentials::TokenCredential>);

#[cfg(feature = "eventhubs")]
#[async_trait::async_trait]
impl conveyor_blob::TokenSource for EntraTokens {
    async fn token(&self) -> Result<String, conveyor_blob::BlobError> {
        let t = self
            .0
            .get_token(&["https://storage.azure.com/.default"], None)
            .await
            .map_err(|e| conveyor_blob::BlobError::token(e.to_string(), false))?;
        Ok(t.token.secret().to_string())
    }
}

/// Blob Storage tokens from an Entra ID credential.
#[cfg(feature = "eventhubs")]
pub fn entra_token_source(c: &EntraCredential) -> Result<Arc<dyn conveyor_blob::TokenSource>, AzureError> {
    Ok(Arc::new(EntraTokens(entra_credential(c)?)))
}
