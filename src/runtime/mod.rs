//! The running pipeline: built from a validated config, changed live,
//! drained on shutdown.
//!
//! [`Pipeline::start`] starts the admin endpoints first (so `/healthz`
//! answers while the rest starts), then applies the config: opens the
//! transports ([`transports`]), and spawns every source, worker and retry
//! scheduler ([`build`]) under the supervisor.
//!
//! [`Pipeline::reload`] applies a new, already validated config (see
//! [`reload`] for the order of steps and what moves an entity between
//! transports). An invalid config never reaches it: the caller keeps the
//! running topology and reports the failure.
//!
//! [`Pipeline::shutdown`] drains: readiness turns `503`, systemd is told
//! `STOPPING=1`, tasks finish and commit what they hold, transports flush —
//! all within the shutdown grace — and the admin server stops last (its
//! requests still in flight when the grace ends are cut off). A drain
//! that does not finish in time is abandoned (nothing it had not finished is
//! committed) and reported as [`RuntimeError::GraceExceeded`].
//!
//! **State.** What runs has one owner: the reload path, which holds
//! the running tasks behind a mutex ([`reload`]) and publishes each applied
//! state as an immutable [`Snapshot`] (config, open transports, config
//! status). Everything else — the admin endpoints, the scaling signals,
//! tests — reads the latest snapshot and never sees a half-applied config.

pub mod build;
mod error;
pub mod plan;
pub mod reload;
pub mod scaling;
mod state;
pub mod transports;

pub use build::Options;
pub use error::RuntimeError;
pub use plan::{TaskKind, TaskPlan, plan};
pub use reload::ReloadReport;
pub use state::Snapshot;
pub use transports::{LiveTransport, Transports, install_tls_provider};

use crate::admin::{self, AdminState, ReloadRequest};
use crate::config::{self, Config, Dur};
use crate::health::{ConfigStatus, Health};
use crate::metrics::Metrics;
use crate::systemd::notify;
use crate::transport::Transport;
use reload::Topology;
use state::Shared;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Most threads the daemon's blocking pool may run (file stages, the
/// embedded store's readers). Tokio's default (512) let a burst of fsyncs
/// start a hundred-odd threads, each with its own malloc arena: more resident
/// memory for no throughput (measured in `bench/pipeline.sh`).
pub const BLOCKING_THREADS: usize = 32;

/// The daemon's async executor: multi-threaded, one worker per core, a
/// bounded blocking pool.
pub fn executor() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(BLOCKING_THREADS).build()
}

/// A started pipeline.
pub struct Pipeline {
    pub http_addr: SocketAddr,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    topology: Topology,
    grace: Dur,
    draining: Arc<AtomicBool>,
    admin_stop: CancellationToken,
    admin_task: std::sync::Mutex<Option<JoinHandle<std::io::Result<()>>>>,
    reload_rx: std::sync::Mutex<Option<mpsc::Receiver<ReloadRequest>>>,
}

