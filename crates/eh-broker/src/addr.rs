//! Link addresses and receive filters.
//!
//! Addresses are parsed from their *path* only: the scheme and authority are
//! dropped (`amqps://host/hub/...` from the Rust SDK, `amqps://host:port/hub/...` from
//! Python, `sb://...` in CBS names), and segments are matched case-insensitively.
//!
//! | path | meaning |
//! |---|---|
//! | `$cbs`, `$management` (also as last segment) | request/response nodes |
//! | `hub` / `hub/Partitions/N` | send target |
//! | `hub/ConsumerGroups/cg/Partitions/N` | receive source |
//!
//! The selector filter (`apache.org:selector-filter:string`, described with either the
//! numeric code `0x0000468C00000004` or the symbolic name) holds text like
//! `amqp.annotation.x-opt-offset > '-1'`; `>`/`>=` on `x-opt-offset`,
//! `x-opt-sequence-number` and `x-opt-enqueued-time` (unix ms) are understood, plus
//! the values `-1` (start of the partition) and `@latest`. No filter = latest.

use fe2o3_amqp_types::messaging::Source;
use fe2o3_amqp_types::primitives::Value;

use crate::state::StartPos;

pub(crate) const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    Cbs,
    Management,
}

impl Node {
    pub fn address(self) -> &'static str {
        match self {
            Node::Cbs => "$cbs",
            Node::Management => "$management",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Path {
    Node(Node),
    Send { hub: String, partition: Option<String> },
    Receive { hub: String, consumer_group: String, partition: String },
    Other(String),
}

/// The path part of an address (scheme and authority removed, no leading `/`).
pub(crate) fn path_of(address: &str) -> &str {
    let rest = match address.find("://") {
        Some(i) => {
            let after = &address[i + 3..];
            match after.find('/') {
                Some(j) => &after[j..],
                None => "",
            }
        }
        None => address,
    };
    rest.trim_start_matches('/').trim_end_matches('/')
}

pub(crate) fn parse(address: &str) -> Path {
    let path = path_of(address);
    let segs: Vec<&str> = path.split('/').collect();
    let eq = |s: &str, w: &str| s.eq_ignore_ascii_case(w);
    if let Some(last) = segs.last() {
        if eq(last, "$cbs") {
            return Path::Node(Node::Cbs);
        }
        if eq(last, "$management") {
            return Path::Node(Node::Management);
        }
    }
    match segs.as_slice() {
        [hub] if !hub.is_empty() => Path::Send { hub: (*hub).to_owned(), partition: None },
        [hub, p, id] if eq(p, "partitions") && !hub.is_empty() => {
            Path::Send { hub: (*hub).to_owned(), partition: Some((*id).to_owned()) }
        }
        [hub, c, cg, p, id] if eq(c, "consumergroups") && eq(p, "partitions") && !hub.is_empty() => {
            Path::Receive { hub: (*hub).to_owned(), consumer_group: (*cg).to_owned(), partition: (*id).to_owned() }
        }
        _ => Path::Other(path.to_lowercase()),
    }
}

/// Key under which a reply link is registered / a `reply_to` is looked up.
pub(crate) fn reply_key(address: &str) -> String {
    match parse(address) {
        Path::Node(n) => n.address().to_owned(),
        _ => path_of(address).to_lowercase(),
    }
}

/// Selector text of a receive source, if any.
pub(crate) fn selector_text(source: &Source) -> Option<String> {
    let filter = source.filter.as_ref()?;
    let value = filter.iter().find(|(k, _)| k.0.eq_ignore_ascii_case(SELECTOR_FILTER)).map(|(_, v)| v)?;
    match value {
        Value::Described(d) => match &d.value {
            Value::String(s) => Some(s.clone()),
            Value::Symbol(s) => Some(s.0.clone()),
            _ => None,
        },
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A selector the broker does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SelectorError(String);

/// Parses a selector expression into a start position.
pub(crate) fn parse_selector(text: &str) -> Result<StartPos, SelectorError> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("amqp.annotation.")
        .ok_or_else(|| SelectorError(format!("unsupported selector {text:?}")))?;
    let (field, rest) = ["x-opt-sequence-number", "x-opt-enqueued-time", "x-opt-offset"]
        .iter()
        .find_map(|f| rest.strip_prefix(f).map(|r| (*f, r)))
        .ok_or_else(|| SelectorError(format!("unsupported selector field in {text:?}")))?;
    let rest = rest.trim_start();
    let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (false, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (true, r)
    } else {
        return Err(SelectorError(format!("unsupported selector operator in {text:?}")));
    };
    let rest = rest.trim();
    let value = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')).unwrap_or(rest).trim();
    if value == "@latest" {
        return Ok(StartPos::Latest);
    }
    let number: i64 =
        value.parse().map_err(|_| SelectorError(format!("selector value {value:?} is not a number in {text:?}")))?;
    Ok(match field {
        "x-opt-offset" if number < 0 => StartPos::Earliest,
        "x-opt-offset" => StartPos::Offset { value: number, inclusive },
        "x-opt-sequence-number" if number < 0 && !inclusive => StartPos::Earliest,
        "x-opt-sequence-number" => StartPos::Sequence { value: number, inclusive },
        _ => StartPos::EnqueuedTime { ms: number, inclusive },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse("$cbs"), Path::Node(Node::Cbs));
        assert_eq!(parse("amqps://h/$management"), Path::Node(Node::Management));
        assert_eq!(parse("sb://127.0.0.1:5672/hub/$Management"), Path::Node(Node::Management));
        assert_eq!(parse("amqps://ns.servicebus.windows.net/Hub1"), Path::Send { hub: "Hub1".into(), partition: None });
        assert_eq!(
            parse("amqps://127.0.0.1:5672/hub/partitions/2"),
            Path::Send { hub: "hub".into(), partition: Some("2".into()) }
        );
        assert_eq!(
            parse("amqps://h/hub/ConsumerGroups/$Default/Partitions/0"),
            Path::Receive { hub: "hub".into(), consumer_group: "$Default".into(), partition: "0".into() }
        );
        assert_eq!(parse("hub/x/y"), Path::Other("hub/x/y".into()));
        assert_eq!(reply_key("rust_amqp_cbs"), "rust_amqp_cbs");
        assert_eq!(reply_key("amqps://h/$CBS"), "$cbs");
    }

    #[test]
    fn selectors() {
        assert_eq!(parse_selector("amqp.annotation.x-opt-offset > '-1'"), Ok(StartPos::Earliest));
        assert_eq!(parse_selector("amqp.annotation.x-opt-offset > '@latest'"), Ok(StartPos::Latest));
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset >='120'"),
            Ok(StartPos::Offset { value: 120, inclusive: true })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-sequence-number >'7'"),
            Ok(StartPos::Sequence { value: 7, inclusive: false })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-enqueued-time > '1700000000000'"),
            Ok(StartPos::EnqueuedTime { ms: 1_700_000_000_000, inclusive: false })
        );
        assert!(parse_selector("amqp.annotation.x-opt-offset > 'abc'").is_err());
        assert!(parse_selector("foo = 1").is_err());
    }
}
