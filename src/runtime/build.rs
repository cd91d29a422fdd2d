//! Building tasks from a config and its open transports: workers, retry
//! schedulers and sources, each as a [`Task`] ready to run under the
//! supervisor. The daemon and `conveyor bench` build workers here, so a
//! benchmark measures exactly what runs.

use super::error::RuntimeError;
use super::plan::TaskKind;
use super::transports::LiveTransport;
use crate::backoff::Backoff;
use crate::config::{Config, EntityConfig, SourceConfig};
use crate::consume::Host;
use crate::health::{Health, TaskHealth};
use crate::metrics::{EntityLabel, Metrics, PartitionLabel, SourceLabel};
use crate::migration::{
    self,
    mirror::Mirror,
    switch::{Endpoint, Switch},
};
use crate::retry::{self, Scheduler};
use crate::sources::{Ingest, Routes, Simulator};
use crate::stages::{self, Outputs, Stage};
use crate::supervisor::{Exit, Supervisor, TaskHandle};
use crate::transport::Producer;
use crate::transport::Transport;
use crate::worker::{self, Breaker, OutputTarget, RetryPolicy, RetrySpec, WorkerSpec};
use prometheus_client::metrics::counter::Counter;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Knobs for embedding the pipeline (tests, benchmarks).
#[derive(Default, Clone)]
pub struct Options {
    /// Replace a worker's configured stage by this one (by worker name).
    pub stages: HashMap<String, Arc<dyn Stage>>,
    /// Restart backoff of the supervisor (default 200 ms doubling to 30 s).
    pub backoff: Option<Backoff>,
    /// In-place retry backoff of failed messages (default [`RETRY_BACKOFF`]).
    pub retry_backoff: Option<Backoff>,
}

/// Batch size of a migration mirror.
pub const MIRROR_BATCH: usize = 500;

/// In-place retry backoff of failed messages unless [`Options`] say otherwise.
pub const RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));

/// What tasks are built from: a config and its open transports.
pub struct Parts<'a> {
    pub cfg: &'a Config,
    pub transports: &'a BTreeMap<String, LiveTransport>,
    pub metrics: &'a Arc<Metrics>,
    pub health: &'a Health,
    pub opts: &'a Options,
    /// How long a task's drain may take.
    pub grace: Duration,
    /// Ingest routes of the admin listener (`type: http` without `listen`).
    pub routes: &'a Arc<Routes>,
    /// The config's schema registries.
    pub registries: crate::schema::Registries,
}

/// A built task, ready to spawn.
pub enum Task {
    Worker(Arc<WorkerSpec>),
    Retry(Arc<Scheduler>),
    Source { sim: Arc<Simulator>, producer: Arc<dyn Producer>, counter: Counter, health: Arc<TaskHealth> },
    Ingest { ingest: Arc<Ingest>, routes: Arc<Routes> },
}

