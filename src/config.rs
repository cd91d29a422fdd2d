//! Loading and validating the YAML topology.
//!
//! Loading is: read the file → interpolate `${VAR}` / `${VAR:-default}` →
//! parse YAML → deserialize each section entry on its own (so one bad worker
//! does not hide the errors of the next) → cross-check references. Every
//! problem found is reported at once, each with the file, line and column
//! and the YAML path it concerns, e.g.
//!
//! ```text
//! config.yaml:14:5: workers.orders-forward.input: unknown entity "orders.inn" (did you mean "orders.in"?)
//! ```

mod azure;
mod duration;
mod interpolate;
mod issues;
mod locate;
mod migrate;
mod model;
mod schema;
mod secret;
mod stage;
mod transition;
mod validate;

pub use azure::{BlobLocation, EntraCredential};
pub use duration::Dur;
pub use migrate::{MigrateConfig, Phase};
pub use model::*;
pub use schema::*;
pub use secret::{Secret, fingerprint_json};
pub use stage::*;

use issues::{Issues, strip_location, suggest};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    pub pos: Option<(usize, usize)>,
    /// YAML path, segments joined with `.` (`workers.w1.input`).
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.pos {
            write!(f, ":{l}:{c}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file (never empty).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(f, "{n} problem{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for i in &self.issues {
            writeln!(f, "  {i}")?;
        }
        Ok(())
    }
}

/// A warning: valid, but probably not what was meant.
pub type ConfigWarning = ConfigIssue;

/// A loaded, validated config plus what was noticed on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
    /// FNV-1a hash of the interpolated text: identifies a config generation.
    pub hash: u64,
}

/// Reads, interpolates (from the process environment) and validates `path`.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = read(path)?;
    load_str(&text, path, |v| std::env::var(v).ok())
}

/// Like [`load_file`], for text already in memory; `file` is only used in
/// messages (paths in the config stay as written). `env` is the environment
/// for `${VAR}` and for every check that looks at a variable.
pub fn load_str(text: &str, file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    load(text, file, &env, None)
}

/// Like [`load_str`], for a config that replaces `previous` (a reload): also
/// checks that every migration moves forward one phase at a time, and back
/// only with `rollback: true`.
pub fn load_str_after(
    text: &str,
    file: &Path,
    env: impl Fn(&str) -> Option<String>,
    previous: &Config,
) -> Result<Loaded, ConfigError> {
    load(text, file, &env, Some(previous))
}

/// Like [`load_file`], for a config that replaces `previous`.
pub fn load_file_after(path: &Path, previous: &Config) -> Result<Loaded, ConfigError> {
    let text = read(path)?;
    load_str_after(&text, path, |v| std::env::var(v).ok(), previous)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        issues: vec![ConfigIssue {
            file: path.to_path_buf(),
            pos: None,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })
}

fn load(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    previous: Option<&Config>,
) -> Result<Loaded, ConfigError> {
    let mut v = Issues::new(file.to_path_buf(), env);
    let text = match interpolate::interpolate(text, env) {
        Ok(t) => t,
        Err(missing) => {
            for m in missing {
                v.error_at(
                    Some((m.line, m.column)),
                    format!(
                        "environment variable {} is not set (write ${{{}:-default}} to give a default)",
                        m.var, m.var
                    ),
                );
            }
            return Err(ConfigError { issues: v.errors });
        }
    };
    v.index = locate::PathIndex::build(&text);
    if let Some(second) = v.index.second_document() {
        v.error_at(
            Some((second.line, second.column)),
            "a second YAML document starts here (`---`); a config file holds one document",
        );
        return Err(ConfigError { issues: v.errors });
    }
    let root: Value = match serde_yaml::from_str(&text) {
        Ok(root) => root,
        Err(e) => {
            let (pos, msg) = match (e.location(), v.index.syntax_error()) {
                (Some(l), _) => (Some((l.line(), l.column())), strip_location(&e.to_string())),
                // serde_yaml has no position for some syntax errors (one after
                // the first document's end reads as "more than one document"):
                // the indexer's parser says where and what
                (None, Some((p, info))) => (Some((p.line, p.column)), info.clone()),
                (None, None) => (None, strip_location(&e.to_string())),
            };
            v.error_at(pos, format!("not valid YAML: {msg}"));
            return Err(ConfigError { issues: v.errors });
        }
    };
    let Value::Mapping(root) = root else {
        let at = v.index.content().or(v.index.syntax_error().map(|(p, _)| *p)).map(|p| (p.line, p.column));
        v.error_at(at, "the file must be a mapping with `transports`, `entities` and `workers`");
        return Err(ConfigError { issues: v.errors });
    };

    let mut service = ServiceConfig::default();
    let mut transports = BTreeMap::new();
    let mut entities = BTreeMap::new();
    let mut sources = BTreeMap::new();
    let mut workers = BTreeMap::new();
    let mut schema_registries = BTreeMap::new();
    let mut simulation = None;
    let mut seen = BTreeSet::new();
    for (n, (k, value)) in root.into_iter().enumerate() {
        let Some(key) = k.as_str().map(str::to_string) else {
            // a key the index could not read (its parser stopped earlier
            // than serde_yaml's) is where that parser stopped
            // the index's order of keys holds only where it read them all
            let at = if v.index.complete() { v.index.top_key(n) } else { None }
                .or_else(|| locate::unusual_top_key(&text))
                .or(v.index.syntax_error().map(|(p, _)| *p))
                .map(|p| (p.line, p.column));
            v.error_at(at, "top-level keys must be strings");
            continue;
        };
        seen.insert(key.clone());
        match key.as_str() {
            "service" => {
                if let Some(s) = v.de::<ServiceConfig>(std::slice::from_ref(&key), value) {
                    service = s;
                }
            }
            "transports" => v.section(&key, value, &mut transports),
            "entities" => v.section(&key, value, &mut entities),
            "sources" => v.section(&key, value, &mut sources),
            "workers" => v.section(&key, value, &mut workers),
            "schema_registries" => v.section(&key, value, &mut schema_registries),
            "simulation" => simulation = v.de::<SimulationConfig>(std::slice::from_ref(&key), value),
            other => {
                let hint = suggest(
                    other,
                    ["service", "transports", "entities", "sources", "workers", "schema_registries", "simulation"],
                );
                v.error(&[other], format!("unknown section{hint}"));
            }
        }
    }
    for required in ["transports", "entities"] {
        if !seen.contains(required) {
            v.error(&[], format!("missing section `{required}`"));
        }
    }
    let config = Config { service, transports, entities, sources, schema_registries, workers, simulation };
    validate::validate(&config, &mut v);
    if let Some(previous) = previous
        && v.errors.is_empty()
    {
        transition::transitions(previous, &config, &mut v);
    }
    if v.errors.is_empty() {
        Ok(Loaded { config, warnings: v.warnings, hash: fnv1a(text.as_bytes()) })
    } else {
        Err(ConfigError { issues: v.errors })
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
