//! Durations written as `30s`, `5m`, `250ms`, `1h 30m` (humantime syntax).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `30s`, `5m` or `250ms`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                humantime::parse_duration(v.trim())
                    .map(Dur)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e} (write e.g. `30s`, `5m`, `250ms`)")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!("duration {v} has no unit (write e.g. `{v}s` or `{v}ms`)")))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!("duration {v} has no unit (write e.g. `{v}s`)")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let d: Dur = serde_yaml::from_str("30s").unwrap();
        assert_eq!(d.get(), Duration::from_secs(30));
        let d: Dur = serde_yaml::from_str("1h 30m").unwrap();
        assert_eq!(d.get(), Duration::from_secs(5400));
        let d: Dur = serde_yaml::from_str("250ms").unwrap();
        assert_eq!(d.get(), Duration::from_millis(250));
    }

    #[test]
    fn rejects_unitless_and_garbage() {
        let e = serde_yaml::from_str::<Dur>("30").unwrap_err().to_string();
        assert!(e.contains("has no unit"), "{e}");
        let e = serde_yaml::from_str::<Dur>("soon").unwrap_err().to_string();
        assert!(e.contains("invalid duration"), "{e}");
    }
}
