//! The simulated external services (`simulation:` in the config): the
//! xact and ClaimX enrichment APIs, the iTel cabinet and mitigation plugin
//! APIs, and attachment files — with configurable latency and a share of
//! `503` answers, so the default pipeline shows retries too. Off
//! (`enabled: false`) or absent, nothing listens.

use crate::config::SimulationConfig;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Sim {
    cfg: Arc<SimulationConfig>,
}

impl Sim {
    /// Latency, then maybe a 503.
    async fn gate(&self) -> Result<(), Response> {
        if !self.cfg.latency.get().is_zero() {
            tokio::time::sleep(self.cfg.latency.get()).await;
        }
        if self.cfg.error_rate > 0.0 && fastrand::f64() < self.cfg.error_rate {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "simulated outage").into_response());
        }
        Ok(())
    }
}

/// Starts the server; returns the bound address.
pub async fn serve(cfg: &SimulationConfig, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let state = Sim { cfg: Arc::new(cfg.clone()) };
    let app = Router::new()
        .route("/xact/enrich/{claim}", get(xact))
        .route("/claimx/enrich/{claim}", get(claimx))
        .route("/itel/tracking", post(itel_tracking))
        .route("/itel/cabinet", post(itel_cabinet))
        .route("/claimx/mitigation", post(mitigation))
        .route("/files/{name}", get(file))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    });
    Ok(addr)
}

fn seeded(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

async fn xact(State(s): State<Sim>, Path(claim): Path<String>) -> Response {
    if let Err(r) = s.gate().await {
        return r;
    }
    let h = seeded(&claim);
    axum::Json(json!({
        "claim_id": claim,
        "policy": format!("POL-{:08}", h % 100_000_000),
        "insured": (["Ada Smith", "Bo Chen", "Cy Diaz", "Di Evans"][(h % 4) as usize]),
        "loss_type": (["water", "wind", "fire", "hail"][((h >> 8) % 4) as usize]),
    }))
    .into_response()
}

async fn claimx(State(s): State<Sim>, Path(claim): Path<String>) -> Response {
    if let Err(r) = s.gate().await {
        return r;
    }
    let h = seeded(&claim);
    axum::Json(json!({
        "claim_id": claim,
        "project_id": format!("P-{:06}", h % 1_000_000),
        "adjuster": (["kim", "lee", "max"][(h % 3) as usize]),
        "status": "open",
    }))
    .into_response()
}

async fn itel_tracking(State(s): State<Sim>, axum::Json(v): axum::Json<Value>) -> Response {
    if let Err(r) = s.gate().await {
        return r;
    }
    let id = v.pointer("/task/id").and_then(Value::as_str).unwrap_or("?");
    axum::Json(json!({ "tracking_id": format!("ITL-{id}"), "state": "tracked" })).into_response()
}

async fn itel_cabinet(State(s): State<Sim>, axum::Json(v): axum::Json<Value>) -> Response {
    if let Err(r) = s.gate().await {
        return r;
    }
    // a claim id ending in 7 is rejected by the partner API (→ *.errors)
    if v.get("claim_id").and_then(Value::as_str).is_some_and(|c| c.ends_with('7')) {
        return (StatusCode::UNPROCESSABLE_ENTITY, "cabinet rejected the claim").into_response();
    }
    axum::Json(json!({ "cabinet_order": format!("CAB-{}", seeded(&v.to_string()) % 1_000_000), "accepted": true }))
        .into_response()
}

async fn mitigation(State(s): State<Sim>, axum::Json(v): axum::Json<Value>) -> Response {
    if let Err(r) = s.gate().await {
        return r;
    }
    let id = v.pointer("/task/id").and_then(Value::as_str).unwrap_or("?");
    axum::Json(json!({ "mitigation_ref": format!("MIT-{id}"), "scheduled": true })).into_response()
}

async fn file(State(s): State<Sim>, Path(name): Path<String>) -> Response {
    if let Err(r) = s.gate().await {
        return r;
    }
    // xorshift, eight bytes per step: the simulator should cost the daemon
    // little next to the pipeline it feeds
    let mut x = seeded(&name) | 1;
    let n = s.cfg.attachment_bytes;
    let mut body: Vec<u8> = Vec::with_capacity(n + 8);
    while body.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.extend_from_slice(&x.to_le_bytes());
    }
    body.truncate(n);
    ([("content-type", "application/pdf")], body).into_response()
}
