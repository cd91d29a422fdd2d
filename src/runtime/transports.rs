//! The transport factory: opens a config's transports, each with the
//! entities it carries ([`EntitySpec`]) and the consumer groups the
//! topology uses on it ([`GroupSpec`]), and keeps them in step on reload
//! through [`Transport::ensure`]. One spec builder for every transport kind.

use super::error::RuntimeError;
use super::plan;
use crate::config::{Config, TransportConfig};
use crate::instance::Membership;
use crate::migration;
use crate::transport::embedded::{Embedded, EmbeddedOptions};
use crate::transport::{EntitySpec, GroupSpec, Producer, StartPosition, Transport};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// An opened transport.
#[derive(Clone)]
pub struct LiveTransport {
    pub fingerprint: u64,
    pub transport: Arc<dyn Transport>,
    pub producer: Arc<dyn Producer>,
}

/// The entities of `cfg` on transport `tname`: those it holds, and those
/// migrating to it (under their name there).
pub fn entities_on(cfg: &Config, tname: &str) -> Vec<EntitySpec> {
    let mut out = Vec::new();
    for (key, e) in &cfg.entities {
        for side in std::iter::once(e.old_side(key)).chain(e.new_side(key)) {
            if side.transport == tname {
                out.push(EntitySpec { key: key.clone(), name: side.physical, partitions: side.partitions });
            }
        }
    }
    out
}

/// The consumer groups `cfg` uses on transport `tname`: on every side an
/// entity's consumers read (workers', retry schedulers'), and the
/// migration mirrors' on the old sides they copy.
pub fn groups_on(cfg: &Config, tname: &str) -> Vec<GroupSpec> {
    let mut groups: Vec<GroupSpec> = Vec::new();
    let mut add = |g: GroupSpec| {
        if !groups.contains(&g) {
            groups.push(g);
        }
    };
    let read_here = |key: &str| -> Vec<String> {
        let Some(e) = cfg.entities.get(key) else { return Vec::new() };
        migration::plan::consume(e, key)
            .sides()
            .into_iter()
            .filter(|s| s.transport == tname)
            .map(|s| s.physical.clone())
            .collect()
    };
    for (n, w) in &cfg.workers {
        for physical in read_here(&w.input) {
            add(GroupSpec { entity: physical, group: w.group(n).to_string(), start: w.start_position, shared: false });
        }
        if let Some(r) = &w.retry {
            for physical in read_here(&r.via) {
                add(GroupSpec {
                    entity: physical,
                    group: crate::retry::GROUP.to_string(),
                    start: StartPosition::Earliest,
                    shared: true,
                });
            }
        }
    }
    for (key, e) in &cfg.entities {
        if let Some((from, _)) = migration::plan::mirror(e, key)
            && from.transport == tname
        {
            add(GroupSpec {
                entity: from.physical,
                group: migration::plan::MIRROR_GROUP.to_string(),
                start: StartPosition::Earliest,
                shared: true,
            });
        }
    }
    groups
}

/// Selects rustls' process-wide crypto provider (`ring`). Two providers are
/// linked (the Event Hubs SDK's rustls brings aws-lc-rs), and rustls then
/// refuses to pick one by itself. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens transport `tname` of `cfg` with its entities and groups; its
/// consumers join groups as `membership` (static for the daemon).
pub async fn open(cfg: &Config, tname: &str, membership: &Membership) -> Result<LiveTransport, RuntimeError> {
    let err = |source| RuntimeError::Transport { name: tname.to_string(), source: Box::new(source) };
    let entities = entities_on(cfg, tname);
    let transport: Arc<dyn Transport> = match &cfg.transports[tname] {
        TransportConfig::Embedded { path, capacity, max_message_bytes } => {
            let opts = EmbeddedOptions {
                name: tname.to_string(),
                path: path.clone(),
                capacity: *capacity,
                max_message_bytes: *max_message_bytes,
            };
            Arc::new(Embedded::open(opts, &entities, &groups_on(cfg, tname)).map_err(err)?)
        }
        #[cfg(feature = "kafka")]
        TransportConfig::Kafka(k) => Arc::new(
            crate::transport::kafka::KafkaTransport::open(tname, k, &entities, membership.clone())
                .await
                .map_err(err)?,
        ),
        #[cfg(feature = "eventhubs")]
        TransportConfig::Eventhubs(e) => Arc::new(
            crate::transport::eventhub::EventHubsTransport::open(tname, e, &entities, membership.clone())
                .await
                .map_err(err)?,
        ),
        #[allow(unreachable_patterns)]
        other => {
            return Err(err(crate::transport::TransportError::Other {
                category: crate::classify::ErrorCategory::Permanent,
                kind: "unsupported",
                message: format!("this build has no {} support (cargo feature `{}`)", other.kind(), other.kind()),
            }));
        }
    };
    tracing::info!(transport = %tname, kind = transport.kind(), entities = entities.len(), "transport opened");
    Ok(LiveTransport { fingerprint: plan::transport_fp(cfg, tname), producer: transport.producer(), transport })
}

