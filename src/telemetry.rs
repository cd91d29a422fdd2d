//! Logging: `tracing` with JSON (default) or text output on stderr.
//!
//! Log lines about a message carry `worker`, `message_topic`,
//! `message_partition`, `message_offset` and `message_consumer_group` as
//! top-level fields (the seed pipeline's transport-agnostic names).

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the
/// configured level. Safe to call more than once (later calls do nothing).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
