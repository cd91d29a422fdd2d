//! The entity API of the admin listener: read and write any entity of the
//! running daemon, for `conveyor tail`, `conveyor produce` and `conveyor dlq
//! inspect` while the daemon holds an embedded store (which admits one
//! process) or keeps it in memory.
//!
//! - `GET /v1/entities/{entity}/partitions`: `[{"partition","earliest","next"}]`.
//! - `GET /v1/entities/{entity}/messages?partition=P&from=N&max=M&wait_ms=W`:
//!   up to `M` (default 500, at most 5000) messages of partition `P` from
//!   position `N` on (default: the first stored), one JSON object per line
//!   ([`crate::transport::json::Record`]); waits up to `W` ms (default 0, at
//!   most 30000) for the first one, and answers an empty body when none
//!   came. Reads as no consumer group: nothing is committed.
//! - `POST /v1/entities/{entity}/messages`: one
//!   [`crate::transport::json::Outbound`] per line; answers
//!   `{"positions":[{"partition","position"}...]}` once the transport
//!   acknowledged all of them, else `503` (transient) or `400` (refused),
//!   with nothing of the batch assumed written.
//!
//! - `POST /v1/entities/{dlq}/redrive` with a JSON
//!   [`crate::redrive::Request`]: runs `dlq redrive` of that
//!   dead-letter entity with the daemon's transports and answers its report
//!   (what `conveyor dlq redrive` does while the daemon holds the store).
//!
//! An entity is read and written where its producers write now (the new
//! side of a migration once it cut over). With `service.http.token` set,
//! every request needs `Authorization: Bearer <token>`; without it, only
//! loopback clients are answered.

use super::AdminState;
use crate::bearer::authorized;
use crate::transport::json::{DAEMON_STARTING, Outbound, Position, Record};
use crate::transport::{Producer, Seek, Transport, TransportError};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Most messages one read answers.
pub const MAX_READ: usize = 5000;
/// Longest wait of one read.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Largest produce body.
pub const MAX_PRODUCE_BYTES: usize = 64 << 20;

/// Where each entity is read and written now, by its config name.
pub type Locate = Arc<dyn Fn(&str) -> Option<EntityAccess> + Send + Sync>;

/// Where an entity is read and written now.
pub struct EntityAccess {
    pub transport: Arc<dyn Transport>,
    pub producer: Arc<dyn Producer>,
    /// Its name on that transport.
    pub physical: String,
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, axum::Json(serde_json::json!({"error": message.to_string()}))).into_response()
}

fn transport_error(entity: &str, e: TransportError) -> Response {
    let code = match e.category() {
        crate::classify::ErrorCategory::Permanent => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, format!("entity {entity:?}: {e}"))
}

/// The entity's access, or the answer that refuses the request.
fn admit(s: &AdminState, peer: SocketAddr, headers: &HeaderMap, entity: &str) -> Result<EntityAccess, Box<Response>> {
    let token = (s.token)();
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match &token {
        Some(t) if !authorized(Some(t), given) => {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (service.http.token)",
            )));
        }
        None if !peer.ip().is_loopback() => {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "the entity API answers loopback clients only unless service.http.token is set",
            )));
        }
        _ => {}
    }
    if (s.config)().generation == 0 {
        return Err(Box::new(error(StatusCode::SERVICE_UNAVAILABLE, DAEMON_STARTING)));
    }
    (s.entities)(entity)
        .ok_or_else(|| Box::new(error(StatusCode::NOT_FOUND, format!("entity {entity:?} is not in the config"))))
}

pub async fn partitions(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(entity): Path<String>,
    headers: HeaderMap,
) -> Response {
    let a = match admit(&s, peer, &headers, &entity) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match a.transport.partitions(&a.physical).await {
        Ok(ps) => {
            let v: Vec<_> = ps
                .iter()
                .map(|p| serde_json::json!({"partition": p.partition, "earliest": p.earliest, "next": p.next}))
                .collect();
            axum::Json(v).into_response()
        }
        Err(e) => transport_error(&entity, e),
    }
}

/// `partition`, `from`, `max`, `wait_ms` of a read.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadQuery {
    pub partition: u32,
    pub from: Option<i64>,
    pub max: usize,
    pub wait: Duration,
}

/// A read's query string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{key}={value:?} is not a number")]
    NotANumber { key: String, value: String },
    #[error("unknown parameter {0:?} (partition, from, max, wait_ms)")]
    Unknown(String),
    #[error("partition=P is required")]
    NoPartition,
}

