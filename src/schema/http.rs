//! What the two registry clients share: the HTTP client (timeout, extra CA
//! certificates) and the meaning of an answer's status, as a pure function.

use super::SchemaError;
use std::path::Path;
use std::time::Duration;

/// Why a registry client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("schema_registries.{registry}.tls.ca: cannot read {path}: {reason}")]
    Ca { registry: String, path: String, reason: String },
    #[error("schema_registries.{registry}: {reason}")]
    Client { registry: String, reason: String },
    #[error(
        "schema_registries.{registry}: type azure needs the `eventhubs` feature (it brings the Entra ID credentials)"
    )]
    NoAzure { registry: String },
    #[cfg(feature = "eventhubs")]
    #[error("schema_registries.{registry}.credential: {source}")]
    Credential { registry: String, source: Box<crate::azure::AzureError> },
}

/// An HTTP client with `timeout` for every request, trusting the PEM
/// certificates in `ca` besides the built-in roots.
pub(super) fn client(registry: &str, timeout: Duration, ca: Option<&Path>) -> Result<reqwest::Client, SetupError> {
    let mut b = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout.min(Duration::from_secs(10)));
    if let Some(path) = ca {
        let bad =
            |reason: String| SetupError::Ca { registry: registry.into(), path: path.display().to_string(), reason };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| SetupError::Client { registry: registry.into(), reason: e.to_string() })
}

/// What an answer's status means, whatever the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    /// 404: the operation says what was not found.
    NotFound,
    /// 400, 409, 422: the request (a schema) was refused.
    Refused,
    Auth,
    Throttled,
    /// 408, 5xx.
    Unavailable,
    /// Anything else.
    Other,
}

pub(super) fn status(code: u16) -> Status {
    match code {
        200..=299 => Status::Ok,
        404 => Status::NotFound,
        400 | 409 | 422 => Status::Refused,
        401 | 403 => Status::Auth,
        429 => Status::Throttled,
        408 | 500..=599 => Status::Unavailable,
        _ => Status::Other,
    }
}

/// The error of a failed request that never got an answer.
pub(super) fn unreachable(registry: &str, e: &reqwest::Error) -> SchemaError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // reqwest's message names the URL (never a credential: those go in
    // headers); the causes say why (refused, TLS, DNS)
    let mut reason = format!("{what}: {e}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        reason.push_str(": ");
        reason.push_str(&c.to_string());
        cause = c.source();
    }
    SchemaError::Unavailable { registry: registry.into(), reason: crate::text::clip(&reason, 1024).to_string() }
}

/// An answer the operation did not expect, as an error. The body is
/// clipped (it is the registry's text, shown in logs and envelopes).
pub(super) async fn unexpected(registry: &str, resp: reqwest::Response) -> SchemaError {
    let code = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = body_text(resp).await;
    let registry = registry.to_string();
    match status(code) {
        Status::Auth => SchemaError::Auth { registry, status: code, reason: body },
        Status::Throttled => SchemaError::Throttled { registry, retry_after },
        Status::Unavailable => SchemaError::Unavailable { registry, reason: format!("answered {code}: {body}") },
        _ => SchemaError::Refused { registry, status: code, reason: body },
    }
}

/// Whether a 404 is the registry's own "not found" (its error code in
/// `codes`: Confluent's `error_code`, Azure's `error.code`) rather than a
/// wrong path or a proxy's page, which is an error (`Refused`).
pub(super) async fn not_found(registry: &str, resp: reqwest::Response, codes: &[&str]) -> Result<(), SchemaError> {
    let body = body_text(resp).await;
    let code = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| match &v["error_code"] {
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => v["error"]["code"].as_str().map(str::to_string),
    });
    if code.as_deref().is_some_and(|c| codes.contains(&c)) {
        Ok(())
    } else {
        Err(SchemaError::Refused {
            registry: registry.into(),
            status: 404,
            reason: format!("not this registry's \"not found\" (is the URL right?): {body}"),
        })
    }
}

/// The first 512 bytes of an answer's body, as text.
pub(super) async fn body_text(resp: reqwest::Response) -> String {
    let bytes = resp.bytes().await.unwrap_or_default();
    crate::text::clip_bytes(&bytes, 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let table = [
            (200, Status::Ok),
            (204, Status::Ok),
            (404, Status::NotFound),
            (400, Status::Refused),
            (409, Status::Refused),
            (422, Status::Refused),
            (401, Status::Auth),
            (403, Status::Auth),
            (429, Status::Throttled),
            (408, Status::Unavailable),
            (500, Status::Unavailable),
            (503, Status::Unavailable),
            (302, Status::Other),
            (418, Status::Other),
        ];
        for (code, want) in table {
            assert_eq!(status(code), want, "{code}");
        }
    }
}
