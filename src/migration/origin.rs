//! The `conveyor-origin` header of a mirrored copy:
//! `<transport>/<name>/<partition>@<position>` — the transport (its config
//! name), the entity's name there, and the original's partition and
//! position. Names may contain `/`; the partition and position are after
//! the last one.

use crate::transport::Headers;

/// The header every copy carries.
pub const HEADER: &str = "conveyor-origin";

/// Where a copy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub transport: String,
    pub physical: String,
    pub partition: u32,
    pub position: i64,
}

impl Origin {
    /// The header value.
    pub fn render(transport: &str, physical: &str, partition: u32, position: i64) -> String {
        format!("{transport}/{physical}/{partition}@{position}")
    }

    /// Parses a header value; `None` when it is not one.
    pub fn parse(v: &str) -> Option<Origin> {
        let (transport, rest) = v.split_once('/')?;
        let (physical, at) = rest.rsplit_once('/')?;
        let (partition, position) = at.split_once('@')?;
        if transport.is_empty() || physical.is_empty() {
            return None;
        }
        Some(Origin {
            transport: transport.to_string(),
            physical: physical.to_string(),
            partition: partition.parse().ok()?,
            position: position.parse().ok()?,
        })
    }

    /// The origin a message's headers name, if any.
    pub fn of(h: &Headers) -> Option<Origin> {
        h.get_str(HEADER).and_then(Origin::parse)
    }

    /// Whether it is `transport`'s `physical`.
    pub fn is_from(&self, transport: &str, physical: &str) -> bool {
        self.transport == transport && self.physical == physical
    }
}

/// Whether headers `h` mark a copy from any of `sides` ((transport,
/// name) pairs).
pub fn copy_from(h: &Headers, sides: &[(String, String)]) -> bool {
    match h.get(HEADER) {
        None => false,
        Some(_) => Origin::of(h).is_some_and(|o| sides.iter().any(|(t, p)| o.is_from(t, p))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_back_whatever_the_name() {
        for (t, p, part, pos) in
            [("kafka", "xact-enrichment", 3, 1234), ("local", "a/b.c", 0, 0), ("hubs", "x", 7, i64::MAX)]
        {
            let v = Origin::render(t, p, part, pos);
            assert_eq!(
                Origin::parse(&v),
                Some(Origin { transport: t.into(), physical: p.into(), partition: part, position: pos }),
                "{v}"
            );
        }
        for bad in
            ["", "kafka", "kafka/x", "kafka/x/1", "kafka/x/a@1", "kafka/x/1@b", "/x/1@2", "kafka//1@2", "kafka/x/-1@2"]
        {
            assert_eq!(Origin::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn copies_are_recognised_by_their_side() {
        let mut h = Headers::default();
        assert!(!copy_from(&h, &[("kafka".into(), "t".into())]));
        h.set(HEADER, Origin::render("kafka", "t", 1, 5));
        assert!(copy_from(&h, &[("hubs".into(), "t".into()), ("kafka".into(), "t".into())]));
        assert!(!copy_from(&h, &[("kafka".into(), "other".into())]));
        h.set(HEADER, "garbage");
        assert!(!copy_from(&h, &[("kafka".into(), "t".into())]), "an unreadable origin is not a copy");
    }
}
