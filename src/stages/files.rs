//! `type: download` and `type: upload` — attachments.
//!
//! **download** streams the URL found at `url_field` into `cache_dir`,
//! hashing as it goes, and adds `{path, size, sha256, content_type, url}` at
//! `into`. The cache name is the SHA-256 of the URL; the body is written to a
//! `.part` file, synced, and renamed when complete, then a sidecar `.json`
//! keeps the metadata, so a redelivered message finds the file and does not
//! fetch it again. Bodies up to 1 MiB are kept in memory and written in one
//! blocking call; bigger ones spill to the `.part` file as they stream. Over
//! `max_bytes` (by `Content-Length` or while streaming) or a content type
//! outside `content_types` fails as `Permanent`; HTTP statuses are
//! classified as in the `http` stage; network errors are `Transient`.
//!
//! **upload** puts the cached file under a name rendered from the message
//! and adds `{target, name, size}` at `into`; it is idempotent (a
//! redelivery finds the object in place). To a directory it renames the
//! cached file into place when it removes the cache (`remove_cache`, the
//! default; the target's directories are created when the rename finds them
//! missing, not checked per file), and otherwise hard-links it under a
//! temporary name and renames that, unless an object of that name and size
//! exists: no copy and no new inode when cache and target share a file
//! system, a synced copy when they do not. To Azure Blob Storage it puts
//! the blob unless one of that name and size exists. It removes the cache file (and a download's
//! metadata) only after success.
//!
//! All file work of one message is one job of the stage's [`work`] queue:
//! jobs run in groups on the blocking pool, each directory a group changed
//! is synced once, and each job is answered after that (a message's outputs
//! never name a file whose directory entry is not on disk).

mod work;

use super::json::{get, render, set};
use super::{BuildError, Emit, Stage, StageError};
use crate::classify::{self, ErrorCategory};
use crate::config::{BlobLocation, DownloadConfig, UploadConfig, UploadTarget};
use crate::fsync::DirSyncs;
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use work::{FileWork, KeyGuard, KeyLocks};

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn permanent(kind: &str, m: String) -> StageError {
    StageError::other(ErrorCategory::Permanent, kind, m)
}

fn io(e: std::io::Error, what: &str, p: &Path) -> StageError {
    StageError::Io(format!("{what} {}: {e}", p.display()))
}

/// Runs blocking file work on tokio's blocking pool, on its own (a big
/// body's chunks as they stream: no directory changes, nothing to group).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> Result<T, StageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StageError::Io(format!("file task failed: {e}")))?
}

/// A downloaded body is kept in memory up to this size, then spilled to its
/// `.part` file as it streams.
const SPILL_BYTES: usize = 1 << 20;

/// The extended attribute that holds a download cache file's metadata. File
/// systems without user xattrs get a `<name>.json` sidecar instead (one more
/// file to create and delete per download).
const META_XATTR: &str = "user.conveyor.download";

/// A cache file's metadata: its xattr, else its sidecar (`None` if neither,
/// or if the file itself is missing).
fn read_meta(path: &Path, sidecar_path: &Path) -> Option<Value> {
    let mut buf = [0u8; 4096];
    let v = match rustix::fs::getxattr(path, META_XATTR, &mut buf[..]) {
        Ok(n) => serde_json::from_slice::<Value>(&buf[..n]).ok(),
        // no cache file: no sidecar to look for (the common case, one call)
        Err(rustix::io::Errno::NOENT) => return None,
        Err(_) => None,
    };
    match v {
        Some(v) => Some(v),
        None => std::fs::read(sidecar_path)
            .ok()
            .and_then(|m| serde_json::from_slice::<Value>(&m).ok())
            .filter(|_| std::fs::metadata(path).is_ok()),
    }
}

/// Whether the download cache holds `path`: one `access` call, made on the
/// runtime thread. It resolves a name in a directory the stage keeps using,
/// so its entries are in the kernel's cache; a thread hand-off would cost
/// more than the call.
fn cached_file_exists(path: &Path) -> bool {
    !matches!(
        rustix::fs::access(path, rustix::fs::Access::EXISTS),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)
    )
}

/// The metadata sidecar of a download cache file (`<sha256 of the URL>`).
fn sidecar(cache_file: &Path) -> Option<PathBuf> {
    let name = cache_file.file_name()?.to_str()?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| cache_file.with_file_name(format!("{name}.json")))
}

