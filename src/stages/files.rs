//! `type: download` and `type: upload` — attachments.
//!
//! **download** streams the URL found at `url_field` into `cache_dir`,
//! hashing as it goes, and adds `{path, size, sha256, content_type, url}` at
//! `into`. The cache name is the SHA-256 of the URL, written to a `.part`
//! file and renamed when complete (a sidecar `.json` keeps the metadata), so
//! a redelivered message finds the file and does not fetch it again. Over
//! `max_bytes` (by `Content-Length` or while streaming) or a content type
//! outside `content_types` fails as `Permanent`; HTTP statuses are
//! classified as in the `http` stage; network errors are `Transient`.
//!
//! **upload** puts the cached file under a name rendered from the message,
//! skips it when an object of that name and size exists (idempotent),
//! writes via a temporary name and rename, removes the cache file only after
//! success, and adds `{target, name, size}` at `into`. Target today: a
//! directory; Azure Blob Storage comes with the Event Hubs work (it shares
//! the Azure client crates).

use super::http::render;
use super::map::{get, set};
use super::{Emit, Stage, StageError};
use crate::classify::{self, ErrorCategory};
use crate::config::{BlobLocation, DownloadConfig, UploadConfig, UploadTarget};
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn permanent(kind: &str, m: String) -> StageError {
    StageError::other(ErrorCategory::Permanent, kind, m)
}

fn io(e: std::io::Error, what: &str, p: &Path) -> StageError {
    StageError::Io(format!("{what} {}: {e}", p.display()))
}

pub struct Download {
    cfg: DownloadConfig,
    client: reqwest::Client,
    output: usize,
}

impl Download {
    pub fn new(cfg: DownloadConfig, output: usize) -> Result<Self, String> {
        let client = reqwest::Client::builder().timeout(cfg.timeout.get()).build().map_err(|e| e.to_string())?;
        Ok(Download { cfg, client, output })
    }

    fn type_allowed(&self, ct: &str) -> bool {
        let base = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        self.cfg.content_types.is_empty()
            || self.cfg.content_types.iter().any(|a| {
                let a = a.to_ascii_lowercase();
                a == base || a.strip_suffix("/*").is_some_and(|p| base.starts_with(&format!("{p}/")))
            })
    }

    /// Downloads `url` into the cache (or finds it there); returns the metadata.
    async fn fetch(&self, url: &str) -> Result<Value, StageError> {
        let name = hex(Sha256::digest(url.as_bytes()));
        let (path, meta) = (self.cfg.cache_dir.join(&name), self.cfg.cache_dir.join(format!("{name}.json")));
        if let Ok(m) = tokio::fs::read(&meta).await
            && let Ok(v) = serde_json::from_slice::<Value>(&m)
            && tokio::fs::metadata(&path).await.is_ok()
        {
            return Ok(v);
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
        tokio::fs::create_dir_all(&self.cfg.cache_dir).await.map_err(|e| io(e, "creating", &self.cfg.cache_dir))?;
        let part = self.cfg.cache_dir.join(format!("{name}.part"));
        let mut f = tokio::fs::File::create(&part).await.map_err(|e| io(e, "creating", &part))?;
        let (mut size, mut h) = (0u64, Sha256::new());
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| StageError::other(ErrorCategory::Transient, "read", format!("GET {url}: {e}")));
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(e);
                }
            };
            size += chunk.len() as u64;
            if size > self.cfg.max_bytes {
                drop(f);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(permanent("too_large", format!("{url}: over the limit of {} bytes", self.cfg.max_bytes)));
            }
            h.update(&chunk);
            f.write_all(&chunk).await.map_err(|e| io(e, "writing", &part))?;
        }
        f.sync_all().await.map_err(|e| io(e, "syncing", &part))?;
        drop(f);
        tokio::fs::rename(&part, &path).await.map_err(|e| io(e, "renaming", &part))?;
        let v = json!({ "path": path.display().to_string(), "size": size, "sha256": hex(h.finalize()), "content_type": ct, "url": url });
        tokio::fs::write(&meta, serde_json::to_vec(&v).expect("JSON")).await.map_err(|e| io(e, "writing", &meta))?;
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

