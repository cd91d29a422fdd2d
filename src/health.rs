//! Liveness and readiness state, shared by the supervisor, the consumer
//! loops and the admin endpoints.
//!
//! Each task has one [`TaskHealth`]. It owns the task's gauges
//! (`conveyor_worker_ready`, `conveyor_transport_connected`) and restart
//! counter, so a state change is one call and `/readyz` and `/metrics` can
//! never disagree. Lanes (one per partition) report whether they hold a batch
//! (*busy*, watched by the systemd watchdog), wait for messages or a planned
//! retry (*idle*), or are *paused* on purpose (an open dead-letter breaker,
//! an auth failure, an output that refuses a message): a paused lane is not
//! stuck, so the watchdog leaves it alone however long the pause.

use crate::classify::ErrorCategory;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
// tokio's clock: the watchdog's view of a lane follows paused test time
use tokio::time::Instant;

/// What a task (worker, retry scheduler or source) is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Starting or joining its consumer group.
    Starting,
    /// Consuming normally (or, for a source, producing).
    Ready,
    /// Waiting out a problem it expects to pass (auth, broker down, an open
    /// breaker) without dead-lettering; retries by itself.
    Paused,
    /// Failed; the supervisor restarts it after a backoff.
    Restarting,
    /// A source that emitted everything it was asked to.
    Finished,
    /// Drained and stopped.
    Stopped,
}

impl TaskState {
    fn counts_as_ready(self) -> bool {
        matches!(self, TaskState::Ready | TaskState::Finished)
    }
}

/// The metric handles a task's health keeps current.
#[derive(Debug, Clone, Default)]
pub struct TaskGauges {
    /// 1 while the task is ready.
    pub ready: Option<Gauge>,
    /// 1 while the task's transport connection is healthy.
    pub connected: Option<Gauge>,
    /// Restarts by the supervisor (and by reloads).
    pub restarts: Option<Counter>,
}

/// What one lane is doing.
#[derive(Debug, Clone, Copy)]
enum Lane {
    /// Holds a batch, since then.
    Busy(Instant),
    /// Paused on purpose (not stuck).
    Paused,
}

/// Health of one task.
#[derive(Debug)]
pub struct TaskHealth {
    pub kind: &'static str,
    state: Mutex<(TaskState, Option<String>)>,
    last_error: Mutex<Option<(ErrorCategory, String)>>,
    restarts: AtomicU64,
    lanes: Mutex<HashMap<u32, Lane>>,
    gauges: TaskGauges,
}

impl TaskHealth {
    fn new(kind: &'static str, gauges: TaskGauges) -> Self {
        if let Some(g) = &gauges.ready {
            g.set(0);
        }
        TaskHealth {
            kind,
            state: Mutex::new((TaskState::Starting, None)),
            last_error: Mutex::new(None),
            restarts: AtomicU64::new(0),
            lanes: Mutex::new(HashMap::new()),
            gauges,
        }
    }

    pub fn state(&self) -> TaskState {
        self.state.lock().unwrap().0
    }

    /// The state and its reason, as `/readyz` shows them.
    pub fn state_with_reason(&self) -> (TaskState, Option<String>) {
        self.state.lock().unwrap().clone()
    }

    pub fn set(&self, s: TaskState) {
        self.put(s, None);
    }

    /// Sets a state with a one-line reason shown on `/readyz`.
    pub fn set_with(&self, s: TaskState, reason: impl Into<String>) {
        self.put(s, Some(reason.into()));
    }

    fn put(&self, s: TaskState, reason: Option<String>) {
        *self.state.lock().unwrap() = (s, reason);
        if let Some(g) = &self.gauges.ready {
            g.set(s.counts_as_ready() as i64);
        }
    }

    /// The transport connection is healthy (`true`) or not.
    pub fn connected(&self, up: bool) {
        if let Some(g) = &self.gauges.connected {
            g.set(up as i64);
        }
    }

    pub fn record_error(&self, category: ErrorCategory, message: impl Into<String>) {
        *self.last_error.lock().unwrap() = Some((category, message.into()));
    }

    /// Counts a restart; returns how many there were.
    pub fn restarted(&self) -> u64 {
        if let Some(c) = &self.gauges.restarts {
            c.inc();
        }
        self.restarts.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.state().counts_as_ready()
    }

    /// A lane started work on a batch (the watchdog watches it).
    pub fn lane_busy(&self, partition: u32) {
        self.lanes.lock().unwrap().insert(partition, Lane::Busy(Instant::now()));
    }

