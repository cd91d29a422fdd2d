//! Building tasks from a config and its open transports: workers, retry
//! schedulers and sources, each as a [`Task`] ready to run under the
//! supervisor. The daemon and `conveyor bench` build workers here, so a
//! benchmark measures exactly what runs.

use super::error::RuntimeError;
use super::plan::TaskKind;
use super::transports::LiveTransport;
use crate::backoff::Backoff;
use crate::config::{Config, SourceConfig};
use crate::consume::Host;
use crate::health::{Health, TaskHealth};
use crate::metrics::{EntityLabel, Metrics, PartitionLabel, SourceLabel};
use crate::retry::{self, Scheduler};
use crate::sources::Simulator;
use crate::stages::{self, Outputs, Stage};
use crate::supervisor::{Exit, Supervisor, TaskHandle};
use crate::transport::Producer;
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
}

/// A built task, ready to spawn.
pub enum Task {
    Worker(Arc<WorkerSpec>),
    Retry(Arc<Scheduler>),
    Source { sim: Arc<Simulator>, producer: Arc<dyn Producer>, counter: Counter, health: Arc<TaskHealth> },
}

impl Parts<'_> {
    fn live(&self, entity: &str) -> &LiveTransport {
        &self.transports[&self.cfg.entities[entity].transport]
    }

    fn physical(&self, entity: &str) -> String {
        self.cfg.entities[entity].physical_name(entity).to_string()
    }

    fn producer(&self, entity: &str) -> Arc<dyn Producer> {
        self.live(entity).producer.clone()
    }

    fn output(&self, entity: &str, produced: Counter) -> OutputTarget {
        OutputTarget {
            entity: entity.to_string(),
            physical: self.physical(entity),
            producer: self.producer(entity),
            produced,
        }
    }

    fn retry_target(&self, entity: &str) -> retry::scheduler::Target {
        retry::scheduler::Target { entity: entity.to_string(), physical: self.physical(entity), producer: self.producer(entity) }
    }

    fn host(&self, entity: &str, group: &str, start: crate::config::StartPosition, health: Arc<TaskHealth>) -> Host {
        Host {
            entity: entity.to_string(),
            physical: self.physical(entity),
            group: group.to_string(),
            start,
            transport: self.live(entity).transport.clone(),
            health,
            grace: self.grace,
        }
    }

    /// The task `name` of kind `kind`.
    pub fn task(&self, name: &str, kind: &TaskKind) -> Result<Task, RuntimeError> {
        Ok(match kind {
            TaskKind::Worker => Task::Worker(self.worker(name)?),
            TaskKind::Retry(via) => Task::Retry(self.retry_scheduler(name, via)),
            TaskKind::Source => self.source(name),
        })
    }

    /// Worker `name` of the config.
    pub fn worker(&self, name: &str) -> Result<Arc<WorkerSpec>, RuntimeError> {
        let w = &self.cfg.workers[name];
        let wm = self.metrics.worker(name, &w.input);
        let health = self.health.task_with(name, "worker", wm.task_gauges());
        let outputs = Outputs::new(w.outputs.keys().cloned());
        let stage = match self.opts.stages.get(name) {
            Some(s) => s.clone(),
            None => stages::build(&w.stage, &outputs)
                .map_err(|source| RuntimeError::Stage { worker: name.to_string(), source })?,
        };
        let tee = {
            let default = outputs.index("default");
            let tees: Vec<usize> = w.tee.iter().filter_map(|t| outputs.index(t)).collect();
            default.map(|d| (d, tees)).filter(|(_, t)| !t.is_empty())
        };
        let mut input_workers: Vec<String> =
            self.cfg.workers.iter().filter(|(_, o)| o.input == w.input).map(|(n, _)| n.clone()).collect();
        input_workers.sort();
        Ok(Arc::new(WorkerSpec {
            name: name.to_string(),
            host: self.host(&w.input, w.group(name), w.start_position, health),
            stage,
            outputs: outputs.names().iter().map(|o| self.output(&w.outputs[o], wm.produced(&w.outputs[o]))).collect(),
            tee,
            dead_letter: w.dead_letter.as_deref().map(|d| self.output(d, wm.produced(d))),
            concurrency: w.concurrency.max(1),
            batch_size: w.batch_size.max(1),
            policy: RetryPolicy {
                via: w
                    .retry
                    .as_ref()
                    .map(|r| (r.schedule.iter().map(|d| d.get()).collect(), r.max_attempts)),
                in_place: self.opts.retry_backoff.unwrap_or(RETRY_BACKOFF),
                dead_letter: w.dead_letter.is_some(),
            },
            retry: w.retry.as_ref().map(|r| RetrySpec {
                via: self.output(&r.via, wm.produced(&r.via)),
                scheduled: wm.retries_scheduled(&r.via),
            }),
            breaker: w.dead_letter_limit.clone().map(|l| std::sync::Mutex::new(Breaker::new(l))),
            input_workers,
            metrics: wm,
        }))
    }

    /// The retry scheduler task `name` of retry entity `via`.
    pub fn retry_scheduler(&self, name: &str, via: &str) -> Arc<Scheduler> {
        let cfg = self.cfg;
        let label = EntityLabel { entity: via.to_string() };
        let m = self.metrics;
        let retrying: Vec<(&String, &crate::config::WorkerConfig)> =
            cfg.workers.iter().filter(|(_, w)| w.retry.as_ref().is_some_and(|r| r.via == via)).collect();
        let targets: HashMap<String, retry::scheduler::Target> =
            retrying.iter().map(|(_, w)| (w.input.clone(), self.retry_target(&w.input))).collect();
        let worker_inputs = cfg.workers.iter().map(|(n, w)| (n.clone(), self.retry_target(&w.input))).collect();
        let dead_letters = retrying
            .iter()
            .filter_map(|(n, w)| Some(((*n).clone(), self.retry_target(w.dead_letter.as_deref()?))))
            .collect();
        let lag = {
            let (m, task, entity) = (m.clone(), name.to_string(), via.to_string());
            Arc::new(move |p: u32| {
                let l = PartitionLabel { worker: task.clone(), entity: entity.clone(), partition: p.to_string() };
                m.lag.get_or_create(&l).clone()
            })
        };
        Arc::new(Scheduler {
            host: self.host(
                via,
                retry::GROUP,
                crate::config::StartPosition::Earliest,
                self.health.task(name, "retry-scheduler"),
            ),
            own: self.retry_target(via),
            targets,
            worker_inputs,
            dead_letters,
            redelivered: m.retry_redelivered.get_or_create(&label).clone(),
            rerouted: m.retry_rerouted.get_or_create(&label).clone(),
            invalid: m.retry_invalid.get_or_create(&label).clone(),
            reparked: m.retry_reparked.get_or_create(&label).clone(),
            pending: m.retry_pending.get_or_create(&label).clone(),
            lag,
        })
    }

    /// Source `name` of the config.
    pub fn source(&self, name: &str) -> Task {
        let SourceConfig::Simulator { entity, rate, count, malformed_ratio, pad_bytes, kind, attachments } =
            &self.cfg.sources[name];
        let sim = Arc::new(Simulator {
            name: name.to_string(),
            entity: entity.clone(),
            physical: self.physical(entity),
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
        Task::Source { sim, producer: self.producer(entity), counter, health: self.health.task(name, "source") }
    }
}

impl Task {
    /// The task's health.
    pub fn health(&self) -> Arc<TaskHealth> {
        match self {
            Task::Worker(w) => w.host.health.clone(),
            Task::Retry(s) => s.host.health.clone(),
            Task::Source { health, .. } => health.clone(),
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
        }
    }
}

/// The health registry's name for a task kind.
pub fn kind_name(k: &TaskKind) -> &'static str {
    match k {
        TaskKind::Worker => "worker",
        TaskKind::Retry(_) => "retry-scheduler",
        TaskKind::Source => "source",
    }
}