pub struct Upload {
    pub cfg: UploadConfig,
    pub output: usize,
    blob: Option<(conveyor_blob::BlobClient, String, tokio::sync::OnceCell<()>)>,
}

/// A client for `loc`: its connection string, or its endpoint with an Entra ID
/// credential (with the `eventhubs` feature, which brings `azure_identity`).
pub fn blob_client(loc: &BlobLocation) -> Result<conveyor_blob::BlobClient, String> {
    match (&loc.connection_string, &loc.endpoint, &loc.credential) {
        (Some(cs), _, _) => conveyor_blob::BlobClient::from_connection_string(cs.expose()).map_err(|e| e.to_string()),
        #[cfg(feature = "eventhubs")]
        (None, Some(ep), Some(c)) => {
            let source = crate::checkpoint::entra_token_source(c).map_err(|e| e.to_string())?;
            conveyor_blob::BlobClient::new(ep, conveyor_blob::Credentials::Bearer(source)).map_err(|e| e.to_string())
        }
        _ => Err("blob storage needs `connection_string` (or `endpoint` + `credential` with Entra ID)".into()),
    }
}

fn blob_failure(e: conveyor_blob::BlobError) -> StageError {
    StageError::Other { category: e.category().into(), kind: "blob".into(), message: e.to_string() }
}

impl Upload {
    pub fn new(cfg: UploadConfig, output: usize) -> Result<Self, String> {
        let blob = match &cfg.target {
            UploadTarget::Dir { .. } => None,
            UploadTarget::Blob(loc) => Some((blob_client(loc)?, loc.container.clone(), tokio::sync::OnceCell::new())),
        };
        Ok(Upload { cfg, output, blob })
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
        let src_len = match tokio::fs::metadata(&src).await {
            Ok(m) => Some(m.len()),
            Err(_) => None,
        };
        let root = match &self.cfg.target {
            UploadTarget::Dir { path } => path,
            UploadTarget::Blob(BlobLocation { container, .. }) => {
                let Some(size) = self.to_blob(&src, src_len, &name, &v).await? else {
                    return Err(permanent(
                        "missing_file",
                        format!("cached file {} is gone and blob {name} was never uploaded", src.display()),
                    ));
                };
                if self.cfg.remove_cache && src_len.is_some() {
                    tokio::fs::remove_file(&src).await.map_err(|e| io(e, "removing", &src))?;
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
        let dest_len = tokio::fs::metadata(&dest).await.ok().map(|m| m.len());
        let size = match (src_len, dest_len) {
            // already uploaded (a redelivery): nothing to do
            (Some(s), Some(d)) if s == d => s,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(permanent(
                    "missing_file",
                    format!("cached file {} is gone and {} was never uploaded", src.display(), dest.display()),
                ));
            }
            (Some(s), _) => {
                if let Some(parent) = dest.parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(|e| io(e, "creating", parent))?;
                }
                let tmp = dest.with_extension("uploading");
                tokio::fs::copy(&src, &tmp).await.map_err(|e| io(e, "copying to", &tmp))?;
                tokio::fs::File::open(&tmp)
                    .await
                    .map_err(|e| io(e, "opening", &tmp))?
                    .sync_all()
                    .await
                    .map_err(|e| io(e, "syncing", &tmp))?;
                tokio::fs::rename(&tmp, &dest).await.map_err(|e| io(e, "renaming", &tmp))?;
                s
            }
        };
        if self.cfg.remove_cache && src_len.is_some() {
            tokio::fs::remove_file(&src).await.map_err(|e| io(e, "removing", &src))?;
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
        // redelivery after the cache was removed: already uploaded, fine
        let r2 = one(&u, v).await.unwrap();
        assert_eq!(r2["result"], r["result"]);
        let e =
            one(&u, json!({ "claim": "../x", "cached": { "path": "/nonexistent", "sha256": "z" } })).await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent);
    }
}
