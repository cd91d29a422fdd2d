//! Building the runtime from a validated config, changing it live, and
//! running it until a signal.
//!
//! [`Runtime::start`] starts the HTTP server, then applies the config: opens
//! the transports, registers the consumer groups and spawns every source,
//! worker and retry scheduler under the supervisor.
//!
//! [`Runtime::reload`] applies a new, already validated config: each task has
//! a fingerprint (its own section, every entity it touches and their
//! transports — see `plan`); tasks whose fingerprint is unchanged keep
//! running untouched. Changed and removed tasks are drained (they finish and
//! commit what they hold) and stopped; a consumer of an entity that moves to
//! another transport is first allowed to empty the old entity (its upstream
//! writers were already switched), so nothing is stranded there. Then
//! changed transports are reopened, new entities added, and the new tasks
//! started. An invalid config never reaches this point: the caller keeps the
//! running topology and reports the failure (see [`run`]).
//!
//! [`Runtime::shutdown`] drains: readiness turns `503`, systemd is told
//! `STOPPING=1`, workers finish and commit what they hold, transports flush,
//! and the HTTP server stops last.

mod plan;

pub use plan::{TaskKind, TaskPlan, plan};

use crate::config::{self, Config, Dur, SourceConfig, TransportConfig};
use crate::health::Health;
use crate::http::{self, HttpState, ReloadRequest};
use crate::metrics::{EntityLabel, Metrics};
use crate::notify;
use crate::retry::{Scheduler, Target as RetryTarget};
use crate::sources::Simulator;
use crate::stages::{self, Outputs, Stage};
use crate::supervisor::{Backoff, Exit, Supervisor, TaskHandle};
use crate::transport::embedded::{Embedded, EmbeddedOptions, EntitySpec};
use crate::transport::{Producer, StartPosition, Transport, TransportError};
use crate::worker::{self, Breaker, OutputTarget, RetrySpec, WorkerSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
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

/// The daemon's async runtime: multi-threaded, one worker per core, a
/// bounded blocking pool.
pub fn build_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(BLOCKING_THREADS).build()
}

/// Why the runtime could not start, change or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("transport {name:?}: {source}")]
    Transport { name: String, source: TransportError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("worker {worker:?}: {message}")]
    Stage { worker: String, message: String },
    #[error(
        "drain did not finish within the shutdown grace of {0}; in-flight work was aborted (it is redelivered on the next start)"
    )]
    GraceExceeded(Dur),
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("reload refused: {0}")]
    Reload(String),
}

/// Knobs for embedding the runtime (tests, benchmarks).
#[derive(Default, Clone)]
pub struct Options {
    /// Replace a worker's configured stage by this one (by worker name).
    pub stages: HashMap<String, Arc<dyn Stage>>,
    /// Restart backoff of the supervisor (default 200 ms doubling to 30 s).
    pub backoff: Option<Backoff>,
    /// In-place retry backoff of failed messages (default 100 ms to 30 s).
    pub retry_backoff: Option<(Duration, Duration)>,
}

/// An opened transport.
#[derive(Clone)]
pub struct LiveTransport {
    pub fingerprint: u64,
    pub transport: Arc<dyn Transport>,
    pub producer: Arc<dyn Producer>,
    pub embedded: Option<Embedded>,
    #[cfg(feature = "kafka")]
    pub kafka: Option<crate::transport::kafka::KafkaTransport>,
    #[cfg(feature = "eventhubs")]
    pub eventhubs: Option<crate::transport::eventhub::EventHubsTransport>,
}

/// The transports of a config, opened.
pub struct Transports {
    pub all: BTreeMap<String, LiveTransport>,
}

impl Transports {
    /// The transport and physical name of entity `key`.
    pub fn entity(&self, cfg: &Config, key: &str) -> Option<(Arc<dyn Transport>, String)> {
        let e = cfg.entities.get(key)?;
        Some((self.all.get(&e.transport)?.transport.clone(), e.physical_name(key).to_string()))
    }

    /// Flushes and closes every transport.
    pub async fn close(&self) {
        for t in self.all.values() {
            t.transport.close().await;
        }
    }
}

/// Opens every transport of `cfg` (for tools such as `conveyor dlq`).
pub async fn open_transports(cfg: &Config) -> Result<Transports, AppError> {
    let mut all = BTreeMap::new();
    for name in cfg.transports.keys() {
        all.insert(name.clone(), open_transport(cfg, name).await?);
    }
    Ok(Transports { all })
}

