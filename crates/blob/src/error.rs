//! Errors and their classification.

use std::fmt;

/// How a caller should react to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Worth retrying with backoff: I/O and connect errors, timeouts, HTTP 408, 5xx
    /// (other than `503 ServerBusy`).
    Transient,
    /// The service asks to slow down: HTTP 429, or 503 with code `ServerBusy`.
    Throttling,
    /// Credentials are wrong, expired or lack permission: HTTP 401 and 403, or a
    /// [`TokenSource`](crate::TokenSource) that failed for a non-transient reason.
    Auth,
    /// A request that will fail the same way again: other 4xx, bad input, bad
    /// configuration, a response the client cannot understand.
    Permanent,
    /// An ETag condition failed: HTTP 412, or 409 `BlobAlreadyExists` (the answer to a
    /// create-only `If-None-Match: *` put). Someone else changed or created the blob.
    Conflict,
}

/// Which blob or container an operation was about (for messages; never secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub container: String,
    pub blob: Option<String>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.blob {
            Some(b) => write!(f, "{}/{}", self.container, b),
            None => write!(f, "{}", self.container),
        }
    }
}

/// Everything that can go wrong. Messages name the operation, the container/blob, the
/// HTTP status and the service's error code; they never contain keys, tokens or SAS
/// signatures (transport errors are stripped of their URL).
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The service answered with a non-success status.
    #[error("{0}")]
    Status(Box<ServiceError>),
    /// The request could not be sent or its response not read (connect refused, reset,
    /// timeout, TLS). The inner error has had its URL removed.
    #[error("{op} {target}: {}: {detail}", if *.timeout { "timed out" } else { "transport error" })]
    Transport {
        op: &'static str,
        target: Target,
        timeout: bool,
        /// The error and its causes, joined by `: ` (no URL).
        detail: String,
        /// The underlying error, URL removed. (Not the `source()`: its text is in `detail`.)
        error: reqwest::Error,
    },
    /// A success response that could not be understood (bad XML, missing header).
    #[error("{op} {target}: unexpected response: {detail}")]
    Response { op: &'static str, target: Target, detail: String },
    /// Bad endpoint, credentials or connection string. Names the offending key, never its value.
    #[error("blob client configuration: {0}")]
    Config(String),
    /// An argument the service would reject (bad metadata name, bad blob name, ...).
    #[error("invalid argument: {0}")]
    InvalidInput(String),
    /// A [`TokenSource`](crate::TokenSource) could not produce a token.
    #[error("token source: {message}")]
    Token { message: String, transient: bool },
}

/// A non-success answer of the service (boxed in [`BlobError::Status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {target}: HTTP {status}{}{}", code_part(.code), message_part(.message))]
pub struct ServiceError {
    pub op: &'static str,
    pub target: Target,
    pub status: u16,
    /// `x-ms-error-code` header, or `<Code>` of the error body.
    pub code: Option<String>,
    /// First line of `<Message>` of the error body.
    pub message: Option<String>,
    /// `x-ms-request-id`, for support requests.
    pub request_id: Option<String>,
}

fn code_part(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

fn message_part(msg: &Option<String>) -> String {
    msg.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
}

impl BlobError {
    /// For [`TokenSource`](crate::TokenSource) implementations: a token could not be had.
    /// `transient` picks [`Category::Transient`] (e.g. the identity endpoint was
    /// unreachable) over [`Category::Auth`].
    pub fn token(message: impl Into<String>, transient: bool) -> Self {
        BlobError::Token { message: message.into(), transient }
    }

    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            BlobError::Status(e) => Some(e.status),
            _ => None,
        }
    }

    /// The service's error code (`x-ms-error-code`), e.g. `ConditionNotMet`,
    /// `BlobAlreadyExists`, `ContainerNotFound`, `AuthenticationFailed`.
    pub fn code(&self) -> Option<&str> {
        match self {
            BlobError::Status(e) => e.code.as_deref(),
            _ => None,
        }
    }

    /// True when an ETag condition failed: 412 (`ConditionNotMet`, or a 412 of any code),
    /// or 409 `BlobAlreadyExists` (how the service answers a create-only put whose blob
    /// exists).
    pub fn is_condition_failed(&self) -> bool {
        match self {
            BlobError::Status(e) => match e.status {
                412 => true,
                409 => e.code.as_deref() == Some("BlobAlreadyExists"),
                _ => false,
            },
            _ => false,
        }
    }

    /// How to react to this error; see [`Category`].
    pub fn category(&self) -> Category {
        if self.is_condition_failed() {
            return Category::Conflict;
        }
        match self {
            BlobError::Status(e) => match e.status {
                429 => Category::Throttling,
                503 if e.code.as_deref() == Some("ServerBusy") => Category::Throttling,
                401 | 403 => Category::Auth,
                408 => Category::Transient,
                500..=599 => Category::Transient,
                _ => Category::Permanent,
            },
            BlobError::Transport { error, .. } => {
                if error.is_builder() {
                    Category::Permanent
                } else {
                    Category::Transient
                }
            }
            BlobError::Token { transient: true, .. } => Category::Transient,
            BlobError::Token { transient: false, .. } => Category::Auth,
            BlobError::Response { .. } | BlobError::Config(_) | BlobError::InvalidInput(_) => Category::Permanent,
        }
    }

    pub(crate) fn transport(op: &'static str, target: &Target, e: reqwest::Error) -> Self {
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let s = c.to_string();
            if !detail.ends_with(&s) {
                detail.push_str(": ");
                detail.push_str(&s);
            }
            cause = c.source();
        }
        BlobError::Transport { op, target: target.clone(), timeout: e.is_timeout(), detail, error: e }
    }

    pub(crate) fn response(op: &'static str, target: &Target, detail: impl Into<String>) -> Self {
        BlobError::Response { op, target: target.clone(), detail: detail.into() }
    }
}

