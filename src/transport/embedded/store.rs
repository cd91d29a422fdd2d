//! The durable half of the embedded transport: a `redb` file plus one writer
//! thread doing group commits.
//!
//! Why redb: a pure-Rust, single-file, crash-safe (copy-on-write B-trees with
//! checksummed commits) embedded store with a stable file format and no C
//! dependencies, small enough to build in seconds. A log needs ordered keys,
//! range scans and atomic multi-table commits, all of which it has; its
//! single-writer model fits a group-commit thread exactly.
//!
//! Layout: one table per partition `log/<entity>/<partition>` mapping the
//! position of the first record of each appended batch to the encoded batch
//! (one B-tree entry per batch, not per record, as a log segment would),
//! `next` (entity/partition → next position, survives trimming), `offsets`
//! (group/entity/partition → next position to read).
//! Every write operation is acknowledged only after the transaction that
//! holds it is committed with `Durability::Immediate` (fsync).

use super::Record;
use crate::transport::Headers;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use redb::{Database, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const NEXT: TableDefinition<&str, u64> = TableDefinition::new("next");
const OFFSETS: TableDefinition<&str, u64> = TableDefinition::new("offsets");

pub(super) fn log_table(entity: &str, partition: u32) -> String {
    format!("log/{entity}/{partition}")
}

pub(super) fn offset_key(group: &str, entity: &str, partition: u32) -> String {
    format!("{group}\u{1f}{entity}\u{1f}{partition}")
}

fn part_key(entity: &str, partition: u32) -> String {
    format!("{entity}\u{1f}{partition}")
}

/// One change for the writer thread.
pub(super) enum Op {
    Append {
        entity: Arc<str>,
        partition: u32,
        first: i64,
        records: Vec<Record>,
    },
    Commit {
        key: String,
        next: i64,
    },
    Trim {
        entity: Arc<str>,
        partition: u32,
        below: i64,
    },
    /// Writes nothing; acknowledged once everything queued before it is durable.
    Barrier,
}

pub(super) struct Write {
    pub op: Op,
    pub ack: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// A storage failure (the text of redb's error, or what was corrupt).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StoreError(String);

impl StoreError {
    fn of(e: impl std::fmt::Display) -> Self {
        StoreError(e.to_string())
    }
}

/// Why a store could not be opened.
pub(crate) enum OpenError {
    /// Another process holds the data directory (a running daemon).
    InUse,
    Failed(StoreError),
}

impl From<StoreError> for OpenError {
    fn from(e: StoreError) -> Self {
        OpenError::Failed(e)
    }
}

/// What a partition looked like on disk at open.
pub(super) struct Recovered {
    pub earliest: i64,
    pub next: i64,
}

pub(super) struct Store {
    db: Arc<Database>,
}

/// The writer thread's end: dropping it closes the queue and waits for the
/// thread, so the file is released when the transport is gone.
pub(super) struct WriterHandle {
    pub tx: Option<mpsc::UnboundedSender<Write>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    pub fn send(&self, w: Write) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(w).is_ok())
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, WriterHandle), OpenError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create directory: {e}")))?;
        let db =
            Database::builder().set_cache_size(8 << 20).create(dir.join("conveyor.redb")).map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse,
                e => OpenError::Failed(StoreError::of(e)),
            })?;
        let db = Arc::new(db);
        {
            let w = db.begin_write().map_err(StoreError::of)?;
            w.open_table(NEXT).map_err(StoreError::of)?;
            w.open_table(OFFSETS).map_err(StoreError::of)?;
            w.commit().map_err(StoreError::of)?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let wdb = db.clone();
        let handle = std::thread::Builder::new()
            .name("embedded-writer".into())
            .spawn(move || writer(wdb, rx))
            .map_err(StoreError::of)?;
        Ok((Store { db }, WriterHandle { tx: Some(tx), thread: Some(handle) }))
    }

    /// Reads a partition's extent.
    pub fn recover(&self, entity: &str, partition: u32) -> Result<Recovered, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::of)?;
        let next_t = r.open_table(NEXT).map_err(StoreError::of)?;
        let stored_next = next_t.get(part_key(entity, partition).as_str()).map_err(StoreError::of)?.map(|v| v.value());
        let name = log_table(entity, partition);
        let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
        let (first, last) = match r.open_table(def) {
            Ok(t) => {
                let first = t.first().map_err(StoreError::of)?.map(|(k, _)| k.value());
                let last = t.last().map_err(StoreError::of)?.map(|(k, _)| k.value());
                (first, last)
            }
            Err(redb::TableError::TableDoesNotExist(_)) => (None, None),
            Err(e) => return Err(StoreError::of(e)),
        };
        let next = stored_next.unwrap_or(0).max(last.map(|l| l + 1).unwrap_or(0)) as i64;
        Ok(Recovered { earliest: first.map(|f| f as i64).unwrap_or(next), next })
    }

    /// Committed offsets of every group of `entity`, keyed by (group, partition).
    pub fn offsets(&self) -> Result<HashMap<String, i64>, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::of)?;
        let t = r.open_table(OFFSETS).map_err(StoreError::of)?;
        let mut out = HashMap::new();
        for row in t.iter().map_err(StoreError::of)? {
            let (k, v) = row.map_err(StoreError::of)?;
            out.insert(k.value().to_string(), v.value() as i64);
        }
        Ok(out)
    }

    /// Reads up to `max` records of a partition from `from` on.
    pub fn read(&self, entity: &str, partition: u32, from: i64, max: usize) -> Result<Vec<(i64, Record)>, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::of)?;
        let name = log_table(entity, partition);
        let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
        let t = match r.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::of(e)),
        };
        let from = from.max(0) as u64;
        // the batch holding `from` starts at or before it
        let start = match t.range(..=from).map_err(StoreError::of)?.next_back() {
            Some(row) => row.map_err(StoreError::of)?.0.value(),
            None => from,
        };
        let mut out = Vec::with_capacity(max.min(4096));
        for row in t.range(start..).map_err(StoreError::of)? {
            let (k, v) = row.map_err(StoreError::of)?;
            let first = k.value();
            let records = decode_batch(v.value())
                .ok_or_else(|| StoreError(format!("corrupt batch at {entity}/{partition}@{first}")))?;
            for (i, rec) in records.into_iter().enumerate() {
                let pos = first + i as u64;
                if pos >= from {
                    out.push((pos as i64, rec));
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn writer(db: Arc<Database>, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut batch: Vec<Write> = Vec::with_capacity(1024);
    let mut buf = BytesMut::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < 8192 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = apply(&db, &batch, &mut buf).map_err(StoreError::of);
        if let Err(e) = &result {
            tracing::error!(error = %e, ops = batch.len(), "embedded store commit failed");
        }
        for w in batch.drain(..) {
            if let Some(ack) = w.ack {
                let _ = ack.send(result.clone());
            }
        }
    }
}

// redb's own error type is large; this runs once per group commit
#[allow(clippy::result_large_err)]
fn apply(db: &Database, batch: &[Write], buf: &mut BytesMut) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut next_t = txn.open_table(NEXT)?;
        let mut offsets = txn.open_table(OFFSETS)?;
        let mut nexts: HashMap<(Arc<str>, u32), i64> = HashMap::new();
        for w in batch {
            match &w.op {
                Op::Append { entity, partition, first, records } => {
                    let name = log_table(entity, *partition);
                    let mut t = txn.open_table(TableDefinition::<u64, &[u8]>::new(&name))?;
                    buf.clear();
                    encode_batch(records, buf);
                    t.insert(*first as u64, &buf[..])?;
                    let end = *first + records.len() as i64;
                    let e = nexts.entry((entity.clone(), *partition)).or_insert(end);
                    *e = (*e).max(end);
                }
                Op::Commit { key, next } => {
                    offsets.insert(key.as_str(), *next as u64)?;
                }
                Op::Barrier => {}
                Op::Trim { entity, partition, below } => {
                    let name = log_table(entity, *partition);
                    let mut t = txn.open_table(TableDefinition::<u64, &[u8]>::new(&name))?;
                    let below = (*below).max(0) as u64;
                    // drop whole batches that end before `below`
                    t.retain_in(..below, |first, v| first + batch_len(v) as u64 > below)?;
                }
            }
        }
        for ((entity, partition), next) in nexts {
            next_t.insert(part_key(&entity, partition).as_str(), next as u64)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Number of records in an encoded batch.
fn batch_len(v: &[u8]) -> u32 {
    v.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0)
}

/// Batch format: count u32 | (record_len u32, record)*.
fn encode_batch(records: &[Record], buf: &mut BytesMut) {
    buf.put_u32_le(records.len() as u32);
    for r in records {
        let at = buf.len();
        buf.put_u32_le(0);
        encode(r, buf);
        let len = (buf.len() - at - 4) as u32;
        buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Inverse of [`encode_batch`]; `None` when `b` is not a whole batch.
fn decode_batch(mut b: &[u8]) -> Option<Vec<Record>> {
    if b.len() < 4 {
        return None;
    }
    let n = b.get_u32_le() as usize;
    // the count is read from disk: reserve no more than the bytes can hold
    // (a record takes at least 4 + 14 bytes), or a corrupt count aborts
    let mut out = Vec::with_capacity(n.min(b.remaining() / 18));
    for _ in 0..n {
        if b.remaining() < 4 {
            return None;
        }
        let len = b.get_u32_le() as usize;
        if b.remaining() < len {
            return None;
        }
        out.push(decode(&b[..len])?);
        b.advance(len);
    }
    Some(out)
}

/// Record wire format: ts i64 | key_len i32 (-1 = none) | key | n_headers u16
/// | (name_len u16, name, value_len u32, value)* | payload. The transport
/// refuses messages whose header count or a name length does not fit 16
/// bits before they get here (`check_limits`).
fn encode(r: &Record, out: &mut BytesMut) {
    out.reserve(16 + r.payload.len() + r.key.as_ref().map_or(0, |k| k.len()));
    out.put_i64_le(r.timestamp_ms);
    match &r.key {
        Some(k) => {
            out.put_i32_le(k.len() as i32);
            out.put_slice(k);
        }
        None => out.put_i32_le(-1),
    }
    out.put_u16_le(r.headers.0.len() as u16);
    for (n, v) in &r.headers.0 {
        out.put_u16_le(n.len() as u16);
        out.put_slice(n.as_bytes());
        out.put_u32_le(v.len() as u32);
        out.put_slice(v);
    }
    out.put_slice(&r.payload);
}

fn decode(mut b: &[u8]) -> Option<Record> {
    if b.remaining() < 14 {
        return None;
    }
    let timestamp_ms = b.get_i64_le();
    let kl = b.get_i32_le();
    let key = if kl < 0 {
        None
    } else {
        let kl = kl as usize;
        if b.remaining() < kl {
            return None;
        }
        let k = Bytes::copy_from_slice(&b[..kl]);
        b.advance(kl);
        Some(k)
    };
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16_le();
    // a header takes at least 2 + 4 bytes
    let mut headers = Vec::with_capacity((n as usize).min(b.remaining() / 6));
    for _ in 0..n {
        if b.remaining() < 2 {
            return None;
        }
        let nl = b.get_u16_le() as usize;
        if b.remaining() < nl + 4 {
            return None;
        }
        let name = String::from_utf8(b[..nl].to_vec()).ok()?;
        b.advance(nl);
        let vl = b.get_u32_le() as usize;
        if b.remaining() < vl {
            return None;
        }
        headers.push((name, Bytes::copy_from_slice(&b[..vl])));
        b.advance(vl);
    }
    Some(Record { key, headers: Headers(headers), payload: Bytes::copy_from_slice(b), timestamp_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips() {
        let r = Record {
            key: Some(Bytes::from_static(b"k")),
            headers: Headers(vec![("a".into(), Bytes::from_static(b"1")), ("b".into(), Bytes::new())]),
            payload: Bytes::from_static(b"\x00\xffpayload"),
            timestamp_ms: 1234,
        };
        let mut buf = BytesMut::new();
        encode(&r, &mut buf);
        assert_eq!(decode(&buf).unwrap(), r);
        let none = Record { key: None, headers: Headers::default(), payload: Bytes::new(), timestamp_ms: -1 };
        buf.clear();
        encode(&none, &mut buf);
        assert_eq!(decode(&buf).unwrap(), none);
        assert!(decode(&buf[..5]).is_none());
    }

    #[test]
    fn a_batch_claiming_more_records_than_it_holds_is_corrupt_not_an_abort() {
        // count u32::MAX and nothing else: must not reserve u32::MAX records up front
        assert!(decode_batch(&[0xff, 0xff, 0xff, 0xff]).is_none());
        // a record claiming u16::MAX headers with none present
        let mut b = vec![0u8; 8];
        b.extend_from_slice(&(-1i32).to_le_bytes());
        b.extend_from_slice(&[0xff, 0xff]);
        assert!(decode(&b).is_none());
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
            prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
        }

        /// Any record the transport lets through (`check_limits`: names and
        /// the header count fit 16 bits; repeated names allowed).
        fn record() -> impl Strategy<Value = Record> {
            let header = (prop_oneof![".{0,12}", Just(String::new()), Just("é€𝄞".to_string())], bytes(24));
            (prop::option::of(bytes(48)), prop::collection::vec(header, 0..6), bytes(200), any::<i64>()).prop_map(
                |(key, headers, payload, timestamp_ms)| Record {
                    key,
                    headers: Headers(headers),
                    payload,
                    timestamp_ms,
                },
            )
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn store_decode_never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode(&b);
                let _ = decode_batch(&b);
                let _ = batch_len(&b);
            }

            #[test]
            fn store_decode_never_panics_on_corrupted_batches(
                records in prop::collection::vec(record(), 0..4),
                at in any::<prop::sample::Index>(),
                with in any::<u8>(),
                cut in any::<prop::sample::Index>(),
            ) {
                // corrupt a real batch: one byte changed, then cut short
                let mut buf = BytesMut::new();
                encode_batch(&records, &mut buf);
                let mut b = buf.to_vec();
                let i = at.index(b.len());
                b[i] = with;
                let _ = decode_batch(&b);
                let _ = decode_batch(&b[..cut.index(b.len())]);
            }

            #[test]
            fn store_record_round_trips(r in record()) {
                let mut buf = BytesMut::new();
                encode(&r, &mut buf);
                prop_assert_eq!(decode(&buf), Some(r));
            }

            #[test]
            fn store_batch_round_trips(records in prop::collection::vec(record(), 0..6)) {
                let mut buf = BytesMut::new();
                encode_batch(&records, &mut buf);
                prop_assert_eq!(batch_len(&buf) as usize, records.len());
                prop_assert_eq!(decode_batch(&buf), Some(records));
            }
        }
    }
}
