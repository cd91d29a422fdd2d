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
    Check(ConfigArg),
    /// Measure embedded pass-through throughput against a baseline copy loop.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The topology file.
    #[arg(short, long, default_value = "config.yaml")]
    pub config: PathBuf,
}
