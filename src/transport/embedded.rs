//! `type: embedded` — in-process partitioned logs with consumer groups.
//!
//! - **Memory mode** (no `path`): each partition is a queue of records. A
//!   record is kept until every consumer group registered on the entity has
//!   committed past it; a producer waits (backpressure) while a partition
//!   holds `capacity` records that some group has not committed. An entity
//!   that no group consumes keeps only its newest `capacity` records per
//!   partition (`conveyor check` warns about it): nothing could read older
//!   ones anyway, and the process's memory stays bounded.
//! - **Durable mode** (`path: DIR`): every record and committed position is
//!   written to a `redb` file by one writer thread that commits many
//!   producers' writes in one fsync'd transaction (group commit). A send
//!   returns only after its transaction is durable, and consumers only see
//!   durable records, so nothing acknowledged is lost on a crash or SIGKILL.
//!   Commits are queued to the same writer without waiting: a crash may
//!   forget the last few milliseconds of commits, which redelivers those
//!   messages (at least once), never skips them. Memory keeps a window of
//!   durable records that some group has yet to read (at most `capacity` per
//!   partition); readers further behind read from disk. Records every registered group has committed are deleted
//!   from disk in the background; entities without consumers keep all.
//! - **Groups** are exclusive: one member of a group holds all partitions
//!   of the entity; a second subscriber waits until the first leaves. (In one
//!   process there is nothing to balance; scale-out is the brokers' job.)
//! - **Partitioning**: explicit partition, else Kafka's murmur2 key hash,
//!   else round-robin.
//!
//! - **Limits**: a message (payload, key and headers) larger than
//!   `max_message_bytes`, with more than 65,535 headers, or with a header
//!   name longer than 65,535 bytes is refused with a `Permanent` error
//!   naming the limit (the store's record format counts those in 16 bits);
//!   nothing of the batch is written.
//! - **Groups** listed by [`Transport::ensure`] are exactly those that hold
//!   records back: a group a reload removed stops pinning its entity's
//!   records (memory) and disk space (durable).
//!
//! A failed durable commit (disk full, I/O error) poisons the transport:
//! every later operation fails with a `Transient` storage error and the
//! workers go unready, rather than serving records that are not on disk.

mod store;

pub use super::EntitySpec;
use super::{
    Assignment, GroupPosition, GroupSpec, Headers, OutboundMessage, PartitionInfo, PartitionReader, PipelineMessage,
    ProduceResult, Producer, Refusal, Seek, StartPosition, Subscription, Transport, TransportError, key_partition,
    now_ms,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use store::{Op, OpenError, Store, StoreError, Write, WriterHandle};
use tokio::sync::{Notify, oneshot};

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub key: Option<Bytes>,
    pub headers: Headers,
    pub payload: Bytes,
    pub timestamp_ms: i64,
}

/// Options of an embedded transport.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub name: String,
    pub path: Option<PathBuf>,
    pub capacity: usize,
    /// Largest message (payload, key, headers) accepted, in bytes.
    pub max_message_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { name: "embedded".into(), path: None, capacity: 10_000, max_message_bytes: 8 << 20 }
    }
}

/// Most headers a message may carry, and longest header name (the record
/// format counts both in 16 bits).
pub const MAX_HEADERS: usize = u16::MAX as usize;
pub const MAX_HEADER_NAME: usize = u16::MAX as usize;

/// The embedded transport. Cheap to clone.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    capacity: usize,
    max_message_bytes: usize,
    durable: Option<Durable>,
    entities: std::sync::RwLock<HashMap<String, Arc<EntityLog>>>,
    rr: AtomicU64,
    poisoned: OnceLock<String>,
}

struct Durable {
    store: Store,
    writer: WriterHandle,
    /// Committed positions on disk at open, and of groups unregistered
    /// since (a group that comes back resumes where it was).
    stored_offsets: Mutex<HashMap<String, i64>>,
}

struct EntityLog {
    name: Arc<str>,
    label: Arc<str>,
    parts: Vec<Arc<Partition>>,
    groups: Mutex<HashMap<String, Arc<GroupSlot>>>,
}

#[derive(Default)]
struct GroupSlot {
    taken: Mutex<bool>,
    released: Notify,
}

struct Partition {
    index: u32,
    st: Mutex<PartState>,
    /// New visible records.
    data: Notify,
    /// Room freed (memory mode) or writes made durable (durable mode).
    space: Notify,
}

