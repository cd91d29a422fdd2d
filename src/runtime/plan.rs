//! What runs for a config, and a fingerprint per task: a task whose
//! fingerprint is unchanged by a reload keeps running untouched.
//!
//! A task's fingerprint covers its own config section and every entity it
//! reads or writes, including each entity's transport. Secrets count by
//! their value: configs are fingerprinted through
//! [`fingerprint_json`](crate::config::fingerprint_json), where a `Secret`
//! serializes as a hash of itself. Change any of those and the task is
//! drained and restarted. A retry scheduler's fingerprint also covers every
//! worker's name, input and dead-letter entity (it routes retries of workers
//! a reload changed).

use crate::config::{Config, TransportConfig, fingerprint_json};
use std::collections::{BTreeMap, BTreeSet};

/// What a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskKind {
    Worker,
    /// The retry scheduler of this retry entity.
    Retry(String),
    Source,
    /// The migration mirror of this entity.
    Mirror(String),
}

/// One planned task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPlan {
    pub kind: TaskKind,
    pub fingerprint: u64,
    /// The entity it consumes (workers and retry schedulers).
    pub input: Option<String>,
    /// Every entity it reads or writes.
    pub entities: BTreeSet<String>,
}

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for p in parts {
        for b in *p {
            h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x100000001b3);
    }
    h
}

/// Fingerprint of a transport's config (secrets included).
pub fn transport_fp(cfg: &Config, name: &str) -> u64 {
    match cfg.transports.get(name) {
        // consumers of shared transports join groups as the instance id
        Some(t @ (TransportConfig::Kafka(_) | TransportConfig::Eventhubs(_))) => {
            fnv(&[&fingerprint_json(t), format!("{:?}", cfg.service.membership()).as_bytes()])
        }
        Some(t) => fnv(&[&fingerprint_json(t)]),
        None => 0,
    }
}

/// Fingerprint of an entity: its config and its transport's (and, for a
/// transcoding migration, its registries').
pub fn entity_fp(cfg: &Config, key: &str) -> u64 {
    match cfg.entities.get(key) {
        Some(e) => {
            let transcode = e.migrate.as_ref().and_then(|m| m.transcode.as_ref());
            let registries = registries_fp(cfg, transcode.iter().flat_map(|t| [t.from.as_str(), t.to.as_str()]));
            fnv(&[key.as_bytes(), &fingerprint_json(e), &transport_fp(cfg, &e.transport).to_le_bytes(), &registries])
        }
        None => 0,
    }
}

/// Fingerprint of the schema registries `names` (a changed URL, password or
/// credential restarts the tasks that use them).
fn registries_fp<'a>(cfg: &Config, names: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let used: BTreeMap<&str, _> =
        names.into_iter().filter_map(|n| cfg.schema_registries.get(n).map(|r| (n, r))).collect();
    fingerprint_json(&used)
}

