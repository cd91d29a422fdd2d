//! [`Secret`]: a config string that never prints.
//!
//! `Debug`, `Display` and serialization show `***`, so a secret cannot reach
//! a log line, an error, `/readyz` or a metric by accident. The one exception
//! is [`fingerprint_json`]: inside it, secrets serialize as a salted SHA-256
//! of their value, so a config's fingerprint changes when a password or
//! connection string changes (a reload then restarts what uses it) without
//! any list of secret fields to keep up to date. The hash is never printed
//! either: fingerprints are compared, not shown.

use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// A string that never prints: `Debug`, `Display` and serialization show
/// `***`. Use [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

thread_local! {
    static HASH_SECRETS: Cell<bool> = const { Cell::new(false) };
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if HASH_SECRETS.with(Cell::get) {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(b"conveyor-secret-fingerprint\0");
            h.update(self.0.as_bytes());
            let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            s.serialize_str(&hex)
        } else {
            s.serialize_str("***")
        }
    }
}

/// Restores the previous mode however the serialization ends.
struct Mode(bool);
impl Drop for Mode {
    fn drop(&mut self) {
        HASH_SECRETS.with(|c| c.set(self.0));
    }
}

/// `t` as JSON bytes with every [`Secret`] in it replaced by a hash of its
/// value (for fingerprints only: compared, never printed).
pub fn fingerprint_json<T: Serialize + ?Sized>(t: &T) -> Vec<u8> {
    let _restore = Mode(HASH_SECRETS.with(|c| c.replace(true)));
    // a config model always serializes (maps have string keys)
    serde_json::to_vec(t).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Holder {
        user: String,
        password: Secret,
    }

    #[test]
    fn prints_stars_but_fingerprints_the_value() {
        let a = Holder { user: "u".into(), password: Secret::new("hunter2") };
        let b = Holder { user: "u".into(), password: Secret::new("hunter3") };
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"user":"u","password":"***"}"#);
        assert_eq!(format!("{:?} {}", a.password, a.password), "\"***\" ***");
        let (fa, fb) = (fingerprint_json(&a), fingerprint_json(&b));
        assert_ne!(fa, fb, "a changed secret changes the fingerprint");
        assert_eq!(fa, fingerprint_json(&a), "stable");
        let text = String::from_utf8(fa).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("***"), "{text}");
        // the mode ends with the call
        assert!(serde_json::to_string(&a).unwrap().contains("***"));
    }
}
