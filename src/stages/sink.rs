//! `type: sink` — rows to rotated JSON Lines files.
//!
//! Each message must be JSON; it is written as one line (compacted if it
//! spans several). Lines are buffered and the file is `fsync`'d in
//! [`Stage::flush`], which the worker calls before committing the batch: a
//! committed position always has its rows on disk. A crash between write
//! and commit re-delivers the batch, so a row may appear twice (at least
//! once; de-duplicate by an id column downstream). Files rotate by size and
//! age and are named `<prefix>-<UTC time>-<n>.jsonl`; a new process never
//! appends to an old file.

use super::{Emit, Stage, StageError};
use crate::config::SinkConfig;
use crate::transport::PipelineMessage;
use async_trait::async_trait;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

pub struct Sink {
    cfg: SinkConfig,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    file: Option<Open>,
    seq: u64,
}

struct Open {
    writer: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
}

impl Sink {
    pub fn new(cfg: SinkConfig) -> Self {
        Sink { cfg, state: Arc::new(Mutex::new(State::default())) }
    }
}

fn io(e: std::io::Error, what: &str, path: &std::path::Path) -> StageError {
    StageError::Io(format!("{what} {}: {e}", path.display()))
}

impl State {
    fn writer(&mut self, cfg: &SinkConfig) -> Result<&mut Open, StageError> {
        let rotate = self
            .file
            .as_ref()
            .is_some_and(|f| f.bytes >= cfg.max_file_bytes || f.opened.elapsed() >= cfg.max_file_age.get());
        if rotate && let Some(mut f) = self.file.take() {
            f.writer.flush().map_err(|e| io(e, "writing", &f.path))?;
            f.writer.get_ref().sync_data().map_err(|e| io(e, "syncing", &f.path))?;
        }
        if self.file.is_none() {
            std::fs::create_dir_all(&cfg.dir).map_err(|e| io(e, "creating", &cfg.dir))?;
            let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace([':', '-'], "");
            self.seq += 1;
            let path = cfg.dir.join(format!("{}-{stamp}-{}-{}.jsonl", cfg.prefix, std::process::id(), self.seq));
            let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io(e, "opening", &path))?;
            self.file = Some(Open {
                writer: BufWriter::with_capacity(256 << 10, file),
                path,
                bytes: 0,
                opened: Instant::now(),
            });
        }
        Ok(self.file.as_mut().expect("opened above"))
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
        let f = st.writer(&self.cfg)?;
        f.writer.write_all(line).and_then(|_| f.writer.write_all(b"\n")).map_err(|e| io(e, "writing", &f.path))?;
        f.bytes += line.len() as u64 + 1;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StageError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut st = state.lock().unwrap();
            if let Some(f) = st.file.as_mut() {
                f.writer.flush().map_err(|e| io(e, "writing", &f.path))?;
                f.writer.get_ref().sync_data().map_err(|e| io(e, "syncing", &f.path))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| StageError::Io(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn msg(p: &str) -> PipelineMessage {
        crate::stages::test_message(p.as_bytes())
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_compact_lines_rotates_and_rejects_non_json() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sink::new(SinkConfig {
            dir: dir.path().into(),
            prefix: "r".into(),
            max_file_bytes: 40,
            max_file_age: Dur::secs(3600),
        });
        let mut out = Vec::new();
        for i in 0..5 {
            s.process(&msg(&format!("{{\"id\":{i},\n \"x\":\"abcdefghij\"}}")), &mut out).await.unwrap();
        }
        s.flush().await.unwrap();
        let (files, rows) = lines(dir.path());
        assert_eq!(rows.len(), 5);
        assert!(files >= 3, "rotated by size: {files}");
        assert_eq!(rows[0], r#"{"id":0,"x":"abcdefghij"}"#);
        assert!(out.is_empty());
        let e = s.process(&msg("not json"), &mut out).await.unwrap_err();
        assert_eq!(e.category(), crate::classify::ErrorCategory::Permanent);
    }
}