/// Writes `data` to `f`, creating `part` first if needed (and its
/// directory, only when the create finds it missing: no check per file).
fn append(f: Option<std::fs::File>, part: &Path, data: &[u8]) -> Result<std::fs::File, StageError> {
    use std::io::Write;
    let mut f = match f {
        Some(f) => f,
        None => match std::fs::File::create(part) {
            Ok(f) => f,
            Err(e) => match part.parent() {
                Some(dir) if e.kind() == std::io::ErrorKind::NotFound => {
                    crate::fsync::create_dir_all(dir).map_err(|e| io(e, "creating", dir))?;
                    std::fs::File::create(part).map_err(|e| io(e, "creating", part))?
                }
                _ => return Err(io(e, "creating", part)),
            },
        },
    };
    f.write_all(data).map_err(|e| io(e, "writing", part))?;
    Ok(f)
}

pub struct Download {
    cfg: DownloadConfig,
    client: reqwest::Client,
    output: usize,
    work: FileWork,
    /// A lock per cache name being fetched: messages with the same URL
    /// fetch it one at a time (the second finds the first's file), never
    /// writing one `.part` file together.
    fetching: KeyLocks,
}

impl Download {
    pub fn new(cfg: DownloadConfig, output: usize) -> Result<Self, BuildError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout.get())
            .build()
            .map_err(|e| BuildError::HttpClient(e.to_string()))?;
        Ok(Download { cfg, client, output, work: FileWork::default(), fetching: KeyLocks::default() })
    }

    fn type_allowed(&self, ct: &str) -> bool {
        let base = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        self.cfg.content_types.is_empty()
            || self.cfg.content_types.iter().any(|a| {
                let a = a.to_ascii_lowercase();
                a == base || a.strip_suffix("/*").is_some_and(|p| base.starts_with(&format!("{p}/")))
            })
    }

    /// Downloads `url` into the cache (or finds it there), one fetch per
    /// URL at a time; returns the metadata.
    async fn fetch(&self, url: &str) -> Result<Value, StageError> {
        let name = hex(Sha256::digest(url.as_bytes()));
        // held by every piece of file work on this name, also the pieces
        // that outlive this call when its message is cancelled
        let key = self.fetching.lock(&name).await;
        self.fetch_unshared(url, &name, &key).await
    }

    async fn fetch_unshared(&self, url: &str, name: &str, key: &Arc<KeyGuard>) -> Result<Value, StageError> {
        let (path, meta) = (self.cfg.cache_dir.join(name), self.cfg.cache_dir.join(format!("{name}.json")));
        // a miss (no cache file: the common case) costs one lookup here; a
        // hit reads its metadata as a job, which also syncs the cache
        // directory: the file may be another message's download whose
        // rename is not yet synced
        if cached_file_exists(&path) {
            let (p2, m2, dir) = (path.clone(), meta.clone(), self.cfg.cache_dir.clone());
            let hit = self
                .work
                .run(move |dirs| {
                    let v = read_meta(&p2, &m2);
                    if v.is_some() {
                        dirs.dir(&dir);
                    }
                    Ok(v)
                })
                .await?;
            if let Some(v) = hit {
                return Ok(v);
            }
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| permanent("bad_url", format!("URL {url:?}: {e}")))?;
        let mut resp = self.client.get(parsed).send().await.map_err(|e| {
            let kind = if e.is_timeout() { "timeout" } else { "connect" };
            StageError::other(ErrorCategory::Transient, kind, format!("GET {url}: {e}"))
        })?;
        let status = resp.status().as_u16();
        if let Some(cat) = classify::http_status(status) {
            return Err(StageError::other(cat, "http_status", format!("HTTP {status} from GET {url}")));
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        if !self.type_allowed(&ct) {
            return Err(permanent("content_type", format!("{url}: content type {ct:?} is not allowed")));
        }
        if let Some(len) = resp.content_length().filter(|l| *l > self.cfg.max_bytes) {
            return Err(permanent(
                "too_large",
                format!("{url}: {len} bytes is over the limit of {}", self.cfg.max_bytes),
            ));
        }
        let part = self.cfg.cache_dir.join(format!("{name}.part"));
        // small bodies stay in memory and reach the disk in one blocking
        // call; bigger ones spill to the `.part` file as they stream
        let (mut size, mut h) = (0u64, Sha256::new());
        let mut buf: Vec<u8> = Vec::new();
        let mut file: Option<std::fs::File> = None;
        let failed = loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break None,
                Err(e) => break Some(StageError::other(ErrorCategory::Transient, "read", format!("GET {url}: {e}"))),
            };
            size += chunk.len() as u64;
            if size > self.cfg.max_bytes {
                break Some(permanent("too_large", format!("{url}: over the limit of {} bytes", self.cfg.max_bytes)));
            }
            h.update(&chunk);
            buf.extend_from_slice(&chunk);
            if buf.len() >= SPILL_BYTES {
                let (data, f, p, k) = (std::mem::take(&mut buf), file.take(), part.clone(), key.clone());
                let spill = move || {
                    let _key = k;
                    append(f, &p, &data)
                };
                match blocking(spill).await {
                    Ok(f) => file = Some(f),
                    Err(e) => break Some(e),
                }
            }
        };
        if let Some(e) = failed {
            // a `.part` file exists only once the body spilled
            if file.take().is_some() {
                let _ = tokio::fs::remove_file(&part).await;
            }
            return Err(e);
        }
        let v = json!({ "path": path.display().to_string(), "size": size, "sha256": hex(h.finalize()), "content_type": ct, "url": url });
        let metadata = serde_json::to_vec(&v).expect("JSON");
        let k = key.clone();
        self.work
            .run(move |dirs| {
                let _key = k;
                let f = append(file, &part, &buf)?;
                // the metadata rides on the file (synced with it) where the file
                // system allows; otherwise the data is on disk before the
                // sidecar that vouches for it
                let on_file = metadata.len() <= 4096
                    && rustix::fs::fsetxattr(&f, META_XATTR, &metadata, rustix::fs::XattrFlags::empty()).is_ok();
                f.sync_all().map_err(|e| io(e, "syncing", &part))?;
                drop(f);
                // the rename is durable once the directory is synced
                if !on_file {
                    crate::fsync::write(&meta, &metadata).map_err(|e| io(e, "writing", &meta))?;
                }
                crate::fsync::rename_deferred(&part, &path, dirs).map_err(|e| io(e, "renaming", &part))
            })
            .await?;
        Ok(v)
    }
}

