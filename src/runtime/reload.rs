//! Applying a config to a running pipeline.
//!
//! Each task has a fingerprint (its own section, every entity it touches and
//! their transports — see `plan`); tasks whose fingerprint is unchanged keep
//! running untouched. A reload, in order:
//!
//! 1. opens transports the new config adds (if one cannot open, nothing has
//!    changed yet and the reload fails);
//! 2. drains and stops the changed and removed tasks, each within the
//!    shutdown grace (they finish and commit what they hold);
//! 3. a consumer of an entity that *moves* to another transport keeps running
//!    on the old one until the old entity is drained: every partition's
//!    committed position, read from the old transport itself, has reached
//!    its end ([`drain_state`]). Its upstream writers were stopped in step 2.
//!    An unknown position (no commit yet, a broker that does not answer) is
//!    never taken for drained; the wait is bounded (5 minutes) and ends early
//!    on shutdown, and what is left on the old entity is then reported;
//! 4. closes and reopens transports whose config changed, makes every
//!    transport carry exactly the new entities and consumer groups
//!    (`Transport::ensure`), and starts what is new or changed.
//!
//! If step 4 fails, the previous topology is brought back (best effort) and
//! the reload reports the error. An invalid config never gets here.

use super::build::{Parts, kind_name};
use super::error::RuntimeError;
use super::plan::{self, TaskKind, TaskPlan};
use super::state::{Shared, Snapshot};
use super::transports::{self, LiveTransport};
use crate::config::Config;
use crate::supervisor::TaskHandle;
use crate::transport::{Drain, Transport, drain_state};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for a moved entity to drain on its old transport.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    pub transports_reopened: Vec<String>,
    /// Moved entities whose old side did not drain in time (what is left
    /// there stays on the old transport).
    pub not_drained: Vec<String>,
}

/// The running tasks by name, with the plan each was started from.
pub type Tasks = BTreeMap<String, (TaskPlan, TaskHandle)>;

/// The running tasks and the code that changes them (the one owner of what
/// runs; see `state`).
pub struct Topology {
    shared: Arc<Shared>,
    tasks: tokio::sync::Mutex<Tasks>,
}

impl Topology {
    pub fn new(shared: Arc<Shared>) -> Self {
        Topology { shared, tasks: tokio::sync::Mutex::new(BTreeMap::new()) }
    }

