//! `type: http`: messages `POST`ed over HTTP into an entity.
//!
//! **Requests.** `POST <path>` carries one message: the body is the payload
//! (any content type), `Conveyor-Key` sets the key, and the request headers
//! named in `headers:` are copied onto the message. With `Content-Type:
//! application/x-ndjson` (or `application/ndjson`, `application/jsonl`) the
//! body holds one message per line; every line must be JSON, blank lines are
//! skipped, and the key and headers apply to every line.
//!
//! **Answers.**
//! - `200 {"accepted":N,"first":{..},"last":{..}}` only after the transport
//!   acknowledged every message (durably, as each transport defines it).
//! - `400` with `{"error","line"}` for a line that is not JSON (nothing is
//!   written), or an empty body; `400` with `{"error","acknowledged",
//!   "acknowledged_through_line"}` when the transport refuses a message for
//!   good (a header Event Hubs cannot carry, say).
//! - `408` when the body does not arrive within `timeout`.
//! - `401` without the bearer token (when `token` is set).
//! - `413` for a body over `max_body_bytes`, a batch over `max_in_flight`
//!   messages, or a message the transport refuses as too large.
//! - `429` with `Retry-After` while `max_in_flight` messages are being
//!   written (back-pressure).
//! - `503` with `Retry-After` when the transport fails or does not
//!   acknowledge within `timeout`. Messages go out in order, in chunks of
//!   [`CHUNK`]: the answer says how many (`acknowledged`) and through which
//!   line (`acknowledged_through_line`) the transport acknowledged. The
//!   others were not acknowledged; some of them may still arrive, so a
//!   client that sends them again gets at-least-once, never a loss.
//!
//! **Where it listens.** With `listen`, on a listener of its own (HTTPS with
//! `tls`); otherwise as a route of the admin listener ([`Routes`]). A drain
//! stops taking new connections and lets requests in flight finish; on the
//! admin listener, a configured source that is not running (starting,
//! restarting, draining) answers `503` with `Retry-After`, never `404`.
//!
//! Nothing here logs a body or the token; a transport's refusal (logged and
//! answered) may quote the key it refused.

use crate::bearer::authorized;
use crate::classify::ErrorCategory;
use crate::config::{Secret, TlsFiles};
use crate::health::{TaskHealth, TaskState};
use crate::metrics::{Metrics, SourceCode, SourceLabel, SourceReason};
use crate::supervisor::Exit;
use crate::transport::{Headers, OutboundMessage, ProduceResult, Producer, TransportError};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Messages per transport send; acknowledgements are reported per chunk.
pub const CHUNK: usize = 1000;
/// The header whose value becomes the message key.
pub const KEY_HEADER: &str = "conveyor-key";
/// Longest TLS handshake of a client.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A running `type: http` source.
pub struct Ingest {
    pub name: String,
    pub entity: String,
    /// The entity's name on its transport.
    pub physical: String,
    pub producer: Arc<dyn Producer>,
    pub listen: Option<SocketAddr>,
    pub path: String,
    pub token: Option<Secret>,
    pub tls: Option<TlsFiles>,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub headers: Vec<HeaderName>,
    pub timeout: Duration,
    pub in_flight: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<TaskHealth>,
}

