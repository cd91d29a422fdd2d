//! Every metric Conveyor exports, in one place. Names are transport-agnostic
//! (`conveyor_messages_consumed_total`, never `kafka_…`) and follow the
//! Prometheus conventions: `_total` counters, base units (`_seconds`),
//! `snake_case` labels.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `conveyor_messages_consumed_total` | counter | worker, entity |
//! | `conveyor_messages_produced_total` | counter | worker, entity |
//! | `conveyor_messages_failed_total` | counter | worker, entity, category |
//! | `conveyor_dead_lettered_total` | counter | worker, entity, category |
//! | `conveyor_worker_restarts_total` | counter | worker |
//! | `conveyor_worker_ready` | gauge (0/1) | worker |
//! | `conveyor_handler_duration_seconds` | histogram | worker |
//! | `conveyor_in_flight_messages` | gauge | worker |
//! | `conveyor_consumer_lag_messages` | gauge | worker, entity, partition |
//! | `conveyor_source_events_total` | counter | source, entity |
//! | `conveyor_ingest_requests_total` | counter | source, code (HTTP status of the answer) |
//! | `conveyor_ingest_messages_total` | counter | source, entity (acknowledged by the transport) |
//! | `conveyor_ingest_rejections_total` | counter | source, reason (`unauthorized`, `too_large`, `bad_request`, `busy`, `unavailable`, `refused`) |
//! | `conveyor_schema_registry_requests_total` | counter | registry, outcome (`ok`, `not_found`, `refused`, `auth`, `throttled`, `unavailable`) |
//! | `conveyor_retries_scheduled_total` | counter | worker, entity (the retry entity) |
//! | `conveyor_retry_redelivered_total` | counter | entity (the retry entity) |
//! | `conveyor_retry_invalid_total` | counter | entity (retries nothing takes: dead-lettered) |
//! | `conveyor_retry_rerouted_total` | counter | entity (retries sent to their worker's new input) |
//! | `conveyor_retry_reparked_total` | counter | entity (long retries written again so the commit advances) |
//! | `conveyor_retries_adopted_total` | counter | worker (retries of a removed worker taken over) |
//! | `conveyor_retries_orphaned_total` | counter | worker (retries of a removed worker dead-lettered) |
//! | `conveyor_retry_pending_messages` | gauge | entity |
//! | `conveyor_output_refused_total` | counter | worker, entity (messages an output refused for good; dead-lettered) |
//! | `conveyor_dead_letters_trimmed_total` | counter | worker (envelopes written without their payload) |
//! | `conveyor_undeliverable_messages` | gauge | worker (messages a paused lane cannot deliver anywhere) |
//! | `conveyor_dead_letter_limit_trips_total` | counter | worker |
//! | `conveyor_consumer_lag_seconds` | gauge | worker, entity, partition (age of the oldest unprocessed message) |
//! | `conveyor_recommended_replicas` | gauge | worker (lag trend vs throughput, capped at the partition count) |
//! | `conveyor_migration_phase` | gauge | entity (1 mirror, 2 cutover, 3 done; only migrating entities) |
//! | `conveyor_migration_mirror_lag_messages` | gauge | entity (old-side messages the mirror has not copied; absent while unknown) |
//! | `conveyor_transport_connected` | gauge (0/1) | worker |
//! | `conveyor_config_reloads_total` | counter | result (`success`, `failure`) |
//! | `conveyor_config_reload_failures_total` | counter | |
//! | `conveyor_config_generation` | gauge | |
//! | `conveyor_config_info` | gauge (1) | hash |
//! | `conveyor_build_info` | gauge (1) | version |

