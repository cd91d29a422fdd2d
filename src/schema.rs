//! Schema registries and schema-framed messages.
//!
//! - [`wire`]: the two framings, Confluent (`0`, a 4-byte schema id, the
//!   record) and Azure (the record, with `avro/binary+<id>` as content
//!   type), as pure functions.
//! - `crate::avro`: Avro binary ↔ JSON (a module of its own: the config
//!   checks schemas with it too).
//! - [`subject`]: Confluent subject name strategies.
//! - [`registry`]: one registry client per `schema_registries:` entry
//!   (Confluent REST API, Azure Schema Registry REST API), with caches:
//!   schemas by id (an unknown id is fetched, so a schema registered after
//!   start is found), ids by (subject, canonical schema).
//! - [`codec`]: what the stages, the migration mirror and cut-over
//!   producers do with them: decode, encode, transcode.
//!
//! **Failures** ([`SchemaError::category`]): an unknown schema id, a payload
//! that does not decode, a record or schema the registry finds incompatible
//! are `Permanent` (dead-lettered as `schema_unknown`, `schema_decode`,
//! `schema_incompatible`, with the schema id in the envelope). A registry
//! that cannot be reached or answers 5xx is `Transient`, 429 is
//! `Throttling`: an *outage* ([`SchemaError::is_outage`]) — the message is
//! tried again in place and never dead-lettered for it. 401/403 is `Auth`:
//! the worker pauses.

#[cfg(feature = "eventhubs")]
mod azure;
pub mod codec;
mod confluent;
mod http;
pub mod registry;
pub mod subject;
pub mod wire;

pub use codec::{Decoded, Encoder, Transcoder};
pub use registry::{Registries, Registry};

use crate::classify::ErrorCategory;

/// A schema operation that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchemaError {
    /// The registry has no schema with this id (or, for `encode` without
    /// `register`, the schema is not registered).
    #[error("schema {id} is not in schema registry {registry:?}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Unknown { registry: String, id: String, hint: Option<String> },
    /// The payload is not framed as expected or does not decode with its
    /// schema.
    #[error("payload does not decode{}: {reason}", id.as_deref().map(|i| format!(" with schema {i}")).unwrap_or_default())]
    Decode { id: Option<String>, reason: String },
    /// The record does not fit the schema, or the registry refuses the schema
    /// as incompatible with what the subject holds.
    #[error("incompatible with schema{}: {reason}", id.as_deref().map(|i| format!(" {i}")).unwrap_or_default())]
    Incompatible { id: Option<String>, reason: String },
    /// The registry could not be reached, timed out or answered 5xx.
    #[error("schema registry {registry:?} is unavailable: {reason}")]
    Unavailable { registry: String, reason: String },
    /// The registry answered 429.
    #[error("schema registry {registry:?} throttles requests (429){}", retry_after.map(|s| format!("; retry after {s} s")).unwrap_or_default())]
    Throttled { registry: String, retry_after: Option<u64> },
    /// The registry refused the credentials (401/403).
    #[error("schema registry {registry:?} refused the credentials ({status}): {reason}")]
    Auth { registry: String, status: u16, reason: String },
    /// The schema is not registered under the subject (or name), and the
    /// stage may not register it.
    #[error("the schema is not registered under {subject} in schema registry {registry:?} ({hint})")]
    Unregistered { registry: String, subject: String, hint: String },
    /// The registry answered something this client cannot use (not its API:
    /// a proxy's page, a wrong path, a missing header): a fault of the
    /// registry or its URL, not of the message.
    #[error("schema registry {registry:?} answered {status}: {reason}")]
    Refused { registry: String, status: u16, reason: String },
}

impl SchemaError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            SchemaError::Unknown { .. }
            | SchemaError::Unregistered { .. }
            | SchemaError::Decode { .. }
            | SchemaError::Incompatible { .. } => ErrorCategory::Permanent,
            SchemaError::Unavailable { .. } | SchemaError::Refused { .. } => ErrorCategory::Transient,
            SchemaError::Throttled { .. } => ErrorCategory::Throttling,
            SchemaError::Auth { .. } => ErrorCategory::Auth,
        }
    }

    /// The error type in dead-letter envelopes and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SchemaError::Unknown { .. } | SchemaError::Unregistered { .. } => "schema_unknown",
            SchemaError::Decode { .. } => "schema_decode",
            SchemaError::Incompatible { .. } => "schema_incompatible",
            SchemaError::Unavailable { .. } => "schema_registry_unavailable",
            SchemaError::Throttled { .. } => "schema_registry_throttled",
            SchemaError::Auth { .. } => "schema_registry_auth",
            SchemaError::Refused { .. } => "schema_registry_refused",
        }
    }

    /// Whether the registry, not the message, is at fault and the message
    /// must wait rather than be dead-lettered.
    pub fn is_outage(&self) -> bool {
        matches!(self, SchemaError::Unavailable { .. } | SchemaError::Throttled { .. } | SchemaError::Refused { .. })
    }

    /// The schema id the failure concerns, when known.
    pub fn schema_id(&self) -> Option<&str> {
        match self {
            SchemaError::Unknown { id, .. } => Some(id),
            SchemaError::Decode { id, .. } | SchemaError::Incompatible { id, .. } => id.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_kinds_and_outages() {
        let r = || "reg".to_string();
        let table = [
            (
                SchemaError::Unknown { registry: r(), id: "7".into(), hint: None },
                ErrorCategory::Permanent,
                "schema_unknown",
                false,
                Some("7"),
            ),
            (
                SchemaError::Decode { id: Some("7".into()), reason: "x".into() },
                ErrorCategory::Permanent,
                "schema_decode",
                false,
                Some("7"),
            ),
            (
                SchemaError::Decode { id: None, reason: "x".into() },
                ErrorCategory::Permanent,
                "schema_decode",
                false,
                None,
            ),
            (
                SchemaError::Incompatible { id: Some("ab".into()), reason: "x".into() },
                ErrorCategory::Permanent,
                "schema_incompatible",
                false,
                Some("ab"),
            ),
            (
                SchemaError::Unavailable { registry: r(), reason: "x".into() },
                ErrorCategory::Transient,
                "schema_registry_unavailable",
                true,
                None,
            ),
            (
                SchemaError::Throttled { registry: r(), retry_after: Some(2) },
                ErrorCategory::Throttling,
                "schema_registry_throttled",
                true,
                None,
            ),
            (
                SchemaError::Auth { registry: r(), status: 401, reason: "x".into() },
                ErrorCategory::Auth,
                "schema_registry_auth",
                false,
                None,
            ),
            (
                SchemaError::Refused { registry: r(), status: 404, reason: "x".into() },
                ErrorCategory::Transient,
                "schema_registry_refused",
                true,
                None,
            ),
            (
                SchemaError::Unregistered { registry: r(), subject: "s".into(), hint: "h".into() },
                ErrorCategory::Permanent,
                "schema_unknown",
                false,
                None,
            ),
        ];
        for (e, category, kind, outage, id) in table {
            assert_eq!((e.category(), e.kind(), e.is_outage(), e.schema_id()), (category, kind, outage, id), "{e}");
        }
    }
}
