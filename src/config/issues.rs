//! The collector of configuration problems: every error and warning found
//! while loading one file, each located by line and column through the
//! [`PathIndex`], plus what the checks need to know about the load itself
//! (the injected environment, and which section entries did not parse, so a
//! broken transport does not also produce "unknown transport" for every
//! entity that names it).

use super::ConfigIssue;
use super::locate::{PathIndex, Pos};
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub(crate) struct Issues<'e> {
    pub file: PathBuf,
    pub index: PathIndex,
    pub errors: Vec<ConfigIssue>,
    pub warnings: Vec<ConfigIssue>,
    env: &'e dyn Fn(&str) -> Option<String>,
    /// `(section, name)` of entries present in the file that did not parse.
    unparsed: BTreeSet<(String, String)>,
}

impl<'e> Issues<'e> {
    pub fn new(file: PathBuf, env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Issues {
            file,
            index: PathIndex::default(),
            errors: Vec::new(),
            warnings: Vec::new(),
            env,
            unparsed: BTreeSet::new(),
        }
    }

    fn issue(&self, path: &[&str], message: String) -> ConfigIssue {
        let owned: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        let pos = self.index.find(&owned).map(|Pos { line, column }| (line, column));
        ConfigIssue { file: self.file.clone(), pos, path: owned.join("."), message }
    }

    /// An error at `path` (located by its line).
    pub fn error(&mut self, path: &[&str], message: impl Into<String>) {
        let i = self.issue(path, message.into());
        self.errors.push(i);
    }

    /// An error at an explicit position (a problem the path index cannot see).
    pub fn error_at(&mut self, pos: Option<(usize, usize)>, message: impl Into<String>) {
        self.errors.push(ConfigIssue { file: self.file.clone(), pos, path: String::new(), message: message.into() });
    }

    /// A warning at `path`: valid, but probably not what was meant.
    pub fn warn(&mut self, path: &[&str], message: impl Into<String>) {
        let i = self.issue(path, message.into());
        self.warnings.push(i);
    }

    /// An environment variable, from the environment the load was given.
    pub fn env(&self, var: &str) -> Option<String> {
        (self.env)(var)
    }

    /// Whether `section.name` is in the file but did not parse (its own
    /// error is reported; references to it are not reported again).
    pub fn unparsed(&self, section: &str, name: &str) -> bool {
        self.unparsed.contains(&(section.to_string(), name.to_string()))
    }

    /// Deserializes `v` at `path`, recording a located error on failure.
    pub fn de<T: DeserializeOwned>(&mut self, path: &[String], v: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut full = path.to_vec();
                for seg in e.path().iter() {
                    use serde_path_to_error::Segment;
                    match seg {
                        Segment::Seq { index } => full.push(index.to_string()),
                        Segment::Map { key } => full.push(key.clone()),
                        Segment::Enum { variant } => full.push(variant.clone()),
                        Segment::Unknown => {}
                    }
                }
                let msg = e.into_inner().to_string();
                let refs: Vec<&str> = full.iter().map(String::as_str).collect();
                // unknown fields: point at the offending key itself and suggest
                if let Some(field) = between(&msg, "unknown field `", "`") {
                    let mut at = refs.clone();
                    if at.last().copied() != Some(field) {
                        at.push(field);
                    }
                    let expected = expected_list(&msg);
                    let hint = suggest(field, expected.iter().map(String::as_str));
                    self.error(&at, format!("unknown field{hint}; expected one of: {}", expected.join(", ")));
                } else if let Some(variant) = between(&msg, "unknown variant `", "`") {
                    let expected = expected_list(&msg);
                    let hint = suggest(variant, expected.iter().map(String::as_str));
                    self.error(
                        &refs,
                        format!("unknown kind {variant:?}{hint}; expected one of: {}", expected.join(", ")),
                    );
                } else {
                    self.error(&refs, strip_location(&msg));
                }
                None
            }
        }
    }

    /// Deserializes every entry of a section mapping separately, so one bad
    /// entry does not hide the errors of the next.
    pub fn section<T: DeserializeOwned>(&mut self, key: &str, v: Value, into: &mut BTreeMap<String, T>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    let Some(name) = k.as_str().map(str::to_string) else {
                        self.error(&[key], "entry names must be strings");
                        continue;
                    };
                    match self.de::<T>(&[key.to_string(), name.clone()], v) {
                        Some(t) => {
                            into.insert(name, t);
                        }
                        None => {
                            self.unparsed.insert((key.to_string(), name));
                        }
                    }
                }
            }
            Value::Null => {}
            _ => self.error(&[key], "must be a mapping of names to definitions"),
        }
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)?;
    Some(&s[i..i + j])
}

fn expected_list(msg: &str) -> Vec<String> {
    let Some(i) = msg.find("expected ") else {
        return Vec::new();
    };
    msg[i..].split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// `msg` without serde_yaml's ` at line L column C` suffix (the issue has
/// its own position).
pub fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// ` (did you mean "x"?)` when a known name is close to `name`.
pub fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(d, k)| *d <= (k.len().max(name.len()) / 3).max(2))
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

/// `at` followed by `more` (a path below `at`).
pub fn join<'a>(at: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    at.iter().chain(more).copied().collect()
}
