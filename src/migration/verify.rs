//! The parity check (`conveyor migrate verify`): reads both sides of a
//! migrating entity as no consumer group (`transport::scan`), up to the ends
//! they had when it began, writes nothing, and compares what the old side
//! holds with the copies on the new side:
//!
//! - **counts** per old partition (copies counted by their origin);
//! - **an order-sensitive hash per key** of (key, payload, headers without
//!   `conveyor-origin`, as a sorted list: Event Hubs keeps properties as a
//!   map) — over the old side in position order, over the copies in the
//!   order the new side holds them;
//! - **the first missing, extra, changed and out-of-order example**, with
//!   positions.
//!
//! A transcoding migration (`migrate.transcode`) changes the framing on
//! purpose, so there ([`Compare::Records`]) the hash covers the Avro record
//! without its framing (the Confluent header, the Azure content type): the
//! same record under another schema id is equal, another record is not.
//!
//! A copy written twice (the mirror delivers at least once) is counted as a
//! duplicate and compared once; it is not a difference. Messages produced on
//! the new side itself (after a cut-over) carry no origin and are counted as
//! `native`, not compared. Old-side messages that are themselves copies from
//! the new side (an earlier mirror the other way) are not expected there.

use super::origin::Origin;
use crate::transport::Headers;
use bytes::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// One message as the check sees it (kept small: a check holds every
/// message of both sides).
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: u32,
    pub position: i64,
    pub key: Option<Bytes>,
    /// Hash of key, payload and headers other than the origin.
    pub digest: u64,
    pub copy: Copied,
}

/// Whether a message is a mirrored copy, and of what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// An original.
    No,
    /// A copy of the old side's message at this partition and position.
    FromOld { partition: u32, position: i64 },
    /// A copy from the new side (or from elsewhere): not the old side's.
    Other,
}

/// What is compared of a message's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Key, payload and headers, byte for byte.
    Bytes,
    /// Key, the Avro record without its framing, and the headers but the
    /// content type (a transcoding migration).
    Records,
}

/// The payload and headers a [`Compare`] hashes.
fn content(m: &crate::transport::PipelineMessage, how: Compare) -> (&[u8], Headers) {
    use crate::schema::wire;
    match how {
        Compare::Bytes => (&m.payload, m.headers.clone()),
        Compare::Records => {
            let azure = m.headers.get_str(wire::CONTENT_TYPE).is_some_and(|ct| wire::azure_schema_id(ct).is_ok());
            let record = match wire::confluent_split(&m.payload) {
                Ok((_, body)) if !azure => body,
                _ => &m.payload,
            };
            let mut h = m.headers.clone();
            h.0.retain(|(n, _)| n != wire::CONTENT_TYPE);
            // a copy must be Azure-framed: one that is not was never
            // transcoded (it differs from its original)
            if Origin::of(&m.headers).is_some() && !azure {
                h.set("conveyor-verify-untranscoded", "1");
            }
            (record, h)
        }
    }
}

impl Rec {
    /// `m` as read; `old_side` is the old side's (transport, name).
    pub fn of(m: &crate::transport::PipelineMessage, old_side: (&str, &str), how: Compare) -> Rec {
        let copy = match Origin::of(&m.headers) {
            None => Copied::No,
            Some(o) if o.is_from(old_side.0, old_side.1) => {
                Copied::FromOld { partition: o.partition, position: o.position }
            }
            Some(_) => Copied::Other,
        };
        Rec {
            partition: m.partition,
            position: m.position,
            key: m.key.clone(),
            digest: {
                let (payload, headers) = content(m, how);
                digest(m.key.as_deref(), payload, &headers)
            },
            copy,
        }
    }
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    let h = bytes.iter().fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3));
    // a length marker keeps ("ab","c") apart from ("a","bc")
    (h ^ bytes.len() as u64).wrapping_mul(0x100000001b3)
}

const FNV0: u64 = 0xcbf29ce484222325;

/// The content hash of a message: key, payload, and headers other than the
/// origin, sorted.
pub fn digest(key: Option<&[u8]>, payload: &[u8], headers: &Headers) -> u64 {
    let mut h = fnv(FNV0, &[key.is_some() as u8]);
    h = fnv(h, key.unwrap_or_default());
    h = fnv(h, payload);
    let mut hs: Vec<(&str, &[u8])> =
        headers.iter().filter(|(n, _)| *n != super::origin::HEADER).map(|(n, v)| (n, v.as_ref())).collect();
    hs.sort();
    for (n, v) in hs {
        h = fnv(h, n.as_bytes());
        h = fnv(h, v);
    }
    h
}

