//! `type: sink` — rows to rotated JSON Lines files.
//!
//! Each message must be JSON; it is written as one line (compacted if it
//! spans several). Lines are buffered and the file is `fsync`'d in
//! [`Stage::flush`], which each lane calls before committing its batch: a
//! committed position always has its rows on disk. A crash between write
//! and commit re-delivers the batch, so a row may appear twice (at least
//! once; de-duplicate by an id column downstream). Files rotate by size and
//! age (the old file is synced first) and are named
//! `<prefix>-<UTC time>-<pid>-<n>.jsonl`; a new process never appends to an
//! old file. Creating a file syncs its directory.
//!
//! **I/O errors.** The lanes of a worker share one open file. Once a write,
//! flush or sync of a file fails, the file is abandoned (the next row opens
//! a new one) and *every* lane with rows in it fails its next flush, so none
//! commits them: Linux reports a failed `fsync` only once, to whichever
//! caller syncs first, and a later sync of the same file would succeed with
//! the rows gone. Those batches are delivered again and their rows written
//! to the new file.

use super::{Emit, Stage, StageError};
use crate::config::SinkConfig;
use crate::transport::PipelineMessage;
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Where rows go: real files, or a fault-injecting stand-in in tests.
pub(crate) trait RowFiles: Send + Sync {
    /// Creates the directory (and its parents), durably.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new file for rows, durably (its directory entry synced).
    fn create(&self, path: &Path) -> io::Result<Box<dyn RowFile>>;
}

/// One open rows file.
pub(crate) trait RowFile: Send {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()>;
    /// Writes out the buffer and syncs the file's data.
    fn sync(&mut self) -> io::Result<()>;
}

struct RealFiles;

impl RowFiles for RealFiles {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        crate::fsync::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn RowFile>> {
        let file = OpenOptions::new().create_new(true).append(true).open(path)?;
        crate::fsync::sync_parent(path)?;
        Ok(Box::new(BufWriter::with_capacity(256 << 10, file)))
    }
}

impl RowFile for BufWriter<File> {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        Write::write_all(self, b)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.get_ref().sync_data()
    }
}

pub struct Sink {
    cfg: SinkConfig,
    files: Arc<dyn RowFiles>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    file: Option<Open>,
    seq: u64,
    /// Files abandoned after an I/O error: their rows are not durable.
    failed: HashSet<u64>,
    /// Per partition: the files it wrote rows to since its last flush.
    dirty: HashMap<u32, BTreeSet<u64>>,
}

struct Open {
    id: u64,
    writer: Box<dyn RowFile>,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
}

fn io(e: std::io::Error, what: &str, path: &Path) -> StageError {
    StageError::Io(format!("{what} {}: {e}", path.display()))
}

impl Sink {
    pub fn new(cfg: SinkConfig) -> Self {
        Sink::with_files(cfg, Arc::new(RealFiles))
    }

    pub(crate) fn with_files(cfg: SinkConfig, files: Arc<dyn RowFiles>) -> Self {
        Sink { cfg, files, state: Arc::new(Mutex::new(State::default())) }
    }
}

impl State {
    /// Abandons the open file after an I/O error on it.
    fn abandon(&mut self) {
        if let Some(f) = self.file.take() {
            tracing::error!(file = %f.path.display(), "rows file abandoned after an I/O error; its uncommitted rows are written again");
            self.failed.insert(f.id);
        }
    }