#[async_trait]
impl Stage for Download {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let mut v: Value = serde_json::from_slice(&msg.payload).map_err(|e| StageError::InvalidJson(e.to_string()))?;
        let url = get(&v, &self.cfg.url_field)
            .and_then(Value::as_str)
            .ok_or_else(|| StageError::MissingField(self.cfg.url_field.clone()))?
            .to_string();
        let meta = self.fetch(&url).await?;
        set(&mut v, &self.cfg.into, meta);
        let mut m = OutboundMessage::from_message(msg);
        m.payload = serde_json::to_vec(&v).expect("JSON").into();
        out.push(Emit { output: self.output, message: m });
        Ok(())
    }
}

/// Puts the cached file `src` at `dest` under a directory target and
/// returns its size. Idempotent (a redelivery finds `src` gone and `dest`
/// there), and `dest` appears whole or not at all:
/// - with `remove_cache`, the cache file is renamed into place: one rename,
///   no copy, no second name to clean up;
/// - without it, or across file systems, the cache file is hard-linked (or
///   copied and synced) under a temporary name, which is renamed into place.
///
/// With `remove_cache`, the target's directories are created only when the
/// rename finds them missing (no check per file). The syncs of `dest`'s
/// directory are left to `dirs`, also when `dest` is found in place (it may
/// be another message's move, not yet synced). Returns the size, and
/// whether the cache file is left for the caller to remove once the job is
/// answered (a copy: `dest` must be on disk before its source goes).
fn place_in_dir(src: &Path, dest: &Path, remove_cache: bool, dirs: &mut DirSyncs) -> Result<(u64, bool), StageError> {
    let Ok(src_len) = std::fs::metadata(src).map(|m| m.len()) else {
        // already uploaded (a redelivery), or never cached
        let len = std::fs::metadata(dest).map(|m| m.len()).map_err(|_| {
            permanent(
                "missing_file",
                format!("cached file {} is gone and {} was never uploaded", src.display(), dest.display()),
            )
        })?;
        // only a directory that exists: a job's own failure must not fail
        // its group's sync
        dirs.parent_of(dest);
        return Ok((len, false));
    };
    if remove_cache {
        match crate::fsync::move_creating_dirs_deferred(src, dest, dirs) {
            Ok(()) => {
                // the metadata that vouched for the cache file: on the inode
                // (now the object's), else in a sidecar
                if rustix::fs::removexattr(dest, META_XATTR).is_err()
                    && let Some(m) = sidecar(src)
                {
                    let _ = std::fs::remove_file(m);
                }
                return Ok((src_len, false));
            }
            // another file system: copy below
            Err(e) if rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::XDEV) => {}
            Err(e) => return Err(io(e, "renaming", src)),
        }
    }
    let dest_len = std::fs::metadata(dest).ok().map(|m| m.len());
    if dest_len != Some(src_len) {
        let tmp = dest.with_extension("uploading");
        let _ = std::fs::remove_file(&tmp);
        if let Some(parent) = dest.parent() {
            crate::fsync::create_dir_all(parent).map_err(|e| io(e, "creating", parent))?;
        }
        // same file system: a hard link shares the cached data, already
        // synced by the download (no copy, no new inode); otherwise a copy,
        // synced. Neither replaces a temporary name another job has just
        // made (it fails, and the message is tried again): a copy onto
        // another job's link would truncate the cached file itself.
        match std::fs::hard_link(src, &tmp) {
            Ok(()) => {
                if remove_cache {
                    // the shared inode carries the cache's metadata
                    let _ = rustix::fs::removexattr(&tmp, META_XATTR);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(io(e, "linking to", &tmp)),
            Err(_) => copy_new(src, &tmp)?,
        }
        crate::fsync::rename_deferred(&tmp, dest, dirs).map_err(|e| io(e, "renaming", &tmp))?;
    } else {
        dirs.parent_of(dest);
    }
    Ok((src_len, remove_cache))
}

/// Removes a cache file and its metadata sidecar.
fn remove_cached(src: &Path) -> Result<(), StageError> {
    std::fs::remove_file(src).map_err(|e| io(e, "removing", src))?;
    if let Some(m) = sidecar(src) {
        let _ = std::fs::remove_file(m);
    }
    Ok(())
}

/// Copies `src` to the new file `dest` (never an existing one) and syncs it.
fn copy_new(src: &Path, dest: &Path) -> Result<(), StageError> {
    let mut from = std::fs::File::open(src).map_err(|e| io(e, "opening", src))?;
    let mut to =
        std::fs::OpenOptions::new().write(true).create_new(true).open(dest).map_err(|e| io(e, "creating", dest))?;
    std::io::copy(&mut from, &mut to).map_err(|e| io(e, "copying to", dest))?;
    to.sync_all().map_err(|e| io(e, "syncing", dest))
}

pub struct Upload {
    pub cfg: UploadConfig,
    pub output: usize,
    blob: Option<(conveyor_blob::BlobClient, String, tokio::sync::OnceCell<()>)>,
    work: FileWork,
    /// A lock per object being placed.
    placing: KeyLocks,
}

fn blob_failure(e: conveyor_blob::BlobError) -> StageError {
    StageError::Other { category: e.category().into(), kind: "blob".into(), message: e.to_string() }
}

impl Upload {
    pub fn new(cfg: UploadConfig, output: usize) -> Result<Self, BuildError> {
        let blob = match &cfg.target {
            UploadTarget::Dir { .. } => None,
            UploadTarget::Blob(loc) => {
                Some((crate::azure::blob_client(loc)?, loc.container.clone(), tokio::sync::OnceCell::new()))
            }
        };
        Ok(Upload { cfg, output, blob, work: FileWork::default(), placing: KeyLocks::default() })
    }

    /// Puts `src` as blob `name` unless a blob of that size exists; returns
    /// the size, or `None` when the source is gone and nothing was uploaded.
    async fn to_blob(
        &self,
        src: &Path,
        src_len: Option<u64>,
        name: &str,
        v: &Value,
    ) -> Result<Option<u64>, StageError> {
        let Some((client, container, created)) = &self.blob else { return Ok(None) };
        created
            .get_or_try_init(|| async { client.create_container(container).await.map(|_| ()) })
            .await
            .map_err(blob_failure)?;
        let existing = client.properties(container, name).await.map_err(blob_failure)?;
        match (src_len, existing) {
            (Some(s), Some(p)) if p.size == s => Ok(Some(s)),
            (None, Some(p)) => Ok(Some(p.size)),
            (None, None) => Ok(None),
            (Some(s), _) => {
                let body = tokio::fs::read(src).await.map_err(|e| io(e, "reading", src))?;
                let ct = get(v, "cached.content_type").and_then(Value::as_str);
                let opts = conveyor_blob::PutOptions { content_type: ct, ..Default::default() };
                client.put(container, name, body.into(), opts).await.map_err(blob_failure)?;
                Ok(Some(s))
            }
        }
    }
}

#[async_trait]
impl Stage for Upload {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let mut v: Value = serde_json::from_slice(&msg.payload).map_err(|e| StageError::InvalidJson(e.to_string()))?;
        let src = PathBuf::from(
            get(&v, &self.cfg.path_field)
                .and_then(Value::as_str)
                .ok_or_else(|| StageError::MissingField(self.cfg.path_field.clone()))?,
        );
        let name = render(&self.cfg.name, &v, false);
        if name.is_empty() || name.split('/').any(|s| s.is_empty() || s == "..") {
            return Err(permanent("bad_name", format!("object name {name:?} is empty or escapes the target")));
        }
        let root = match &self.cfg.target {
            UploadTarget::Dir { path } => path,
            UploadTarget::Blob(BlobLocation { container, .. }) => {
                let src_len = tokio::fs::metadata(&src).await.ok().map(|m| m.len());
                let Some(size) = self.to_blob(&src, src_len, &name, &v).await? else {
                    return Err(permanent(
                        "missing_file",
                        format!("cached file {} is gone and blob {name} was never uploaded", src.display()),
                    ));
                };
                if self.cfg.remove_cache && src_len.is_some() {
                    let src = src.clone();
                    blocking(move || remove_cached(&src)).await?;
                }
                let target = format!("{}/{container}", self.blob.as_ref().map(|b| b.0.endpoint()).unwrap_or_default());
                set(&mut v, &self.cfg.into, json!({ "target": target, "name": name, "size": size }));
                let mut m = OutboundMessage::from_message(msg);
                m.payload = serde_json::to_vec(&v).expect("JSON").into();
                out.push(Emit { output: self.output, message: m });
                return Ok(());
            }
        };
        let dest = root.join(&name);
        let remove_cache = self.cfg.remove_cache;
        // one job at a time per object: they share its temporary name
        let key = self.placing.lock(&dest.to_string_lossy()).await;
        let (s2, k) = (src.clone(), key.clone());
        let (size, remove) = self
            .work
            .run(move |dirs| {
                let _key = k;
                place_in_dir(&s2, &dest, remove_cache, dirs)
            })
            .await?;
        if remove {
            blocking(move || {
                let _key = key;
                remove_cached(&src)
            })
            .await?;
        }
        set(&mut v, &self.cfg.into, json!({ "target": root.display().to_string(), "name": name, "size": size }));
        let mut m = OutboundMessage::from_message(msg);
        m.payload = serde_json::to_vec(&v).expect("JSON").into();
        out.push(Emit { output: self.output, message: m });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::{Path as AxPath, State};
    use axum::routing::get as route_get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    async fn server(hits: Arc<AtomicU32>) -> std::net::SocketAddr {
        let app = Router::new()
            .route(
                "/f/{name}",
                route_get(|State(h): State<Arc<AtomicU32>>, AxPath(name): AxPath<String>| async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    match name.as_str() {
                        "doc.pdf" => ([("content-type", "application/pdf")], vec![7u8; 3000]).into_response(),
                        "big.pdf" => ([("content-type", "application/pdf")], vec![1u8; 200_000]).into_response(),
                        "large.pdf" => ([("content-type", "application/pdf")], vec![3u8; 2_500_000]).into_response(),
                        "page.html" => ([("content-type", "text/html")], b"<html/>".to_vec()).into_response(),
                        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
                    }
                }),
            )
            .with_state(hits);
        use axum::response::IntoResponse;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        a
    }

    fn msg(v: Value) -> PipelineMessage {
        crate::stages::test_message(&serde_json::to_vec(&v).unwrap())
    }

    async fn one(s: &dyn Stage, v: Value) -> Result<Value, StageError> {
        let mut out = Vec::new();
        s.process(&msg(v), &mut out).await?;
        Ok(serde_json::from_slice(&out[0].message.payload).unwrap())
    }

    /// A download of the URL at `url_field` into `dir/cache`, any content type.
    fn download_of(url_field: &str, dir: &Path, max_bytes: u64) -> Download {
        let cfg = DownloadConfig {
            url_field: url_field.into(),
            cache_dir: dir.join("cache"),
            max_bytes,
            content_types: vec![],
            timeout: crate::config::Dur::secs(5),
            into: "cached".into(),
        };
        Download::new(cfg, 0).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_with_one_url_at_once_fetch_it_once() {
        let hits = Arc::new(AtomicU32::new(0));
        let a = server(hits.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let d = download_of("url", dir.path(), 10_000_000);
        // a body big enough to spill to its `.part` file while streaming
        let input = json!({ "url": format!("http://{a}/f/large.pdf") });
        let all = futures::future::join_all((0..8).map(|_| one(&d, input.clone()))).await;
        let first = all[0].as_ref().unwrap().clone();
        for v in &all {
            assert_eq!(v.as_ref().unwrap()["cached"], first["cached"]);
        }
        assert_eq!(first["cached"]["sha256"], hex(Sha256::digest(vec![3u8; 2_500_000])));
        assert_eq!(hits.load(Ordering::Relaxed), 1, "the others waited and found the file");
        assert_eq!(d.fetching.len(), 0, "no lock is left behind");
    }

    #[test]
    fn a_copy_never_writes_over_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (src, tmp) = (dir.path().join("src"), dir.path().join("obj.uploading"));
        std::fs::write(&src, b"cached body").unwrap();
        // another job's link to the cached file under the temporary name
        std::fs::hard_link(&src, &tmp).unwrap();
        assert!(copy_new(&src, &tmp).is_err());
        assert_eq!(std::fs::read(&src).unwrap(), b"cached body", "the cached file is intact");
        std::fs::remove_file(&tmp).unwrap();
        copy_new(&src, &tmp).unwrap();
        assert_eq!(std::fs::read(&tmp).unwrap(), b"cached body");
    }

    #[tokio::test]
    async fn download_then_upload_once_each() {
        let hits = Arc::new(AtomicU32::new(0));
        let a = server(hits.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let d = Download::new(
            DownloadConfig {
                url_field: "att.url".into(),
                cache_dir: dir.path().join("cache"),
                max_bytes: 100_000,
                content_types: vec!["application/pdf".into(), "image/*".into()],
                timeout: crate::config::Dur::secs(5),
                into: "cached".into(),
            },
            0,
        )
        .unwrap();
        let input = json!({ "claim": "c1", "att": { "url": format!("http://{a}/f/doc.pdf") } });
        let v = one(&d, input.clone()).await.unwrap();
        assert_eq!(v["cached"]["size"], 3000);
        assert_eq!(v["cached"]["sha256"], hex(Sha256::digest(vec![7u8; 3000])));
        let again = one(&d, input.clone()).await.unwrap();
        assert_eq!(again["cached"], v["cached"]);
        assert_eq!(hits.load(Ordering::Relaxed), 1, "cached: downloaded once");

        let big = one(&d, json!({ "att": { "url": format!("http://{a}/f/big.pdf") } })).await.unwrap_err();
        assert_eq!((big.category(), big.kind()), (ErrorCategory::Permanent, "too_large"));
        let html = one(&d, json!({ "att": { "url": format!("http://{a}/f/page.html") } })).await.unwrap_err();
        assert_eq!(html.kind(), "content_type");
        let missing = one(&d, json!({ "att": { "url": format!("http://{a}/f/none") } })).await.unwrap_err();
        assert_eq!(missing.category(), ErrorCategory::Permanent);
        let bad = one(&d, json!({ "att": { "url": "nope" } })).await.unwrap_err();
        assert_eq!(bad.kind(), "bad_url");
        let down = one(&d, json!({ "att": { "url": "http://127.0.0.1:1/x" } })).await.unwrap_err();
        assert_eq!(down.category(), ErrorCategory::Transient);
        assert!(
            std::fs::read_dir(dir.path().join("cache")).unwrap().all(|e| !e
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".part"))
        );

        let u = Upload::new(
            UploadConfig {
                path_field: "cached.path".into(),
                target: UploadTarget::Dir { path: dir.path().join("store") },
                name: "{{claim}}/{{cached.sha256}}.pdf".into(),
                into: "result".into(),
                remove_cache: true,
            },
            0,
        )
        .unwrap();
        let r = one(&u, v.clone()).await.unwrap();
        let dest = dir.path().join("store").join(r["result"]["name"].as_str().unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; 3000]);
        assert!(!Path::new(v["cached"]["path"].as_str().unwrap()).exists(), "cache removed after success");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("cache")).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "the cache file and its metadata sidecar are gone: {left:?}");
        // redelivery after the cache was removed: already uploaded, fine
        let r2 = one(&u, v).await.unwrap();
        assert_eq!(r2["result"], r["result"]);

        // metadata too big for the xattr (a long URL): kept in a sidecar,
        // found again on redelivery, removed with the cache file
        let long = json!({ "claim": "c4", "att": { "url": format!("http://{a}/f/doc.pdf?pad={}", "p".repeat(5000)) } });
        let sv = one(&d, long.clone()).await.unwrap();
        let before = hits.load(Ordering::Relaxed);
        assert_eq!(one(&d, long).await.unwrap()["cached"], sv["cached"]);
        assert_eq!(hits.load(Ordering::Relaxed), before, "found through the sidecar: not fetched again");
        let cache_file = PathBuf::from(sv["cached"]["path"].as_str().unwrap());
        assert!(sidecar(&cache_file).unwrap().exists());
        one(&u, sv).await.unwrap();
        assert!(!cache_file.exists() && !sidecar(&cache_file).unwrap().exists());

        // a body over the in-memory limit streams through its .part file
        let d2 = Download::new(DownloadConfig { max_bytes: 10_000_000, ..d.cfg.clone() }, 0).unwrap();
        let lv = one(&d2, json!({ "claim": "c2", "att": { "url": format!("http://{a}/f/large.pdf") } })).await.unwrap();
        assert_eq!(lv["cached"]["size"], 2_500_000);
        assert_eq!(lv["cached"]["sha256"], hex(Sha256::digest(vec![3u8; 2_500_000])));
        let lr = one(&u, lv).await.unwrap();
        let ldest = dir.path().join("store").join(lr["result"]["name"].as_str().unwrap());
        assert_eq!(std::fs::read(&ldest).unwrap(), vec![3u8; 2_500_000]);

        // a file that is not a download cache entry: its neighbours stay
        let own = dir.path().join("report");
        std::fs::write(&own, b"mine").unwrap();
        std::fs::write(dir.path().join("report.json"), b"{}").unwrap();
        let ov = json!({ "claim": "c3", "cached": { "path": own.display().to_string(), "sha256": "abc" } });
        one(&u, ov).await.unwrap();
        assert!(!own.exists(), "uploaded and removed");
        assert!(dir.path().join("report.json").exists(), "not a cache sidecar: kept");
        let e =
            one(&u, json!({ "claim": "../x", "cached": { "path": "/nonexistent", "sha256": "z" } })).await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent);
    }

    #[tokio::test]
    async fn an_upload_that_keeps_the_cache_links_it_and_the_cache_still_answers() {
        let hits = Arc::new(AtomicU32::new(0));
        let a = server(hits.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let d = download_of("url", dir.path(), 100_000);
        let u = Upload::new(
            UploadConfig {
                path_field: "cached.path".into(),
                target: UploadTarget::Dir { path: dir.path().join("out") },
                name: "{{claim}}/doc.pdf".into(),
                into: "result".into(),
                remove_cache: false,
            },
            0,
        )
        .unwrap();
        let input = json!({ "claim": "k1", "url": format!("http://{a}/f/doc.pdf") });
        let v = one(&d, input.clone()).await.unwrap();
        let r = one(&u, v.clone()).await.unwrap();
        let dest = dir.path().join("out/k1/doc.pdf");
        assert_eq!(r["result"]["size"], 3000);
        assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; 3000]);
        let cache = PathBuf::from(v["cached"]["path"].as_str().unwrap());
        assert!(cache.exists(), "the cache file stays");
        // the cache entry still vouches for itself: no second fetch
        assert_eq!(one(&d, input).await.unwrap()["cached"], v["cached"]);
        assert_eq!(hits.load(Ordering::Relaxed), 1);
        // a redelivery finds the object in place
        assert_eq!(one(&u, v).await.unwrap()["result"], r["result"]);
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("out/k1")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("doc.pdf")], "no temporary name left");
    }
}
