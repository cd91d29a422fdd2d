//! Building the runtime from a validated config and running it until a
//! signal.
//!
//! [`Runtime::start`] opens the transports, registers the consumer groups,
//! starts the HTTP server, then spawns every source and worker under the
//! supervisor. [`Runtime::shutdown`] drains: readiness turns `503`, systemd is
//! told `STOPPING=1`, workers finish and commit what they hold, transports
//! flush, and the HTTP server stops last.

use crate::config::{Config, Dur, SourceConfig, TransportConfig};
use crate::health::Health;
use crate::http::{self, HttpState};
use crate::metrics::EntityLabel;
use crate::metrics::Metrics;
use crate::notify;
use crate::retry::{Scheduler, Target as RetryTarget};
use crate::sources::Simulator;
use crate::stages::{self, Outputs, Stage};
use crate::supervisor::{Backoff, Exit, Supervisor};
use crate::transport::embedded::{Embedded, EmbeddedOptions, EntitySpec};
use crate::transport::{Producer, Transport, TransportError};
use crate::worker::{self, Breaker, OutputTarget, RetrySpec, WorkerSpec};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the runtime could not start or stop cleanly.
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

/// The transports of a config, opened.
pub struct Transports {
    pub all: HashMap<String, Arc<dyn Transport>>,
    /// The shared producer of each transport.
    pub producers: HashMap<String, Arc<dyn Producer>>,
    pub embedded: HashMap<String, Embedded>,
}

impl Transports {
    /// The transport and physical name of entity `key`.
    pub fn entity(&self, cfg: &Config, key: &str) -> Option<(Arc<dyn Transport>, String)> {
        let e = cfg.entities.get(key)?;
        Some((self.all[&e.transport].clone(), e.physical_name(key).to_string()))
    }

    /// Flushes and closes every transport.
    pub async fn close(&self) {
        for t in self.all.values() {
            t.close().await;
        }
    }
}

/// Opens every transport of `cfg` with its entities, registering the
/// consumer groups the topology uses (workers and retry schedulers).
pub async fn open_transports(cfg: &Config) -> Result<Transports, AppError> {
    let mut all: HashMap<String, Arc<dyn Transport>> = HashMap::new();
    let mut embedded = HashMap::new();
    let mut producers: HashMap<String, Arc<dyn Producer>> = HashMap::new();
    let physical = |key: &str| cfg.entities[key].physical_name(key).to_string();
    for (tname, tcfg) in &cfg.transports {
        let on_this = |key: &str| cfg.entities[key].transport == *tname;
        let mut groups: Vec<(String, String, crate::config::StartPosition)> = cfg
            .workers
            .iter()
            .filter(|(_, w)| on_this(&w.input))
            .map(|(n, w)| (physical(&w.input), w.group(n).to_string(), w.start_position))
            .collect();
        for w in cfg.workers.values() {
            if let Some(r) = w.retry.as_ref().filter(|r| on_this(&r.via)) {
                groups.push((
                    physical(&r.via),
                    crate::retry::GROUP.to_string(),
                    crate::config::StartPosition::Earliest,
                ));
            }
        }
        match tcfg {
            TransportConfig::Embedded { path, capacity } => {
                let entities: Vec<EntitySpec> = cfg
                    .entities
                    .iter()
                    .filter(|(k, _)| on_this(k))
                    .map(|(k, e)| EntitySpec {
                        name: e.physical_name(k).to_string(),
                        key: k.clone(),
                        partitions: e.partitions,
                    })
                    .collect();
                let opts = EmbeddedOptions { name: tname.clone(), path: path.clone(), capacity: *capacity };
                let t = Embedded::open(opts, &entities, &groups)
                    .map_err(|source| AppError::Transport { name: tname.clone(), source })?;
                tracing::info!(
                    transport = %tname, kind = "embedded", durable = t.is_durable(),
                    entities = entities.len(), "transport opened"
                );
                producers.insert(tname.clone(), t.producer());
                all.insert(tname.clone(), Arc::new(t.clone()));
                embedded.insert(tname.clone(), t);
            }
            #[cfg(feature = "kafka")]
            TransportConfig::Kafka(k) => {
                use crate::transport::kafka::{KafkaEntity, KafkaTransport};
                let entities: Vec<KafkaEntity> = cfg
                    .entities
                    .iter()
                    .filter(|(key, _)| on_this(key))
                    .map(|(key, e)| KafkaEntity {
                        key: key.clone(),
                        topic: e.physical_name(key).to_string(),
                        partitions: e.partitions,
                    })
                    .collect();
                let t = KafkaTransport::open(tname, k, entities)
                    .await
                    .map_err(|source| AppError::Transport { name: tname.clone(), source })?;
                tracing::info!(transport = %tname, kind = "kafka", "transport opened");
                producers.insert(tname.clone(), t.producer());
                all.insert(tname.clone(), Arc::new(t));
            }
            #[cfg(not(feature = "kafka"))]
            TransportConfig::Kafka(_) => {
                return Err(AppError::Transport {
                    name: tname.clone(),
                    source: TransportError::Other {
                        category: crate::classify::ErrorCategory::Permanent,
                        kind: "unsupported",
                        message: "this build has no Kafka support (cargo feature `kafka`)".into(),
                    },
                });
            }
        }
    }
    Ok(Transports { all, producers, embedded })
}