/// Replaces the value of every `sig=` query parameter (the SAS signature) with
/// `REDACTED`, so that a URL or query string can be logged.
pub fn redact_sas(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        // find "sig=" at a parameter start: after '?', '&', or at the very start
        let mut found = None;
        let lower = rest.to_ascii_lowercase();
        let mut from = 0;
        while let Some(i) = lower[from..].find("sig=") {
            let at = from + i;
            let prev = if at == 0 { None } else { rest[..at].chars().last() };
            let at_param_start = match prev {
                None => out.is_empty() || out.ends_with('?') || out.ends_with('&'),
                Some(c) => c == '?' || c == '&',
            };
            if at_param_start {
                found = Some(at);
                break;
            }
            from = at + 4;
        }
        match found {
            None => {
                out.push_str(rest);
                return out;
            }
            Some(at) => {
                out.push_str(&rest[..at + 4]);
                out.push_str("REDACTED");
                let after = &rest[at + 4..];
                let end = after.find(['&', '#', ' ']).unwrap_or(after.len());
                rest = &after[end..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, code: Option<&str>) -> BlobError {
        BlobError::Status(Box::new(ServiceError {
            op: "put blob",
            target: Target { container: "c".into(), blob: Some("b".into()) },
            status,
            code: code.map(str::to_owned),
            message: None,
            request_id: None,
        }))
    }

    #[test]
    fn classification_table() {
        let table: &[(u16, Option<&str>, Category, bool)] = &[
            (412, Some("ConditionNotMet"), Category::Conflict, true),
            (412, None, Category::Conflict, true),
            (409, Some("BlobAlreadyExists"), Category::Conflict, true),
            (409, Some("ContainerAlreadyExists"), Category::Permanent, false),
            (409, Some("LeaseIdMissing"), Category::Permanent, false),
            (429, None, Category::Throttling, false),
            (503, Some("ServerBusy"), Category::Throttling, false),
            (503, Some("ServiceUnavailable"), Category::Transient, false),
            (503, None, Category::Transient, false),
            (500, Some("InternalError"), Category::Transient, false),
            (500, Some("OperationTimedOut"), Category::Transient, false),
            (502, None, Category::Transient, false),
            (408, None, Category::Transient, false),
            (401, None, Category::Auth, false),
            (403, Some("AuthenticationFailed"), Category::Auth, false),
            (403, Some("AuthorizationPermissionMismatch"), Category::Auth, false),
            (400, Some("InvalidHeaderValue"), Category::Permanent, false),
            (404, Some("BlobNotFound"), Category::Permanent, false),
            (404, Some("ContainerNotFound"), Category::Permanent, false),
            (304, None, Category::Permanent, false),
        ];
        for (s, c, cat, cond) in table {
            let e = status(*s, *c);
            assert_eq!(e.category(), *cat, "{s} {c:?}");
            assert_eq!(e.is_condition_failed(), *cond, "{s} {c:?}");
            assert_eq!(e.status(), Some(*s));
            assert_eq!(e.code(), *c);
        }
        assert_eq!(BlobError::token("x", true).category(), Category::Transient);
        assert_eq!(BlobError::token("x", false).category(), Category::Auth);
        assert_eq!(BlobError::Config("x".into()).category(), Category::Permanent);
        assert_eq!(BlobError::InvalidInput("x".into()).category(), Category::Permanent);
        assert_eq!(BlobError::Config("x".into()).status(), None);
    }

    #[test]
    fn status_message_names_everything() {
        let e = BlobError::Status(Box::new(ServiceError {
            op: "put blob",
            target: Target { container: "ckpt".into(), blob: Some("a/b".into()) },
            status: 412,
            code: Some("ConditionNotMet".into()),
            message: Some("The condition specified using HTTP conditional header(s) is not met.".into()),
            request_id: Some("rid".into()),
        }));
        assert_eq!(
            e.to_string(),
            "put blob ckpt/a/b: HTTP 412 ConditionNotMet: The condition specified using HTTP conditional header(s) is not met."
        );
        let e = BlobError::Status(Box::new(ServiceError {
            op: "create container",
            target: Target { container: "c".into(), blob: None },
            status: 500,
            code: None,
            message: None,
            request_id: None,
        }));
        assert_eq!(e.to_string(), "create container c: HTTP 500");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_sas("https://a.blob.core.windows.net/c/b?sv=2021-08-06&ss=b&sig=abc%2Bdef%3D&se=2030"),
            "https://a.blob.core.windows.net/c/b?sv=2021-08-06&ss=b&sig=REDACTED&se=2030"
        );
        assert_eq!(redact_sas("sig=secret"), "sig=REDACTED");
        assert_eq!(redact_sas("sv=1&SIG=secret"), "sv=1&SIG=REDACTED");
        assert_eq!(redact_sas("sv=1&sig=a&x=1&sig=b"), "sv=1&sig=REDACTED&x=1&sig=REDACTED");
        // not a parameter named sig
        assert_eq!(redact_sas("sv=1&xsig=keep&design=keep"), "sv=1&xsig=keep&design=keep");
        assert_eq!(redact_sas("http://h/c/b"), "http://h/c/b");
    }
}
