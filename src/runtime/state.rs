//! The applied state of a pipeline and what its parts share.
//!
//! What runs has one owner, the reload path (`reload::Topology`), which
//! publishes each applied state as an immutable [`Snapshot`]: the config,
//! its open transports and the config status. Everything else (the admin
//! endpoints, the scaling signals, tests) reads the latest snapshot and never
//! sees a half-applied config.

use super::build::Options;
use super::transports::LiveTransport;
use crate::config::Config;
use crate::health::{ConfigStatus, Health};
use crate::metrics::Metrics;
use crate::supervisor::Supervisor;
use crate::transport::Transport;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The applied state, as readers see it (replaced whole, never mutated).
#[derive(Default, Clone)]
pub struct Snapshot {
    /// The config as applied (`None` before the first one).
    pub config: Option<Config>,
    /// Its open transports, by name.
    pub transports: BTreeMap<String, LiveTransport>,
    /// Generation and the last reload's outcome.
    pub status: ConfigStatus,
}

impl Snapshot {
    /// Transport `name`, if open.
    pub fn transport(&self, name: &str) -> Option<Arc<dyn Transport>> {
        self.transports.get(name).map(|t| t.transport.clone())
    }

    /// Where entity `key` is read and written now: where its producers
    /// write (its new side once a migration cut over).
    pub fn access(&self, key: &str) -> Option<crate::admin::entities::EntityAccess> {
        let side = self.config.as_ref()?.entities.get(key)?.write_side(key);
        let live = self.transports.get(&side.transport)?;
        Some(crate::admin::entities::EntityAccess {
            transport: live.transport.clone(),
            producer: live.producer.clone(),
            physical: side.physical,
        })
    }
}

/// What every part of a pipeline shares.
pub struct Shared {
    pub opts: Options,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub supervisor: Supervisor,
    /// How long one task's drain may take.
    pub grace: Duration,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Counts published snapshots: readers that follow the applied state
    /// (the migration status) wake on a change instead of polling.
    published: tokio::sync::watch::Sender<u64>,
    /// The last migration status read (`/readyz`).
    pub migrations: RwLock<Vec<crate::migration::status::EntityStatus>>,
    /// Ingest routes of the admin listener.
    pub routes: Arc<crate::sources::Routes>,
}

impl Shared {
    pub fn new(opts: Options, metrics: Arc<Metrics>, health: Arc<Health>, grace: Duration) -> Self {
        Shared {
            supervisor: Supervisor::new(opts.backoff.unwrap_or_default()),
            opts,
            metrics,
            health,
            grace,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            published: tokio::sync::watch::Sender::new(0),
            migrations: RwLock::new(Vec::new()),
            routes: crate::sources::Routes::new(),
        }
    }

    /// The latest applied state.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap().clone()
    }

    /// Replaces the applied state (the reload path only).
    pub(super) fn publish(&self, s: Snapshot) {
        let paths = s.config.iter().flat_map(|c| c.sources.values());
        self.routes.configure(
            paths
                .filter_map(|src| match src {
                    crate::config::SourceConfig::Http(h) if h.listen.is_none() => Some(h.path.clone()),
                    _ => None,
                })
                .collect(),
        );
        *self.snapshot.write().unwrap() = Arc::new(s);
        self.published.send_modify(|n| *n += 1);
    }

    /// Changes on every published snapshot.
    pub fn published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }
}
