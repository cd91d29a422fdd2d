//! Failure classification: every error in Conveyor maps to one
//! [`ErrorCategory`], and the category alone decides what happens next.
//!
//! | category     | meaning                                   | worker reaction (with `dead_letter`)          |
//! |--------------|-------------------------------------------|-----------------------------------------------|
//! | `Transient`  | may succeed if tried again                | retried with backoff                          |
//! | `Throttling` | the other side asks us to slow down       | retried with a longer backoff                 |
//! | `Auth`       | credentials or permissions are wrong      | worker pauses, goes unready, retries, no DLQ  |
//! | `Permanent`  | will fail the same way every time         | dead-lettered at once                         |
//!
//! Transports and stages map their own errors to a category (see
//! `TransportError` and `StageError`); this module holds the shared
//! vocabulary and the HTTP status table used by stages that talk HTTP.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of failure an error is; drives retry, dead-letter and pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorCategory {
    Transient,
    Auth,
    Permanent,
    Throttling,
}

impl ErrorCategory {
    pub const ALL: [ErrorCategory; 4] =
        [ErrorCategory::Transient, ErrorCategory::Auth, ErrorCategory::Permanent, ErrorCategory::Throttling];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::Transient => "transient",
            ErrorCategory::Auth => "auth",
            ErrorCategory::Permanent => "permanent",
            ErrorCategory::Throttling => "throttling",
        }
    }

    /// Whether trying the same thing again can succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorCategory::Permanent)
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Category of an HTTP response status from a downstream service.
/// Returns `None` for success (2xx) and informational/redirect codes that a
/// client follows itself.
pub fn http_status(status: u16) -> Option<ErrorCategory> {
    Some(match status {
        100..=399 => return None,
        408 => ErrorCategory::Transient,
        429 => ErrorCategory::Throttling,
        401 | 403 => ErrorCategory::Auth,
        400..=499 => ErrorCategory::Permanent,
        503 => ErrorCategory::Throttling,
        _ => ErrorCategory::Transient,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCategory::*;

    #[test]
    fn http_status_table() {
        let table = [
            (200, None),
            (204, None),
            (304, None),
            (400, Some(Permanent)),
            (401, Some(Auth)),
            (403, Some(Auth)),
            (404, Some(Permanent)),
            (408, Some(Transient)),
            (409, Some(Permanent)),
            (422, Some(Permanent)),
            (429, Some(Throttling)),
            (500, Some(Transient)),
            (502, Some(Transient)),
            (503, Some(Throttling)),
            (504, Some(Transient)),
        ];
        for (status, want) in table {
            assert_eq!(http_status(status), want, "status {status}");
        }
    }

    #[test]
    fn only_permanent_is_not_retryable() {
        for c in ErrorCategory::ALL {
            assert_eq!(c.is_retryable(), c != Permanent);
        }
    }
}
