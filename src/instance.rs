//! The process's stable instance id: who this daemon is to a Kafka consumer
//! group (static membership, KIP-345 `group.instance.id`) and to an Event
//! Hubs consumer group (the ownership records' owner id).
//!
//! A stable id is what makes recovery after a crash fast: a daemon restarted
//! after `kill -9` rejoins as the member it was, so Kafka hands its
//! partitions straight back instead of waiting for `session.timeout.ms` to
//! evict the dead member, and Event Hubs ownerships it still holds (not yet
//! expired) are renewed at once instead of waiting for them to expire.
//!
//! The id is, first match wins: the environment variable
//! `CONVEYOR_INSTANCE_ID`, then `service.instance_id`, then
//! `<hostname>-<service name>`.
//!
//! # Caveats
//! - Two live processes must never share an id: Kafka fences the older one
//!   (a fatal `FENCED_INSTANCE_ID` for it) and on Event Hubs both would think
//!   they own the same partitions. Several instances of one config on one
//!   host therefore each need their own `CONVEYOR_INSTANCE_ID`; `check` warns
//!   when a config that joins Kafka or Event Hubs groups leaves the id to the
//!   default.
//! - A static Kafka member leaves its group without a rebalance: after a
//!   clean stop (SIGTERM) of one of several instances, its partitions wait
//!   for `session.timeout.ms` before they move to the others, unless it is
//!   started again first. That is the price of not rebalancing on a restart.
//! - Only the daemon (`conveyor run`) joins groups with it; the tools
//!   (`dlq`, `migrate`, `bench`) join as dynamic members, so they never fence
//!   a running daemon.

/// The environment variable that overrides the configured instance id.
pub const ENV: &str = "CONVEYOR_INSTANCE_ID";

/// How this process joins consumer groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Membership {
    /// A fresh identity per connection (tools, tests).
    #[default]
    Dynamic,
    /// The daemon's stable instance id.
    Static(String),
}

impl Membership {
    /// The daemon's membership: its instance id under `service.instance_id`
    /// (`configured`), `service.name` and the process environment.
    pub fn daemon(configured: Option<&str>, service: &str) -> Membership {
        Membership::Static(instance_id(configured, service))
    }

    /// Kafka `group.instance.id` of this process in `group` (a restarted
    /// worker rejoins as the same member even when its input topic changed),
    /// or `None` for a dynamic member.
    pub fn kafka_instance(&self, group: &str) -> Option<String> {
        match self {
            Membership::Dynamic => None,
            Membership::Static(id) => Some(kafka_safe(&format!("{id}-{group}"))),
        }
    }
}

/// The instance id of this process, given `service.instance_id`
/// (`configured`) and `service.name`.
pub fn instance_id(configured: Option<&str>, service: &str) -> String {
    choose(std::env::var(ENV).ok().as_deref(), configured, &hostname(), service)
}

/// The pure choice: environment, then config, then `<host>-<service>`.
/// Blank values count as unset.
pub fn choose(env: Option<&str>, configured: Option<&str>, host: &str, service: &str) -> String {
    let set = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    set(env).or_else(|| set(configured)).unwrap_or_else(|| format!("{host}-{service}"))
}

/// The kernel's host name (`HOSTNAME` is a shell variable, not exported to
/// services), else `HOSTNAME`, else `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What Kafka accepts as a `group.instance.id`: `[A-Za-z0-9._-]`, at most
/// 249 characters; anything else becomes `_`.
fn kafka_safe(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(249)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_then_the_config_then_host_and_service() {
        let table: &[(Option<&str>, Option<&str>, &str)] = &[
            (Some("env-1"), Some("cfg-1"), "env-1"),
            (None, Some("cfg-1"), "cfg-1"),
            (Some("  "), Some("cfg-1"), "cfg-1"),
            (None, None, "web7-claims"),
            (Some(""), Some(""), "web7-claims"),
            (Some(" env-2 "), None, "env-2"),
        ];
        for (env, cfg, want) in table {
            assert_eq!(choose(*env, *cfg, "web7", "claims"), *want, "env {env:?} config {cfg:?}");
        }
    }

    #[test]
    fn kafka_instance_ids_are_legal_and_per_group() {
        assert_eq!(Membership::Dynamic.kafka_instance("t"), None);
        let m = Membership::Static("höst 1/claims".into());
        assert_eq!(m.kafka_instance("xact-download").as_deref(), Some("h_st_1_claims-xact-download"));
        let long = Membership::Static("é".repeat(300)).kafka_instance("t").unwrap();
        assert_eq!(long.len(), 249);
        assert_ne!(m.kafka_instance("a"), m.kafka_instance("b"));
    }

    #[test]
    fn the_host_name_is_never_empty() {
        assert!(!hostname().is_empty());
    }
}