/// A started pipeline.
pub struct Runtime {
    pub http_addr: SocketAddr,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Transports by name.
    pub transports: HashMap<String, Arc<dyn Transport>>,
    /// Embedded transports by name (for tools and tests).
    pub embedded: HashMap<String, Embedded>,
    supervisor: Supervisor,
    grace: Dur,
    draining: Arc<AtomicBool>,
    http_stop: CancellationToken,
    http_task: JoinHandle<std::io::Result<()>>,
}

impl Runtime {
    pub async fn start(cfg: &Config, hash: u64, opts: Options) -> Result<Runtime, AppError> {
        let metrics = Metrics::new();
        let health = Health::new();

        let Transports { all: transports, producers, embedded } = open_transports(cfg).await?;

        // HTTP first, so /healthz answers while workers start
        let listener = TcpListener::bind(cfg.service.http.listen)
            .await
            .map_err(|source| AppError::Bind { addr: cfg.service.http.listen, source })?;
        let http_addr =
            listener.local_addr().map_err(|source| AppError::Bind { addr: cfg.service.http.listen, source })?;
        let draining = Arc::new(AtomicBool::new(false));
        let http_stop = CancellationToken::new();
        let state = HttpState {
            service: cfg.service.name.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
            config_hash: format!("{hash:016x}"),
        };
        let http_task = tokio::spawn(http::serve(listener, state, http_stop.clone()));
        tracing::info!(listen = %http_addr, "HTTP endpoints up: /healthz /readyz /metrics");

        let supervisor = Supervisor::new(opts.backoff.unwrap_or_default());
        let (retry_base, retry_max) =
            opts.retry_backoff.unwrap_or((Duration::from_millis(100), Duration::from_secs(30)));
        let target = |entity: &str, wm: &crate::metrics::WorkerMetrics| {
            let e = &cfg.entities[entity];
            OutputTarget {
                entity: entity.to_string(),
                physical: e.physical_name(entity).to_string(),
                producer: producers[&e.transport].clone(),
                produced: wm.produced(entity),
            }
        };

        // workers
        for (wname, w) in &cfg.workers {
            let wm = metrics.worker(wname, &w.input);
            let outputs = Outputs::new(w.outputs.keys().cloned());
            let stage = match opts.stages.get(wname) {
                Some(s) => s.clone(),
                None => stages::build(&w.stage, &outputs)
                    .map_err(|message| AppError::Stage { worker: wname.clone(), message })?,
            };
            let retry = w.retry.as_ref().map(|r| RetrySpec {
                via: target(&r.via, &wm),
                schedule: r.schedule.iter().map(|d| d.get()).collect(),
                max_attempts: r.max_attempts,
                scheduled: wm.retries_scheduled(&r.via),
            });
            let breaker = w.dead_letter_limit.clone().map(|l| std::sync::Mutex::new(Breaker::new(l)));
            let input = &cfg.entities[&w.input];
            let spec = Arc::new(WorkerSpec {
                name: wname.clone(),
                input: w.input.clone(),
                input_physical: input.physical_name(&w.input).to_string(),
                transport: transports[&input.transport].clone(),
                group: w.group(wname).to_string(),
                start: w.start_position,
                stage,
                outputs: outputs.names().iter().map(|o| target(&w.outputs[o], &wm)).collect(),
                dead_letter: w.dead_letter.as_deref().map(|d| target(d, &wm)),
                concurrency: w.concurrency,
                batch_size: w.batch_size,
                metrics: wm.clone(),
                retry_base,
                retry_max,
                retry,
                breaker,
            });
            let th = health.task(wname, "worker");
            let h2 = th.clone();
            supervisor.spawn(wname.clone(), th, wm.restarts.clone(), move |token| {
                let (spec, health) = (spec.clone(), h2.clone());
                async move {
                    match worker::run(spec, health, token).await {
                        Ok(()) => None,
                        Err(e) => Some(Exit::Failed(e.category(), e.to_string())),
                    }
                }
            });
        }

        // one retry scheduler per retry entity, re-delivering to the inputs
        // of the workers that use it
        let mut retry_entities: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for w in cfg.workers.values() {
            if let Some(r) = &w.retry {
                retry_entities.entry(r.via.as_str()).or_default().push(w.input.as_str());
            }
        }
        for (via, inputs) in retry_entities {
            let e = &cfg.entities[via];
            let label = EntityLabel { entity: via.to_string() };
            let sched = Arc::new(Scheduler {
                entity: via.to_string(),
                physical: e.physical_name(via).to_string(),
                transport: transports[&e.transport].clone(),
                targets: inputs
                    .into_iter()
                    .map(|i| {
                        let ie = &cfg.entities[i];
                        let t = RetryTarget {
                            physical: ie.physical_name(i).to_string(),
                            producer: producers[&ie.transport].clone(),
                        };
                        (i.to_string(), t)
                    })
                    .collect(),
                redelivered: metrics.retry_redelivered.get_or_create(&label).clone(),
                invalid: metrics.retry_invalid.get_or_create(&label).clone(),
                pending: metrics.retry_pending.get_or_create(&label).clone(),
                lag: {
                    let (m, task, entity) = (metrics.clone(), format!("retry:{via}"), via.to_string());
                    Arc::new(move |p: u32| {
                        let l = crate::metrics::PartitionLabel {
                            worker: task.clone(),
                            entity: entity.clone(),
                            partition: p.to_string(),
                        };
                        m.lag.get_or_create(&l).clone()
                    })
                },
            });
            let name = format!("retry:{via}");
            let th = health.task(&name, "retry-scheduler");
            let h2 = th.clone();
            supervisor.spawn(name, th, Default::default(), move |token| {
                let (sched, health) = (sched.clone(), h2.clone());
                async move {
                    match sched.run(health, token).await {
                        Ok(()) => None,
                        Err(e) => Some(Exit::Failed(e.category(), e.to_string())),
                    }
                }
            });
        }

        // sources
        for (sname, s) in &cfg.sources {
            let SourceConfig::Simulator { entity, rate, count, malformed_ratio, pad_bytes } = s;
            let e = &cfg.entities[entity];
            let sim = Arc::new(Simulator {
                name: sname.clone(),
                entity: entity.clone(),
                physical: e.physical_name(entity).to_string(),
                rate: *rate,
                count: *count,
                malformed_ratio: *malformed_ratio,
                pad_bytes: *pad_bytes,
            });
            let producer = producers[&e.transport].clone();
            let counter = metrics
                .source_events
                .get_or_create(&crate::metrics::SourceLabel { source: sname.clone(), entity: entity.clone() })
                .clone();
            let th = health.task(sname, "source");
            let h2 = th.clone();
            supervisor.spawn(sname.clone(), th, Default::default(), move |token| {
                let (sim, producer, counter, health) = (sim.clone(), producer.clone(), counter.clone(), h2.clone());
                async move { sim.run(producer, counter, health, token).await }
            });
        }

        Ok(Runtime {
            http_addr,
            health,
            metrics,
            transports,
            embedded,
            supervisor,
            grace: cfg.service.shutdown_grace,
            draining,
            http_stop,
            http_task,
        })
    }