/// An example of a difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// Where the original is (old side).
    pub old_partition: Option<u32>,
    pub old_position: Option<i64>,
    /// Where the copy is (new side).
    pub new_partition: Option<u32>,
    pub new_position: Option<i64>,
    /// The key, as text (lossy), if any.
    pub key: Option<String>,
}

/// How many of one kind of difference, and the first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub count: u64,
    pub first: Option<Example>,
}

impl Finding {
    fn add(&mut self, e: Example) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(e);
        }
    }
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Both sides hold the same messages, per key in the same order.
    pub equal: bool,
    /// Messages on the old side expected on the new one, per partition.
    pub old_counts: BTreeMap<u32, u64>,
    /// Distinct copies on the new side, per old partition.
    pub copy_counts: BTreeMap<u32, u64>,
    /// Copies written more than once (same origin, same content).
    pub duplicates: u64,
    /// Messages produced on the new side itself (not compared).
    pub native: u64,
    /// Copies of old messages newer than the old side's snapshot (not
    /// compared).
    pub later: u64,
    /// Copies of messages the old side no longer stores (not compared).
    pub expired: u64,
    /// Keys compared, and those whose order-sensitive hashes differ.
    pub keys: u64,
    pub keys_differing: u64,
    /// Originals without a copy.
    pub missing: Finding,
    /// Copies of messages the old side does not hold.
    pub extra: Finding,
    /// Copies whose content differs from the original.
    pub changed: Finding,
    /// Copies of one key in another order than the originals.
    pub out_of_order: Finding,
}

fn key_text(k: &Option<Bytes>) -> Option<String> {
    k.as_ref().map(|k| crate::text::clip_bytes(k, 64))
}

/// The per-key sequence a message belongs to — its key, or, without one,
/// its partition (order is only defined within one) — as a hash.
fn seq_key(k: &Option<Bytes>, partition: u32) -> u64 {
    match k {
        Some(k) => fnv(fnv(FNV0, b"k"), k),
        None => fnv(fnv(FNV0, b"p"), &partition.to_le_bytes()),
    }
}

