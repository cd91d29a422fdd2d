//! Command-line interface.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Exit code for a bad config or bad usage (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(name = "conveyor", version, about = "Runs a multi-stage event pipeline from a YAML topology")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until SIGTERM/SIGINT, then drain.
    Run(ConfigArg),
    /// Validate a config file and print its warnings; exit 64 when invalid.
    Check(CheckArgs),
    /// Measure embedded pass-through throughput against a baseline copy loop.
    Bench(crate::bench::BenchArgs),
    /// Print the topology as a diagram (Mermaid or Graphviz DOT).
    Graph {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// `mermaid` or `dot`.
        #[arg(long, default_value = "mermaid")]
        format: String,
    },
    /// Print the messages of any entity, on any transport, as no consumer
    /// group (like `kcat -C`; through the daemon for an embedded entity it
    /// holds).
    Tail(TailArgs),
    /// Write messages from standard input to any entity and print where
    /// each went (like `kcat -P`; through the daemon for an embedded entity
    /// it holds).
    Produce(ProduceArgs),
    /// Inspect and redrive dead-letter entities.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Check and follow entities moving to another transport (`migrate:`).
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Local stand-ins for cloud services, for development and tests.
    #[cfg(feature = "eventhubs")]
    #[command(subcommand)]
    Dev(DevCommand),
}

#[cfg(feature = "eventhubs")]
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Run the local Event Hubs test broker (AMQP 1.0, Event Hubs dialect; any
    /// hub is created on first use; any SAS key is accepted). Connect with
    /// `Endpoint=sb://HOST:PORT;SharedAccessKeyName=k;SharedAccessKey=x;UseDevelopmentEmulator=true`.
    Eventhubs(conveyor_eh_broker::Args),
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-letter envelopes: when, origin, worker, category, error.
    Inspect {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// The dead-letter entity.
        #[arg(long)]
        entity: String,
        /// Most envelopes to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON envelope per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-produce dead-lettered messages to their origin (or `--to`).
    Redrive {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// The dead-letter entity to read.
        #[arg(long)]
        from: String,
        /// Target entity instead of each envelope's origin.
        #[arg(long)]
        to: Option<String>,
        /// Only envelopes matching `key=value` (category, worker, origin, type); repeatable.
        #[arg(long)]
        filter: Vec<String>,
        /// Most messages per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Show what would be redriven; produce and commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Consumer group that remembers how far redrive got.
        #[arg(long, default_value = "conveyor-redrive")]
        group: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Compare both sides of a migrating entity (counts per partition, an
    /// order-sensitive hash per key, the first difference of each kind).
    /// Writes nothing. Exit 0 equal, 1 different, 2 a side unreachable.
    Verify {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// The migrating entity.
        #[arg(long)]
        entity: String,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Per migrating entity: phase, mirror lag, what consumers have left on
    /// the old side, their lag on the new side, the fence.
    Status {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(short, long, default_value = "config.yaml")]
    pub config: PathBuf,
    /// The entity to read (its name in the config).
    #[arg(long)]
    pub entity: String,
    /// Start at the first stored message of each partition.
    #[arg(long, conflicts_with = "last")]
    pub from_beginning: bool,
    /// Start at the last N messages of each partition (default 10).
    #[arg(long)]
    pub last: Option<u64>,
    /// Keep waiting for new messages until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// `json` (one object per line), `text` (for people) or `raw` (payloads).
    #[arg(long, value_enum, default_value = "text")]
    pub format: crate::commands::tail::Format,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[arg(short, long, default_value = "config.yaml")]
    pub config: PathBuf,
    /// The entity to write (its name in the config).
    #[arg(long)]
    pub entity: String,
    /// Key of every message.
    #[arg(long)]
    pub key: Option<String>,
    /// A header `name=value` on every message; repeatable.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// One JSON message per line (otherwise the whole input is one message).
    #[arg(long)]
    pub ndjson: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The topology file.
    #[arg(short, long, default_value = "config.yaml")]
    pub config: PathBuf,
    /// The config it replaces: also check that every migration moves
    /// forward one phase at a time (or back with `rollback: true`).
    #[arg(long)]
    pub previous: Option<PathBuf>,
    /// Validate the file only: do not contact the brokers it names (for
    /// linting configs in CI, or with the brokers out of reach).
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The topology file.
    #[arg(short, long, default_value = "config.yaml")]
    pub config: PathBuf,
}