/// The consumer groups `cfg` uses on transport `tname`: workers' and the
/// retry schedulers'.
fn groups_on(cfg: &Config, tname: &str) -> Vec<(String, String, StartPosition)> {
    let on_this = |key: &str| cfg.entities[key].transport == tname;
    let physical = |key: &str| cfg.entities[key].physical_name(key).to_string();
    let mut groups: Vec<_> = cfg
        .workers
        .iter()
        .filter(|(_, w)| on_this(&w.input))
        .map(|(n, w)| (physical(&w.input), w.group(n).to_string(), w.start_position))
        .collect();
    for w in cfg.workers.values() {
        if let Some(r) = w.retry.as_ref().filter(|r| on_this(&r.via)) {
            groups.push((physical(&r.via), crate::retry::GROUP.to_string(), StartPosition::Earliest));
        }
    }
    groups
}

fn embedded_entities(cfg: &Config, tname: &str) -> Vec<EntitySpec> {
    cfg.entities
        .iter()
        .filter(|(_, e)| e.transport == tname)
        .map(|(k, e)| EntitySpec { name: e.physical_name(k).to_string(), key: k.clone(), partitions: e.partitions })
        .collect()
}

#[cfg(feature = "kafka")]
fn kafka_entities(cfg: &Config, tname: &str) -> Vec<crate::transport::kafka::KafkaEntity> {
    cfg.entities
        .iter()
        .filter(|(_, e)| e.transport == tname)
        .map(|(k, e)| crate::transport::kafka::KafkaEntity {
            key: k.clone(),
            topic: e.physical_name(k).to_string(),
            partitions: e.partitions,
        })
        .collect()
}

/// Selects rustls' process-wide crypto provider (`ring`). Two providers are
/// linked (the Event Hubs SDK's rustls brings aws-lc-rs), and rustls then
/// refuses to pick one by itself. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens transport `tname` of `cfg` with its entities and groups.
async fn open_transport(cfg: &Config, tname: &str) -> Result<LiveTransport, AppError> {
    let fingerprint = plan::transport_fp(cfg, tname);
    match &cfg.transports[tname] {
        TransportConfig::Embedded { path, capacity } => {
            let entities = embedded_entities(cfg, tname);
            let opts = EmbeddedOptions { name: tname.to_string(), path: path.clone(), capacity: *capacity };
            let t = Embedded::open(opts, &entities, &groups_on(cfg, tname))
                .map_err(|source| AppError::Transport { name: tname.to_string(), source })?;
            tracing::info!(
                transport = %tname, kind = "embedded", durable = t.is_durable(), entities = entities.len(), "transport opened"
            );
            Ok(LiveTransport {
                fingerprint,
                producer: t.producer(),
                transport: Arc::new(t.clone()),
                embedded: Some(t),
                #[cfg(feature = "kafka")]
                kafka: None,
                #[cfg(feature = "eventhubs")]
                eventhubs: None,
            })
        }
        #[cfg(feature = "kafka")]
        TransportConfig::Kafka(k) => {
            let t = crate::transport::kafka::KafkaTransport::open(tname, k, kafka_entities(cfg, tname))
                .await
                .map_err(|source| AppError::Transport { name: tname.to_string(), source })?;
            tracing::info!(transport = %tname, kind = "kafka", "transport opened");
            Ok(LiveTransport {
                fingerprint,
                producer: t.producer(),
                transport: Arc::new(t.clone()),
                embedded: None,
                kafka: Some(t),
                #[cfg(feature = "eventhubs")]
                eventhubs: None,
            })
        }
        #[cfg(not(feature = "kafka"))]
        TransportConfig::Kafka(_) => Err(AppError::Transport {
            name: tname.to_string(),
            source: TransportError::Other {
                category: crate::classify::ErrorCategory::Permanent,
                kind: "unsupported",
                message: "this build has no Kafka support (cargo feature `kafka`)".into(),
            },
        }),
        #[cfg(feature = "eventhubs")]
        TransportConfig::Eventhubs(e) => {
            let t = crate::transport::eventhub::EventHubsTransport::open(tname, e, eventhub_entities(cfg, tname))
                .await
                .map_err(|source| AppError::Transport { name: tname.to_string(), source })?;
            tracing::info!(transport = %tname, kind = "eventhubs", "transport opened");
            Ok(LiveTransport {
                fingerprint,
                producer: t.producer(),
                transport: Arc::new(t.clone()),
                embedded: None,
                #[cfg(feature = "kafka")]
                kafka: None,
                eventhubs: Some(t),
            })
        }
        #[cfg(not(feature = "eventhubs"))]
        TransportConfig::Eventhubs(_) => Err(AppError::Transport {
            name: tname.to_string(),
            source: TransportError::Other {
                category: crate::classify::ErrorCategory::Permanent,
                kind: "unsupported",
                message: "this build has no Event Hubs support (cargo feature `eventhubs`)".into(),
            },
        }),
    }
}

