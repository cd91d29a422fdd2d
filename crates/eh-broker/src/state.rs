//! Hubs, partitions and their in-memory logs.
//!
//! Semantics:
//! - Hub names are matched case-insensitively; a hub is created on first use with the
//!   configured partition count (or explicitly with [`crate::Broker::create_hub`]).
//! - Each partition is an append-only log without retention: the sequence number of an
//!   event is its index in the log (from 0).
//! - `x-opt-offset` is a byte position: the cumulative serialized size of the
//!   partition's events *up to and including* the event. It is strictly increasing,
//!   numeric, and never equal to the sequence number (every event has at least one byte).
//! - `x-opt-enqueued-time` is wall-clock milliseconds, forced to be non-decreasing per
//!   partition.
//! - Consumer groups need no creation: receivers register per (consumer group,
//!   partition) only to apply epoch (owner level) rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use fe2o3_amqp_types::definitions::{self, LinkError};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{Body, Message, MessageAnnotations};
use fe2o3_amqp_types::primitives::{Symbol, Timestamp, Value};
use tokio::sync::{oneshot, watch};

pub(crate) const ANN_SEQUENCE: &str = "x-opt-sequence-number";
pub(crate) const ANN_OFFSET: &str = "x-opt-offset";
pub(crate) const ANN_ENQUEUED: &str = "x-opt-enqueued-time";
pub(crate) const ANN_PARTITION_KEY: &str = "x-opt-partition-key";

pub(crate) type AmqpMessage = Message<Body<Value>>;

/// Locks a std mutex, ignoring poisoning (a panicking holder leaves consistent data here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One stored event, annotations already applied.
#[derive(Debug)]
pub(crate) struct Record {
    pub seq: i64,
    pub offset: i64,
    pub enqueued_ms: i64,
    pub partition_key: Option<String>,
    pub message: AmqpMessage,
}

/// Where a receiver starts, parsed from its selector filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StartPos {
    Earliest,
    Latest,
    Offset { value: i64, inclusive: bool },
    Sequence { value: i64, inclusive: bool },
    EnqueuedTime { ms: i64, inclusive: bool },
}

#[derive(Default)]
struct Log {
    records: Vec<Arc<Record>>,
    bytes: i64,
    last_ms: i64,
}

struct RxEntry {
    id: u64,
    consumer_group: String,
    epoch: Option<i64>,
    kick: Option<oneshot::Sender<definitions::Error>>,
}

pub(crate) struct Partition {
    pub id: u32,
    log: Mutex<Log>,
    /// Number of records; receivers wait on changes.
    len_tx: watch::Sender<usize>,
    receivers: Mutex<Vec<RxEntry>>,
}

/// Result of registering a receiver.
pub(crate) enum Admission {
    Admitted { guard: RxGuard, kicked: oneshot::Receiver<definitions::Error> },
    Refused(String),
}

/// Unregisters a receiver when its link task ends.
pub(crate) struct RxGuard {
    partition: Arc<Partition>,
    id: u64,
}

impl Drop for RxGuard {
    fn drop(&mut self) {
        lock(&self.partition.receivers).retain(|e| e.id != self.id);
    }
}

static NEXT_RX_ID: AtomicU64 = AtomicU64::new(1);