/// Compares the old side (`old`, any order, read over `old_extents`: per
/// partition its earliest stored position and its end) with the new side
/// (`new`, any order, read afterwards). Copies of old messages at or past
/// those ends are newer than the old snapshot (`later`), copies of messages
/// the old side no longer stores are `expired`; neither is compared. Pure.
pub fn compare(old: &[Rec], old_extents: &BTreeMap<u32, (i64, i64)>, new: &[Rec]) -> Report {
    let mut r = Report::default();
    // old-side messages that are copies from the new side are not expected there
    let mut old: Vec<&Rec> = old.iter().filter(|m| m.copy != Copied::Other).collect();
    old.sort_by_key(|m| (m.partition, m.position));
    let mut new: Vec<&Rec> = new.iter().collect();
    new.sort_by_key(|m| (m.partition, m.position));
    let original = |at: (u32, i64)| old.binary_search_by_key(&at, |m| (m.partition, m.position)).ok().map(|i| old[i]);
    // per key: the fold of digests in order, and (for copies) the last origin seen
    let mut old_hash: HashMap<u64, u64> = HashMap::new();
    for m in &old {
        *r.old_counts.entry(m.partition).or_default() += 1;
        let h = old_hash.entry(seq_key(&m.key, m.partition)).or_insert(FNV0);
        *h = fnv(*h, &m.digest.to_le_bytes());
    }
    let mut seen: HashMap<(u32, i64), u64> = HashMap::new();
    let mut new_hash: HashMap<u64, u64> = HashMap::new();
    let mut last_origin: HashMap<u64, (u32, i64)> = HashMap::new();
    for c in &new {
        let Copied::FromOld { partition: op, position: opos } = c.copy else {
            r.native += 1;
            continue;
        };
        match old_extents.get(&op) {
            Some((_, end)) if opos >= *end => {
                r.later += 1;
                continue;
            }
            Some((earliest, _)) if opos < *earliest => {
                r.expired += 1;
                continue;
            }
            _ => {}
        }
        let at = (op, opos);
        let example = |orig: Option<&Rec>| Example {
            old_partition: Some(op),
            old_position: Some(opos),
            new_partition: Some(c.partition),
            new_position: Some(c.position),
            key: key_text(&orig.map_or(c.key.clone(), |m| m.key.clone())),
        };
        if let Some(d) = seen.get(&at) {
            if *d == c.digest {
                r.duplicates += 1;
            } else {
                r.changed.add(example(original(at)));
            }
            continue;
        }
        seen.insert(at, c.digest);
        let Some(orig) = original(at) else {
            r.extra.add(example(None));
            continue;
        };
        *r.copy_counts.entry(op).or_default() += 1;
        if orig.digest != c.digest {
            r.changed.add(example(Some(orig)));
        }
        // the sequence of the original's key (a key-less copy follows its original's partition)
        let k = seq_key(&orig.key, orig.partition);
        if let Some(prev) = last_origin.insert(k, at)
            && prev > at
        {
            r.out_of_order.add(example(Some(orig)));
        }
        let h = new_hash.entry(k).or_insert(FNV0);
        *h = fnv(*h, &c.digest.to_le_bytes());
    }
    for m in &old {
        if !seen.contains_key(&(m.partition, m.position)) {
            r.missing.add(Example {
                old_partition: Some(m.partition),
                old_position: Some(m.position),
                new_partition: None,
                new_position: None,
                key: key_text(&m.key),
            });
        }
    }
    r.keys = old_hash.len() as u64;
    r.keys_differing = old_hash.iter().filter(|(k, h)| new_hash.get(*k) != Some(h)).count() as u64
        + new_hash.keys().filter(|k| !old_hash.contains_key(*k)).count() as u64;
    r.equal = r.missing.count == 0
        && r.extra.count == 0
        && r.changed.count == 0
        && r.out_of_order.count == 0
        && r.keys_differing == 0;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: u32, position: i64, key: &str, payload: &str, origin: Option<(u32, i64)>) -> Rec {
        let mut h = Headers::default();
        h.set("a", "1");
        Rec {
            partition,
            position,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            digest: digest(Some(key.as_bytes()), payload.as_bytes(), &h),
            copy: match origin {
                Some((partition, position)) => Copied::FromOld { partition, position },
                None => Copied::No,
            },
        }
    }

    fn ends() -> BTreeMap<u32, (i64, i64)> {
        BTreeMap::from([(0, (0, 3)), (1, (0, 1))])
    }

    fn old() -> Vec<Rec> {
        vec![rec(0, 0, "a", "1", None), rec(0, 1, "b", "2", None), rec(0, 2, "a", "3", None), rec(1, 0, "c", "4", None)]
    }

    /// The faithful copy: same partitions, same order, one native message.
    fn faithful() -> Vec<Rec> {
        vec![
            rec(0, 10, "a", "1", Some((0, 0))),
            rec(0, 11, "b", "2", Some((0, 1))),
            rec(0, 12, "a", "3", Some((0, 2))),
            rec(1, 5, "c", "4", Some((1, 0))),
            rec(1, 6, "n", "native", None),
        ]
    }

    #[test]
    fn a_faithful_copy_is_equal_and_duplicates_are_not_differences() {
        let r = compare(&old(), &ends(), &faithful());
        assert!(r.equal, "{r:#?}");
        assert_eq!((r.keys, r.native, r.duplicates), (3, 1, 0));
        assert_eq!(r.old_counts, r.copy_counts);
        // the mirror wrote (0,1) twice after a restart
        let mut again = faithful();
        again.push(rec(0, 13, "b", "2", Some((0, 1))));
        let r = compare(&old(), &ends(), &again);
        assert!(r.equal && r.duplicates == 1, "{r:#?}");
        // copies of messages written after the old side was read are not compared
        let mut newer = faithful();
        newer.push(rec(0, 14, "a", "5", Some((0, 3))));
        let r = compare(&old(), &ends(), &newer);
        assert!(r.equal && r.later == 1, "{r:#?}");
        // and copies of messages the old side no longer stores neither
        let trimmed = BTreeMap::from([(0, (1, 3)), (1, (0, 1))]);
        let old_kept: Vec<Rec> = old().into_iter().filter(|m| (m.partition, m.position) != (0, 0)).collect();
        let r = compare(&old_kept, &trimmed, &faithful());
        assert!(r.expired == 1, "{r:#?}");
        // copies on other partitions (different counts), by key: still equal
        let moved: Vec<Rec> = faithful()
            .into_iter()
            .map(|mut c| {
                c.partition = 7;
                c
            })
            .collect();
        assert!(compare(&old(), &ends(), &moved).equal);
    }

    #[test]
    fn every_kind_of_difference_is_found_with_its_first_example() {
        // missing: (0,1) never copied
        let mut v = faithful();
        v.remove(1);
        let r = compare(&old(), &ends(), &v);
        assert!(!r.equal);
        assert_eq!(r.missing.count, 1);
        assert_eq!(r.missing.first.as_ref().map(|e| (e.old_partition, e.old_position)), Some((Some(0), Some(1))));
        assert_eq!(r.copy_counts[&0], 2);
        // extra: a copy of a message the old side does not hold
        let mut v = faithful();
        v.push(rec(1, 7, "z", "9", Some((2, 0))));
        let r = compare(&old(), &ends(), &v);
        assert_eq!((r.equal, r.extra.count), (false, 1));
        assert_eq!(r.extra.first.as_ref().and_then(|e| e.new_position), Some(7));
        // changed: a payload differs
        let mut v = faithful();
        v[2] = rec(0, 12, "a", "3-changed", Some((0, 2)));
        let r = compare(&old(), &ends(), &v);
        assert_eq!((r.equal, r.changed.count, r.keys_differing), (false, 1, 1));
        // out of order: key a's two copies swapped on the new side
        let v = vec![
            rec(0, 10, "a", "3", Some((0, 2))),
            rec(0, 11, "b", "2", Some((0, 1))),
            rec(0, 12, "a", "1", Some((0, 0))),
            rec(1, 5, "c", "4", Some((1, 0))),
        ];
        let r = compare(&old(), &ends(), &v);
        assert_eq!((r.equal, r.out_of_order.count), (false, 1));
        assert_eq!(r.out_of_order.first.as_ref().and_then(|e| e.key.clone()).as_deref(), Some("a"));
        assert_eq!(r.keys_differing, 1, "the order-sensitive hash of key a differs");
    }

    #[test]
    fn the_digest_ignores_the_origin_and_header_order_but_not_content() {
        let mut h1 = Headers::default();
        h1.set("x", "1");
        h1.set("y", "2");
        let mut h2 = Headers::default();
        h2.set("y", "2");
        h2.set("x", "1");
        h2.set(super::super::origin::HEADER, "kafka/t/0@1");
        assert_eq!(digest(Some(b"k"), b"p", &h1), digest(Some(b"k"), b"p", &h2));
        assert_ne!(digest(Some(b"k"), b"p", &h1), digest(None, b"p", &h1));
        assert_ne!(digest(Some(b"k"), b"p", &h1), digest(Some(b"k"), b"q", &h1));
        assert_ne!(digest(Some(b"ab"), b"c", &Headers::default()), digest(Some(b"a"), b"bc", &Headers::default()));
    }

    #[test]
    fn a_transcoding_migration_compares_records_not_framing() {
        use crate::schema::wire;
        let msg = |payload: Vec<u8>, ct: Option<&str>| {
            let mut m = crate::stages::test_message(&payload);
            m.key = Some("k".into());
            if let Some(ct) = ct {
                m.headers.set(wire::CONTENT_TYPE, ct.to_string());
            }
            m
        };
        let side = ("kafka", "t");
        let old = msg(wire::confluent_frame(7, b"record"), None);
        let mut copy = msg(b"record".to_vec(), Some("avro/binary+0123456789abcdef0123456789abcdef"));
        copy.headers.set(super::super::origin::HEADER, "kafka/t/0@0");
        let other = msg(b"record2".to_vec(), Some("avro/binary+0123456789abcdef0123456789abcdef"));
        let d = |m, how| Rec::of(m, side, how).digest;
        assert_eq!(d(&old, Compare::Records), d(&copy, Compare::Records), "same record, other framing: equal");
        assert_ne!(d(&old, Compare::Records), d(&other, Compare::Records), "another record: changed");
        assert_ne!(d(&old, Compare::Bytes), d(&copy, Compare::Bytes), "byte for byte they differ");
        // a copy left Confluent-framed (never transcoded) differs
        let mut untranscoded = msg(wire::confluent_frame(7, b"record"), None);
        untranscoded.headers.set(super::super::origin::HEADER, "kafka/t/0@0");
        assert_ne!(d(&old, Compare::Records), d(&untranscoded, Compare::Records));
    }
}
