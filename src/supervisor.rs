//! The supervisor: one root `CancellationToken`, a `TaskTracker`, and a
//! restart loop per task.
//!
//! Each worker or source runs in its own tokio task, so a panic anywhere in
//! it is contained: the supervisor sees the `JoinError`, records it, waits an
//! exponential backoff with jitter and starts the task again; every other
//! task keeps running. A task that stayed up for [`HEALTHY_AFTER`] before
//! failing starts again from the shortest backoff.
//!
//! Drain: [`Supervisor::shutdown`] cancels the root token (tasks stop
//! fetching and finish what they hold), closes the tracker and waits at most
//! the grace period; [`TaskHandle::stop`] does the same for one task. What is
//! still running when the grace runs out is aborted: a task's futures are
//! dropped where they stand, so nothing it had not finished is committed.

use crate::backoff::{Backoff, jitter};
use crate::classify::ErrorCategory;
use crate::health::{TaskHealth, TaskState};
use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A task that ran this long before failing restarts with the shortest backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The text of a panic payload.
pub fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

/// How a task run ended.
pub enum Exit {
    /// Finished its work (a source with a count); not restarted.
    Finished,
    /// Failed with an error of this category; restarted.
    Failed(ErrorCategory, String),
}

/// One supervised task: cancel its token to drain and stop it.
pub struct TaskHandle {
    pub token: CancellationToken,
    pub join: tokio::task::JoinHandle<()>,
    /// The supervisor's root token and its unclean-drain flag.
    root: CancellationToken,
    unclean: Arc<AtomicBool>,
}

impl TaskHandle {
    /// Drains the task (it finishes and commits what it holds) and waits,
    /// at most `grace`; then aborts it. Returns whether it drained in time.
    /// An abort while the whole supervisor drains makes that drain unclean.
    pub async fn stop(self, grace: Duration) -> bool {
        self.token.cancel();
        let mut join = self.join;
        match tokio::time::timeout(grace, &mut join).await {
            Ok(_) => true,
            Err(_) => {
                if self.root.is_cancelled() {
                    self.unclean.store(true, Ordering::Relaxed);
                }
                join.abort();
                let _ = join.await;
                false
            }
        }
    }
}

/// Aborts a spawned run when the supervising loop is dropped (aborted).
struct AbortOnDrop(tokio::task::AbortHandle);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Owns the task tree.
#[derive(Clone)]
pub struct Supervisor {
    root: CancellationToken,
    tracker: TaskTracker,
    backoff: Backoff,
    /// Set when a task's drain ended in an error (work abandoned).
    unclean: Arc<AtomicBool>,
}