#[cfg(feature = "eventhubs")]
fn eventhub_entities(cfg: &Config, tname: &str) -> Vec<crate::transport::eventhub::EhEntity> {
    cfg.entities
        .iter()
        .filter(|(_, e)| e.transport == tname)
        .map(|(k, e)| crate::transport::eventhub::EhEntity {
            key: k.clone(),
            hub: e.physical_name(k).to_string(),
            partitions: e.partitions,
        })
        .collect()
}

/// Adds the entities and groups of `cfg` to an already open transport.
async fn ensure_entities(cfg: &Config, tname: &str, lt: &LiveTransport) -> Result<(), AppError> {
    let err = |source| AppError::Transport { name: tname.to_string(), source };
    if let Some(e) = &lt.embedded {
        e.ensure(&embedded_entities(cfg, tname), &groups_on(cfg, tname)).map_err(err)?;
    }
    #[cfg(feature = "kafka")]
    if let Some(k) = &lt.kafka {
        k.ensure(kafka_entities(cfg, tname)).await.map_err(err)?;
    }
    #[cfg(feature = "eventhubs")]
    if let Some(e) = &lt.eventhubs {
        e.ensure(eventhub_entities(cfg, tname));
    }
    Ok(())
}

/// What the running process is built from.
struct Live {
    cfg: Option<Config>,
    transports: BTreeMap<String, LiveTransport>,
    tasks: BTreeMap<String, (TaskPlan, TaskHandle)>,
}

/// The config generation and the last reload's outcome (for `/readyz`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigStatus {
    pub generation: u64,
    pub hash: String,
    /// Errors of the last reload attempt, if it failed.
    pub last_reload_error: Option<String>,
    pub last_reload_at: Option<String>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    pub transports_reopened: Vec<String>,
}

struct Shared {
    opts: Options,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    supervisor: Supervisor,
    status: RwLock<ConfigStatus>,
    handles: RwLock<BTreeMap<String, LiveTransport>>,
    /// The config as applied (for periodic computations).
    current: RwLock<Option<Config>>,
}

/// A started pipeline.
pub struct Runtime {
    pub http_addr: SocketAddr,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    live: tokio::sync::Mutex<Live>,
    grace: Dur,
    draining: Arc<AtomicBool>,
    http_stop: CancellationToken,
    http_task: JoinHandle<std::io::Result<()>>,
    reload_rx: tokio::sync::Mutex<Option<mpsc::Receiver<ReloadRequest>>>,
}

impl Runtime {
    pub async fn start(cfg: &Config, hash: u64, opts: Options) -> Result<Runtime, AppError> {
        install_tls_provider();
        let metrics = Metrics::new();
        let health = Health::new();
        // HTTP first, so /healthz answers while workers start
        let listener = TcpListener::bind(cfg.service.http.listen)
            .await
            .map_err(|source| AppError::Bind { addr: cfg.service.http.listen, source })?;
        let http_addr =
            listener.local_addr().map_err(|source| AppError::Bind { addr: cfg.service.http.listen, source })?;
        let shared = Arc::new(Shared {
            supervisor: Supervisor::new(opts.backoff.unwrap_or_default()),
            opts,
            metrics: metrics.clone(),
            health: health.clone(),
            status: RwLock::new(ConfigStatus::default()),
            handles: RwLock::new(BTreeMap::new()),
            current: RwLock::new(None),
        });
        tokio::spawn(scaling_signals(shared.clone()));
        let draining = Arc::new(AtomicBool::new(false));
        let http_stop = CancellationToken::new();
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let s2 = shared.clone();
        let state = HttpState {
            service: cfg.service.name.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
            config: Arc::new(move || s2.status.read().unwrap().clone()),
            reload: reload_tx,
        };
        let http_task = tokio::spawn(http::serve(listener, state, http_stop.clone()));
        tracing::info!(listen = %http_addr, "HTTP endpoints up: /healthz /readyz /metrics");
        let rt = Runtime {
            http_addr,
            health,
            metrics,
            shared,
            live: tokio::sync::Mutex::new(Live { cfg: None, transports: BTreeMap::new(), tasks: BTreeMap::new() }),
            grace: cfg.service.shutdown_grace,
            draining,
            http_stop,
            http_task,
            reload_rx: tokio::sync::Mutex::new(Some(reload_rx)),
        };
        if let Some(sim) = cfg.simulation.as_ref().filter(|s| s.enabled) {
            let addr = crate::simulation::serve(sim, rt.token().clone())
                .await
                .map_err(|source| AppError::Bind { addr: sim.listen, source })?;
            tracing::info!(listen = %addr, "simulated APIs up: /xact/enrich /claimx/enrich /itel/* /files");
        }
        rt.apply(cfg.clone(), hash).await?;
        Ok(rt)
    }

    /// Transport `name` as it runs now.
    pub fn transport(&self, name: &str) -> Arc<dyn Transport> {
        self.shared.handles.read().unwrap()[name].transport.clone()
    }

