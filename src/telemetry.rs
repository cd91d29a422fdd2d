//! Logging: `tracing` with JSON (default) or text output on stderr.
//!
//! Log lines about a message carry `worker`, `message_topic`,
//! `message_partition`, `message_offset` and `message_consumer_group` as
//! top-level fields (the seed pipeline's transport-agnostic names).

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the
/// configured level. Safe to call more than once (later calls do nothing).
/// The Azure SDK logs every link attach at `info`; those go to `warn` unless
/// the filter names them.
pub fn init(cfg: &LogConfig) {
    let mut text = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| cfg.level.clone());
    if !text.contains("azure") && !text.contains("fe2o3") {
        text.push_str(
            ",azure_messaging_eventhubs=warn,azure_core_amqp=warn,azure_core=warn,azure_identity=warn,fe2o3_amqp=warn",
        );
    }
    let filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