struct PartState {
    mem_base: i64,
    mem: VecDeque<Record>,
    next: i64,
    visible: i64,
    earliest: i64,
    committed: HashMap<String, i64>,
    disk_trimmed_below: i64,
}

impl PartState {
    fn min_committed(&self) -> Option<i64> {
        self.committed.values().copied().min()
    }

    /// Durable mode: the memory window holds only durable records some group
    /// still has to read, at most `capacity` of them (the rest is on disk).
    fn trim_window(&mut self, capacity: usize) {
        let floor = self.min_committed().unwrap_or(self.visible).min(self.visible);
        while self.mem_base < self.visible && (self.mem_base < floor || self.mem.len() > capacity) {
            self.mem.pop_front();
            self.mem_base += 1;
        }
    }
}

impl Embedded {
    /// Opens (durable) or creates (memory) the transport with its entities and
    /// the consumer groups known from the topology (registered up front so
    /// records written before a consumer first attaches are kept for it).
    pub fn open(
        opts: EmbeddedOptions,
        entities: &[EntitySpec],
        groups: &[GroupSpec],
    ) -> Result<Embedded, TransportError> {
        let durable = match &opts.path {
            Some(p) => {
                let (store, writer) = Store::open(p).map_err(|e| match e {
                    OpenError::InUse => {
                        TransportError::InUse { transport: opts.name.clone(), path: p.display().to_string() }
                    }
                    OpenError::Failed(e) => TransportError::Open {
                        transport: opts.name.clone(),
                        path: p.display().to_string(),
                        message: e.to_string(),
                    },
                })?;
                let stored_offsets = store.offsets().map_err(|e| storage(&opts.name, e))?;
                Some(Durable { store, writer, stored_offsets: Mutex::new(stored_offsets) })
            }
            None => None,
        };
        let t = Embedded {
            inner: Arc::new(Inner {
                name: opts.name,
                capacity: opts.capacity.max(1),
                max_message_bytes: opts.max_message_bytes.max(1),
                durable,
                entities: std::sync::RwLock::new(HashMap::new()),
                rr: AtomicU64::new(0),
                poisoned: OnceLock::new(),
            }),
        };
        t.carry(entities, groups)?;
        Ok(t)
    }

    /// Adds the entities not yet known (recovering them from disk in durable
    /// mode), registers `groups` and unregisters every other group (a config
    /// reload uses this through [`Transport::ensure`]).
    pub fn carry(&self, entities: &[EntitySpec], groups: &[GroupSpec]) -> Result<(), TransportError> {
        let inner = &self.inner;
        for e in entities {
            if inner.entities.read().unwrap().contains_key(&e.name) {
                continue;
            }
            let mut parts = Vec::new();
            for p in 0..e.partitions {
                let (earliest, next) = match &inner.durable {
                    Some(d) => {
                        let r = d.store.recover(&e.name, p).map_err(|e| storage(&inner.name, e))?;
                        (r.earliest, r.next)
                    }
                    None => (0, 0),
                };
                parts.push(Arc::new(Partition {
                    index: p,
                    st: Mutex::new(PartState {
                        mem_base: next,
                        mem: VecDeque::new(),
                        next,
                        visible: next,
                        earliest,
                        committed: HashMap::new(),
                        disk_trimmed_below: earliest,
                    }),
                    data: Notify::new(),
                    space: Notify::new(),
                }));
            }
            let log = Arc::new(EntityLog {
                name: e.name.as_str().into(),
                label: e.key.as_str().into(),
                parts,
                groups: Mutex::new(HashMap::new()),
            });
            inner.entities.write().unwrap().insert(e.name.clone(), log);
        }
        for g in groups {
            inner.register(&g.entity, &g.group, g.start)?;
        }
        let logs: Vec<Arc<EntityLog>> = inner.entities.read().unwrap().values().cloned().collect();
        for log in logs {
            let keep: Vec<&str> = groups.iter().filter(|g| *g.entity == *log.name).map(|g| g.group.as_str()).collect();
            inner.unregister_others(&log, &keep);
        }
        Ok(())
    }

    pub fn is_durable(&self) -> bool {
        self.inner.durable.is_some()
    }

    /// Committed next-position of `group` on each partition of `entity`.
    pub fn committed(&self, entity: &str, group: &str) -> Result<Vec<Option<i64>>, TransportError> {
        let log = self.inner.entity(entity)?;
        Ok(log.parts.iter().map(|p| p.st.lock().unwrap().committed.get(group).copied()).collect())
    }

