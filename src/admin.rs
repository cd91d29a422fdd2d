//! The admin endpoints (axum), on `service.http.listen`:
//!
//! - `GET /healthz` — liveness: `200 {"status":"ok"}` while the supervisor runs;
//! - `GET /readyz` — readiness: JSON with each worker's state, restarts and
//!   last error category; `200` only when every worker is ready (sources
//!   that finished count as ready), else `503`; `503` while draining; a
//!   `migration` section per migrating entity (phase, mirror lag, what is
//!   left on the old side, the fence; see `migration::status`);
//! - `GET /metrics` — OpenMetrics when the `Accept` header asks for it,
//!   else Prometheus text format 0.0.4 (see `metrics`).
//!
//! - `POST /-/reload` — re-read and apply the config file (only from
//!   loopback addresses); `200` with what changed, `400` with the errors
//!   (the running topology is kept).
//!
//! - `/v1/entities/...` — read and write any entity (see [`entities`]);
//! - `POST <path>` of every `type: http` source without a `listen` of its
//!   own (see `sources::http`).
//!
//! Nothing here prints configuration values, so no secret can leak through it.

pub mod entities;

use crate::health::Health;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A reload asked for over HTTP; the daemon's loop answers it.
pub struct ReloadRequest {
    pub reply: oneshot::Sender<ReloadAnswer>,
}

/// How a reload asked for over HTTP ended.
pub enum ReloadAnswer {
    /// Applied; what changed.
    Applied(serde_json::Value),
    /// Not applied (the running topology is kept); why.
    Refused(String),
}

/// What the endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub service: String,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub draining: Arc<AtomicBool>,
    pub config: Arc<dyn Fn() -> crate::health::ConfigStatus + Send + Sync>,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// Where each migrating entity stands (the `migration` section).
    pub migration: Arc<dyn Fn() -> Vec<crate::migration::status::EntityStatus> + Send + Sync>,
    /// Where entity `name` is read and written now (the entity API).
    pub entities: entities::Locate,
    /// The entity API's bearer token (`service.http.token`) as configured now.
    pub token: Arc<dyn Fn() -> Option<crate::config::Secret> + Send + Sync>,
    /// Ingest sources routed here.
    pub routes: Arc<crate::sources::Routes>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/-/reload", post(reload))
        .route("/v1/entities/{entity}/partitions", get(entities::partitions))
        .route("/v1/entities/{entity}/messages", get(entities::read).post(entities::write))
        .route("/v1/entities/{entity}/redrive", post(entities::redrive))
        .fallback(ingest)
        .with_state(state)
}

/// An ingest source's route, or `404`.
async fn ingest(
    State(s): State<AdminState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    use crate::sources::http::Route;
    match s.routes.lookup(uri.path()) {
        Some(_) if method != axum::http::Method::POST => {
            (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response()
        }
        Some(Route::Live(i)) => i.answer(&headers, body).await,
        Some(Route::Stopped) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({
                "error": "the ingest source of this path is not running (starting, restarting or draining); retry"
            })),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn healthz() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"status\":\"ok\"}\n").into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let report = s.health.report();
    let draining = s.draining.load(Ordering::Relaxed);
    let cfg = (s.config)();
    // generation 0: the first config is still being applied
    let ready = report.ready && !draining && cfg.generation > 0;
    let body = serde_json::json!({
        "ready": ready,
        "service": s.service,
        "draining": draining,
        "config_hash": cfg.hash,
        "config": cfg,
        "workers": report.workers,
    });
    let migration = (s.migration)();
    let mut body = body;
    if !migration.is_empty() {
        body["migration"] = serde_json::to_value(migration).unwrap_or_default();
    }
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], format!("{body:#}\n")).into_response()
}

async fn reload(State(s): State<AdminState>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if !peer.ip().is_loopback() {
        return (StatusCode::FORBIDDEN, "reload is only accepted from localhost\n").into_response();
    }
    let (reply, rx) = oneshot::channel();
    if s.reload.send(ReloadRequest { reply }).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "this process does not reload from a file\n").into_response();
    }
    match rx.await {
        Ok(ReloadAnswer::Applied(v)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], format!("{v:#}\n")).into_response()
        }
        Ok(ReloadAnswer::Refused(e)) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the
/// classic text format 0.0.4.
async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let wants_om = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_om {
        let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        (StatusCode::OK, [(header::CONTENT_TYPE, ct)], s.metrics.encode()).into_response()
    } else {
        let ct = "text/plain; version=0.0.4; charset=utf-8";
        (StatusCode::OK, [(header::CONTENT_TYPE, ct)], s.metrics.encode_text()).into_response()
    }
}