impl Pipeline {
    pub async fn start(cfg: &Config, hash: u64, opts: Options) -> Result<Pipeline, RuntimeError> {
        install_tls_provider();
        let metrics = Metrics::new();
        let health = Health::new();
        let addr = cfg.service.http.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| RuntimeError::Bind { addr, source })?;
        let http_addr = listener.local_addr().map_err(|source| RuntimeError::Bind { addr, source })?;
        let shared = Arc::new(Shared::new(opts, metrics.clone(), health.clone(), cfg.service.shutdown_grace.get()));
        tokio::spawn(scaling::signals(
            {
                let s = shared.clone();
                move || s.snapshot().config.clone()
            },
            metrics.clone(),
            shared.supervisor.token().clone(),
        ));
        tokio::spawn(crate::migration::status::watch(
            {
                let s = shared.clone();
                move || {
                    let snap = s.snapshot();
                    let cfg = snap.config.clone()?;
                    cfg.entities.values().any(|e| e.migrate.is_some()).then_some((cfg, snap))
                }
            },
            |snap: &Arc<Snapshot>, name: &str| snap.transport(name),
            {
                let s = shared.clone();
                move |status| {
                    s.metrics.set_migrations(&status);
                    *s.migrations.write().unwrap() = status;
                }
            },
            shared.published(),
            shared.supervisor.token().clone(),
        ));
        let draining = Arc::new(AtomicBool::new(false));
        let admin_stop = CancellationToken::new();
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let state = AdminState {
            service: cfg.service.name.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
            config: Arc::new({
                let s = shared.clone();
                move || s.snapshot().status.clone()
            }),
            reload: reload_tx,
            migration: Arc::new({
                let s = shared.clone();
                move || s.migrations.read().unwrap().clone()
            }),
            entities: Arc::new({
                let s = shared.clone();
                move |name: &str| s.snapshot().access(name)
            }),
            token: Arc::new({
                let s = shared.clone();
                move || s.snapshot().config.as_ref().and_then(|c| c.service.http.token.clone())
            }),
            routes: shared.routes.clone(),
        };
        let admin_task = tokio::spawn(admin::serve(listener, state, admin_stop.clone()));
        tracing::info!(listen = %http_addr, "HTTP endpoints up: /healthz /readyz /metrics");
        let p = Pipeline {
            http_addr,
            health,
            metrics,
            topology: Topology::new(shared.clone()),
            shared,
            grace: cfg.service.shutdown_grace,
            draining,
            admin_stop,
            admin_task: std::sync::Mutex::new(Some(admin_task)),
            reload_rx: std::sync::Mutex::new(Some(reload_rx)),
        };
        if let Some(sim) = cfg.simulation.as_ref().filter(|s| s.enabled) {
            let addr = crate::simulation::serve(sim, p.token().clone())
                .await
                .map_err(|source| RuntimeError::Bind { addr: sim.listen, source })?;
            tracing::info!(listen = %addr, "simulated APIs up: /xact/enrich /claimx/enrich /itel/* /files");
        }
        p.topology.apply(cfg.clone(), hash).await?;
        Ok(p)
    }

    /// The applied state.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Transport `name` as it runs now.
    ///
    /// # Panics
    /// When the applied config has no transport `name` (a test's mistake).
    pub fn transport(&self, name: &str) -> Arc<dyn Transport> {
        self.snapshot().transport(name).unwrap_or_else(|| panic!("no open transport {name:?}"))
    }

    /// The config generation and last reload outcome.
    pub fn config_status(&self) -> ConfigStatus {
        self.snapshot().status.clone()
    }

    /// The root cancellation token (cancelled when a drain begins).
    pub fn token(&self) -> &CancellationToken {
        self.shared.supervisor.token()
    }

    /// The reload requests of `POST /-/reload` (taken once, by the daemon).
    pub fn take_reload_requests(&self) -> Option<mpsc::Receiver<ReloadRequest>> {
        self.reload_rx.lock().unwrap().take()
    }

    /// Parses, validates (against the running config too: migration phases
    /// move forward, or back as a rollback) and applies `text`. An invalid
    /// config changes nothing; its errors are recorded for `/readyz` and
    /// counted.
    pub async fn reload_text(
        &self,
        text: &str,
        file: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ReloadReport, RuntimeError> {
        let loaded = match self.snapshot().config.clone() {
            Some(previous) => config::load_str_after(text, file, env, &previous),
            None => config::load_str(text, file, env),
        };
        match loaded {
            Ok(l) => self.reload(l.config, l.hash).await,
            Err(e) => {
                self.reload_failed(&e.to_string());
                Err(RuntimeError::Config(e))
            }
        }
    }

    /// Reads, validates and applies the config file at `path`.
    pub async fn reload_file(&self, path: &Path) -> Result<ReloadReport, RuntimeError> {
        let loaded = match self.snapshot().config.clone() {
            Some(previous) => config::load_file_after(path, &previous),
            None => config::load_file(path),
        };
        match loaded {
            Ok(l) => self.reload(l.config, l.hash).await,
            Err(e) => {
                self.reload_failed(&e.to_string());
                Err(RuntimeError::Config(e))
            }
        }
    }

    fn reload_failed(&self, why: &str) {
        self.metrics.reloads.get_or_create(&crate::metrics::ResultLabel { result: "failure".into() }).inc();
        self.metrics.reload_failures.inc();
        self.topology.failed(why.trim());
        tracing::error!(errors = %why.trim(), "config reload failed; the running topology is kept");
    }

    /// Applies a validated config.
    pub async fn reload(&self, cfg: Config, hash: u64) -> Result<ReloadReport, RuntimeError> {
        if self.token().is_cancelled() {
            return Err(RuntimeError::ShuttingDown);
        }
        notify::reloading();
        let r = self.topology.apply(cfg, hash).await;
        match &r {
            Ok(rep) => {
                self.metrics.reloads.get_or_create(&crate::metrics::ResultLabel { result: "success".into() }).inc();
                tracing::info!(
                    started = ?rep.started, restarted = ?rep.restarted, stopped = ?rep.stopped,
                    unchanged = rep.unchanged.len(), "config reloaded"
                );
            }
            Err(e) => self.reload_failed(&e.to_string()),
        }
        notify::ready();
        r
    }

    /// Drains and stops, within the shutdown grace in all (see the module
    /// docs). `Err(GraceExceeded)` when the grace period ran out.
    pub async fn shutdown(&self) -> Result<(), RuntimeError> {
        self.draining.store(true, Ordering::Relaxed);
        notify::stopping();
        tracing::info!(grace = %self.grace, "draining: finishing in-flight messages and committing positions");
        let deadline = tokio::time::Instant::now() + self.grace.get();
        // cancels the root token first: a reload in progress gives up its
        // waits and releases the live state
        let drained = self.shared.supervisor.shutdown(self.grace.get()).await;
        let quiet = self.topology.quiesce(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
        let snapshot = self.snapshot();
        for (name, t) in &snapshot.transports {
            tracing::debug!(transport = %name, "closing transport");
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100));
            t.transport.close(left).await;
        }
        drop(quiet);
        self.admin_stop.cancel();
        let admin = self.admin_task.lock().unwrap().take();
        if let Some(mut task) = admin {
            // requests in flight (an ingest, a long-poll read, a redrive run
            // for a tool) finish within what is left of the grace, or are cut
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100));
            if tokio::time::timeout(left, &mut task).await.is_err() {
                task.abort();
                tracing::warn!("admin requests still in flight at the end of the grace were cut off");
            }
        }
        if drained {
            tracing::info!("drained; exiting");
            Ok(())
        } else {
            Err(RuntimeError::GraceExceeded(self.grace))
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