    /// Waits until every write queued so far is durable.
    pub async fn flush(&self) -> Result<(), TransportError> {
        let Some(d) = &self.inner.durable else {
            return Ok(());
        };
        let (ack, rx) = oneshot::channel();
        d.writer.send(Write { op: Op::Barrier, ack: Some(ack) });
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.inner.poison(e)),
            Err(_) => Err(TransportError::Closed { transport: self.inner.name.clone() }),
        }
    }
}

fn storage(transport: &str, e: StoreError) -> TransportError {
    TransportError::Storage { transport: transport.to_string(), message: e.to_string() }
}

/// Why `m` cannot be stored, if it cannot.
fn check_limits(m: &OutboundMessage, max_bytes: usize) -> Result<(), TransportError> {
    let size = m.byte_len();
    if size > max_bytes {
        return Err(TransportError::TooLarge { size, limit: max_bytes });
    }
    if m.headers.len() > MAX_HEADERS {
        return Err(TransportError::Unrepresentable(format!(
            "message has {} headers; the embedded transport stores at most {MAX_HEADERS}",
            m.headers.len()
        )));
    }
    if let Some((n, _)) = m.headers.0.iter().find(|(n, _)| n.len() > MAX_HEADER_NAME) {
        return Err(TransportError::Unrepresentable(format!(
            "header name of {} bytes (starting {:?}); the embedded transport stores names of at most {MAX_HEADER_NAME} bytes",
            n.len(),
            crate::text::clip(n, 32)
        )));
    }
    Ok(())
}

impl Inner {
    fn entity(&self, name: &str) -> Result<Arc<EntityLog>, TransportError> {
        self.entities
            .read()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| TransportError::UnknownEntity { transport: self.name.clone(), entity: name.to_string() })
    }

    fn check(&self) -> Result<(), TransportError> {
        match self.poisoned.get() {
            Some(m) => Err(TransportError::Storage {
                transport: self.name.clone(),
                message: format!("store failed earlier and is read-only: {m}"),
            }),
            None => Ok(()),
        }
    }

    fn poison(&self, e: StoreError) -> TransportError {
        let _ = self.poisoned.set(e.to_string());
        storage(&self.name, e)
    }

    /// Drops every group of `log` not in `keep`: they no longer hold records
    /// back, so producers waiting for room may go on.
    fn unregister_others(&self, log: &EntityLog, keep: &[&str]) {
        for p in &log.parts {
            let mut st = p.st.lock().unwrap();
            let gone: Vec<(String, i64)> = st
                .committed
                .iter()
                .filter(|(g, _)| !keep.contains(&g.as_str()))
                .map(|(g, c)| (g.clone(), *c))
                .collect();
            if gone.is_empty() {
                continue;
            }
            for (g, c) in &gone {
                st.committed.remove(g);
                if let Some(d) = &self.durable {
                    d.stored_offsets.lock().unwrap().insert(store::offset_key(g, &log.name, p.index), *c);
                }
            }
            match &self.durable {
                None => {
                    let min = st.min_committed().unwrap_or(st.next);
                    while st.mem_base < min && !st.mem.is_empty() {
                        st.mem.pop_front();
                        st.mem_base += 1;
                    }
                    if st.committed.is_empty() {
                        while st.mem.len() > self.capacity {
                            st.mem.pop_front();
                            st.mem_base += 1;
                        }
                    }
                    st.earliest = st.mem_base;
                }
                Some(_) => st.trim_window(self.capacity),
            }
            drop(st);
            p.space.notify_waiters();
        }
    }

    fn register(&self, entity: &str, group: &str, start: StartPosition) -> Result<(), TransportError> {
        let log = self.entity(entity)?;
        for p in &log.parts {
            let mut st = p.st.lock().unwrap();
            if st.committed.contains_key(group) {
                continue;
            }
            let stored = self.durable.as_ref().and_then(|d| {
                d.stored_offsets.lock().unwrap().get(&store::offset_key(group, entity, p.index)).copied()
            });
            let pos = match (stored, start) {
                (Some(s), _) => s.max(st.earliest),
                (None, StartPosition::Earliest) => st.earliest.min(st.mem_base),
                (None, StartPosition::Latest) => st.next,
            };
            st.committed.insert(group.to_string(), pos);
        }
        Ok(())
    }

    async fn append(&self, log: &EntityLog, part: &Partition, records: Vec<Record>) -> Result<i64, TransportError> {
        let n = records.len() as i64;
        let mut records = Some(records);
        loop {
            self.check()?;
            let notified = part.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pending_ack = {
                let mut st = part.st.lock().unwrap();
                match &self.durable {
                    None => {
                        let unconsumed = st.min_committed().map_or(0, |c| st.next - c);
                        if unconsumed > 0 && unconsumed as usize >= self.capacity {
                            None
                        } else {
                            let first = st.next;
                            st.mem.extend(records.take().unwrap());
                            st.next += n;
                            st.visible = st.next;
                            if st.committed.is_empty() {
                                while st.mem.len() > self.capacity {
                                    st.mem.pop_front();
                                    st.mem_base += 1;
                                }
                                st.earliest = st.mem_base;
                            }
                            drop(st);
                            part.data.notify_waiters();
                            return Ok(first);
                        }
                    }
                    Some(d) => {
                        let pending = st.next - st.visible;
                        if pending > 0 && pending as usize >= self.capacity {
                            None
                        } else {
                            let first = st.next;
                            let recs = records.take().unwrap();
                            st.mem.extend(recs.iter().cloned());
                            st.next += n;
                            let (ack, rx) = oneshot::channel();
                            let op =
                                Op::Append { entity: log.name.clone(), partition: part.index, first, records: recs };
                            // sent under the lock: the writer sees appends in position order
                            if !d.writer.send(Write { op, ack: Some(ack) }) {
                                return Err(TransportError::Closed { transport: self.name.clone() });
                            }
                            Some((first, rx))
                        }
                    }
                }
            };
            match pending_ack {
                Some((first, rx)) => {
                    let res = rx.await;
                    return match res {
                        Ok(Ok(())) => {
                            let mut st = part.st.lock().unwrap();
                            st.visible = st.visible.max(first + n);
                            st.trim_window(self.capacity);
                            drop(st);
                            part.data.notify_waiters();
                            part.space.notify_waiters();
                            Ok(first)
                        }
                        Ok(Err(e)) => Err(self.poison(e)),
                        Err(_) => Err(TransportError::Closed { transport: self.name.clone() }),
                    };
                }
                None => notified.await,
            }
        }
    }
}

