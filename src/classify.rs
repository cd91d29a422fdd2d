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
//! vocabulary and the tables they use: HTTP statuses ([`http_status`]), Kafka
//! error codes ([`kafka_error`], by librdkafka's `RDKafkaErrorCode` names) and
//! Event Hubs AMQP conditions ([`amqp_condition`]). A panic in a stage is
//! `Permanent` (`StageError::Panic`): the same input would panic again.
//!
//! # The seed pipeline's exception names and their Rust equivalents
//!
//! | seed (Python) | category | Conveyor / Rust equivalent |
//! |---|---|---|
//! | `BrokerNotAvailableError`, `KafkaConnectionError`, `NodeNotReadyError`, `RequestTimedOutError`, `NotLeaderForPartitionError` | transient | rdkafka `BrokerNotAvailable`, `BrokerTransportFailure`, `AllBrokersDown`, `RequestTimedOut`, `NotLeaderForPartition`, `LeaderNotAvailable` |
//! | `TopicAuthorizationFailedError`, `GroupAuthorizationFailedError`, `SaslAuthenticationError` | auth | rdkafka `TopicAuthorizationFailed`, `GroupAuthorizationFailed`, `ClusterAuthorizationFailed`, `SaslAuthenticationFailed`, `Authentication` |
//! | `UnknownTopicOrPartitionError`, `MessageSizeTooLargeError`, `InvalidTopicError`, `CorruptRecordException` | permanent | rdkafka `UnknownTopicOrPartition` (after retries), `MessageSizeTooLarge`, `InvalidTopic`, `CorruptMessage`, `InvalidRecord` |
//! | `KafkaThrottlingError` | throttling | rdkafka `ThrottlingQuotaExceeded`, `PolicyViolation` is permanent |
//! | `EventHubError` (base), `ConnectError`, `ConnectionLostError`, `OperationTimeoutError`, `AMQPConnectionError` | transient | `azure_messaging_eventhubs` 0.16 `ErrorKind::AmqpError(ConnectionDropped / LinkDetachedByRemote / IdleTimeoutElapsed)`, conditions `amqp:connection:forced`, `amqp:link:detach-forced`, `com.microsoft:timeout` |
//! | `AuthenticationError`, `ClientAuthenticationError` | auth | CBS `ManagementStatusCode(401/403)`, condition `amqp:unauthorized-access` |
//! | `EventDataSendError`, `EventDataError`, `SchemaError` (not in azure-eventhub 5.15) | permanent | `ErrorKind::InvalidBatchSize`, `SendRejected`, condition `amqp:link:message-size-exceeded`, `amqp:not-found` |
//! | `ServerBusyError` | throttling | condition `com.microsoft:server-busy`, `amqp:resource-limit-exceeded` |
//! | `OwnershipLostError` | transient (the partition is released) | `ErrorKind::ConsumerDisconnected`, condition `amqp:link:stolen` |

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

/// Category of a Kafka error, by librdkafka's `RDKafkaErrorCode` variant
/// name (as `format!("{code:?}")` prints it). Unknown codes are `Transient`:
/// retrying something unknown is safer than dead-lettering it.
pub fn kafka_error(code: &str) -> ErrorCategory {
    use ErrorCategory::*;
    match code {
        "TopicAuthorizationFailed"
        | "GroupAuthorizationFailed"
        | "ClusterAuthorizationFailed"
        | "TransactionalIdAuthorizationFailed"
        | "DelegationTokenAuthorizationFailed"
        | "SaslAuthenticationFailed"
        | "Authentication"
        | "UnsupportedSaslMechanism"
        | "IllegalSaslState" => Auth,
        "ThrottlingQuotaExceeded" => Throttling,
        "MessageSizeTooLarge"
        | "InvalidMessageSize"
        | "InvalidTopic"
        | "InvalidRecord"
        | "CorruptMessage"
        | "InvalidMessage"
        | "RecordListTooLarge"
        | "PolicyViolation"
        | "UnsupportedForMessageFormat"
        | "UnsupportedVersion"
        | "InvalidRequiredAcks"
        | "InvalidConfig"
        | "Fatal"
        | "InvalidArgument" => Permanent,
        _ => Transient,
    }
}

impl From<conveyor_blob::Category> for ErrorCategory {
    /// Blob Storage errors; a lost ETag race (`Conflict`) is worth retrying.
    fn from(c: conveyor_blob::Category) -> Self {
        use conveyor_blob::Category as C;
        match c {
            C::Transient | C::Conflict => ErrorCategory::Transient,
            C::Throttling => ErrorCategory::Throttling,
            C::Auth => ErrorCategory::Auth,
            C::Permanent => ErrorCategory::Permanent,
        }
    }
}

/// Category of an AMQP error condition from Event Hubs.
pub fn amqp_condition(condition: &str) -> ErrorCategory {
    use ErrorCategory::*;
    match condition {
        "com.microsoft:server-busy" | "amqp:resource-limit-exceeded" | "com.microsoft:quota-exceeded" => Throttling,
        "amqp:unauthorized-access" | "com.microsoft:auth-failed" => Auth,
        "amqp:link:message-size-exceeded"
        | "com.microsoft:message-size-exceeded"
        | "amqp:not-found"
        | "com.microsoft:entity-disabled"
        | "amqp:not-allowed"
        | "amqp:not-implemented"
        | "amqp:invalid-field"
        | "amqp:decode-error"
        | "com.microsoft:argument-error"
        | "com.microsoft:argument-out-of-range" => Permanent,
        // amqp:link:stolen, connection forced, detach forced, timeouts,
        // internal errors: try again (a stolen link releases the partition)
        _ => Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCategory::*;

    #[test]
    fn kafka_error_table() {
        let table = [
            ("BrokerTransportFailure", Transient),
            ("AllBrokersDown", Transient),
            ("RequestTimedOut", Transient),
            ("NotLeaderForPartition", Transient),
            ("LeaderNotAvailable", Transient),
            ("NotCoordinator", Transient),
            ("UnknownTopicOrPartition", Transient),
            ("TopicAuthorizationFailed", Auth),
            ("GroupAuthorizationFailed", Auth),
            ("SaslAuthenticationFailed", Auth),
            ("Authentication", Auth),
            ("ThrottlingQuotaExceeded", Throttling),
            ("MessageSizeTooLarge", Permanent),
            ("InvalidTopic", Permanent),
            ("CorruptMessage", Permanent),
            ("PolicyViolation", Permanent),
            ("SomethingNew", Transient),
        ];
        for (code, want) in table {
            assert_eq!(kafka_error(code), want, "{code}");
        }
    }

    #[test]
    fn amqp_condition_table() {
        let table = [
            ("com.microsoft:server-busy", Throttling),
            ("amqp:resource-limit-exceeded", Throttling),
            ("amqp:unauthorized-access", Auth),
            ("amqp:link:message-size-exceeded", Permanent),
            ("amqp:not-found", Permanent),
            ("amqp:link:stolen", Transient),
            ("amqp:connection:forced", Transient),
            ("amqp:link:detach-forced", Transient),
            ("com.microsoft:timeout", Transient),
            ("amqp:internal-error", Transient),
        ];
        for (cond, want) in table {
            assert_eq!(amqp_condition(cond), want, "{cond}");
        }
    }

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