    /// Waits (at most `within`) until no reload is in progress; no reload
    /// starts while the returned guard is held.
    pub async fn quiesce(&self, within: Duration) -> Option<tokio::sync::MutexGuard<'_, Tasks>> {
        tokio::time::timeout(within, self.tasks.lock()).await.ok()
    }

    /// Records a reload that failed before it could be applied (`/readyz`).
    pub fn failed(&self, why: &str) {
        let old = self.shared.snapshot();
        let mut next = Snapshot::clone(&old);
        next.status.last_reload_error = Some(why.to_string());
        next.status.last_reload_at = Some(super::now_rfc3339());
        self.shared.publish(next);
    }

    /// Applies a validated config (see the module docs).
    pub async fn apply(&self, cfg: Config, hash: u64) -> Result<ReloadReport, RuntimeError> {
        let mut tasks = self.tasks.lock().await;
        let shared = &self.shared;
        // what runs now; the snapshot itself is not held (a transport that
        // must be reopened has to lose every reference first)
        let (old_config, old_status, mut live) = {
            let old = shared.snapshot();
            (old.config.clone(), old.status.clone(), old.transports.clone())
        };
        let new_plan = plan::plan(&cfg);
        let mut report = ReloadReport::default();

        // 1. new transport names first: nothing changes if one cannot open
        let mut fresh: BTreeMap<String, LiveTransport> = BTreeMap::new();
        for name in cfg.transports.keys() {
            if !live.contains_key(name) {
                fresh.insert(name.clone(), transports::open(&cfg, name, &cfg.service.membership()).await?);
            }
        }
        let replaced: BTreeSet<String> = live
            .iter()
            .filter(|(name, live)| {
                !cfg.transports.contains_key(*name) || plan::transport_fp(&cfg, name) != live.fingerprint
            })
            .map(|(name, _)| name.clone())
            .collect();
        // entities moved by editing `transport:` (a migration moves by its
        // phases instead: its consumers switch sides by themselves)
        let moved: BTreeSet<String> = match &old_config {
            Some(o) => o
                .entities
                .iter()
                .filter(|(k, e)| {
                    cfg.entities
                        .get(*k)
                        .is_some_and(|n| n.transport != e.transport && n.migrate.is_none() && e.migrate.is_none())
                })
                .map(|(k, _)| k.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        let to_stop: Vec<String> = tasks
            .iter()
            .filter(|(n, (p, _))| new_plan.get(*n).is_none_or(|np| np.fingerprint != p.fingerprint))
            .map(|(n, _)| n.clone())
            .collect();
        let (drain_first, plain): (Vec<String>, Vec<String>) =
            to_stop.into_iter().partition(|n| tasks[n].0.input.as_ref().is_some_and(|i| moved.contains(i)));

        // 2. stop the changed tasks; writers to moved entities stop here
        let stops: Vec<_> = plain.iter().filter_map(|n| tasks.remove(n)).map(|(_, h)| h.stop(shared.grace)).collect();
        futures::future::join_all(stops).await;
        // 3. consumers of moved entities empty the old entity first
        if let Some(old_cfg) = &old_config
            && !drain_first.is_empty()
        {
            let groups: Vec<(String, Arc<dyn Transport>, String, String)> = drain_first
                .iter()
                .filter_map(|n| {
                    let (p, _) = &tasks[n];
                    let input = p.input.as_ref()?;
                    let e = old_cfg.entities.get(input)?;
                    let group = match &p.kind {
                        TaskKind::Worker => old_cfg.workers.get(n)?.group(n).to_string(),
                        TaskKind::Retry(_) => crate::retry::GROUP.to_string(),
                        TaskKind::Mirror(_) => crate::migration::plan::MIRROR_GROUP.to_string(),
                        TaskKind::Source => return None,
                    };
                    let t = live.get(&e.transport)?.transport.clone();
                    Some((input.clone(), t, e.physical_name(input).to_string(), group))
                })
                .collect();
            report.not_drained = self.wait_drained(&groups).await;
        }
        let stops: Vec<_> =
            drain_first.iter().filter_map(|n| tasks.remove(n)).map(|(_, h)| h.stop(shared.grace)).collect();
        futures::future::join_all(stops).await;
        for n in plain.iter().chain(drain_first.iter()) {
            if new_plan.contains_key(n) {
                report.restarted.push(n.clone());
            } else {
                report.stopped.push(n.clone());
                shared.health.remove(n);
                shared.metrics.forget_worker(n);
            }
        }
        if shared.supervisor.token().is_cancelled() {
            // a shutdown began meanwhile: start nothing new
            return Err(RuntimeError::ShuttingDown);
        }
        // 4. reopen changed transports, carry the new entities and groups,
        // start what is new or changed; on failure bring the old topology back
        // retire replaced transports: unpublished, closed, dropped (a durable
        // store can be opened again only once nothing holds it)
        let retired: Vec<LiveTransport> = replaced.iter().filter_map(|n| live.remove(n)).collect();
        if !retired.is_empty() {
            shared.publish(Snapshot {
                config: old_config.clone(),
                transports: live.clone(),
                status: old_status.clone(),
            });
            for t in retired {
                t.transport.close(shared.grace).await;
            }
        }
        let reloading = old_config.is_some();
        let switched =
            self.switch(&mut tasks, &mut live, &cfg, &new_plan, &replaced, fresh, reloading, &mut report).await;
        if let Err(e) = switched {
            if let Some(old_cfg) = &old_config {
                tracing::error!(error = %e, "applying the new config failed; restoring the previous one");
                self.restore(&mut tasks, &mut live, old_cfg).await;
            }
            shared.publish(Snapshot { config: old_config, transports: live, status: old_status });
            return Err(e);
        }
        let mut status = old_status;
        status.generation += 1;
        status.hash = format!("{hash:016x}");
        status.last_reload_error = None;
        status.last_reload_at = Some(super::now_rfc3339());
        shared.metrics.config_generation.set(status.generation as i64);
        shared.metrics.set_config_hash(&status.hash);
        shared.publish(Snapshot { config: Some(cfg), transports: live, status });
        Ok(report)
    }

    /// Waits until every `(entity, transport, physical, group)` is drained
    /// at once, twice in a row (a consumer's last batch may feed another
    /// moved entity); returns the entities still not drained when the limit
    /// passed or a shutdown began.
    async fn wait_drained(&self, groups: &[(String, Arc<dyn Transport>, String, String)]) -> Vec<String> {
        let stop = self.shared.supervisor.token();
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        let mut in_a_row = 0;
        let mut last: Vec<(String, Drain)> = Vec::new();
        loop {
            last.clear();
            for (entity, t, physical, group) in groups {
                let positions = tokio::time::timeout(Duration::from_secs(10), t.group_positions(physical, group)).await;
                let state = match positions {
                    Ok(Ok(p)) => drain_state(&p),
                    _ => Drain::Unknown { partition: u32::MAX },
                };
                last.push((entity.clone(), state));
            }
            let all = last.iter().all(|(_, d)| *d == Drain::Drained);
            in_a_row = if all { in_a_row + 1 } else { 0 };
            if in_a_row >= 2 {
                return Vec::new();
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let left: Vec<String> = last.iter().filter(|(_, d)| *d != Drain::Drained).map(|(e, _)| e.clone()).collect();
        for (entity, d) in last.iter().filter(|(_, d)| *d != Drain::Drained) {
            tracing::error!(
                entity = %entity, state = ?d,
                "a moved entity did not drain on its old transport; what is left there stays there (redrive it or move it back)"
            );
        }
        left
    }

    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        tasks: &mut Tasks,
        live: &mut BTreeMap<String, LiveTransport>,
        cfg: &Config,
        new_plan: &BTreeMap<String, TaskPlan>,
        replaced: &BTreeSet<String>,
        fresh: BTreeMap<String, LiveTransport>,
        reloading: bool,
        report: &mut ReloadReport,
    ) -> Result<(), RuntimeError> {
        let shared = &self.shared;
        for n in replaced {
            if cfg.transports.contains_key(n) {
                live.insert(n.clone(), transports::open(cfg, n, &cfg.service.membership()).await?);
                report.transports_reopened.push(n.clone());
            }
        }
        live.extend(fresh);
        for (name, open) in live.iter() {
            transports::ensure(cfg, name, open).await?;
        }
        let parts = Parts {
            cfg,
            transports: live,
            metrics: &shared.metrics,
            health: &shared.health,
            opts: &shared.opts,
            grace: shared.grace,
            routes: &shared.routes,
            registries: crate::schema::Registries::build(&cfg.schema_registries, Some(registry_hook(&shared.metrics)))
                .map_err(|e| RuntimeError::Registry(Box::new(e)))?,
        };
        for (n, p) in new_plan {
            if tasks.contains_key(n) {
                report.unchanged.push(n.clone());
                continue;
            }
            let handle = parts.task(n, &p.kind)?.spawn(&shared.supervisor, n);
            if reloading && report.restarted.contains(n) {
                shared.health.task(n, kind_name(&p.kind)).restarted();
            } else if reloading {
                report.started.push(n.clone());
            }
            tasks.insert(n.clone(), (p.clone(), handle));
        }
        Ok(())
    }

    /// Best effort after a failed apply: reopen the previous config's
    /// transports that are missing and restart its tasks that are not running.
    async fn restore(&self, tasks: &mut Tasks, live: &mut BTreeMap<String, LiveTransport>, old: &Config) {
        let shared = &self.shared;
        for n in old.transports.keys() {
            if !live.contains_key(n) {
                match transports::open(old, n, &old.service.membership()).await {
                    Ok(open) => {
                        live.insert(n.clone(), open);
                    }
                    Err(e) => tracing::error!(transport = %n, error = %e, "cannot reopen the previous transport"),
                }
            }
        }
        let registries = crate::schema::Registries::build(&old.schema_registries, Some(registry_hook(&shared.metrics)))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot rebuild the previous schema registries");
                Default::default()
            });
        let parts = Parts {
            cfg: old,
            transports: live,
            metrics: &shared.metrics,
            health: &shared.health,
            opts: &shared.opts,
            grace: shared.grace,
            routes: &shared.routes,
            registries,
        };
        for (n, p) in plan::plan(old) {
            if tasks.contains_key(&n) {
                continue;
            }
            match parts.task(&n, &p.kind) {
                Ok(task) => {
                    let handle = task.spawn(&shared.supervisor, &n);
                    tasks.insert(n, (p, handle));
                }
                Err(e) => tracing::error!(task = %n, error = %e, "cannot restart the previous task"),
            }
        }
    }
}

/// Counts schema registry requests in the daemon's metrics.
fn registry_hook(metrics: &std::sync::Arc<crate::metrics::Metrics>) -> crate::schema::registry::RequestHook {
    let m = metrics.clone();
    std::sync::Arc::new(move |registry: &str, outcome: &str| m.schema_registry_request(registry, outcome))
}
