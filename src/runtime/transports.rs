//! The transport factory: opens a config's transports, each with the
//! entities it carries ([`EntitySpec`]) and the consumer groups the
//! topology uses on it ([`GroupSpec`]), and keeps them in step on reload
//! through [`Transport::ensure`]. One spec builder for every transport kind.

use super::error::RuntimeError;
use super::plan;
use crate::config::{Config, TransportConfig};
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

/// The entities of `cfg` on transport `tname`.
pub fn entities_on(cfg: &Config, tname: &str) -> Vec<EntitySpec> {
    cfg.entities
        .iter()
        .filter(|(_, e)| e.transport == tname)
        .map(|(key, e)| EntitySpec {
            key: key.clone(),
            name: e.physical_name(key).to_string(),
            partitions: e.partitions,
        })
        .collect()
}

/// The consumer groups `cfg` uses on transport `tname`: workers' and the
/// retry schedulers'.
pub fn groups_on(cfg: &Config, tname: &str) -> Vec<GroupSpec> {
    let on_this = |key: &str| cfg.entities.get(key).is_some_and(|e| e.transport == tname);
    let physical = |key: &str| cfg.entities[key].physical_name(key).to_string();
    let mut groups: Vec<GroupSpec> = cfg
        .workers
        .iter()
        .filter(|(_, w)| on_this(&w.input))
        .map(|(n, w)| GroupSpec { entity: physical(&w.input), group: w.group(n).to_string(), start: w.start_position })
        .collect();
    for w in cfg.workers.values() {
        if let Some(r) = w.retry.as_ref().filter(|r| on_this(&r.via)) {
            let g = GroupSpec {
                entity: physical(&r.via),
                group: crate::retry::GROUP.to_string(),
                start: StartPosition::Earliest,
            };
            if !groups.contains(&g) {
                groups.push(g);
            }
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

/// Opens transport `tname` of `cfg` with its entities and groups.
pub async fn open(cfg: &Config, tname: &str) -> Result<LiveTransport, RuntimeError> {
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
        TransportConfig::Kafka(k) => {
            Arc::new(crate::transport::kafka::KafkaTransport::open(tname, k, &entities).await.map_err(err)?)
        }
        #[cfg(feature = "eventhubs")]
        TransportConfig::Eventhubs(e) => {
            Arc::new(crate::transport::eventhub::EventHubsTransport::open(tname, e, &entities).await.map_err(err)?)
        }
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
}

impl Transports {
    /// Opens every transport of `cfg`.
    pub async fn open(cfg: &Config) -> Result<Transports, RuntimeError> {
        let mut all = BTreeMap::new();
        for name in cfg.transports.keys() {
            all.insert(name.clone(), open(cfg, name).await?);
        }
        Ok(Transports { all })
    }

    /// The transport and physical name of entity `key`.
    pub fn entity(&self, cfg: &Config, key: &str) -> Option<(Arc<dyn Transport>, String)> {
        let e = cfg.entities.get(key)?;
        Some((self.all.get(&e.transport)?.transport.clone(), e.physical_name(key).to_string()))
    }

    /// Flushes and closes every transport, within `within` each.
    pub async fn close(&self, within: Duration) {
        for t in self.all.values() {
            t.transport.close(within).await;
        }
    }
}