impl Partition {
    fn new(id: u32) -> Self {
        Partition {
            id,
            log: Mutex::new(Log::default()),
            len_tx: watch::channel(0).0,
            receivers: Mutex::new(Vec::new()),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.len_tx.subscribe()
    }

    pub fn len(&self) -> usize {
        lock(&self.log).records.len()
    }

    /// Appends events (message, serialized size) and returns the first sequence number.
    pub fn append(&self, events: Vec<(AmqpMessage, usize)>, partition_key: Option<&str>) -> i64 {
        let mut log = lock(&self.log);
        let first = log.records.len() as i64;
        let ms = now_ms().max(log.last_ms);
        log.last_ms = ms;
        for (mut message, size) in events {
            let seq = log.records.len() as i64;
            log.bytes += size.max(1) as i64;
            let offset = log.bytes;
            let own_key = annotation_string(&message, ANN_PARTITION_KEY);
            let key = own_key.or_else(|| partition_key.map(str::to_owned));
            let anns = message.message_annotations.get_or_insert_with(|| MessageAnnotations(Default::default()));
            anns.0.insert(sym_key(ANN_SEQUENCE), Value::Long(seq));
            anns.0.insert(sym_key(ANN_OFFSET), Value::String(offset.to_string()));
            anns.0.insert(sym_key(ANN_ENQUEUED), Value::Timestamp(Timestamp::from_milliseconds(ms)));
            if let Some(k) = &key {
                anns.0.insert(sym_key(ANN_PARTITION_KEY), Value::String(k.clone()));
            }
            log.records.push(Arc::new(Record { seq, offset, enqueued_ms: ms, partition_key: key, message }));
        }
        let len = log.records.len();
        drop(log);
        self.len_tx.send_replace(len);
        first
    }

    /// Up to `max` records from index `from`.
    pub fn read_from(&self, from: usize, max: usize) -> Vec<Arc<Record>> {
        let log = lock(&self.log);
        log.records.iter().skip(from).take(max).cloned().collect()
    }

    pub fn all(&self) -> Vec<Arc<Record>> {
        lock(&self.log).records.clone()
    }

    pub fn last(&self) -> Option<Arc<Record>> {
        lock(&self.log).records.last().cloned()
    }

    /// Index of the first record a receiver starting at `pos` gets.
    pub fn resolve_start(&self, pos: &StartPos) -> usize {
        let log = lock(&self.log);
        let recs = &log.records;
        match *pos {
            StartPos::Earliest => 0,
            StartPos::Latest => recs.len(),
            StartPos::Sequence { value, inclusive } => {
                let first = if inclusive { value } else { value.saturating_add(1) };
                first.clamp(0, recs.len() as i64) as usize
            }
            StartPos::Offset { value, inclusive } => {
                recs.partition_point(|r| if inclusive { r.offset < value } else { r.offset <= value })
            }
            StartPos::EnqueuedTime { ms, inclusive } => {
                recs.partition_point(|r| if inclusive { r.enqueued_ms < ms } else { r.enqueued_ms <= ms })
            }
        }
    }

    /// Registers a receiver of `consumer_group` (lower-cased by the caller), applying
    /// the epoch rules; existing receivers that lose are kicked with `amqp:link:stolen`.
    pub fn admit(self: &Arc<Self>, consumer_group: &str, epoch: Option<i64>) -> Admission {
        let mut rx = lock(&self.receivers);
        let highest = rx.iter().filter(|e| e.consumer_group == consumer_group).filter_map(|e| e.epoch).max();
        match (epoch, highest) {
            (Some(e), Some(h)) if e < h => {
                return Admission::Refused(format!(
                    "Receiver with epoch {e} is refused: a receiver with a higher epoch {h} is active on partition {}",
                    self.id
                ));
            }
            (None, Some(h)) => {
                return Admission::Refused(format!(
                    "Non-epoch receiver is refused: a receiver with epoch {h} is active on partition {}",
                    self.id
                ));
            }
            (Some(e), _) => {
                let desc = format!(
                    "New receiver with epoch {e} was created on partition {}; this receiver is disconnected",
                    self.id
                );
                kick_where(
                    &mut rx,
                    |en| en.consumer_group == consumer_group,
                    || definitions::Error::new(LinkError::Stolen, Some(desc.clone()), None),
                );
            }
            (None, None) => {}
        }
        let (tx, kicked) = oneshot::channel();
        let id = NEXT_RX_ID.fetch_add(1, Ordering::Relaxed);
        rx.push(RxEntry { id, consumer_group: consumer_group.to_owned(), epoch, kick: Some(tx) });
        Admission::Admitted { guard: RxGuard { partition: self.clone(), id }, kicked }
    }

    /// Kicks receivers (all consumer groups when `consumer_group` is None); returns how many.
    pub fn kick(&self, consumer_group: Option<&str>, error: impl Fn() -> definitions::Error) -> u32 {
        let mut rx = lock(&self.receivers);
        kick_where(&mut rx, |e| consumer_group.is_none_or(|cg| e.consumer_group == cg), error)
    }
}

fn kick_where(rx: &mut Vec<RxEntry>, pred: impl Fn(&RxEntry) -> bool, error: impl Fn() -> definitions::Error) -> u32 {
    let mut n = 0;
    rx.retain_mut(|e| {
        if pred(e) {
            if let Some(k) = e.kick.take()
                && k.send(error()).is_ok()
            {
                n += 1;
            }
            false
        } else {
            true
        }
    });
    n
}

pub(crate) fn sym_key(s: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(s))
}

/// A message annotation as text (String or Symbol values).
pub(crate) fn annotation_string(m: &AmqpMessage, key: &str) -> Option<String> {
    let anns = m.message_annotations.as_ref()?;
    match anns.0.get(&sym_key(key))? {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

pub(crate) struct Hub {
    pub name: String,
    pub created_ms: i64,
    pub partitions: Vec<Arc<Partition>>,
    round_robin: AtomicUsize,
}

impl Hub {
    pub fn partition(&self, id: u32) -> Option<&Arc<Partition>> {
        self.partitions.get(id as usize)
    }

    pub fn next_round_robin(&self) -> u32 {
        (self.round_robin.fetch_add(1, Ordering::Relaxed) % self.partitions.len().max(1)) as u32
    }
}

pub(crate) struct State {
    default_partitions: u32,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

impl State {
    pub fn new(default_partitions: u32) -> Self {
        State { default_partitions: default_partitions.max(1), hubs: Mutex::new(HashMap::new()) }
    }

    /// The hub, created with the default partition count when missing.
    pub fn hub(&self, name: &str) -> Arc<Hub> {
        self.create(name, self.default_partitions)
    }

    /// Creates a hub if missing (an existing hub is returned unchanged).
    pub fn create(&self, name: &str, partitions: u32) -> Arc<Hub> {
        let mut hubs = lock(&self.hubs);
        hubs.entry(name.to_lowercase())
            .or_insert_with(|| {
                tracing::info!(hub = name, partitions, "hub created");
                Arc::new(Hub {
                    name: name.to_owned(),
                    created_ms: now_ms(),
                    partitions: (0..partitions.max(1)).map(|i| Arc::new(Partition::new(i))).collect(),
                    round_robin: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    pub fn existing(&self, name: &str) -> Option<Arc<Hub>> {
        lock(&self.hubs).get(&name.to_lowercase()).cloned()
    }
}