/// Makes open transport `tname` carry `cfg`'s entities and groups.
pub async fn ensure(cfg: &Config, tname: &str, open: &LiveTransport) -> Result<(), RuntimeError> {
    open.transport
        .ensure(&entities_on(cfg, tname), &groups_on(cfg, tname))
        .await
        .map_err(|source| RuntimeError::Transport { name: tname.to_string(), source: Box::new(source) })
}

/// The transports of a config, opened (for tools such as `conveyor dlq`).
pub struct Transports {
    pub all: BTreeMap<String, LiveTransport>,
    /// The transports reached through the running daemon, by name.
    daemon: BTreeMap<String, Arc<crate::transport::remote::Remote>>,
}

impl Transports {
    /// Opens every transport of `cfg`.
    pub async fn open(cfg: &Config) -> Result<Transports, RuntimeError> {
        let mut all = BTreeMap::new();
        for name in cfg.transports.keys() {
            all.insert(name.clone(), open(cfg, name, &Membership::Dynamic).await?);
        }
        Ok(Transports { all, daemon: BTreeMap::new() })
    }

    /// Opens every transport of `cfg` for a tool (`tail`, `produce`, `dlq`):
    /// an embedded transport that the daemon holds (a durable store in use,
    /// or any memory-only one, which lives in the daemon) is reached through
    /// the daemon's entity API at `service.http.listen`.
    pub async fn open_for_tool(cfg: &Config) -> Result<Transports, RuntimeError> {
        let (mut all, mut daemon) = (BTreeMap::new(), BTreeMap::new());
        for (name, tc) in &cfg.transports {
            let direct = match tc {
                TransportConfig::Embedded { path: None, .. } => None,
                _ => match open(cfg, name, &Membership::Dynamic).await {
                    Err(RuntimeError::Transport { source, .. })
                        if matches!(*source, crate::transport::TransportError::InUse { .. }) =>
                    {
                        None
                    }
                    other => Some(other?),
                },
            };
            let live = match direct {
                Some(live) => live,
                None => {
                    let remote = Arc::new(daemon_api(cfg, name));
                    tracing::info!(transport = %name, "reaching the transport through the running daemon's entity API");
                    daemon.insert(name.clone(), remote.clone());
                    LiveTransport {
                        fingerprint: plan::transport_fp(cfg, name),
                        producer: remote.producer(),
                        transport: remote,
                    }
                }
            };
            all.insert(name.clone(), live);
        }
        Ok(Transports { all, daemon })
    }

    /// The transport and name where entity `key` is written now (its new
    /// side once a migration's producers switched).
    pub fn entity(&self, cfg: &Config, key: &str) -> Option<(Arc<dyn Transport>, String)> {
        let side = cfg.entities.get(key)?.write_side(key);
        Some((self.all.get(&side.transport)?.transport.clone(), side.physical))
    }

    /// The running daemon, when it holds the transport entity `key` is
    /// written to now.
    pub fn daemon_for(&self, cfg: &Config, key: &str) -> Option<Arc<crate::transport::remote::Remote>> {
        let side = cfg.entities.get(key)?.write_side(key);
        self.daemon.get(&side.transport).cloned()
    }

    /// Flushes and closes every transport, within `within` each.
    pub async fn close(&self, within: Duration) {
        for t in self.all.values() {
            t.transport.close(within).await;
        }
    }
}

/// The entity API of the daemon that runs `cfg`, for transport `tname`.
/// A tool that never touches such a transport is not stopped by it: an
/// unknown address fails the first call, not the opening.
fn daemon_api(cfg: &Config, tname: &str) -> crate::transport::remote::Remote {
    let mut addr = cfg.service.http.listen;
    if addr.port() == 0 {
        let why = RuntimeError::NoDaemonAddress { transport: tname.to_string() };
        return crate::transport::remote::Remote::unreachable(why.to_string());
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    // every name an entity has on this transport (either side of a
    // migration) leads back to its config key
    let mut names = std::collections::HashMap::new();
    for (k, e) in &cfg.entities {
        for side in [Some(e.old_side(k)), e.new_side(k)].into_iter().flatten() {
            if side.transport == tname {
                names.insert(side.physical, k.clone());
            }
        }
    }
    crate::transport::remote::Remote::new(format!("http://{addr}"), cfg.service.http.token.clone(), names)
}