    /// The root cancellation token (cancelled when a drain begins).
    pub fn token(&self) -> &CancellationToken {
        self.supervisor.token()
    }

    /// Drains and stops. `Err(GraceExceeded)` when the grace period ran out.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.draining.store(true, Ordering::Relaxed);
        notify::stopping();
        tracing::info!(grace = %self.grace, "draining: finishing in-flight messages and committing positions");
        let drained = self.supervisor.shutdown(self.grace.get()).await;
        for (name, t) in &self.transports {
            tracing::debug!(transport = %name, "closing transport");
            t.close().await;
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

/// Runs the daemon until SIGTERM or SIGINT, then drains.
pub async fn run(cfg: &Config, hash: u64) -> Result<(), AppError> {
    use futures::StreamExt;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(AppError::Signals)?;
    let rt = Runtime::start(cfg, hash, Options::default()).await?;
    // READY=1 once every worker is consuming; STATUS= kept current
    let health = rt.health.clone();
    let watch_stop = rt.token().clone();
    tokio::spawn(async move {
        let mut told_ready = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = watch_stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let r = health.report();
            let ready = r.workers.values().filter(|w| w.state == crate::health::TaskState::Ready).count();
            if r.ready && !told_ready {
                told_ready = true;
                notify::ready();
                tracing::info!(tasks = r.workers.len(), "all workers ready");
            }
            notify::status(&format!("{ready}/{} tasks ready", r.workers.len()));
        }
    });
    while let Some(sig) = signals.next().await {
        match sig {
            SIGHUP => {
                tracing::warn!("SIGHUP received: live reload is not supported yet; restart to apply a new config")
            }
            _ => {
                tracing::info!(signal = sig, "shutdown requested");
                break;
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
    #[cfg(not(feature = "kafka"))]
    let _ = cfg;
    warnings
}