/// Parses a read's query string (a pure function).
pub fn read_query(q: Option<&str>) -> Result<ReadQuery, QueryError> {
    let mut r = ReadQuery { partition: 0, from: None, max: 500, wait: Duration::ZERO };
    let mut partition = None;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || QueryError::NotANumber { key: k.into(), value: v.into() };
        match k {
            "partition" => partition = Some(v.parse::<u32>().map_err(|_| bad())?),
            "from" => r.from = Some(v.parse::<i64>().map_err(|_| bad())?),
            "max" => r.max = v.parse::<usize>().map_err(|_| bad())?.clamp(1, MAX_READ),
            "wait_ms" => r.wait = Duration::from_millis(v.parse::<u64>().map_err(|_| bad())?).min(MAX_WAIT),
            other => return Err(QueryError::Unknown(other.into())),
        }
    }
    r.partition = partition.ok_or(QueryError::NoPartition)?;
    Ok(r)
}

pub async fn read(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(entity): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let a = match admit(&s, peer, &headers, &entity) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let q = match read_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let seek = q.from.map_or(Seek::Earliest, Seek::At);
    let mut reader = match a.transport.open_reader(&a.physical, q.partition, seek).await {
        Ok(r) => r,
        Err(e) => return transport_error(&entity, e),
    };
    let mut batch = Vec::new();
    // nothing within the wait is an empty answer, not an error
    if let Ok(Err(e)) = tokio::time::timeout(q.wait, reader.fetch(q.max, &mut batch)).await {
        return transport_error(&entity, e);
    }
    let mut out = String::new();
    for m in batch.iter().take(q.max) {
        // a record always serializes (string keys, no floats)
        out.push_str(&serde_json::to_string(&Record::of(&entity, m)).unwrap_or_default());
        out.push('\n');
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
}

pub async fn write(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(entity): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let a = match admit(&s, peer, &headers, &entity) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let body = match axum::body::to_bytes(body, MAX_PRODUCE_BYTES).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_PRODUCE_BYTES} bytes")),
    };
    let mut batch = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let m = serde_json::from_slice::<Outbound>(line)
            .map_err(|e| e.to_string())
            .and_then(|o| o.message().map_err(|e| e.to_string()));
        match m {
            Ok(m) => batch.push(m),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("line {}: {e}", i + 1)),
        }
    }
    match a.producer.send(&a.physical, batch).await {
        Ok(rs) => {
            let positions: Vec<Position> =
                rs.iter().map(|r| Position { partition: r.partition, position: r.position }).collect();
            axum::Json(serde_json::json!({ "positions": positions })).into_response()
        }
        Err(e) => transport_error(&entity, e),
    }
}

pub async fn redrive(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(entity): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use crate::redrive::{self, RedriveError, Request};
    if let Err(r) = admit(&s, peer, &headers, &entity) {
        return *r;
    }
    let req = match serde_json::from_slice::<Request>(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a redrive request: {e}")),
    };
    let o = match req.options(&entity) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    tracing::info!(entity = %entity, to = ?o.to, group = %o.group, dry_run = o.dry_run, "redrive asked over the entity API");
    // the redrive's future is not `Send` (its async closures): it runs on
    // a blocking thread, driven by this runtime, and stops when this
    // request goes away (the client left, or a drain cut it off)
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_when_dropped = stop.clone().drop_guard();
    let handle = tokio::runtime::Handle::current();
    let entities = s.entities.clone();
    let job = tokio::task::spawn_blocking(move || {
        let locate = |name: &str| entities(name).map(|a| (a.transport, a.physical));
        handle.block_on(async {
            tokio::select! {
                r = redrive::run(&locate, &o) => Some(r),
                _ = stop.cancelled() => None,
            }
        })
    });
    let done = match job.await {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "the redrive was stopped"),
    };
    match done {
        Ok(report) => axum::Json(report).into_response(),
        Err(e @ (RedriveError::UnknownEntity(_) | RedriveError::BadFilter(_) | RedriveError::BadRate(_))) => {
            error(StatusCode::BAD_REQUEST, e)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_queries_parse_clamp_and_refuse() {
        let q = read_query(Some("partition=2&from=10&max=99999&wait_ms=999999")).unwrap();
        assert_eq!(q, ReadQuery { partition: 2, from: Some(10), max: MAX_READ, wait: MAX_WAIT });
        let q = read_query(Some("partition=0")).unwrap();
        assert_eq!(q, ReadQuery { partition: 0, from: None, max: 500, wait: Duration::ZERO });
        assert_eq!(read_query(None), Err(QueryError::NoPartition));
        assert_eq!(
            read_query(Some("partition=x")),
            Err(QueryError::NotANumber { key: "partition".into(), value: "x".into() })
        );
        assert_eq!(read_query(Some("partition=0&limit=3")), Err(QueryError::Unknown("limit".into())));
    }
}