/// Why a request was refused: its status and metric reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Unauthorized,
    BodyTooLarge {
        limit: usize,
    },
    TooManyMessages {
        count: usize,
        limit: usize,
    },
    Empty,
    /// The body did not arrive within `timeout`.
    SlowBody {
        waited: Duration,
    },
    BadLine {
        line: usize,
        error: String,
    },
    Busy,
    /// The transport failed or did not answer in time; `acknowledged`
    /// messages (through line `through_line`) were acknowledged.
    Unavailable {
        error: String,
        acknowledged: usize,
        through_line: usize,
    },
    /// The transport refused a message for good.
    Refused {
        error: String,
        too_large: bool,
        acknowledged: usize,
        through_line: usize,
    },
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Unauthorized => StatusCode::UNAUTHORIZED,
            Rejection::BodyTooLarge { .. } | Rejection::TooManyMessages { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Refused { too_large: true, .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Empty | Rejection::BadLine { .. } | Rejection::Refused { .. } => StatusCode::BAD_REQUEST,
            Rejection::SlowBody { .. } => StatusCode::REQUEST_TIMEOUT,
            Rejection::Busy => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label of `conveyor_ingest_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unauthorized => "unauthorized",
            Rejection::BodyTooLarge { .. } | Rejection::TooManyMessages { .. } => "too_large",
            Rejection::Empty | Rejection::BadLine { .. } | Rejection::SlowBody { .. } => "bad_request",
            Rejection::Busy => "busy",
            Rejection::Unavailable { .. } => "unavailable",
            Rejection::Refused { .. } => "refused",
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            Rejection::Unauthorized => json!({"error": "missing or wrong bearer token"}),
            Rejection::BodyTooLarge { limit } => {
                json!({"error": format!("the body is larger than max_body_bytes ({limit} bytes)")})
            }
            Rejection::TooManyMessages { count, limit } => json!({
                "error": format!("{count} messages in one request is more than max_in_flight ({limit}); send smaller batches")
            }),
            Rejection::Empty => json!({"error": "the body holds no message"}),
            Rejection::BadLine { line, error } => json!({"error": format!("line {line}: {error}"), "line": line}),
            Rejection::SlowBody { waited } => json!({"error": format!("the body did not arrive within {waited:?}")}),
            Rejection::Busy => json!({"error": "too many messages in flight; retry later"}),
            Rejection::Unavailable { error, acknowledged, through_line } => json!({
                "error": error, "acknowledged": acknowledged, "acknowledged_through_line": through_line
            }),
            Rejection::Refused { error, acknowledged, through_line, .. } => json!({
                "error": error, "acknowledged": acknowledged, "acknowledged_through_line": through_line
            }),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut r = (self.status(), axum::Json(self.body())).into_response();
        match self {
            Rejection::Unauthorized => {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            }
            Rejection::Busy | Rejection::Unavailable { .. } => {
                r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

/// Whether a `Content-Type` asks for one message per line.
pub fn is_ndjson(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines"
    )
}

/// One message to write and the body line it came from (1 for a
/// single-message body).
#[derive(Debug)]
pub struct Parsed {
    pub messages: Vec<OutboundMessage>,
    pub lines: Vec<usize>,
}

/// The messages of a request body. A pure function of its inputs.
pub fn parse(body: Bytes, ndjson: bool, key: Option<Bytes>, headers: &Headers) -> Result<Parsed, Rejection> {
    let message = |payload: Bytes| OutboundMessage {
        key: key.clone(),
        headers: headers.clone(),
        payload,
        partition: None,
        timestamp_ms: None,
    };
    if !ndjson {
        if body.is_empty() {
            return Err(Rejection::Empty);
        }
        return Ok(Parsed { messages: vec![message(body)], lines: vec![1] });
    }
    let mut messages = Vec::new();
    let mut lines = Vec::new();
    // a UTF-8 byte order mark (some Windows tools write one) is not data
    let body = if body.starts_with(b"\xef\xbb\xbf") { body.slice(3..) } else { body };
    let mut start = 0usize;
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let end = start + raw.len();
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if !line.iter().all(u8::is_ascii_whitespace) {
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                return Err(Rejection::BadLine { line: i + 1, error: e.to_string() });
            }
            messages.push(message(body.slice(start..start + line.len())));
            lines.push(i + 1);
        }
        start = end + 1;
    }
    if messages.is_empty() {
        return Err(Rejection::Empty);
    }
    Ok(Parsed { messages, lines })
}

/// Reads a body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Option<Rejection>> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        // the client went away mid-body: nothing to answer
        let chunk = chunk.map_err(|_| None)?;
        if buf.len() + chunk.len() > limit {
            return Err(Some(Rejection::BodyTooLarge { limit }));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn position(r: &ProduceResult) -> serde_json::Value {
    json!({"partition": r.partition, "position": r.position})
}

impl Ingest {
    /// Answers one request (the route handler of either listener).
    pub async fn answer(&self, headers: &HeaderMap, body: Body) -> Response {
        let r = match self.take(headers, body).await {
            Ok(resp) => resp,
            Err(Some(rej)) => {
                self.metrics
                    .ingest_rejections
                    .get_or_create(&SourceReason { source: self.name.clone(), reason: rej.reason().into() })
                    .inc();
                match &rej {
                    Rejection::Unavailable { error, acknowledged, .. }
                    | Rejection::Refused { error, acknowledged, .. } => {
                        tracing::warn!(source = %self.name, entity = %self.entity, error = %error, acknowledged, "ingest request not fully written");
                    }
                    Rejection::Unauthorized => {
                        tracing::warn!(source = %self.name, "ingest request without the right bearer token");
                    }
                    other => tracing::debug!(source = %self.name, reason = other.reason(), "ingest request refused"),
                }
                rej.into_response()
            }
            Err(None) => StatusCode::BAD_REQUEST.into_response(),
        };
        self.metrics
            .ingest_requests
            .get_or_create(&SourceCode { source: self.name.clone(), code: r.status().as_u16().to_string() })
            .inc();
        r
    }

    async fn take(&self, headers: &HeaderMap, body: Body) -> Result<Response, Option<Rejection>> {
        let auth = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if !authorized(self.token.as_ref(), auth) {
            return Err(Some(Rejection::Unauthorized));
        }
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes) {
            return Err(Some(Rejection::BodyTooLarge { limit: self.max_body_bytes }));
        }
        // a client that stalls mid-body is not waited for longer than an ack
        let body = match tokio::time::timeout(self.timeout, read_body(body, self.max_body_bytes)).await {
            Ok(b) => b?,
            Err(_) => return Err(Some(Rejection::SlowBody { waited: self.timeout })),
        };
        let ndjson = is_ndjson(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()));
        let key = headers.get(KEY_HEADER).map(|v| Bytes::copy_from_slice(v.as_bytes()));
        let mut carried = Headers::default();
        for name in &self.headers {
            for v in headers.get_all(name) {
                carried.0.push((name.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes())));
            }
        }
        let Parsed { messages, lines } = parse(body, ndjson, key, &carried)?;
        let count = messages.len();
        if count > self.max_in_flight {
            return Err(Some(Rejection::TooManyMessages { count, limit: self.max_in_flight }));
        }
        let permits = u32::try_from(count).unwrap_or(u32::MAX);
        let Ok(_permit) = self.in_flight.clone().try_acquire_many_owned(permits) else {
            return Err(Some(Rejection::Busy));
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut acked: Vec<ProduceResult> = Vec::with_capacity(count);
        let mut rest = messages;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(CHUNK));
            let chunk = std::mem::replace(&mut rest, tail);
            let sent = tokio::time::timeout_at(deadline, self.producer.send(&self.physical, chunk)).await;
            let through_line = acked.len().checked_sub(1).and_then(|i| lines.get(i).copied()).unwrap_or(0);
            match sent {
                Ok(Ok(results)) => acked.extend(results),
                Ok(Err(e)) => return Err(Some(self.failed(&e, acked.len(), through_line))),
                Err(_) => {
                    return Err(Some(Rejection::Unavailable {
                        error: format!("the transport did not acknowledge within {:?} (timeout)", self.timeout),
                        acknowledged: acked.len(),
                        through_line,
                    }));
                }
            }
        }
        self.metrics
            .ingest_messages
            .get_or_create(&SourceLabel { source: self.name.clone(), entity: self.entity.clone() })
            .inc_by(count as u64);
        let body = json!({
            "accepted": count,
            "first": acked.first().map(position),
            "last": acked.last().map(position),
        });
        Ok((StatusCode::OK, axum::Json(body)).into_response())
    }

    fn failed(&self, e: &TransportError, acknowledged: usize, through_line: usize) -> Rejection {
        let error = format!("entity {:?}: {e}", self.entity);
        match e.category() {
            ErrorCategory::Permanent => Rejection::Refused {
                too_large: matches!(e, TransportError::TooLarge { .. }),
                error,
                acknowledged,
                through_line,
            },
            ErrorCategory::Transient | ErrorCategory::Throttling | ErrorCategory::Auth => {
                Rejection::Unavailable { error, acknowledged, through_line }
            }
        }
    }

    /// Serves until `cancel`: on a listener of its own, or as a route of the
    /// admin listener registered in `routes`.
    pub async fn run(self: &Arc<Self>, routes: &Arc<Routes>, cancel: CancellationToken) -> Option<Exit> {
        let Some(addr) = self.listen else {
            let _route = routes.register(self.clone());
            self.health.set(TaskState::Ready);
            tracing::info!(source = %self.name, entity = %self.entity, path = %self.path, "HTTP ingest up on the admin listener");
            cancel.cancelled().await;
            return None;
        };
        let failed = |what: String| Some(Exit::Failed(ErrorCategory::Transient, what));
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return failed(format!("source {:?}: cannot listen on {addr}: {e}", self.name)),
        };
        let local = listener.local_addr().unwrap_or(addr);
        let app = self.router();
        let stop = cancel.clone();
        let served = match &self.tls {
            None => {
                self.up(local, "http");
                axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
            }
            Some(files) => {
                let config = match tls_config(files) {
                    Ok(c) => c,
                    Err(e) => {
                        return Some(Exit::Failed(ErrorCategory::Permanent, format!("source {:?}: {e}", self.name)));
                    }
                };
                self.up(local, "https");
                let tls = tls::Listener::new(listener, config, cancel.child_token());
                axum::serve(tls, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
            }
        };
        match served {
            Ok(()) => None,
            Err(e) => failed(format!("source {:?}: listener on {local} failed: {e}", self.name)),
        }
    }

    /// The source's own listener's routes: `POST <path>`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().route(&self.path, axum::routing::post(route)).with_state(self.clone())
    }

    fn up(&self, local: SocketAddr, scheme: &str) {
        self.health.set(TaskState::Ready);
        tracing::info!(
            source = %self.name, entity = %self.entity, listen = %local,
            url = %format!("{scheme}://{local}{}", self.path), "HTTP ingest up"
        );
    }
}

async fn route(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    ingest.answer(&headers, body).await
}

/// Ingest routes of the admin listener, by path.
#[derive(Default)]
pub struct Routes {
    by_path: RwLock<HashMap<String, Arc<Ingest>>>,
    /// The paths the applied config gives sources on the admin listener,
    /// running or not.
    configured: RwLock<std::collections::HashSet<String>>,
}

/// What a path of the admin listener is to ingest.
pub enum Route {
    /// A running source takes it.
    Live(Arc<Ingest>),
    /// The config has a source there, but it is not running (starting,
    /// restarting after a reload or a failure, or draining): `503`, retry.
    Stopped,
}

/// Removes a registered route when dropped (the source stopped).
pub struct Registered {
    routes: Arc<Routes>,
    ingest: Arc<Ingest>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut m = self.routes.by_path.write().unwrap_or_else(|p| p.into_inner());
        if m.get(&self.ingest.path).is_some_and(|i| Arc::ptr_eq(i, &self.ingest)) {
            m.remove(&self.ingest.path);
        }
    }
}

impl Routes {
    pub fn new() -> Arc<Routes> {
        Arc::new(Routes::default())
    }

    /// Routes `ingest.path` to `ingest` until the guard is dropped.
    pub fn register(self: &Arc<Self>, ingest: Arc<Ingest>) -> Registered {
        self.by_path.write().unwrap_or_else(|p| p.into_inner()).insert(ingest.path.clone(), ingest.clone());
        Registered { routes: self.clone(), ingest }
    }

    /// What takes `path`: a running source, a configured one that is not
    /// running, or nothing (`None`: `404`).
    pub fn lookup(&self, path: &str) -> Option<Route> {
        if let Some(i) = self.by_path.read().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Some(Route::Live(i.clone()));
        }
        let configured = self.configured.read().unwrap_or_else(|p| p.into_inner());
        configured.contains(path).then_some(Route::Stopped)
    }

    /// The paths of the applied config's sources on the admin listener.
    pub fn configure(&self, paths: std::collections::HashSet<String>) {
        *self.configured.write().unwrap_or_else(|p| p.into_inner()) = paths;
    }
}

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("tls.key {path}: {message}")]
    Key { path: String, message: String },
    #[error("tls: {0}")]
    Config(#[from] rustls::Error),
}

/// A rustls server configuration from PEM files.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |message: String| TlsError::Cert { path: files.cert.display().to_string(), message };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::Key { path: files.key.display().to_string(), message: e.to_string() })?;
    let cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// A TLS listener for `axum::serve`: handshakes run in tasks of their own
/// (bounded by [`HANDSHAKE`]), so a slow client does not hold up the others.
mod tls {
    use super::HANDSHAKE;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::server::TlsStream;
    use tokio_util::sync::CancellationToken;

    pub struct Listener {
        ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        local: SocketAddr,
    }

    impl Listener {
        pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>, stop: CancellationToken) -> Listener {
            let local = tcp.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let (tx, ready) = mpsc::channel(64);
            let acceptor = TlsAcceptor::from(config);
            tokio::spawn(async move {
                loop {
                    let (stream, peer) = tokio::select! {
                        _ = stop.cancelled() => return,
                        a = tcp.accept() => match a {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::debug!(error = %e, "accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, peer)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            });
            Listener { ready, local }
        }
    }

    impl axum::serve::Listener for Listener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.ready.recv().await {
                Some(c) => c,
                // stopped: the server's graceful shutdown ends the serve
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            Ok(self.local)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(p: &Parsed) -> Vec<String> {
        p.messages.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect()
    }

    #[test]
    fn bodies_become_messages_or_name_the_bad_line() {
        let h = Headers::default();
        let ok = |body: &str, nd: bool| parse(Bytes::from(body.to_string()), nd, None, &h).unwrap();
        let single = ok("not json at all", false);
        assert_eq!(payloads(&single), ["not json at all"]);
        assert_eq!(single.lines, [1]);
        let lines = ok("{\"a\":1}\n\n  \r\n[2]\r\n\"three\"", true);
        assert_eq!(payloads(&lines), ["{\"a\":1}", "[2]", "\"three\""]);
        assert_eq!(lines.lines, [1, 4, 5]);
        let trailing = ok("1\n2\n", true);
        assert_eq!(payloads(&trailing), ["1", "2"]);
        let bom = ok("\u{feff}{\"a\":1}\n2", true);
        assert_eq!(payloads(&bom), ["{\"a\":1}", "2"]);

        let bad = |body: &str, nd: bool| parse(Bytes::from(body.to_string()), nd, None, &h).unwrap_err();
        assert_eq!(bad("", false), Rejection::Empty);
        assert_eq!(bad("\n \n", true), Rejection::Empty);
        match bad("{\"a\":1}\n{\"b\":\n[3]", true) {
            Rejection::BadLine { line, .. } => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        match bad("1\n\u{e9}t\u{e9}", true) {
            Rejection::BadLine { line, .. } => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_and_headers_apply_to_every_line() {
        let mut h = Headers::default();
        h.set("x-request-id", "r1");
        let p = parse(Bytes::from_static(b"1\n2"), true, Some(Bytes::from_static(b"k")), &h).unwrap();
        for m in &p.messages {
            assert_eq!(m.key.as_deref(), Some(&b"k"[..]));
            assert_eq!(m.headers.get_str("x-request-id"), Some("r1"));
        }
    }

    #[test]
    fn each_refusal_has_its_status_and_reason() {
        let table = [
            (Rejection::Unauthorized, 401, "unauthorized"),
            (Rejection::BodyTooLarge { limit: 1 }, 413, "too_large"),
            (Rejection::TooManyMessages { count: 2, limit: 1 }, 413, "too_large"),
            (Rejection::Empty, 400, "bad_request"),
            (Rejection::BadLine { line: 1, error: "x".into() }, 400, "bad_request"),
            (Rejection::SlowBody { waited: Duration::from_secs(1) }, 408, "bad_request"),
            (Rejection::Busy, 429, "busy"),
            (Rejection::Unavailable { error: "x".into(), acknowledged: 0, through_line: 0 }, 503, "unavailable"),
            (
                Rejection::Refused { error: "x".into(), too_large: true, acknowledged: 0, through_line: 0 },
                413,
                "refused",
            ),
            (
                Rejection::Refused { error: "x".into(), too_large: false, acknowledged: 0, through_line: 0 },
                400,
                "refused",
            ),
        ];
        for (r, status, reason) in table {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.reason(), reason, "{r:?}");
        }
    }

    fn ingest(path: &str) -> Arc<Ingest> {
        use crate::transport::Transport;
        let t = crate::transport::embedded::Embedded::open(Default::default(), &[], &[]).unwrap();
        Arc::new(Ingest {
            name: "web".into(),
            entity: "e".into(),
            physical: "e".into(),
            producer: t.producer(),
            listen: None,
            path: path.into(),
            token: None,
            tls: None,
            max_body_bytes: 1,
            max_in_flight: 1,
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
            in_flight: Arc::new(Semaphore::new(1)),
            metrics: Metrics::new(),
            health: crate::health::Health::new().task("web", "source"),
        })
    }

    #[test]
    fn a_configured_path_whose_source_is_not_running_is_stopped_not_missing() {
        let routes = Routes::new();
        let is = |r: Option<Route>| match r {
            Some(Route::Live(_)) => "live",
            Some(Route::Stopped) => "stopped",
            None => "none",
        };
        routes.configure(["/in".to_string()].into());
        assert_eq!(is(routes.lookup("/in")), "stopped", "configured, not started yet");
        let first = routes.register(ingest("/in"));
        assert_eq!(is(routes.lookup("/in")), "live");
        // a reload starts the new source before the old one's guard is gone
        let second = routes.register(ingest("/in"));
        drop(first);
        assert_eq!(is(routes.lookup("/in")), "live", "the old guard leaves the new route alone");
        drop(second);
        assert_eq!(is(routes.lookup("/in")), "stopped", "draining or restarting: retry");
        routes.configure(Default::default());
        assert_eq!(is(routes.lookup("/in")), "none", "removed from the config");
        assert_eq!(is(routes.lookup("/other")), "none");
    }

    #[test]
    fn ndjson_is_chosen_by_content_type() {
        let table = [
            (None, false),
            (Some("application/json"), false),
            (Some("application/x-ndjson"), true),
            (Some("application/x-ndjson; charset=utf-8"), true),
            (Some("Application/NDJSON"), true),
            (Some("application/jsonl"), true),
            (Some("text/plain"), false),
        ];
        for (ct, want) in table {
            assert_eq!(is_ndjson(ct), want, "{ct:?}");
        }
    }
}