#[async_trait]
impl Producer for Embedded {
    async fn send(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, TransportError> {
        self.send_or_return(entity, batch).await.map_err(|r| r.error)
    }

    /// Every refusal for good is found before anything is written.
    async fn send_or_return(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, Refusal> {
        let inner = &self.inner;
        let log = match inner.entity(entity) {
            Ok(log) => log,
            Err(error) => return Err(Refusal { error, batch: Some(batch) }),
        };
        let log = &log;
        let nparts = log.parts.len() as u32;
        let now = now_ms();
        let total = batch.len();
        let refused = batch.iter().find_map(|m| match m.partition {
            Some(p) if p >= nparts => {
                Some(TransportError::UnknownPartition { entity: entity.into(), partition: p, partitions: nparts })
            }
            _ => check_limits(m, inner.max_message_bytes).err(),
        });
        if let Some(error) = refused {
            return Err(Refusal { error, batch: Some(batch) });
        }
        // group by partition, remembering each message's index
        let mut per: Vec<(Vec<usize>, Vec<Record>)> = (0..nparts).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, m) in batch.into_iter().enumerate() {
            let p = match (m.partition, &m.key) {
                (Some(p), _) => p,
                (None, Some(k)) => key_partition(k, nparts),
                (None, None) => (inner.rr.fetch_add(1, Ordering::Relaxed) % nparts as u64) as u32,
            };
            let slot = &mut per[p as usize];
            slot.0.push(i);
            slot.1.push(Record {
                key: m.key,
                headers: m.headers,
                payload: m.payload,
                timestamp_ms: m.timestamp_ms.unwrap_or(now),
            });
        }
        let mut results: Vec<Option<ProduceResult>> = vec![None; total];
        let mut appends = Vec::new();
        for (p, (idx, recs)) in per.into_iter().enumerate() {
            if recs.is_empty() {
                continue;
            }
            let part = log.parts[p].clone();
            appends.push(async move {
                let first = inner.append(log, &part, recs).await?;
                Ok::<_, TransportError>((p as u32, idx, first))
            });
        }
        for r in futures::future::join_all(appends).await {
            let (p, idx, first) = r.map_err(|error| Refusal { error, batch: None })?;
            for (j, i) in idx.into_iter().enumerate() {
                results[i] =
                    Some(ProduceResult { entity: log.label.clone(), partition: p, position: first + j as i64 });
            }
        }
        Ok(results.into_iter().map(|r| r.expect("every message was placed")).collect())
    }
}

#[async_trait]
impl Transport for Embedded {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(self.clone())
    }

