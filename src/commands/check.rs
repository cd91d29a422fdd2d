//! `conveyor check`: validates a config file (every problem with its file,
//! line and column; exit 64 when there is one) and then compares it with the
//! brokers it names — warnings, never errors, where a Kafka topic is missing
//! or an entity's partition count differs from the broker's, or a broker or
//! namespace cannot be reached. Each transport is given a few seconds at
//! most; an unreachable namespace costs one warning, not one per entity.

use crate::config::Config;
#[cfg(any(feature = "kafka", feature = "eventhubs"))]
use crate::config::TransportConfig;
#[cfg(any(feature = "kafka", feature = "eventhubs"))]
use std::time::Duration;

/// Warnings from comparing `cfg` with its brokers. Blocking.
pub fn brokers(cfg: &Config) -> Vec<String> {
    #[allow(unused_mut)]
    let mut warnings = Vec::new();
    #[cfg(feature = "kafka")]
    for (tname, t) in &cfg.transports {
        let TransportConfig::Kafka(k) = t else { continue };
        kafka_topics(cfg, tname, k, &mut warnings);
    }
    #[cfg(feature = "eventhubs")]
    {
        let hubs: Vec<(&String, &crate::config::EventHubsConfig)> = cfg
            .transports
            .iter()
            .filter_map(|(n, t)| match t {
                TransportConfig::Eventhubs(c) => Some((n, c)),
                _ => None,
            })
            .collect();
        if !hubs.is_empty() {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => {
                    for (tname, c) in hubs {
                        rt.block_on(event_hubs(cfg, tname, c, &mut warnings));
                    }
                }
                Err(e) => warnings.push(format!("cannot compare Event Hubs partition counts: {e}")),
            }
        }
    }
    #[cfg(not(any(feature = "kafka", feature = "eventhubs")))]
    let _ = cfg;
    warnings
}

/// Kafka transport `tname`: every entity's topic exists with the
/// configured partition count.
#[cfg(feature = "kafka")]
fn kafka_topics(cfg: &Config, tname: &str, k: &crate::config::KafkaConfig, warnings: &mut Vec<String>) {
    let ents: Vec<(&String, &crate::config::EntityConfig)> =
        cfg.entities.iter().filter(|(_, e)| e.transport == tname).collect();
    let topics: Vec<String> = ents.iter().map(|(key, e)| e.physical_name(key).to_string()).collect();
    match crate::transport::kafka::KafkaTransport::broker_partitions(k, &topics, Duration::from_secs(5)) {
        Err(e) => warnings
            .push(format!("transports.{tname}: cannot reach {} to compare partition counts: {e}", k.bootstrap_servers)),
        Ok(found) => {
            for (key, e) in ents {
                let topic = e.physical_name(key);
                match found.get(topic).copied().flatten() {
                    None if k.create_topics => {}
                    None => warnings.push(format!(
                        "entities.{key}: topic {topic:?} does not exist on {tname} (create it, or set create_topics: true for development)"
                    )),
                    Some(n) if n != e.partitions => warnings.push(format!(
                        "entities.{key}: topic {topic:?} has {n} partitions on the broker, the config says {}",
                        e.partitions
                    )),
                    Some(_) => {}
                }
            }
        }
    }
}

/// Event Hubs transport `tname`: every entity's hub exists with the
/// configured partition count. The first hub that cannot be read ends the
/// check of that transport with one warning.
#[cfg(feature = "eventhubs")]
async fn event_hubs(cfg: &Config, tname: &str, c: &crate::config::EventHubsConfig, warnings: &mut Vec<String>) {
    use crate::transport::eventhub::EventHubsTransport;
    let ents = crate::runtime::transports::entities_on(cfg, tname);
    // the hubs only: the checkpoint store is not needed to read them
    let c = crate::config::EventHubsConfig { checkpoint_store: None, ..c.clone() };
    let t = match EventHubsTransport::open(tname, &c, &ents, crate::instance::Membership::Dynamic).await {
        Ok(t) => t,
        Err(e) => {
            warnings.push(format!("transports.{tname}: cannot open to compare partition counts: {e}"));
            return;
        }
    };
    for e in &ents {
        match tokio::time::timeout(Duration::from_secs(15), t.hub_partitions(&e.name)).await {
            Ok(Ok(n)) if n != e.partitions => warnings.push(format!(
                "entities.{}: event hub {:?} has {n} partitions on {tname}, the config says {}",
                e.key, e.name, e.partitions
            )),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                warnings.push(format!(
                    "entities.{}: cannot read event hub {:?} on {tname} (does it exist?): {err}; partition counts not compared",
                    e.key, e.name
                ));
                break;
            }
            Err(_) => {
                warnings.push(format!(
                    "transports.{tname}: event hub {:?} did not answer within 15s; partition counts not compared",
                    e.name
                ));
                break;
            }
        }
    }
    crate::transport::Transport::close(&t, Duration::from_secs(5)).await;
}