    fn writer(&mut self, cfg: &SinkConfig, files: &dyn RowFiles) -> Result<&mut Open, StageError> {
        let rotate = self
            .file
            .as_ref()
            .is_some_and(|f| f.bytes >= cfg.max_file_bytes || f.opened.elapsed() >= cfg.max_file_age.get());
        if rotate && let Some(mut f) = self.file.take() {
            // the old file is synced before it is let go
            if let Err(e) = f.writer.sync() {
                self.failed.insert(f.id);
                return Err(io(e, "syncing", &f.path));
            }
        }
        if self.file.is_none() {
            files.create_dir(&cfg.dir).map_err(|e| io(e, "creating", &cfg.dir))?;
            let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace([':', '-'], "");
            self.seq += 1;
            let path = cfg.dir.join(format!("{}-{stamp}-{}-{}.jsonl", cfg.prefix, std::process::id(), self.seq));
            let writer = files.create(&path).map_err(|e| io(e, "creating", &path))?;
            self.file = Some(Open { id: self.seq, writer, path, bytes: 0, opened: Instant::now() });
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Syncs what `partition` wrote since its last flush.
    fn flush(&mut self, partition: u32) -> Result<(), StageError> {
        let Some(ids) = self.dirty.remove(&partition) else { return Ok(()) };
        for id in ids {
            if self.failed.contains(&id) {
                return Err(StageError::Io(format!(
                    "rows of partition {partition} were in a file abandoned after an I/O error; the batch is written again"
                )));
            }
            if let Some(f) = self.file.as_mut().filter(|f| f.id == id)
                && let Err(e) = f.writer.sync()
            {
                let err = io(e, "syncing", &f.path);
                self.abandon();
                return Err(err);
            }
            // otherwise: a rotated file, synced when it was let go
        }
        Ok(())
    }
}

#[async_trait]
impl Stage for Sink {
    async fn process(&self, msg: &PipelineMessage, _out: &mut Vec<Emit>) -> Result<(), StageError> {
        let compact;
        let line: &[u8] = if msg.payload.contains(&b'\n') {
            let v: serde_json::Value =
                serde_json::from_slice(&msg.payload).map_err(|e| StageError::InvalidJson(e.to_string()))?;
            compact = serde_json::to_vec(&v).expect("JSON values serialize");
            &compact
        } else {
            serde_json::from_slice::<serde::de::IgnoredAny>(&msg.payload)
                .map_err(|e| StageError::InvalidJson(e.to_string()))?;
            &msg.payload
        };
        let mut st = self.state.lock().unwrap();
        let f = st.writer(&self.cfg, &*self.files)?;
        if let Err(e) = f.writer.write_all(line).and_then(|_| f.writer.write_all(b"\n")) {
            let err = io(e, "writing", &f.path);
            st.abandon();
            return Err(err);
        }
        f.bytes += line.len() as u64 + 1;
        let id = f.id;
        st.dirty.entry(msg.partition).or_default().insert(id);
        Ok(())
    }

    async fn flush(&self, partition: u32) -> Result<(), StageError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.lock().unwrap().flush(partition))
            .await
            .map_err(|e| StageError::Io(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn msg(p: &str, partition: u32) -> PipelineMessage {
        PipelineMessage { partition, ..crate::stages::test_message(p.as_bytes()) }
    }

    fn lines(dir: &std::path::Path) -> (usize, Vec<String>) {
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let all = files
            .iter()
            .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        (files.len(), all)
    }

    fn cfg(dir: &Path, max_file_bytes: u64) -> SinkConfig {
        SinkConfig { dir: dir.into(), prefix: "r".into(), max_file_bytes, max_file_age: Dur::secs(3600) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_compact_lines_rotates_and_rejects_non_json() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sink::new(cfg(dir.path(), 40));
        let mut out = Vec::new();
        for i in 0..5 {
            s.process(&msg(&format!("{{\"id\":{i},\n \"x\":\"abcdefghij\"}}"), 0), &mut out).await.unwrap();
        }
        s.flush(0).await.unwrap();
        let (files, rows) = lines(dir.path());
        assert_eq!(rows.len(), 5);
        assert!(files >= 3, "rotated by size: {files}");
        assert_eq!(rows[0], r#"{"id":0,"x":"abcdefghij"}"#);
        assert!(out.is_empty());
        let e = s.process(&msg("not json", 0), &mut out).await.unwrap_err();
        assert_eq!(e.category(), crate::classify::ErrorCategory::Permanent);
    }

    /// Real files whose syncs and writes fail on command.
    #[derive(Default)]
    struct Faulty {
        fail_syncs: Arc<AtomicU32>,
        fail_writes: Arc<AtomicU32>,
    }

    struct FaultyFile {
        inner: BufWriter<File>,
        fail_syncs: Arc<AtomicU32>,
        fail_writes: Arc<AtomicU32>,
    }

    fn take(c: &AtomicU32) -> bool {
        c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    impl RowFiles for Faulty {
        fn create_dir(&self, dir: &Path) -> io::Result<()> {
            RealFiles.create_dir(dir)
        }
        fn create(&self, path: &Path) -> io::Result<Box<dyn RowFile>> {
            let f = OpenOptions::new().create_new(true).append(true).open(path)?;
            Ok(Box::new(FaultyFile {
                inner: BufWriter::new(f),
                fail_syncs: self.fail_syncs.clone(),
                fail_writes: self.fail_writes.clone(),
            }))
        }
    }

    impl RowFile for FaultyFile {
        fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
            if take(&self.fail_writes) {
                return Err(io::Error::other("injected write error (ENOSPC)"));
            }
            Write::write_all(&mut self.inner, b)
        }
        fn sync(&mut self) -> io::Result<()> {
            if take(&self.fail_syncs) {
                // what Linux does: the error is reported once, the data is gone
                return Err(io::Error::other("injected fsync error (EIO)"));
            }
            self.inner.flush()?;
            self.inner.get_ref().sync_data()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_fails_every_lane_with_rows_in_that_file() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faulty::default());
        let (syncs, _) = (faults.fail_syncs.clone(), faults.fail_writes.clone());
        let s = Sink::with_files(cfg(dir.path(), 1 << 20), faults);
        let mut out = Vec::new();
        s.process(&msg(r#"{"id":"a0"}"#, 0), &mut out).await.unwrap();
        s.process(&msg(r#"{"id":"b0"}"#, 1), &mut out).await.unwrap();
        syncs.store(1, Ordering::SeqCst);
        assert!(s.flush(1).await.is_err(), "lane 1 sees the fsync error");
        // the next sync would succeed, but lane 0's row was in the same file
        let e = s.flush(0).await.unwrap_err();
        assert!(e.to_string().contains("abandoned"), "{e}");
        assert_eq!(e.category(), crate::classify::ErrorCategory::Transient, "the batch is redelivered");
        // redelivered rows go to a new file, which syncs fine
        s.process(&msg(r#"{"id":"a0"}"#, 0), &mut out).await.unwrap();
        s.process(&msg(r#"{"id":"b0"}"#, 1), &mut out).await.unwrap();
        s.flush(0).await.unwrap();
        s.flush(1).await.unwrap();
        assert_eq!(lines(dir.path()).0, 2, "the abandoned file is not written to again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_or_rotation_sync_abandons_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faulty::default());
        let (syncs, writes) = (faults.fail_syncs.clone(), faults.fail_writes.clone());
        let s = Sink::with_files(cfg(dir.path(), 30), faults);
        let mut out = Vec::new();
        s.process(&msg(r#"{"id":"row-1-xxxxxxxxxxxxxxx"}"#, 0), &mut out).await.unwrap();
        // the next row rotates; the old file's sync fails
        syncs.store(1, Ordering::SeqCst);
        assert!(s.process(&msg(r#"{"id":"row-2"}"#, 1), &mut out).await.is_err());
        assert!(s.flush(0).await.is_err(), "row-1's file was not synced: lane 0 must not commit");
        s.process(&msg(r#"{"id":"row-2"}"#, 1), &mut out).await.unwrap();
        writes.store(1, Ordering::SeqCst);
        assert!(s.process(&msg(r#"{"id":"row-3"}"#, 2), &mut out).await.is_err());
        assert!(s.flush(1).await.is_err(), "row-2 shared the file whose write failed");
        s.process(&msg(r#"{"id":"row-3"}"#, 2), &mut out).await.unwrap();
        s.flush(2).await.unwrap();
    }
}