    async fn subscribe(
        &self,
        entity: &str,
        group: &str,
        start: StartPosition,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.inner.check()?;
        let log = self.inner.entity(entity)?;
        self.inner.register(entity, group, start)?;
        let slot = log.groups.lock().unwrap().entry(group.to_string()).or_default().clone();
        Ok(Box::new(EmbeddedSubscription {
            inner: self.inner.clone(),
            log,
            group: group.into(),
            slot,
            holding: false,
            pending: VecDeque::new(),
        }))
    }

    async fn partitions(&self, entity: &str) -> Result<Vec<PartitionInfo>, TransportError> {
        let log = self.inner.entity(entity)?;
        Ok(log
            .parts
            .iter()
            .map(|p| {
                let st = p.st.lock().unwrap();
                PartitionInfo { entity: log.label.clone(), partition: p.index, earliest: st.earliest, next: st.visible }
            })
            .collect())
    }

    async fn ensure(&self, entities: &[EntitySpec], groups: &[GroupSpec]) -> Result<(), TransportError> {
        self.carry(entities, groups)
    }

    async fn group_positions(&self, entity: &str, group: &str) -> Result<Vec<GroupPosition>, TransportError> {
        let log = self.inner.entity(entity)?;
        Ok(log
            .parts
            .iter()
            .map(|p| {
                let st = p.st.lock().unwrap();
                GroupPosition {
                    info: PartitionInfo {
                        entity: log.label.clone(),
                        partition: p.index,
                        earliest: st.earliest,
                        next: st.visible,
                    },
                    committed: st.committed.get(group).copied(),
                }
            })
            .collect())
    }

    async fn open_reader(
        &self,
        entity: &str,
        partition: u32,
        from: Seek,
    ) -> Result<Box<dyn PartitionReader>, TransportError> {
        self.inner.check()?;
        let log = self.inner.entity(entity)?;
        let part = log.parts.get(partition as usize).cloned().ok_or_else(|| TransportError::UnknownPartition {
            entity: entity.to_string(),
            partition,
            partitions: log.parts.len() as u32,
        })?;
        let cursor = {
            let st = part.st.lock().unwrap();
            match from {
                Seek::Earliest => st.earliest,
                Seek::At(p) => p.max(st.earliest),
            }
        };
        Ok(Box::new(EmbeddedReader {
            inner: self.inner.clone(),
            log,
            part,
            group: None,
            cursor,
            commits_since_trim: 0,
        }))
    }

    async fn close(&self, within: std::time::Duration) {
        match tokio::time::timeout(within, self.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(transport = %self.inner.name, error = %e, "final flush of the embedded store failed")
            }
            Err(_) => {
                tracing::error!(transport = %self.inner.name, "final flush of the embedded store did not finish in time")
            }
        }
    }
}

struct EmbeddedSubscription {
    inner: Arc<Inner>,
    log: Arc<EntityLog>,
    group: Arc<str>,
    slot: Arc<GroupSlot>,
    holding: bool,
    pending: VecDeque<Box<dyn PartitionReader>>,
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Result<Assignment, TransportError> {
        if !self.holding {
            loop {
                let notified = self.slot.released.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut taken = self.slot.taken.lock().unwrap();
                    if !*taken {
                        *taken = true;
                        break;
                    }
                }
                notified.await;
            }
            self.holding = true;
            for p in &self.log.parts {
                let cursor = p.st.lock().unwrap().committed.get(&*self.group).copied().unwrap_or(0);
                self.pending.push_back(Box::new(EmbeddedReader {
                    inner: self.inner.clone(),
                    log: self.log.clone(),
                    part: p.clone(),
                    group: Some(self.group.clone()),
                    cursor,
                    commits_since_trim: 0,
                }));
            }
        }
        match self.pending.pop_front() {
            Some(r) => Ok(Assignment::Assigned(r)),
            None => std::future::pending().await,
        }
    }
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        if self.holding {
            *self.slot.taken.lock().unwrap() = false;
            self.slot.released.notify_waiters();
        }
    }
}