    /// Embedded transport `name` as it runs now.
    pub fn embedded(&self, name: &str) -> Embedded {
        self.shared.handles.read().unwrap()[name].embedded.clone().expect("an embedded transport")
    }

    /// The config generation and last reload outcome.
    pub fn config_status(&self) -> ConfigStatus {
        self.shared.status.read().unwrap().clone()
    }

    /// The root cancellation token (cancelled when a drain begins).
    pub fn token(&self) -> &CancellationToken {
        self.shared.supervisor.token()
    }

    /// Parses, validates and applies `text`. An invalid config changes
    /// nothing; its errors are recorded for `/readyz` and counted.
    pub async fn reload_text(&self, text: &str, file: &Path) -> Result<ReloadReport, AppError> {
        match config::load_str(text, file, |v| std::env::var(v).ok()) {
            Ok(l) => self.reload(l.config, l.hash).await,
            Err(e) => {
                self.reload_failed(&e.to_string());
                Err(AppError::Config(e))
            }
        }
    }

    /// Reads, validates and applies the config file at `path`.
    pub async fn reload_file(&self, path: &Path) -> Result<ReloadReport, AppError> {
        match config::load_file(path) {
            Ok(l) => self.reload(l.config, l.hash).await,
            Err(e) => {
                self.reload_failed(&e.to_string());
                Err(AppError::Config(e))
            }
        }
    }

    fn reload_failed(&self, why: &str) {
        self.metrics.reloads.get_or_create(&crate::metrics::ResultLabel { result: "failure".into() }).inc();
        self.metrics.reload_failures.inc();
        let mut st = self.shared.status.write().unwrap();
        st.last_reload_error = Some(why.trim().to_string());
        st.last_reload_at = Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
        tracing::error!(errors = %why.trim(), "config reload failed; the running topology is kept");
    }