    /// A lane is waiting for messages or for a planned retry: healthy.
    pub fn lane_idle(&self, partition: u32) {
        self.lanes.lock().unwrap().remove(&partition);
    }

    /// A lane pauses on purpose (breaker, auth, refused output): not stuck.
    pub fn lane_paused(&self, partition: u32) {
        self.lanes.lock().unwrap().insert(partition, Lane::Paused);
    }

    fn stuck_longer_than(&self, limit: Duration, now: Instant) -> bool {
        self.lanes
            .lock()
            .unwrap()
            .values()
            .any(|l| matches!(l, Lane::Busy(since) if now.duration_since(*since) > limit))
    }
}

/// The config generation and the last reload's outcome (for `/readyz`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    pub generation: u64,
    pub hash: String,
    /// Errors of the last reload attempt, if it failed.
    pub last_reload_error: Option<String>,
    pub last_reload_at: Option<String>,
}

/// The registry of all tasks' health.
#[derive(Debug, Default)]
pub struct Health {
    tasks: RwLock<BTreeMap<String, Arc<TaskHealth>>>,
}

#[derive(Debug, Serialize)]
pub struct TaskReport {
    pub kind: &'static str,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub restarts: u64,
    pub last_error_category: Option<ErrorCategory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub workers: BTreeMap<String, TaskReport>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// Registers (or returns the existing) health of a task, without gauges.
    pub fn task(&self, name: &str, kind: &'static str) -> Arc<TaskHealth> {
        self.task_with(name, kind, TaskGauges::default())
    }

    /// Registers (or returns the existing) health of a task that keeps
    /// `gauges` current.
    pub fn task_with(&self, name: &str, kind: &'static str, gauges: TaskGauges) -> Arc<TaskHealth> {
        self.tasks
            .write()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(TaskHealth::new(kind, gauges)))
            .clone()
    }

    /// Forgets a task (removed by a config reload).
    pub fn remove(&self, name: &str) {
        self.tasks.write().unwrap().remove(name);
    }

    /// Tasks with a lane busy on one batch for longer than `limit` (a stuck
    /// loop). Paused and idle lanes never count.
    pub fn stalled(&self, limit: Duration) -> Vec<String> {
        let now = Instant::now();
        self.tasks
            .read()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.stuck_longer_than(limit, now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<TaskHealth>> {
        self.tasks.read().unwrap().get(name).cloned()
    }

    pub fn all_ready(&self) -> bool {
        self.tasks.read().unwrap().values().all(|t| t.is_ready())
    }

    pub fn report(&self) -> Readiness {
        let tasks = self.tasks.read().unwrap();
        let workers: BTreeMap<_, _> = tasks
            .iter()
            .map(|(n, t)| {
                let (state, reason) = t.state_with_reason();
                let last = t.last_error.lock().unwrap().clone();
                (
                    n.clone(),
                    TaskReport {
                        kind: t.kind,
                        state,
                        reason,
                        restarts: t.restarts(),
                        last_error_category: last.as_ref().map(|l| l.0),
                        last_error: last.map(|l| l.1),
                    },
                )
            })
            .collect();
        Readiness { ready: workers.values().all(|r| r.state.counts_as_ready()), workers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_moves_state_and_gauges_together() {
        let health = Health::new();
        let gauges = TaskGauges {
            ready: Some(Gauge::default()),
            connected: Some(Gauge::default()),
            restarts: Some(Counter::default()),
        };
        let t = health.task_with("w", "worker", gauges.clone());
        assert_eq!(gauges.ready.as_ref().unwrap().get(), 0);
        t.set(TaskState::Ready);
        assert_eq!(gauges.ready.as_ref().unwrap().get(), 1);
        t.set_with(TaskState::Paused, "auth");
        assert_eq!(gauges.ready.as_ref().unwrap().get(), 0);
        assert_eq!(health.report().workers["w"].reason.as_deref(), Some("auth"));
        t.connected(false);
        assert_eq!(gauges.connected.as_ref().unwrap().get(), 0);
        t.restarted();
        assert_eq!((t.restarts(), gauges.restarts.as_ref().unwrap().get()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn only_busy_lanes_can_stall_the_watchdog() {
        let health = Health::new();
        let t = health.task("w", "worker");
        t.lane_paused(0);
        t.lane_busy(1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(health.stalled(Duration::from_millis(10)), vec!["w".to_string()]);
        t.lane_idle(1);
        assert!(health.stalled(Duration::from_millis(10)).is_empty(), "a paused lane is not stuck");
    }
}
