//! Logging: `tracing` on stderr, as JSON (one object per line, for log
//! shippers) or as text for people. With `service.log.format: auto` (the
//! default), a terminal gets coloured text and anything else (a pipe, a
//! file, journald) gets JSON; an explicit `json` or `text` always wins
//! (`text` is coloured only on a terminal).
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
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match chosen(cfg.format, terminal) {
        LogFormat::Json | LogFormat::Auto => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
        }
        LogFormat::Text => builder.compact().with_ansi(terminal).try_init(),
    };
}

/// The format of the log: the configured one, or for `auto` text on a
/// terminal and JSON elsewhere.
pub fn chosen(configured: LogFormat, terminal: bool) -> LogFormat {
    match configured {
        LogFormat::Auto if terminal => LogFormat::Text,
        LogFormat::Auto => LogFormat::Json,
        explicit => explicit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_format_wins_and_unset_follows_the_terminal() {
        let table = [
            (LogFormat::Auto, true, LogFormat::Text),
            (LogFormat::Auto, false, LogFormat::Json),
            (LogFormat::Json, true, LogFormat::Json),
            (LogFormat::Json, false, LogFormat::Json),
            (LogFormat::Text, true, LogFormat::Text),
            (LogFormat::Text, false, LogFormat::Text),
        ];
        for (configured, terminal, want) in table {
            assert_eq!(chosen(configured, terminal), want, "{configured:?} on a terminal: {terminal}");
        }
    }
}