impl Supervisor {
    pub fn new(backoff: Backoff) -> Self {
        Supervisor {
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
            backoff,
            unclean: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.root
    }

    /// Supervises `make(child_token)`: restarts it with backoff whenever it
    /// fails or panics, until the root token or the returned handle's token
    /// is cancelled. A run that returns `Ok(None)` after cancellation, or
    /// `Ok(Some(Exit::Finished))`, ends it. Restarts are counted on `health`.
    pub fn spawn<F, Fut>(&self, name: String, health: Arc<TaskHealth>, make: F) -> TaskHandle
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Exit>> + Send + 'static,
    {
        let root = self.root.child_token();
        let handle_token = root.clone();
        let backoff = self.backoff;
        let unclean = self.unclean.clone();
        let join = self.tracker.spawn(async move {
            let mut attempt = 0u32;
            loop {
                let token = root.child_token();
                let started = Instant::now();
                let run = tokio::spawn(make(token.clone()));
                let _abort = AbortOnDrop(run.abort_handle());
                let joined = run.await;
                let (category, message) = match joined {
                    Ok(None) if root.is_cancelled() => break,
                    Ok(None) => (ErrorCategory::Transient, "stopped unexpectedly".to_string()),
                    Ok(Some(Exit::Finished)) => {
                        health.set(TaskState::Finished);
                        break;
                    }
                    Ok(Some(Exit::Failed(c, m))) => (c, m),
                    Err(j) if j.is_panic() => (ErrorCategory::Transient, format!("panicked: {}", panic_text(&*j.into_panic()))),
                    Err(_) => (ErrorCategory::Transient, "aborted".to_string()),
                };
                if root.is_cancelled() {
                    tracing::error!(task = %name, error_category = %category, error = %message, "task failed while draining");
                    health.record_error(category, message);
                    unclean.store(true, Ordering::Relaxed);
                    break;
                }
                attempt = if started.elapsed() >= HEALTHY_AFTER { 1 } else { attempt + 1 };
                let delay = jitter(backoff.delay(attempt));
                let n = health.restarted();
                health.record_error(category, message.clone());
                health.set_with(TaskState::Restarting, format!("restart {n} in {} ms: {message}", delay.as_millis()));
                tracing::error!(
                    task = %name, error_category = %category, error = %message, restarts = n,
                    restart_in_ms = delay.as_millis() as u64, "task failed; restarting"
                );
                tokio::select! {
                    _ = root.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if !matches!(health.state(), TaskState::Finished) {
                health.set(TaskState::Stopped);
            }
        });
        TaskHandle { token: handle_token, join, root: self.root.clone(), unclean: self.unclean.clone() }
    }

    /// Cancels everything and waits for the tasks to drain, at most `grace`.
    /// Returns `false` if the grace period ran out (the caller exits; tasks
    /// still running are abandoned uncommitted) or a task's drain ended in
    /// an error (it abandoned work, e.g. lanes that outlived their grace).
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.root.cancel();
        self.tracker.close();
        let in_time = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        in_time && !self.unclean.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn restarts_failing_task_with_growing_backoff() {
        let sup = Supervisor::new(Backoff::new(Duration::from_secs(1), Duration::from_secs(8)));
        let health = Health::new();
        let h = health.task("w", "worker");
        let starts = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let s2 = starts.clone();
        sup.spawn("w".into(), h.clone(), move |token| {
            let s2 = s2.clone();
            async move {
                let n = {
                    let mut s = s2.lock().unwrap();
                    s.push(t0.elapsed());
                    s.len()
                };
                if n <= 4 {
                    Some(Exit::Failed(ErrorCategory::Transient, format!("boom {n}")))
                } else {
                    token.cancelled().await;
                    None
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 5, "{starts:?}");
        // gaps follow 1s, 2s, 4s, 8s with equal jitter (between half and full)
        for (i, want) in [1u64, 2, 4, 8].iter().enumerate() {
            let gap = starts[i + 1] - starts[i];
            let full = Duration::from_secs(*want);
            assert!(gap >= full / 2 && gap <= full, "gap {i}: {gap:?} vs {full:?}");
        }
        assert_eq!(h.restarts(), 4);
        assert!(sup.shutdown(Duration::from_secs(1)).await);
        assert_eq!(h.state(), TaskState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn panic_is_contained_and_others_keep_running() {
        let sup = Supervisor::new(Backoff::new(Duration::from_millis(100), Duration::from_secs(1)));
        let health = Health::new();
        let ticks = Arc::new(AtomicU32::new(0));
        let t2 = ticks.clone();
        sup.spawn("steady".into(), health.task("steady", "worker"), move |token| {
            let t2 = t2.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(10)) => { t2.fetch_add(1, Ordering::Relaxed); }
                    }
                }
            }
        });
        let bad = health.task("bad", "worker");
        let runs = Arc::new(AtomicU32::new(0));
        let r2 = runs.clone();
        sup.spawn("bad".into(), bad.clone(), move |_token| {
            let n = r2.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 3 {
                    panic!("stage exploded {n}");
                }
                Some(Exit::Finished)
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::Relaxed), 4);
        assert_eq!(bad.restarts(), 3);
        assert_eq!(bad.state(), TaskState::Finished);
        let report = health.report();
        assert_eq!(report.workers["bad"].last_error.as_deref(), Some("panicked: stage exploded 2"));
        let before = ticks.load(Ordering::Relaxed);
        assert!(before >= 400, "steady task kept running: {before}");
        assert!(sup.shutdown(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_aborts_a_task_that_does_not_drain_in_time() {
        let sup = Supervisor::new(Backoff::default());
        let health = Health::new();
        let finished = Arc::new(AtomicU32::new(0));
        let f2 = finished.clone();
        let h = sup.spawn("stuck".into(), health.task("stuck", "worker"), move |token| {
            let f2 = f2.clone();
            async move {
                token.cancelled().await;
                // a drain that never ends (a stuck dependency)
                tokio::time::sleep(Duration::from_secs(3600)).await;
                f2.fetch_add(1, Ordering::Relaxed);
                None
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t0 = Instant::now();
        assert!(!h.stop(Duration::from_secs(2)).await, "did not drain in time");
        assert!(t0.elapsed() <= Duration::from_secs(3), "{:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert_eq!(finished.load(Ordering::Relaxed), 0, "the run was aborted, not left behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_ends_in_an_error_is_not_a_clean_shutdown() {
        let sup = Supervisor::new(Backoff::default());
        let health = Health::new();
        sup.spawn("clean".into(), health.task("clean", "worker"), |token| async move {
            token.cancelled().await;
            None
        });
        assert!(sup.shutdown(Duration::from_secs(1)).await, "a clean drain");
        let sup = Supervisor::new(Backoff::default());
        sup.spawn("aborts".into(), health.task("aborts", "worker"), |token| async move {
            token.cancelled().await;
            // lanes that outlived their grace were dropped mid-batch
            Some(Exit::Failed(ErrorCategory::Transient, "lanes did not finish within the drain grace".into()))
        });
        assert!(!sup.shutdown(Duration::from_secs(1)).await, "work was abandoned");
    }
}
