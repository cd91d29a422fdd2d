//! HTTP endpoints (axum):
//!
//! - `GET /healthz` — liveness: `200 {"status":"ok"}` while the supervisor runs;
//! - `GET /readyz` — readiness: JSON with each worker's state, restarts and
//!   last error category; `200` only when every worker is ready (sources
//!   that finished count as ready), else `503`; `503` while draining;
//! - `GET /metrics` — OpenMetrics when the `Accept` header asks for it,
//!   else Prometheus text format 0.0.4 (see `metrics`).
//!
//! Nothing here prints configuration values, so no secret can leak through it.

use crate::health::Health;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct HttpState {
    pub service: String,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub draining: Arc<AtomicBool>,
    pub config_hash: String,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: HttpState, stop: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

async fn healthz() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"status\":\"ok\"}\n").into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let report = s.health.report();
    let draining = s.draining.load(Ordering::Relaxed);
    let ready = report.ready && !draining;
    let body = serde_json::json!({
        "ready": ready,
        "service": s.service,
        "draining": draining,
        "config_hash": s.config_hash,
        "workers": report.workers,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], format!("{body:#}\n")).into_response()
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the
/// classic text format 0.0.4.
async fn metrics(State(s): State<HttpState>, headers: HeaderMap) -> Response {
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
