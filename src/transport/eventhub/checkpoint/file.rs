//! The single-node file checkpoint store: `<dir>/<blob name>.json`, written
//! atomically (temp file + rename + fsync). ETags are per-file version
//! numbers compared under a process-wide lock.

use super::{Checkpoint, CheckpointStore, Ownership, prefix, wrap};
use azure_core::http::Etag;
use azure_core::time::OffsetDateTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

pub struct FileStore {
    dir: PathBuf,
    lock: Mutex<()>,
}

#[derive(Serialize, Deserialize, Default)]
struct Entry {
    version: u64,
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("file checkpoint store {path}: {source}")]
pub struct FileStoreError {
    path: String,
    source: std::io::Error,
}

impl FileStore {
    pub fn open(dir: &Path) -> std::io::Result<FileStore> {
        std::fs::create_dir_all(dir)?;
        Ok(FileStore { dir: dir.to_path_buf(), lock: Mutex::new(()) })
    }

    /// `a/b/$default/ownership/0` → `<dir>/a/b/$default/ownership/0.json`;
    /// `:` (in `host:port`) and other unusual characters are percent-encoded.
    fn path(&self, name: &str) -> PathBuf {
        let mut p = self.dir.clone();
        for seg in name.split('/').filter(|s| !s.is_empty() && *s != "." && *s != "..") {
            let safe: String = seg
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.$".contains(c) {
                        c.to_string()
                    } else {
                        format!("%{:02X}", c as u32 & 0xff)
                    }
                })
                .collect();
            p.push(safe);
        }
        p.set_extension("json");
        p
    }

    fn err(path: &Path, source: std::io::Error) -> azure_core::Error {
        wrap(FileStoreError { path: path.display().to_string(), source })
    }

    fn read(&self, path: &Path) -> azure_core::Result<Option<(Entry, SystemTime)>> {
        match std::fs::read(path) {
            Ok(b) => {
                let e: Entry = serde_json::from_slice(&b)
                    .map_err(|e| Self::err(path, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
                Ok(Some((e, mtime)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::err(path, e)),
        }
    }

    fn write(&self, path: &Path, e: &Entry) -> azure_core::Result<SystemTime> {
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(|err| Self::err(path, err))?;
        let tmp = path.with_extension("json.tmp");
        let io = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(e).unwrap_or_default())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        io().map_err(|err| Self::err(path, err))?;
        Ok(SystemTime::now())
    }

    fn list(&self, prefix: &str) -> azure_core::Result<Vec<(String, Entry, SystemTime)>> {
        let dir = self.path(&format!("{prefix}x"));
        let dir = dir.parent().unwrap_or(&self.dir).to_path_buf();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::err(&dir, e)),
        };
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let p = ent.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Some(pid) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
            if let Some((e, t)) = self.read(&p)? {
                out.push((pid, e, t));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[async_trait::async_trait]
impl CheckpointStore for FileStore {
    async fn claim_ownership(&self, ownerships: &[Ownership]) -> azure_core::Result<Vec<Ownership>> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for o in ownerships {
            let name = format!(
                "{}{}",
                prefix(&o.fully_qualified_namespace, &o.event_hub_name, &o.consumer_group, "ownership"),
                o.partition_id
            );
            let path = self.path(&name);
            let current = self.read(&path)?.map(|(e, _)| e.version);
            let expected = o.etag.as_ref().and_then(|e| e.to_string().parse::<u64>().ok());
            if current != expected {
                continue; // someone else claimed it since it was listed
            }
            let version = current.unwrap_or(0) + 1;
            let mut metadata = BTreeMap::new();
            metadata.insert("ownerid".to_string(), o.owner_id.clone().unwrap_or_default());
            let t = self.write(&path, &Entry { version, metadata })?;
            let mut o = o.clone();
            o.etag = Some(Etag::from(version.to_string()));
            o.last_modified_time = Some(OffsetDateTime::from(t));
            out.push(o);
        }
        Ok(out)
    }

    async fn list_checkpoints(&self, ns: &str, hub: &str, group: &str) -> azure_core::Result<Vec<Checkpoint>> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self
            .list(&prefix(ns, hub, group, "checkpoint"))?
            .into_iter()
            .map(|(pid, e, _)| Checkpoint {
                fully_qualified_namespace: ns.to_string(),
                event_hub_name: hub.to_string(),
                consumer_group: group.to_string(),
                partition_id: pid,
                offset: e.metadata.get("offset").cloned(),
                sequence_number: e.metadata.get("sequencenumber").and_then(|s| s.parse().ok()),
            })
            .collect())
    }

    async fn list_ownerships(&self, ns: &str, hub: &str, group: &str) -> azure_core::Result<Vec<Ownership>> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self
            .list(&prefix(ns, hub, group, "ownership"))?
            .into_iter()
            .map(|(pid, e, t)| Ownership {
                fully_qualified_namespace: ns.to_string(),
                event_hub_name: hub.to_string(),
                consumer_group: group.to_string(),
                partition_id: pid,
                owner_id: e.metadata.get("ownerid").filter(|s| !s.is_empty()).cloned(),
                etag: Some(Etag::from(e.version.to_string())),
                last_modified_time: Some(OffsetDateTime::from(t)),
            })
            .collect())
    }

    async fn update_checkpoint(&self, c: Checkpoint) -> azure_core::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let name = format!(
            "{}{}",
            prefix(&c.fully_qualified_namespace, &c.event_hub_name, &c.consumer_group, "checkpoint"),
            c.partition_id
        );
        let path = self.path(&name);
        let version = self.read(&path)?.map(|(e, _)| e.version).unwrap_or(0) + 1;
        let mut metadata = BTreeMap::new();
        if let Some(o) = c.offset {
            metadata.insert("offset".to_string(), o);
        }
        if let Some(s) = c.sequence_number {
            metadata.insert("sequencenumber".to_string(), s.to_string());
        }
        self.write(&path, &Entry { version, metadata })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(pid: &str, owner: &str, etag: Option<Etag>) -> Ownership {
        Ownership {
            fully_qualified_namespace: "127.0.0.1:5672".into(),
            event_hub_name: "Hub".into(),
            consumer_group: "$Default".into(),
            partition_id: pid.into(),
            owner_id: Some(owner.into()),
            etag,
            last_modified_time: None,
        }
    }

    #[tokio::test]
    async fn claims_are_conditional_and_checkpoints_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let a = s.claim_ownership(&[own("0", "a", None), own("1", "a", None)]).await.unwrap();
        assert_eq!(a.len(), 2);
        // b listed before a's claim (no etag): its create-only claim loses
        assert!(s.claim_ownership(&[own("0", "b", None)]).await.unwrap().is_empty());
        let listed = s.list_ownerships("127.0.0.1:5672", "Hub", "$Default").await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].owner_id.as_deref(), Some("a"));
        // b claims with the listed etag: wins; a's renewal with its old etag loses
        let b = s.claim_ownership(&[own("0", "b", listed[0].etag.clone())]).await.unwrap();
        assert_eq!(b.len(), 1);
        assert!(s.claim_ownership(&[own("0", "a", a[0].etag.clone())]).await.unwrap().is_empty());
        s.update_checkpoint(Checkpoint {
            fully_qualified_namespace: "127.0.0.1:5672".into(),
            event_hub_name: "Hub".into(),
            consumer_group: "$Default".into(),
            partition_id: "1".into(),
            offset: Some("4096".into()),
            sequence_number: Some(41),
        })
        .await
        .unwrap();
        let cps = s.list_checkpoints("127.0.0.1:5672", "hub", "$default").await.unwrap();
        assert_eq!(cps.len(), 1);
        assert_eq!(
            (cps[0].partition_id.as_str(), cps[0].sequence_number, cps[0].offset.as_deref()),
            ("1", Some(41), Some("4096"))
        );
        assert!(dir.path().join("127.0.0.1%3A5672/hub/$default/checkpoint/1.json").exists());
    }
}