impl Parts<'_> {
    fn open(&self, entity: &str, transport: &str) -> Result<&LiveTransport, RuntimeError> {
        self.transports
            .get(transport)
            .ok_or_else(|| RuntimeError::NotOpen { entity: entity.to_string(), transport: transport.to_string() })
    }

    fn entity(&self, entity: &str) -> Result<&EntityConfig, RuntimeError> {
        self.cfg
            .entities
            .get(entity)
            .ok_or_else(|| RuntimeError::NotOpen { entity: entity.to_string(), transport: "(none)".into() })
    }

    /// Where entity `entity` is written now (its new side once a migration's
    /// producers switched): the open transport and the name there. A
    /// validated config names only known entities; a transport that could
    /// not be reopened is an error.
    fn locate(&self, entity: &str) -> Result<(&LiveTransport, String), RuntimeError> {
        let side = self.entity(entity)?.write_side(entity);
        Ok((self.open(entity, &side.transport)?, side.physical))
    }

    /// What consumers of `entity` read: its transport, or, while it
    /// migrates, a switch over the sides in the order they are read.
    fn reader(&self, entity: &str) -> Result<(Arc<dyn Transport>, String), RuntimeError> {
        let e = self.entity(entity)?;
        if e.migrate.is_none() {
            let live = self.open(entity, &e.transport)?;
            return Ok((live.transport.clone(), e.physical_name(entity).to_string()));
        }
        let plan = migration::plan::consume(e, entity);
        let sides = plan
            .sides()
            .into_iter()
            .map(|side| {
                Ok(Endpoint {
                    transport: self.open(entity, &side.transport)?.transport.clone(),
                    name: side.transport.clone(),
                    physical: side.physical.clone(),
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let physical = sides[0].physical.clone();
        let skip = Arc::new(migration::plan::sides(e, entity));
        Ok((Arc::new(Switch { entity: entity.to_string(), sides, skip }), physical))
    }

    fn output(&self, entity: &str, produced: Counter) -> Result<OutputTarget, RuntimeError> {
        let (producer, physical) = self.writer(entity)?;
        Ok(OutputTarget { entity: entity.to_string(), physical, producer, produced })
    }

    /// What writes to `entity` and its name there. Cut-over producers (and
    /// retries going back to them) write the new side: Azure-framed when the
    /// migration transcodes (validation keeps `transcode` off dead-letter and
    /// retry entities, whose envelopes are no Avro records).
    fn writer(&self, entity: &str) -> Result<(Arc<dyn Producer>, String), RuntimeError> {
        let (live, physical) = self.locate(entity)?;
        let e = self.entity(entity)?;
        let mut producer = live.producer.clone();
        if e.new_side(entity).is_some_and(|new| e.write_side(entity) == new)
            && let Some(transcoder) = self.transcoder(e)?
        {
            producer = Arc::new(migration::transcode::Transcoding { inner: producer, transcoder });
        }
        Ok((producer, physical))
    }

    /// The transcoder of a migration that transcodes.
    fn transcoder(&self, e: &EntityConfig) -> Result<Option<Arc<crate::schema::Transcoder>>, RuntimeError> {
        let Some(t) = e.migrate.as_ref().and_then(|m| m.transcode.as_ref()) else { return Ok(None) };
        let cx = stages::Context { registries: self.registries.clone(), topics: vec![] };
        cx.transcoder(t)
            .map(|t| Some(Arc::new(t)))
            .map_err(|source| RuntimeError::Stage { worker: "(migration transcode)".into(), source: Box::new(source) })
    }

    fn retry_target(&self, entity: &str) -> Result<retry::scheduler::Target, RuntimeError> {
        let (producer, physical) = self.writer(entity)?;
        Ok(retry::scheduler::Target { entity: entity.to_string(), physical, producer })
    }

    fn host(
        &self,
        entity: &str,
        group: &str,
        start: crate::config::StartPosition,
        health: Arc<TaskHealth>,
    ) -> Result<Host, RuntimeError> {
        let (transport, physical) = self.reader(entity)?;
        Ok(Host {
            entity: entity.to_string(),
            physical,
            group: group.to_string(),
            start,
            transport,
            health,
            grace: self.grace,
        })
    }

    /// The task `name` of kind `kind`.
    pub fn task(&self, name: &str, kind: &TaskKind) -> Result<Task, RuntimeError> {
        Ok(match kind {
            TaskKind::Worker => Task::Worker(self.worker(name)?),
            TaskKind::Retry(via) => Task::Retry(self.retry_scheduler(name, via)?),
            TaskKind::Source => self.source(name)?,
            TaskKind::Mirror(entity) => Task::Worker(self.mirror(name, entity)?),
        })
    }

    /// The migration mirror of `entity` (task `name`): a worker on the old
    /// side, consumer group `conveyor-mirror`, whose stage copies each
    /// message to the new side (see `migration::mirror`).
    pub fn mirror(&self, name: &str, entity: &str) -> Result<Arc<WorkerSpec>, RuntimeError> {
        let e = self.entity(entity)?;
        let (from, to) = migration::plan::mirror(e, entity)
            .ok_or_else(|| RuntimeError::NotOpen { entity: entity.to_string(), transport: "(no migration)".into() })?;
        let worker_metrics = self.metrics.worker(name, entity);
        let health = self.health.task_with(name, "mirror", worker_metrics.task_gauges());
        let old = self.open(entity, &from.transport)?;
        let new = self.open(entity, &to.transport)?;
        let stage = Arc::new(Mirror {
            from: (from.transport.clone(), from.physical.clone()),
            to: (to.transport.clone(), to.physical.clone()),
            keep_partition: from.partitions == to.partitions,
            transcode: self.transcoder(e)?,
        });
        Ok(Arc::new(WorkerSpec {
            name: name.to_string(),
            host: Host {
                entity: entity.to_string(),
                physical: from.physical.clone(),
                group: migration::plan::MIRROR_GROUP.to_string(),
                start: crate::config::StartPosition::Earliest,
                transport: old.transport.clone(),
                health,
                grace: self.grace,
            },
            stage,
            outputs: vec![OutputTarget {
                entity: entity.to_string(),
                physical: to.physical.clone(),
                producer: new.producer.clone(),
                produced: worker_metrics.produced(entity),
            }],
            tee: None,
            dead_letter: None,
            concurrency: 1,
            batch_size: MIRROR_BATCH,
            // nothing is dropped: a copy that cannot be written waits (the
            // lane pauses, unready) until it can
            policy: RetryPolicy {
                via: None,
                in_place: self.opts.retry_backoff.unwrap_or(RETRY_BACKOFF),
                dead_letter: false,
            },
            retry: None,
            breaker: None,
            input_workers: vec![name.to_string()],
            retry_headers: false,
            metrics: worker_metrics,
        }))
    }

    /// What the stage of `worker` is built with.
    fn stage_context(&self, worker: &crate::config::WorkerConfig) -> stages::Context {
        let topics = Outputs::new(worker.outputs.keys().cloned())
            .names()
            .iter()
            // the old side's name: a subject does not change at a cut-over
            .map(|o| {
                let key = &worker.outputs[o];
                self.entity(key).map(|e| e.physical_name(key).to_string()).unwrap_or_else(|_| key.clone())
            })
            .collect();
        stages::Context { registries: self.registries.clone(), topics }
    }

    /// Worker `name` of the config.
    pub fn worker(&self, name: &str) -> Result<Arc<WorkerSpec>, RuntimeError> {
        let worker = &self.cfg.workers[name];
        let worker_metrics = self.metrics.worker(name, &worker.input);
        let health = self.health.task_with(name, "worker", worker_metrics.task_gauges());
        let outputs = Outputs::new(worker.outputs.keys().cloned());
        let stage = match self.opts.stages.get(name) {
            Some(s) => s.clone(),
            None => stages::build(&worker.stage, &outputs, &self.stage_context(worker))
                .map_err(|source| RuntimeError::Stage { worker: name.to_string(), source: Box::new(source) })?,
        };
        let tee = {
            let default = outputs.index("default");
            let tees: Vec<usize> = worker.tee.iter().filter_map(|t| outputs.index(t)).collect();
            default.map(|d| (d, tees)).filter(|(_, t)| !t.is_empty())
        };
        let mut input_workers: Vec<String> =
            self.cfg.workers.iter().filter(|(_, other)| other.input == worker.input).map(|(n, _)| n.clone()).collect();
        input_workers.sort();
        Ok(Arc::new(WorkerSpec {
            name: name.to_string(),
            host: self.host(&worker.input, worker.group(name), worker.start_position, health)?,
            stage,
            outputs: outputs
                .names()
                .iter()
                .map(|o| self.output(&worker.outputs[o], worker_metrics.produced(&worker.outputs[o])))
                .collect::<Result<_, _>>()?,
            tee,
            dead_letter: worker
                .dead_letter
                .as_deref()
                .map(|d| self.output(d, worker_metrics.produced(d)))
                .transpose()?,
            concurrency: worker.concurrency.max(1),
            batch_size: worker.batch_size.max(1),
            policy: RetryPolicy {
                via: worker
                    .retry
                    .as_ref()
                    .map(|retry| (retry.schedule.iter().map(|d| d.get()).collect(), retry.max_attempts)),
                in_place: self.opts.retry_backoff.unwrap_or(RETRY_BACKOFF),
                dead_letter: worker.dead_letter.is_some(),
            },
            retry: match &worker.retry {
                Some(retry) => Some(RetrySpec {
                    via: self.output(&retry.via, worker_metrics.produced(&retry.via))?,
                    scheduled: worker_metrics.retries_scheduled(&retry.via),
                }),
                None => None,
            },
            breaker: worker.dead_letter_limit.clone().map(|l| std::sync::Mutex::new(Breaker::new(l))),
            input_workers,
            retry_headers: true,
            metrics: worker_metrics,
        }))
    }

    /// The retry scheduler task `name` of retry entity `via`.
    pub fn retry_scheduler(&self, name: &str, via: &str) -> Result<Arc<Scheduler>, RuntimeError> {
        let cfg = self.cfg;
        let label = EntityLabel { entity: via.to_string() };
        let metrics = self.metrics;
        let retrying: Vec<(&String, &crate::config::WorkerConfig)> = cfg
            .workers
            .iter()
            .filter(|(_, worker)| worker.retry.as_ref().is_some_and(|retry| retry.via == via))
            .collect();
        let targets: HashMap<String, retry::scheduler::Target> = retrying
            .iter()
            .map(|(_, worker)| Ok((worker.input.clone(), self.retry_target(&worker.input)?)))
            .collect::<Result<_, RuntimeError>>()?;
        let worker_inputs = cfg
            .workers
            .iter()
            .map(|(name, worker)| Ok((name.clone(), self.retry_target(&worker.input)?)))
            .collect::<Result<_, RuntimeError>>()?;
        let dead_letters = retrying
            .iter()
            .filter_map(|(name, worker)| Some((name, worker.dead_letter.as_deref()?)))
            .map(|(name, dlq)| Ok(((*name).clone(), self.retry_target(dlq)?)))
            .collect::<Result<_, RuntimeError>>()?;
        let lag = {
            let (metrics, task, entity) = (metrics.clone(), name.to_string(), via.to_string());
            Arc::new(move |p: u32| {
                let label = PartitionLabel { worker: task.clone(), entity: entity.clone(), partition: p.to_string() };
                metrics.lag.get_or_create(&label).clone()
            })
        };
        Ok(Arc::new(Scheduler {
            host: self.host(
                via,
                retry::GROUP,
                crate::config::StartPosition::Earliest,
                self.health.task(name, "retry-scheduler"),
            )?,
            own: self.retry_target(via)?,
            targets,
            worker_inputs,
            dead_letters,
            redelivered: metrics.retry_redelivered.get_or_create(&label).clone(),
            rerouted: metrics.retry_rerouted.get_or_create(&label).clone(),
            invalid: metrics.retry_invalid.get_or_create(&label).clone(),
            reparked: metrics.retry_reparked.get_or_create(&label).clone(),
            pending: metrics.retry_pending.get_or_create(&label).clone(),
            lag,
        }))
    }

    /// Source `name` of the config.
    pub fn source(&self, name: &str) -> Result<Task, RuntimeError> {
        let (entity, rate, count, malformed_ratio, pad_bytes, kind, attachments) = match &self.cfg.sources[name] {
            SourceConfig::Simulator { entity, rate, count, malformed_ratio, pad_bytes, kind, attachments } => {
                (entity, rate, count, malformed_ratio, pad_bytes, kind, attachments)
            }
            SourceConfig::Http(h) => return self.ingest(name, h),
        };
        let (live, physical) = self.locate(entity)?;
        let sim = Arc::new(Simulator {
            name: name.to_string(),
            entity: entity.clone(),
            physical,
            rate: *rate,
            count: *count,
            malformed_ratio: *malformed_ratio,
            pad_bytes: *pad_bytes,
            kind: *kind,
            attachments: attachments.clone(),
        });
        let counter = self
            .metrics
            .source_events
            .get_or_create(&SourceLabel { source: name.to_string(), entity: entity.clone() })
            .clone();
        Ok(Task::Source { sim, producer: live.producer.clone(), counter, health: self.health.task(name, "source") })
    }

    fn ingest(&self, name: &str, h: &crate::config::HttpSourceConfig) -> Result<Task, RuntimeError> {
        let (live, physical) = self.locate(&h.entity)?;
        let ingest = Arc::new(Ingest {
            name: name.to_string(),
            entity: h.entity.clone(),
            physical,
            producer: live.producer.clone(),
            listen: h.listen,
            path: h.path.clone(),
            token: h.token.clone(),
            tls: h.tls.clone(),
            max_body_bytes: h.max_body_bytes,
            max_in_flight: h.max_in_flight,
            // validated: every name parses
            headers: h.headers.iter().filter_map(|n| axum::http::HeaderName::from_bytes(n.as_bytes()).ok()).collect(),
            timeout: h.timeout.get(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(h.max_in_flight)),
            metrics: self.metrics.clone(),
            health: self.health.task(name, "source"),
        });
        Ok(Task::Ingest { ingest, routes: self.routes.clone() })
    }
}

impl Task {
    /// The task's health.
    pub fn health(&self) -> Arc<TaskHealth> {
        match self {
            Task::Worker(w) => w.host.health.clone(),
            Task::Retry(s) => s.host.health.clone(),
            Task::Source { health, .. } => health.clone(),
            Task::Ingest { ingest, .. } => ingest.health.clone(),
        }
    }

    /// Runs the task under `supervisor` as `name`.
    pub fn spawn(self, supervisor: &Supervisor, name: &str) -> TaskHandle {
        let health = self.health();
        match self {
            Task::Worker(spec) => supervisor.spawn(name.to_string(), health, move |token| {
                let spec = spec.clone();
                async move { worker::run(spec, token).await.err().map(|e| Exit::Failed(e.category(), e.to_string())) }
            }),
            Task::Retry(sched) => supervisor.spawn(name.to_string(), health, move |token| {
                let sched = sched.clone();
                async move { sched.run(token).await.err().map(|e| Exit::Failed(e.category(), e.to_string())) }
            }),
            Task::Source { sim, producer, counter, health: h } => {
                supervisor.spawn(name.to_string(), health, move |token| {
                    let (sim, producer, counter, h) = (sim.clone(), producer.clone(), counter.clone(), h.clone());
                    async move { sim.run(producer, counter, h, token).await }
                })
            }
            Task::Ingest { ingest, routes } => supervisor.spawn(name.to_string(), health, move |token| {
                let (ingest, routes) = (ingest.clone(), routes.clone());
                async move { ingest.run(&routes, token).await }
            }),
        }
    }
}

/// The health registry's name for a task kind.
pub fn kind_name(k: &TaskKind) -> &'static str {
    match k {
        TaskKind::Worker => "worker",
        TaskKind::Retry(_) => "retry-scheduler",
        TaskKind::Source => "source",
        TaskKind::Mirror(_) => "mirror",
    }
}