fn combine(own: &[u8], cfg: &Config, entities: &BTreeSet<String>) -> u64 {
    let mut parts: Vec<Vec<u8>> = vec![own.to_vec()];
    for e in entities {
        parts.push(entity_fp(cfg, e).to_le_bytes().to_vec());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    fnv(&refs)
}

/// The name of the retry scheduler task of retry entity `via`.
pub fn retry_task(via: &str) -> String {
    format!("retry:{via}")
}

/// Every task of `cfg`, by name.
pub fn plan(cfg: &Config) -> BTreeMap<String, TaskPlan> {
    let mut out = BTreeMap::new();
    let mut retry: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (name, w) in &cfg.workers {
        let mut ents: BTreeSet<String> = BTreeSet::from([w.input.clone()]);
        ents.extend(w.outputs.values().cloned());
        ents.extend(w.dead_letter.iter().cloned());
        if let Some(r) = &w.retry {
            ents.insert(r.via.clone());
            retry.entry(&r.via).or_default().insert(w.input.clone());
        }
        let mut own = fingerprint_json(w);
        own.extend(registries_fp(cfg, w.stage.registries()));
        let fp = combine(&own, cfg, &ents);
        out.insert(
            name.clone(),
            TaskPlan { kind: TaskKind::Worker, fingerprint: fp, input: Some(w.input.clone()), entities: ents },
        );
    }
    // every worker's name, input and dead-letter entity: where retries go
    let routes: Vec<(&String, &String, &Option<String>)> =
        cfg.workers.iter().map(|(n, w)| (n, &w.input, &w.dead_letter)).collect();
    let mut retry_own = b"retry".to_vec();
    retry_own.extend(fingerprint_json(&routes));
    for (via, targets) in retry {
        let mut ents = targets.clone();
        ents.insert(via.to_string());
        ents.extend(cfg.workers.values().map(|w| w.input.clone()));
        ents.extend(
            cfg.workers
                .values()
                .filter(|w| w.retry.as_ref().is_some_and(|r| r.via == via))
                .filter_map(|w| w.dead_letter.clone()),
        );
        let fp = combine(&retry_own, cfg, &ents);
        out.insert(
            retry_task(via),
            TaskPlan {
                kind: TaskKind::Retry(via.to_string()),
                fingerprint: fp,
                input: Some(via.to_string()),
                entities: ents,
            },
        );
    }
    for (key, e) in &cfg.entities {
        if crate::migration::plan::mirror(e, key).is_some() {
            let ents = BTreeSet::from([key.clone()]);
            let fp = combine(b"mirror", cfg, &ents);
            out.insert(
                crate::migration::plan::mirror_task(key),
                TaskPlan {
                    kind: TaskKind::Mirror(key.clone()),
                    fingerprint: fp,
                    input: Some(key.clone()),
                    entities: ents,
                },
            );
        }
    }
    for (name, s) in &cfg.sources {
        let ents = BTreeSet::from([s.entity().to_string()]);
        let fp = combine(&fingerprint_json(s), cfg, &ents);
        out.insert(name.clone(), TaskPlan { kind: TaskKind::Source, fingerprint: fp, input: None, entities: ents });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(t: &str) -> Config {
        crate::config::load_str(t, Path::new("t.yaml"), |_| None).unwrap().config
    }

    const BASE: &str = r#"
transports:
  a: { type: embedded }
  b: { type: embedded }
entities:
  in: { transport: a, partitions: 2 }
  mid: { transport: a, partitions: 2 }
  out: { transport: a }
workers:
  one: { input: in, outputs: { default: mid } }
  two: { input: mid, outputs: { default: out }, concurrency: 2 }
"#;

    #[test]
    fn only_what_changed_gets_a_new_fingerprint() {
        let a = plan(&load(BASE));
        let b = plan(&load(&BASE.replace("concurrency: 2", "concurrency: 3")));
        assert_eq!(a["one"].fingerprint, b["one"].fingerprint);
        assert_ne!(a["two"].fingerprint, b["two"].fingerprint);
        // moving `mid` to transport b changes both workers that touch it
        let c = plan(&load(&BASE.replace("mid: { transport: a", "mid: { transport: b")));
        assert_ne!(a["one"].fingerprint, c["one"].fingerprint);
        assert_ne!(a["two"].fingerprint, c["two"].fingerprint);
        assert_eq!(c["two"].input.as_deref(), Some("mid"));
    }

    #[test]
    fn a_changed_upload_secret_changes_the_worker() {
        let up = |key: &str| {
            BASE.replace(
                "two: { input: mid, outputs: { default: out }, concurrency: 2 }",
                &format!(
                    "two: {{ input: mid, outputs: {{ default: out }}, stage: {{ type: upload, name: \"{{{{id}}}}\", target: {{ type: blob, connection_string: \"AccountName=a;AccountKey={key}\", container: files }} }} }}"
                ),
            )
        };
        let (a, b) = (plan(&load(&up("k1"))), plan(&load(&up("k2"))));
        assert_eq!(a["one"].fingerprint, b["one"].fingerprint);
        assert_ne!(a["two"].fingerprint, b["two"].fingerprint, "the secret is hashed in, not printed");
    }

    #[test]
    fn a_changed_registry_restarts_what_uses_it_and_nothing_else() {
        let with = |password: &str, url: &str| {
            let mut t = BASE.replace(
                "two: { input: mid, outputs: { default: out }, concurrency: 2 }",
                "two: { input: mid, outputs: { default: out }, stage: { type: decode, registry: conf } }",
            );
            t.push_str(&format!(
                "schema_registries:\n  conf: {{ type: confluent, url: \"{url}\", basic_auth: {{ username: u, password: \"{password}\" }} }}\n  other: {{ type: confluent, url: \"http://o\" }}\n"
            ));
            plan(&load(&t))
        };
        let a = with("p1", "http://r");
        let rotated = with("p2", "http://r");
        let moved = with("p1", "http://r2");
        assert_eq!(a["one"].fingerprint, rotated["one"].fingerprint, "a worker using no registry stays");
        assert_ne!(a["two"].fingerprint, rotated["two"].fingerprint, "a rotated password restarts the decoder");
        assert_ne!(a["two"].fingerprint, moved["two"].fingerprint);
        let other_changed = plan(&load(&{
            let mut t = BASE.replace(
                "two: { input: mid, outputs: { default: out }, concurrency: 2 }",
                "two: { input: mid, outputs: { default: out }, stage: { type: decode, registry: conf } }",
            );
            t.push_str("schema_registries:\n  conf: { type: confluent, url: \"http://r\", basic_auth: { username: u, password: \"p1\" } }\n  other: { type: confluent, url: \"http://changed\" }\n");
            t
        }));
        assert_eq!(
            a["two"].fingerprint, other_changed["two"].fingerprint,
            "a registry it does not use changes nothing"
        );
    }
}
