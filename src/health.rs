//! Liveness and readiness state, shared by the supervisor, the workers and
//! the HTTP endpoints.

use crate::classify::ErrorCategory;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// What a task (worker or source) is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Starting or joining its consumer group.
    Starting,
    /// Consuming normally (or, for a source, producing).
    Ready,
    /// Waiting out a problem it expects to pass (auth, broker down) without
    /// dead-lettering; retries by itself.
    Paused,
    /// Failed; the supervisor restarts it after a backoff.
    Restarting,
    /// A source that emitted everything it was asked to.
    Finished,
    /// Drained and stopped.
    Stopped,
}

/// Health of one task.
#[derive(Debug)]
pub struct TaskHealth {
    pub kind: &'static str,
    state: Mutex<(TaskState, Option<String>)>,
    last_error: Mutex<Option<(ErrorCategory, String)>>,
    restarts: AtomicU64,
    /// Partitions with a batch in progress, and since when.
    lanes: Mutex<std::collections::HashMap<u32, std::time::Instant>>,
}

impl TaskHealth {
    /// A lane started work on a batch (watchdog progress tracking).
    pub fn lane_busy(&self, partition: u32) {
        self.lanes.lock().unwrap().insert(partition, std::time::Instant::now());
    }
    /// A lane is waiting for messages or for a planned retry: healthy.
    pub fn lane_idle(&self, partition: u32) {
        self.lanes.lock().unwrap().remove(&partition);
    }

    pub fn state(&self) -> TaskState {
        self.state.lock().unwrap().0
    }
    pub fn set(&self, s: TaskState) {
        *self.state.lock().unwrap() = (s, None);
    }
    /// Sets a state with a one-line reason shown on `/readyz`.
    pub fn set_with(&self, s: TaskState, reason: impl Into<String>) {
        *self.state.lock().unwrap() = (s, Some(reason.into()));
    }
    pub fn record_error(&self, category: ErrorCategory, message: impl Into<String>) {
        *self.last_error.lock().unwrap() = Some((category, message.into()));
    }
    pub fn restarted(&self) -> u64 {
        self.restarts.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
    pub fn is_ready(&self) -> bool {
        matches!(self.state(), TaskState::Ready | TaskState::Finished)
    }
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

    /// Registers (or returns the existing) health of a task.
    pub fn task(&self, name: &str, kind: &'static str) -> Arc<TaskHealth> {
        self.tasks
            .write()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(TaskHealth {
                    kind,
                    state: Mutex::new((TaskState::Starting, None)),
                    last_error: Mutex::new(None),
                    restarts: AtomicU64::new(0),
                    lanes: Mutex::new(std::collections::HashMap::new()),
                })
            })
            .clone()
    }

    /// Forgets a task (removed by a config reload).
    pub fn remove(&self, name: &str) {
        self.tasks.write().unwrap().remove(name);
    }

    /// Tasks with a batch in progress for longer than `limit` (a stuck loop).
    pub fn stalled(&self, limit: std::time::Duration) -> Vec<String> {
        let now = std::time::Instant::now();
        self.tasks
            .read()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.lanes.lock().unwrap().values().any(|since| now.duration_since(*since) > limit))
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
                let (state, reason) = t.state.lock().unwrap().clone();
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
        Readiness {
            ready: workers.values().all(|r| matches!(r.state, TaskState::Ready | TaskState::Finished)),
            workers,
        }
    }
}