struct EmbeddedReader {
    inner: Arc<Inner>,
    log: Arc<EntityLog>,
    part: Arc<Partition>,
    /// `None`: opened by `open_reader`, as no group (cannot commit).
    group: Option<Arc<str>>,
    cursor: i64,
    commits_since_trim: u32,
}

impl EmbeddedReader {
    fn message(&self, position: i64, r: &Record) -> PipelineMessage {
        PipelineMessage {
            entity: self.log.label.clone(),
            partition: self.part.index,
            position,
            key: r.key.clone(),
            headers: r.headers.clone(),
            payload: r.payload.clone(),
            timestamp_ms: r.timestamp_ms,
        }
    }
}

#[async_trait]
impl PartitionReader for EmbeddedReader {
    fn partition(&self) -> u32 {
        self.part.index
    }

    async fn fetch(&mut self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        let max = max.max(1);
        loop {
            self.inner.check()?;
            let notified = self.part.data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let disk_until = {
                let st = self.part.st.lock().unwrap();
                if self.cursor < st.earliest {
                    self.cursor = st.earliest;
                }
                if self.cursor < st.visible {
                    if self.cursor >= st.mem_base {
                        let start = (self.cursor - st.mem_base) as usize;
                        let end = ((st.visible - st.mem_base) as usize).min(start + max);
                        out.reserve(end - start);
                        for i in start..end {
                            out.push(self.message(st.mem_base + i as i64, &st.mem[i]));
                        }
                        self.cursor += (end - start) as i64;
                        return Ok(());
                    }
                    Some(st.mem_base)
                } else {
                    None
                }
            };
            if let Some(until) = disk_until {
                let d = self.inner.durable.as_ref().expect("only durable mode keeps records outside memory");
                let n = ((until - self.cursor) as usize).min(max);
                let rows = d.store.read(&self.log.name, self.part.index, self.cursor, n);
                let rows = rows.map_err(|e| self.inner.poison(e))?;
                if rows.is_empty() {
                    // trimmed under us: skip to what is stored
                    let st = self.part.st.lock().unwrap();
                    self.cursor = self.cursor.max(st.earliest).max(st.mem_base.min(until));
                    continue;
                }
                for (pos, r) in &rows {
                    out.push(self.message(*pos, r));
                }
                self.cursor = rows.last().unwrap().0 + 1;
                return Ok(());
            }
            notified.await;
        }
    }

    async fn commit(&mut self, last: &PipelineMessage) -> Result<(), TransportError> {
        self.inner.check()?;
        let Some(group) = self.group.clone() else { return Err(TransportError::ReadOnly) };
        let next = last.position + 1;
        let trim = {
            let mut st = self.part.st.lock().unwrap();
            let c = st.committed.entry(group.to_string()).or_insert(next);
            *c = (*c).max(next);
            let min = st.min_committed().unwrap_or(next);
            match &self.inner.durable {
                None => {
                    while st.mem_base < min && !st.mem.is_empty() {
                        st.mem.pop_front();
                        st.mem_base += 1;
                    }
                    st.earliest = st.mem_base;
                    None
                }
                Some(_) => {
                    st.trim_window(self.inner.capacity);
                    self.commits_since_trim += 1;
                    if self.commits_since_trim >= 64 && min > st.disk_trimmed_below {
                        self.commits_since_trim = 0;
                        st.disk_trimmed_below = min;
                        st.earliest = st.earliest.max(min.min(st.mem_base));
                        Some(min)
                    } else {
                        None
                    }
                }
            }
        };
        match &self.inner.durable {
            None => self.part.space.notify_waiters(),
            Some(d) => {
                let key = store::offset_key(&group, &self.log.name, self.part.index);
                d.writer.send(Write { op: Op::Commit { key, next }, ack: None });
                if let Some(below) = trim {
                    let op = Op::Trim { entity: self.log.name.clone(), partition: self.part.index, below };
                    d.writer.send(Write { op, ack: None });
                }
            }
        }
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        let group = self.group.as_ref()?;
        let st = self.part.st.lock().unwrap();
        let c = st.committed.get(&**group).copied().unwrap_or(st.earliest);
        Some((st.visible - c).max(0) as u64)
    }
}

#[cfg(test)]
mod tests;