use crate::classify::ErrorCategory;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerEntity {
    pub worker: String,
    pub entity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerEntityCategory {
    pub worker: String,
    pub entity: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub worker: String,
    pub entity: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
    pub entity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceCode {
    pub source: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryOutcome {
    pub registry: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceReason {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntityLabel {
    pub entity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HashLabel {
    pub hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

type HistogramFamily<L> = Family<L, BatchHistogram, fn() -> BatchHistogram>;

fn handler_histogram() -> BatchHistogram {
    // 10µs … ~42s
    BatchHistogram::new(exponential_buckets(0.00001, 4.0, 12).collect())
}

/// A histogram with lock-free atomic buckets that lanes fill in bulk: each
/// lane counts a batch's observations locally ([`LocalHistogram`]) and adds
/// them once per batch, instead of taking a lock per message.
#[derive(Clone, Debug)]
pub struct BatchHistogram {
    inner: Arc<BatchInner>,
}

#[derive(Debug)]
struct BatchInner {
    bounds: Vec<f64>,
    counts: Vec<std::sync::atomic::AtomicU64>,
    sum_bits: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

impl BatchHistogram {
    pub fn new(bounds: Vec<f64>) -> Self {
        let counts = (0..=bounds.len()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        BatchHistogram {
            inner: Arc::new(BatchInner {
                bounds,
                counts,
                sum_bits: std::sync::atomic::AtomicU64::new(0f64.to_bits()),
                count: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// A lane-local accumulator for this histogram's buckets.
    pub fn local(&self) -> LocalHistogram {
        LocalHistogram { target: self.clone(), counts: vec![0; self.inner.counts.len()], sum: 0.0, count: 0 }
    }

    /// One observation (adds at once; prefer [`LocalHistogram`] in loops).
    pub fn observe(&self, v: f64) {
        let mut l = self.local();
        l.observe(v);
        l.flush();
    }

    pub fn count(&self) -> u64 {
        self.inner.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Observations not yet added to their [`BatchHistogram`].
pub struct LocalHistogram {
    target: BatchHistogram,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl LocalHistogram {
    pub fn observe(&mut self, v: f64) {
        self.observe_n(v, 1);
    }

    /// `n` observations of `v` each.
    pub fn observe_n(&mut self, v: f64, n: u64) {
        let i = self.target.inner.bounds.iter().position(|b| v <= *b).unwrap_or(self.target.inner.bounds.len());
        self.counts[i] += n;
        self.sum += v * n as f64;
        self.count += n;
    }

    /// Adds what was observed since the last flush.
    pub fn flush(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.count == 0 {
            return;
        }
        let inner = &self.target.inner;
        for (i, c) in self.counts.iter_mut().enumerate() {
            if *c > 0 {
                inner.counts[i].fetch_add(*c, Relaxed);
                *c = 0;
            }
        }
        let _ = inner.sum_bits.fetch_update(Relaxed, Relaxed, |b| Some((f64::from_bits(b) + self.sum).to_bits()));
        inner.count.fetch_add(self.count, Relaxed);
        self.sum = 0.0;
        self.count = 0;
    }
}

impl Drop for LocalHistogram {
    fn drop(&mut self) {
        self.flush();
    }
}

impl prometheus_client::metrics::TypedMetric for BatchHistogram {
    const TYPE: prometheus_client::metrics::MetricType = prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for BatchHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = &self.inner;
        let mut buckets: Vec<(f64, u64)> =
            inner.bounds.iter().enumerate().map(|(i, b)| (*b, inner.counts[i].load(Relaxed))).collect();
        buckets.push((f64::MAX, inner.counts[inner.bounds.len()].load(Relaxed)));
        let sum = f64::from_bits(inner.sum_bits.load(Relaxed));
        let count = inner.count.load(Relaxed);
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// All metric families, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub consumed: Family<WorkerEntity, Counter>,
    pub produced: Family<WorkerEntity, Counter>,
    pub failed: Family<WorkerEntityCategory, Counter>,
    pub dead_lettered: Family<WorkerEntityCategory, Counter>,
    pub restarts: Family<WorkerLabel, Counter>,
    pub ready: Family<WorkerLabel, Gauge>,
    pub handler_seconds: HistogramFamily<WorkerLabel>,
    pub in_flight: Family<WorkerLabel, Gauge>,
    pub lag: Family<PartitionLabel, Gauge>,
    pub source_events: Family<SourceLabel, Counter>,
    pub ingest_requests: Family<SourceCode, Counter>,
    pub ingest_messages: Family<SourceLabel, Counter>,
    pub ingest_rejections: Family<SourceReason, Counter>,
    pub schema_registry_requests: Family<RegistryOutcome, Counter>,
    pub retries_scheduled: Family<WorkerEntity, Counter>,
    pub retry_redelivered: Family<EntityLabel, Counter>,
    pub retry_invalid: Family<EntityLabel, Counter>,
    pub retry_rerouted: Family<EntityLabel, Counter>,
    pub retry_reparked: Family<EntityLabel, Counter>,
    pub retries_adopted: Family<WorkerLabel, Counter>,
    pub retries_orphaned: Family<WorkerLabel, Counter>,
    pub retry_pending: Family<EntityLabel, Gauge>,
    pub output_refused: Family<WorkerEntity, Counter>,
    pub dead_letters_trimmed: Family<WorkerLabel, Counter>,
    pub undeliverable: Family<WorkerLabel, Gauge>,
    pub breaker_trips: Family<WorkerLabel, Counter>,
    pub lag_seconds: Family<PartitionLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub recommended_replicas: Family<WorkerLabel, Gauge>,
    pub migration_phase: Family<EntityLabel, Gauge>,
    pub migration_mirror_lag: Family<EntityLabel, Gauge>,
    pub transport_connected: Family<WorkerLabel, Gauge>,
    pub reloads: Family<ResultLabel, Counter>,
    pub reload_failures: Counter,
    pub config_generation: Gauge,
    pub config_info: Family<HashLabel, Gauge>,
    /// Every message consumed by any worker (for systemd's `STATUS=` rate).
    pub consumed_all: Arc<std::sync::atomic::AtomicU64>,
}

impl Metrics {
    /// One request to schema registry `registry` ended with `outcome`.
    pub fn schema_registry_request(&self, registry: &str, outcome: &str) {
        self.schema_registry_requests
            .get_or_create(&RegistryOutcome { registry: registry.into(), outcome: outcome.into() })
            .inc();
    }

    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("conveyor");
        let m = Metrics {
            consumed: Family::default(),
            produced: Family::default(),
            failed: Family::default(),
            dead_lettered: Family::default(),
            restarts: Family::default(),
            ready: Family::default(),
            handler_seconds: Family::new_with_constructor(handler_histogram),
            in_flight: Family::default(),
            lag: Family::default(),
            source_events: Family::default(),
            ingest_requests: Family::default(),
            ingest_messages: Family::default(),
            ingest_rejections: Family::default(),
            schema_registry_requests: Family::default(),
            retries_scheduled: Family::default(),
            retry_redelivered: Family::default(),
            retry_invalid: Family::default(),
            retry_rerouted: Family::default(),
            retry_reparked: Family::default(),
            retries_adopted: Family::default(),
            retries_orphaned: Family::default(),
            retry_pending: Family::default(),
            output_refused: Family::default(),
            dead_letters_trimmed: Family::default(),
            undeliverable: Family::default(),
            breaker_trips: Family::default(),
            lag_seconds: Family::default(),
            recommended_replicas: Family::default(),
            migration_phase: Family::default(),
            migration_mirror_lag: Family::default(),
            transport_connected: Family::default(),
            reloads: Family::default(),
            reload_failures: Counter::default(),
            config_generation: Gauge::default(),
            config_info: Family::default(),
            consumed_all: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            registry: Registry::default(),
        };
        registry.register("messages_consumed", "Messages read from an input entity", m.consumed.clone());
        registry.register("messages_produced", "Messages acknowledged by an output entity", m.produced.clone());
        registry.register("messages_failed", "Message processing failures, by error category", m.failed.clone());
        registry.register("dead_lettered", "Messages written to a dead-letter entity", m.dead_lettered.clone());
        registry.register("worker_restarts", "Worker restarts by the supervisor", m.restarts.clone());
        registry.register("worker_ready", "1 when the worker is consuming normally", m.ready.clone());
        registry.register("handler_duration_seconds", "Time the stage took per message", m.handler_seconds.clone());
        registry.register("in_flight_messages", "Messages fetched but not yet committed", m.in_flight.clone());
        registry.register("consumer_lag_messages", "High watermark minus committed position", m.lag.clone());
        registry.register("source_events", "Events emitted by built-in sources", m.source_events.clone());
        registry.register("ingest_requests", "HTTP ingest requests answered, by status", m.ingest_requests.clone());
        registry.register(
            "schema_registry_requests",
            "Requests to schema registries, by outcome",
            m.schema_registry_requests.clone(),
        );
        registry.register(
            "ingest_messages",
            "Messages taken in over HTTP and acknowledged by the transport",
            m.ingest_messages.clone(),
        );
        registry.register("ingest_rejections", "HTTP ingest requests refused, by reason", m.ingest_rejections.clone());
        registry.register("retries_scheduled", "Failed messages sent to a retry entity", m.retries_scheduled.clone());
        registry.register(
            "retry_redelivered",
            "Retries re-delivered to their target when due",
            m.retry_redelivered.clone(),
        );
        registry.register(
            "retry_invalid",
            "Messages in a retry entity nothing in the config takes (dead-lettered)",
            m.retry_invalid.clone(),
        );
        registry.register(
            "retry_rerouted",
            "Retries re-delivered to their worker's new input after a reload",
            m.retry_rerouted.clone(),
        );
        registry.register(
            "retry_reparked",
            "Long-pending retries written again so the retry entity's commit can advance",
            m.retry_reparked.clone(),
        );
        registry.register(
            "retries_adopted",
            "Retries of a worker that no longer exists, taken over by the only worker on their input",
            m.retries_adopted.clone(),
        );
        registry.register(
            "retries_orphaned",
            "Retries of a worker that no longer exists, dead-lettered (several workers share the input)",
            m.retries_orphaned.clone(),
        );
        registry.register(
            "output_refused",
            "Messages an output refused for good (too large, unrepresentable); dead-lettered instead",
            m.output_refused.clone(),
        );
        registry.register(
            "dead_letters_trimmed",
            "Dead-letter envelopes written without their payload (too large for the DLQ)",
            m.dead_letters_trimmed.clone(),
        );
        registry.register(
            "undeliverable_messages",
            "Messages a paused lane cannot deliver anywhere (it holds its batch and tries again)",
            m.undeliverable.clone(),
        );
        registry.register("retry_pending_messages", "Retries waiting for their due time", m.retry_pending.clone());
        registry.register(
            "dead_letter_limit_trips",
            "Times a worker's dead-letter limit tripped",
            m.breaker_trips.clone(),
        );
        registry.register("consumer_lag_seconds", "Age of the oldest unprocessed message", m.lag_seconds.clone());
        registry.register(
            "recommended_replicas",
            "Processes this worker needs to keep up (lag trend vs throughput, capped at partitions)",
            m.recommended_replicas.clone(),
        );
        registry.register(
            "migration_phase",
            "Migration phase of an entity: 1 mirror, 2 cutover, 3 done",
            m.migration_phase.clone(),
        );
        registry.register(
            "migration_mirror_lag_messages",
            "Old-side messages a migration mirror has not copied yet",
            m.migration_mirror_lag.clone(),
        );
        registry.register(
            "transport_connected",
            "1 while the worker's transport connection is healthy",
            m.transport_connected.clone(),
        );
        registry.register("config_reloads", "Config reloads by result", m.reloads.clone());
        registry.register(
            "config_reload_failures",
            "Config reloads refused (invalid file or failed apply)",
            m.reload_failures.clone(),
        );
        registry.register(
            "config_generation",
            "Config generation (1 at start, +1 per applied reload)",
            m.config_generation.clone(),
        );
        registry.register("config_info", "Hash of the running config", m.config_info.clone());
        let build: Family<VersionLabel, Gauge> = Family::default();
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        registry.register("build_info", "Conveyor version", build);
        Arc::new(Metrics { registry, ..m })
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }

    /// Prometheus text format 0.0.4 (for scrapers and tools that do not ask
    /// for OpenMetrics, such as `curl | promtool check metrics`): the same
    /// samples, with counter families' HELP/TYPE named like their `_total`
    /// samples and without the OpenMetrics `# EOF` / `# UNIT` lines.
    pub fn encode_text(&self) -> String {
        to_text_004(&self.encode())
    }

    /// Drops the gauges of a worker removed by a reload (so it does not look
    /// unready or lagging forever); its counters stay for `rate()`.
    pub fn forget_worker(&self, worker: &str) {
        let w = WorkerLabel { worker: worker.into() };
        self.ready.remove(&w);
        self.in_flight.remove(&w);
        self.transport_connected.remove(&w);
        self.recommended_replicas.remove(&w);
        self.undeliverable.remove(&w);
    }

    /// Sets the migration gauges from `status`; entities no longer
    /// migrating (or whose lag is unknown) lose their series.
    pub fn set_migrations(&self, status: &[crate::migration::status::EntityStatus]) {
        self.migration_phase.clear();
        self.migration_mirror_lag.clear();
        for s in status {
            let l = EntityLabel { entity: s.entity.clone() };
            self.migration_phase.get_or_create(&l).set(s.phase.gauge());
            if let Some(lag) = s.mirror_lag {
                self.migration_mirror_lag.get_or_create(&l).set(lag as i64);
            }
        }
    }

    /// Marks `hash` as the running config (drops the previous one's series).
    pub fn set_config_hash(&self, hash: &str) {
        self.config_info.clear();
        self.config_info.get_or_create(&HashLabel { hash: hash.into() }).set(1);
    }

    /// Handles for one worker, resolved once so the hot path is atomics only.
    pub fn worker(self: &Arc<Self>, worker: &str, input: &str) -> WorkerMetrics {
        let w = WorkerLabel { worker: worker.into() };
        WorkerMetrics {
            worker: worker.into(),
            input: input.into(),
            consumed: self
                .consumed
                .get_or_create(&WorkerEntity { worker: worker.into(), entity: input.into() })
                .clone(),
            handler: self.handler_seconds.get_or_create(&w).clone(),
            in_flight: self.in_flight.get_or_create(&w).clone(),
            ready: self.ready.get_or_create(&w).clone(),
            restarts: self.restarts.get_or_create(&w).clone(),
            breaker_trips: self.breaker_trips.get_or_create(&w).clone(),
            connected: self.transport_connected.get_or_create(&w).clone(),
            undeliverable: self.undeliverable.get_or_create(&w).clone(),
            retries_adopted: self.retries_adopted.get_or_create(&w).clone(),
            retries_orphaned: self.retries_orphaned.get_or_create(&w).clone(),
            consumed_all: self.consumed_all.clone(),
            all: self.clone(),
        }
    }
}

/// Rewrites an OpenMetrics exposition into Prometheus text format 0.0.4.
pub fn to_text_004(om: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A worker's metric handles.
#[derive(Clone)]
pub struct WorkerMetrics {
    pub worker: String,
    pub input: String,
    pub consumed: Counter,
    pub handler: BatchHistogram,
    pub in_flight: Gauge,
    pub ready: Gauge,
    pub restarts: Counter,
    pub breaker_trips: Counter,
    pub connected: Gauge,
    pub undeliverable: Gauge,
    pub retries_adopted: Counter,
    pub retries_orphaned: Counter,
    pub consumed_all: Arc<std::sync::atomic::AtomicU64>,
    all: Arc<Metrics>,
}

impl WorkerMetrics {
    /// The gauges the task's health keeps current.
    pub fn task_gauges(&self) -> crate::health::TaskGauges {
        crate::health::TaskGauges {
            ready: Some(self.ready.clone()),
            connected: Some(self.connected.clone()),
            restarts: Some(self.restarts.clone()),
        }
    }
    /// Messages output `entity` refused for good.
    pub fn refused(&self, entity: &str) -> Counter {
        self.all
            .output_refused
            .get_or_create(&WorkerEntity { worker: self.worker.clone(), entity: entity.into() })
            .clone()
    }
    /// Dead-letter envelopes written trimmed.
    pub fn trimmed(&self) -> Counter {
        self.all.dead_letters_trimmed.get_or_create(&WorkerLabel { worker: self.worker.clone() }).clone()
    }
    pub fn produced(&self, entity: &str) -> Counter {
        self.all.produced.get_or_create(&WorkerEntity { worker: self.worker.clone(), entity: entity.into() }).clone()
    }
    pub fn failed(&self, category: ErrorCategory) -> Counter {
        self.all
            .failed
            .get_or_create(&WorkerEntityCategory {
                worker: self.worker.clone(),
                entity: self.input.clone(),
                category: category.as_str().into(),
            })
            .clone()
    }
    pub fn dead_lettered(&self, category: ErrorCategory) -> Counter {
        self.all
            .dead_lettered
            .get_or_create(&WorkerEntityCategory {
                worker: self.worker.clone(),
                entity: self.input.clone(),
                category: category.as_str().into(),
            })
            .clone()
    }
    pub fn retries_scheduled(&self, retry_entity: &str) -> Counter {
        self.all
            .retries_scheduled
            .get_or_create(&WorkerEntity { worker: self.worker.clone(), entity: retry_entity.into() })
            .clone()
    }
    pub fn lag_seconds(&self, partition: u32) -> Gauge<f64, std::sync::atomic::AtomicU64> {
        self.all
            .lag_seconds
            .get_or_create(&PartitionLabel {
                worker: self.worker.clone(),
                entity: self.input.clone(),
                partition: partition.to_string(),
            })
            .clone()
    }
    /// Drops a partition's lag series (the lane ended: revoked or stopped),
    /// so a partition this process no longer owns does not report stale lag.
    pub fn forget_partition(&self, partition: u32) {
        let l = PartitionLabel {
            worker: self.worker.clone(),
            entity: self.input.clone(),
            partition: partition.to_string(),
        };
        self.all.lag.remove(&l);
        self.all.lag_seconds.remove(&l);
    }
    pub fn lag(&self, partition: u32) -> Gauge {
        self.all
            .lag
            .get_or_create(&PartitionLabel {
                worker: self.worker.clone(),
                entity: self.input.clone(),
                partition: partition.to_string(),
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_conventional_names() {
        let m = Metrics::new();
        let w = m.worker("w", "in");
        w.consumed.inc_by(3);
        w.produced("out").inc();
        w.failed(ErrorCategory::Permanent).inc();
        w.handler.observe(0.001);
        let text = m.encode();
        assert!(text.contains("conveyor_messages_consumed_total{worker=\"w\",entity=\"in\"} 3"), "{text}");
        assert!(
            text.contains("conveyor_messages_failed_total{worker=\"w\",entity=\"in\",category=\"permanent\"} 1"),
            "{text}"
        );
        assert!(text.contains("conveyor_handler_duration_seconds_bucket"), "{text}");
        assert!(text.contains("conveyor_build_info{version="), "{text}");
        assert!(!text.contains("kafka"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        let plain = to_text_004(&text);
        assert!(plain.contains("# TYPE conveyor_messages_consumed_total counter\n"), "{plain}");
        assert!(plain.contains("# HELP conveyor_messages_consumed_total Messages read"), "{plain}");
        assert!(plain.contains("# TYPE conveyor_handler_duration_seconds histogram\n"), "{plain}");
        assert!(!plain.contains("# EOF"));
    }

    #[test]
    fn batch_histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        let w = m.worker("w", "in");
        let mut local = w.handler.local();
        for _ in 0..3 {
            local.observe(0.001);
        }
        local.observe(100.0);
        assert_eq!(w.handler.count(), 0, "nothing is visible before the flush");
        drop(local);
        let text = m.encode();
        assert!(text.contains("conveyor_handler_duration_seconds_count{worker=\"w\"} 4"), "{text}");
        assert!(text.contains("conveyor_handler_duration_seconds_bucket{le=\"0.00064\",worker=\"w\"} 0"), "{text}");
        assert!(text.contains("conveyor_handler_duration_seconds_bucket{le=\"0.00256\",worker=\"w\"} 3"), "{text}");
        assert!(text.contains("conveyor_handler_duration_seconds_bucket{le=\"+Inf\",worker=\"w\"} 4"), "{text}");
        assert!(text.contains("conveyor_handler_duration_seconds_sum{worker=\"w\"} 100.003"), "{text}");
    }
}