    /// Applies a validated config.
    pub async fn reload(&self, cfg: Config, hash: u64) -> Result<ReloadReport, AppError> {
        notify::reloading();
        let r = self.apply(cfg, hash).await;
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

    async fn apply(&self, cfg: Config, hash: u64) -> Result<ReloadReport, AppError> {
        let mut live = self.live.lock().await;
        let new_plan = plan::plan(&cfg);
        let mut report = ReloadReport::default();
        let old_cfg = live.cfg.clone();

        // 0. new transport names first: nothing changes if one cannot open
        let mut fresh: BTreeMap<String, LiveTransport> = BTreeMap::new();
        for name in cfg.transports.keys() {
            if !live.transports.contains_key(name) {
                fresh.insert(name.clone(), open_transport(&cfg, name).await?);
            }
        }
        // transports whose config changed or that are gone
        let replaced: BTreeSet<String> = live
            .transports
            .iter()
            .filter(|(n, lt)| !cfg.transports.contains_key(*n) || plan::transport_fp(&cfg, n) != lt.fingerprint)
            .map(|(n, _)| n.clone())
            .collect();
        // entities moving from one transport to another
        let moved: BTreeSet<String> = match &old_cfg {
            Some(old) => old
                .entities
                .iter()
                .filter(|(k, e)| cfg.entities.get(*k).is_some_and(|n| n.transport != e.transport))
                .map(|(k, _)| k.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        let to_stop: Vec<String> = live
            .tasks
            .iter()
            .filter(|(n, (p, _))| new_plan.get(*n).is_none_or(|np| np.fingerprint != p.fingerprint))
            .map(|(n, _)| n.clone())
            .collect();
        let (drain_first, plain): (Vec<String>, Vec<String>) =
            to_stop.into_iter().partition(|n| live.tasks[n].0.input.as_ref().is_some_and(|i| moved.contains(i)));

        // 1. stop the changed tasks; writers to moved entities stop here
        let mut stops = Vec::new();
        for n in &plain {
            let (_, h) = live.tasks.remove(n).expect("listed above");
            stops.push(h.stop());
        }
        futures::future::join_all(stops).await;
        // 2. consumers of moved entities empty the old entity first
        for n in &drain_first {
            self.wait_drained(n).await;
            let (_, h) = live.tasks.remove(n).expect("listed above");
            h.stop().await;
        }
        for n in plain.iter().chain(drain_first.iter()) {
            if new_plan.contains_key(n) {
                report.restarted.push(n.clone());
            } else {
                report.stopped.push(n.clone());
                self.shared.health.remove(n);
                self.metrics.forget_worker(n);
            }
        }
        // 3.–5. reopen changed transports, add entities, start what is new or
        // changed; if that fails, bring the previous topology back
        if let Err(e) = self.switch(&mut live, &cfg, &new_plan, &replaced, fresh, old_cfg.is_some(), &mut report).await
        {
            if let Some(old) = &old_cfg {
                tracing::error!(error = %e, "applying the new config failed; restoring the previous one");
                self.restore(&mut live, old).await;
            }
            return Err(e);
        }
        *self.shared.current.write().unwrap() = Some(cfg.clone());
        live.cfg = Some(cfg);
        let generation = {
            let mut st = self.shared.status.write().unwrap();
            st.generation += 1;
            st.hash = format!("{hash:016x}");
            st.last_reload_error = None;
            st.last_reload_at = Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
            st.generation
        };
        self.metrics.config_generation.set(generation as i64);
        self.metrics.set_config_hash(&format!("{hash:016x}"));
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        live: &mut Live,
        cfg: &Config,
        new_plan: &BTreeMap<String, TaskPlan>,
        replaced: &BTreeSet<String>,
        fresh: BTreeMap<String, LiveTransport>,
        reloading: bool,
        report: &mut ReloadReport,
    ) -> Result<(), AppError> {
        for n in replaced {
            if let Some(old) = live.transports.remove(n) {
                self.shared.handles.write().unwrap().remove(n);
                old.transport.close().await;
                drop(old);
            }
            if cfg.transports.contains_key(n) {
                let lt = open_transport(cfg, n).await?;
                report.transports_reopened.push(n.clone());
                live.transports.insert(n.clone(), lt);
            }
        }
        live.transports.extend(fresh);
        for (n, lt) in &live.transports {
            ensure_entities(cfg, n, lt).await?;
        }
        *self.shared.handles.write().unwrap() = live.transports.clone();
        for (n, p) in new_plan {
            if live.tasks.contains_key(n) {
                report.unchanged.push(n.clone());
                continue;
            }
            let h = self.spawn_task(cfg, &live.transports, n, p)?;
            if reloading && report.restarted.contains(n) {
                let th = self.shared.health.task(n, kind_name(&p.kind));
                th.restarted();
                if let TaskKind::Worker = p.kind {
                    self.metrics.worker(n, p.input.as_deref().unwrap_or("")).restarts.inc();
                }
            } else if reloading {
                report.started.push(n.clone());
            }
            live.tasks.insert(n.clone(), (p.clone(), h));
        }
        Ok(())
    }

    /// Best effort after a failed apply: reopen the previous config's
    /// transports that are missing and restart its tasks that are not running.
    async fn restore(&self, live: &mut Live, old: &Config) {
        for n in old.transports.keys() {
            if !live.transports.contains_key(n) {
                match open_transport(old, n).await {
                    Ok(lt) => {
                        live.transports.insert(n.clone(), lt);
                    }
                    Err(e) => tracing::error!(transport = %n, error = %e, "cannot reopen the previous transport"),
                }
            }
        }
        *self.shared.handles.write().unwrap() = live.transports.clone();
        for (n, p) in plan::plan(old) {
            if live.tasks.contains_key(&n) {
                continue;
            }
            match self.spawn_task(old, &live.transports, &n, &p) {
                Ok(h) => {
                    live.tasks.insert(n, (p, h));
                }
                Err(e) => tracing::error!(task = %n, error = %e, "cannot restart the previous task"),
            }
        }
    }

    /// Waits until task `name` has consumed everything of its input.
    async fn wait_drained(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        let mut quiet = 0;
        while tokio::time::Instant::now() < deadline {
            let text = self.metrics.encode();
            let lag: f64 = text
                .lines()
                .filter(|l| {
                    l.starts_with("conveyor_consumer_lag_messages{") && l.contains(&format!("worker=\"{name}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            let in_flight: f64 = text
                .lines()
                .filter(|l| l.starts_with("conveyor_in_flight_messages{") && l.contains(&format!("worker=\"{name}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            quiet = if lag == 0.0 && in_flight == 0.0 { quiet + 1 } else { 0 };
            if quiet >= 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::error!(task = %name, "the old entity did not drain within 5 minutes; its rest stays on the old transport");
    }

    fn spawn_task(
        &self,
        cfg: &Config,
        transports: &BTreeMap<String, LiveTransport>,
        name: &str,
        p: &TaskPlan,
    ) -> Result<TaskHandle, AppError> {
        let sh = &self.shared;
        let metrics = &sh.metrics;
        let producer_of = |entity: &str| transports[&cfg.entities[entity].transport].producer.clone();
        let target = |entity: &str, wm: &crate::metrics::WorkerMetrics| OutputTarget {
            entity: entity.to_string(),
            physical: cfg.entities[entity].physical_name(entity).to_string(),
            producer: producer_of(entity),
            produced: wm.produced(entity),
        };
        let th = sh.health.task(name, kind_name(&p.kind));
        Ok(match &p.kind {
            TaskKind::Worker => {
                let w = &cfg.workers[name];
                let wm = metrics.worker(name, &w.input);
                let outputs = Outputs::new(w.outputs.keys().cloned());
                let stage = match sh.opts.stages.get(name) {
                    Some(s) => s.clone(),
                    None => stages::build(&w.stage, &outputs)
                        .map_err(|message| AppError::Stage { worker: name.to_string(), message })?,
                };
                let (retry_base, retry_max) =
                    sh.opts.retry_backoff.unwrap_or((Duration::from_millis(100), Duration::from_secs(30)));
                let input = &cfg.entities[&w.input];
                let spec = Arc::new(WorkerSpec {
                    name: name.to_string(),
                    input: w.input.clone(),
                    input_physical: input.physical_name(&w.input).to_string(),
                    transport: transports[&input.transport].transport.clone(),
                    group: w.group(name).to_string(),
                    start: w.start_position,
                    stage,
                    outputs: outputs.names().iter().map(|o| target(&w.outputs[o], &wm)).collect(),
                    tee: {
                        let default = outputs.index("default");
                        let tees: Vec<usize> = w.tee.iter().filter_map(|t| outputs.index(t)).collect();
                        default.map(|d| (d, tees)).filter(|(_, t)| !t.is_empty())
                    },
                    dead_letter: w.dead_letter.as_deref().map(|d| target(d, &wm)),
                    concurrency: w.concurrency,
                    batch_size: w.batch_size,
                    metrics: wm.clone(),
                    retry_base,
                    retry_max,
                    retry: w.retry.as_ref().map(|r| RetrySpec {
                        via: target(&r.via, &wm),
                        schedule: r.schedule.iter().map(|d| d.get()).collect(),
                        max_attempts: r.max_attempts,
                        scheduled: wm.retries_scheduled(&r.via),
                    }),
                    breaker: w.dead_letter_limit.clone().map(|l| std::sync::Mutex::new(Breaker::new(l))),
                });
                let h2 = th.clone();
                sh.supervisor.spawn(name.to_string(), th, wm.restarts.clone(), move |token| {
                    let (spec, health) = (spec.clone(), h2.clone());
                    async move {
                        match worker::run(spec, health, token).await {
                            Ok(()) => None,
                            Err(e) => Some(Exit::Failed(e.category(), e.to_string())),
                        }
                    }
                })
            }
            TaskKind::Retry(via) => {
                let e = &cfg.entities[via];
                let label = EntityLabel { entity: via.to_string() };
                let targets = p
                    .entities
                    .iter()
                    .filter(|t| *t != via)
                    .map(|i| {
                        let t = RetryTarget {
                            physical: cfg.entities[i].physical_name(i).to_string(),
                            producer: producer_of(i),
                        };
                        (i.clone(), t)
                    })
                    .collect();
                let (m, task, entity) = (metrics.clone(), name.to_string(), via.to_string());
                let sched = Arc::new(Scheduler {
                    entity: via.to_string(),
                    physical: e.physical_name(via).to_string(),
                    transport: transports[&e.transport].transport.clone(),
                    targets,
                    redelivered: metrics.retry_redelivered.get_or_create(&label).clone(),
                    invalid: metrics.retry_invalid.get_or_create(&label).clone(),
                    pending: metrics.retry_pending.get_or_create(&label).clone(),
                    lag: Arc::new(move |p: u32| {
                        let l = crate::metrics::PartitionLabel {
                            worker: task.clone(),
                            entity: entity.clone(),
                            partition: p.to_string(),
                        };
                        m.lag.get_or_create(&l).clone()
                    }),
                });
                let h2 = th.clone();
                sh.supervisor.spawn(name.to_string(), th, Default::default(), move |token| {
                    let (sched, health) = (sched.clone(), h2.clone());
                    async move {
                        match sched.run(health, token).await {
                            Ok(()) => None,
                            Err(e) => Some(Exit::Failed(e.category(), e.to_string())),
                        }
                    }
                })
            }
            TaskKind::Source => {
                let SourceConfig::Simulator { entity, rate, count, malformed_ratio, pad_bytes, kind, attachments } =
                    &cfg.sources[name];
                let e = &cfg.entities[entity];
                let sim = Arc::new(Simulator {
                    name: name.to_string(),
                    entity: entity.clone(),
                    physical: e.physical_name(entity).to_string(),
                    rate: *rate,
                    count: *count,
                    malformed_ratio: *malformed_ratio,
                    pad_bytes: *pad_bytes,
                    kind: *kind,
                    attachments: attachments.clone(),
                });
                let producer = producer_of(entity);
                let counter = metrics
                    .source_events
                    .get_or_create(&crate::metrics::SourceLabel { source: name.to_string(), entity: entity.clone() })
                    .clone();
                let h2 = th.clone();
                sh.supervisor.spawn(name.to_string(), th, Default::default(), move |token| {
                    let (sim, producer, counter, health) = (sim.clone(), producer.clone(), counter.clone(), h2.clone());
                    async move { sim.run(producer, counter, health, token).await }
                })
            }
        })
    }

    /// Drains and stops. `Err(GraceExceeded)` when the grace period ran out.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.draining.store(true, Ordering::Relaxed);
        notify::stopping();
        tracing::info!(grace = %self.grace, "draining: finishing in-flight messages and committing positions");
        let drained = self.shared.supervisor.shutdown(self.grace.get()).await;
        let live = self.live.lock().await;
        for (name, t) in &live.transports {
            tracing::debug!(transport = %name, "closing transport");
            t.transport.close().await;
        }
        self.http_stop.cancel();
        let _ = self.http_task.await;
        if drained {
            tracing::info!("drained; exiting");
            Ok(())
        } else {
            Err(AppError::GraceExceeded(self.grace))
        }
    }
}

/// Every 10 s: `conveyor_recommended_replicas` per worker, from its
/// throughput, its lag and the lag's trend — enough processes to keep up
/// and clear the backlog within 5 minutes, at least 1, at most the input's
/// partition count.
async fn scaling_signals(shared: Arc<Shared>) {
    const EVERY: Duration = Duration::from_secs(10);
    let mut last: HashMap<String, (u64, f64)> = HashMap::new();
    let stop = shared.supervisor.token().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let Some(cfg) = shared.current.read().unwrap().clone() else { continue };
        for (name, w) in &cfg.workers {
            let partitions = cfg.entities[&w.input].partitions;
            let wm = shared.metrics.worker(name, &w.input);
            let consumed = wm.consumed.get();
            let lag: f64 = (0..partitions).map(|p| wm.lag(p).get().max(0) as f64).sum();
            let Some((c0, l0)) = last.insert(name.clone(), (consumed, lag)) else { continue };
            let rate = consumed.saturating_sub(c0) as f64 / EVERY.as_secs_f64();
            let trend = (lag - l0) / EVERY.as_secs_f64();
            let rec = recommended_replicas(rate, lag, trend, partitions);
            shared
                .metrics
                .recommended_replicas
                .get_or_create(&crate::metrics::WorkerLabel { worker: name.clone() })
                .set(rec as i64);
        }
    }
}

/// Processes needed for throughput `rate` (msgs/s of this process), backlog
/// `lag` and its `trend` (msgs/s), capped at `partitions`.
pub fn recommended_replicas(rate: f64, lag: f64, trend: f64, partitions: u32) -> u32 {
    let want = if rate > 0.0 {
        ((rate + trend.max(0.0) + lag / 300.0) / rate).ceil()
    } else if lag > 0.0 {
        2.0 // a backlog and no progress: one process is not enough (or is stuck)
    } else {
        1.0
    };
    (want as u32).clamp(1, partitions.max(1))
}

fn kind_name(k: &TaskKind) -> &'static str {
    match k {
        TaskKind::Worker => "worker",
        TaskKind::Retry(_) => "retry-scheduler",
        TaskKind::Source => "source",
    }
}

/// Runs the daemon on the config file `path` until SIGTERM or SIGINT, then
/// drains. Reloads on SIGHUP, on a change of the file (debounced) and on
/// `POST /-/reload`; an invalid file keeps the running topology.
pub async fn run(path: &Path, cfg: &Config, hash: u64) -> Result<(), AppError> {
    use futures::StreamExt;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(AppError::Signals)?;
    let rt = Runtime::start(cfg, hash, Options::default()).await?;
    crate::watchdog::spawn(
        rt.health.clone(),
        rt.metrics.consumed_all.clone(),
        rt.token().clone(),
        cfg.service.watchdog_stall.get(),
    );
    let mut file_changes = crate::watch::watch(path);
    let mut http_reloads = rt.reload_rx.lock().await.take().expect("taken once");
    loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Some(SIGHUP) => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = rt.reload_file(path).await;
                }
                Some(sig) => {
                    tracing::info!(signal = sig, "shutdown requested");
                    break;
                }
                None => break,
            },
            Some(()) = file_changes.recv() => {
                tracing::info!(file = %path.display(), "config file changed: reloading");
                let _ = rt.reload_file(path).await;
            }
            Some(req) = http_reloads.recv() => {
                let r = rt.reload_file(path).await.map_err(|e| e.to_string());
                let _ = req.reply.send(r.map(|rep| serde_json::to_value(rep).unwrap_or_default()));
            }
        }
    }
    signals.handle().close();
    rt.shutdown().await
}

/// Checks a config against the brokers it names (for `conveyor check`):
/// warnings where a Kafka topic is missing or its partition count differs
/// from the entity's, or a broker cannot be reached. Blocking; a few seconds
/// at most per transport.
pub fn check_brokers(cfg: &Config) -> Vec<String> {
    #[allow(unused_mut)]
    let mut warnings = Vec::new();
    #[cfg(feature = "kafka")]
    for (tname, t) in &cfg.transports {
        let TransportConfig::Kafka(k) = t else { continue };
        let ents: Vec<(&String, &crate::config::EntityConfig)> =
            cfg.entities.iter().filter(|(_, e)| &e.transport == tname).collect();
        let topics: Vec<String> = ents.iter().map(|(key, e)| e.physical_name(key).to_string()).collect();
        match crate::transport::kafka::KafkaTransport::broker_partitions(k, &topics, Duration::from_secs(5)) {
            Err(e) => warnings.push(format!(
                "transports.{tname}: cannot reach {} to compare partition counts: {e}",
                k.bootstrap_servers
            )),
            Ok(found) => {
                for (key, e) in ents {
                    let topic = e.physical_name(key);
                    match found.get(topic).copied().flatten() {
                        None if k.create_topics => {}
                        None => warnings.push(format!(
                            "entities.{key}: topic {topic:?} does not exist on {tname} (create it, or set create_topics: true for development)"
                        )),
                        Some(n) if n != e.partitions => warnings.push(format!(
                            "entities.{key}: topic {topic:?} has {n} partitions on the broker, the config says {}",
                            e.partitions
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    #[cfg(feature = "eventhubs")]
    {
        let hubs: Vec<(&String, &crate::config::EventHubsConfig)> = cfg
            .transports
            .iter()
            .filter_map(|(n, t)| match t {
                TransportConfig::Eventhubs(c) => Some((n, c)),
                _ => None,
            })
            .collect();
        if !hubs.is_empty() {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => {
                    for (tname, c) in hubs {
                        rt.block_on(check_hubs(cfg, tname, c, &mut warnings));
                    }
                }
                Err(e) => warnings.push(format!("cannot compare Event Hubs partition counts: {e}")),
            }
        }
    }
    #[cfg(not(any(feature = "kafka", feature = "eventhubs")))]
    let _ = cfg;
    warnings
}

/// `conveyor check` for one Event Hubs transport: each entity's hub must
/// exist with the configured partition count. The first hub that cannot be
/// read ends the check of that transport with one warning (an unreachable
/// namespace would otherwise cost a timeout per entity).
#[cfg(feature = "eventhubs")]
async fn check_hubs(cfg: &Config, tname: &str, c: &crate::config::EventHubsConfig, warnings: &mut Vec<String>) {
    use crate::transport::eventhub::EventHubsTransport;
    let ents = eventhub_entities(cfg, tname);
    // the hubs only: the checkpoint store is not needed to read them
    let c = crate::config::EventHubsConfig { checkpoint_store: None, ..c.clone() };
    let t = match EventHubsTransport::open(tname, &c, ents.clone()).await {
        Ok(t) => t,
        Err(e) => {
            warnings.push(format!("transports.{tname}: cannot open to compare partition counts: {e}"));
            return;
        }
    };
    for e in &ents {
        match tokio::time::timeout(Duration::from_secs(15), t.hub_partitions(&e.hub)).await {
            Ok(Ok(n)) if n != e.partitions => warnings.push(format!(
                "entities.{}: event hub {:?} has {n} partitions on {tname}, the config says {}",
                e.key, e.hub, e.partitions
            )),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                warnings.push(format!(
                    "entities.{}: cannot read event hub {:?} on {tname} (does it exist?): {err}; partition counts not compared",
                    e.key, e.hub
                ));
                break;
            }
            Err(_) => {
                warnings.push(format!(
                    "transports.{tname}: event hub {:?} did not answer within 15s; partition counts not compared",
                    e.hub
                ));
                break;
            }
        }
    }
    t.close().await;
}

#[cfg(test)]
mod tests {
    use super::recommended_replicas;

    #[test]
    fn replicas_follow_lag_and_its_trend() {
        assert_eq!(recommended_replicas(1000.0, 0.0, 0.0, 8), 1, "keeping up");
        assert_eq!(recommended_replicas(1000.0, 0.0, 1000.0, 8), 2, "lag grows as fast as we consume");
        assert_eq!(recommended_replicas(1000.0, 600_000.0, 0.0, 8), 3, "clear 600k in 5 min at 1000/s each");
        assert_eq!(recommended_replicas(1000.0, 0.0, 50_000.0, 8), 8, "capped at the partition count");
        assert_eq!(recommended_replicas(0.0, 10.0, 0.0, 4), 2);
        assert_eq!(recommended_replicas(0.0, 0.0, 0.0, 4), 1);
    }
}
