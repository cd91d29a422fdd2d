//! A small Azure Blob Storage REST client: just what Conveyor needs for an Event Hubs
//! checkpoint store (ETag-conditional ownership claims) and an upload stage.
//!
//! # What it does
//!
//! | call | REST operation |
//! | --- | --- |
//! | [`BlobClient::create_container`] | `Create Container` (`PUT ?restype=container`); `false` if it existed |
//! | [`BlobClient::list`] | `List Blobs` with `include=metadata`, following `NextMarker` to the end |
//! | [`BlobClient::put`] | `Put Blob` of a block blob, in **one** request |
//! | [`BlobClient::set_metadata`] | `Set Blob Metadata` (`PUT ?comp=metadata`), replaces all metadata |
//! | [`BlobClient::get`] | `Get Blob`, the whole blob into memory |
//! | [`BlobClient::properties`] | `Get Blob Properties` (`HEAD`); `None` on any 404 |
//! | [`BlobClient::delete`] | `Delete Blob`; `false` on any 404 |
//!
//! Requests carry `x-ms-version: 2021-08-06` ([`API_VERSION`]).
//!
//! # Credentials
//!
//! * [`Credentials::SharedKey`]: the account key signs every request (`Authorization:
//!   SharedKey account:signature`). Works against Azure and Azurite.
//! * [`Credentials::Sas`]: a SAS query string (without `?`) appended to every URL. Needs
//!   the permissions of the calls made (create/list/read/write/delete).
//! * [`Credentials::Bearer`]: an Entra ID access token for the scope
//!   `https://storage.azure.com/.default`, asked from the caller's [`TokenSource`] before
//!   **every** request: the source must cache and refresh tokens itself.
//! * [`Credentials::Anonymous`]: no authentication (public containers).
//!
//! # ETags
//!
//! Every ETag the client returns ([`PutResult::etag`], [`BlobItem::etag`],
//! [`BlobProperties::etag`]) is in the **quoted** form the service puts in its `ETag`
//! header, e.g. `"0x8DC8E4F3C2B1A00"`: List Blobs' unquoted `<Etag>` values are quoted
//! to match. So an ETag from `list` compares equal to one from `put`/`properties` of the
//! same blob version, and works in [`Condition::IfMatch`]. `IfMatch` accepts both the
//! quoted and the unquoted form (it quotes a bare value before sending); `IfMatch("*")`
//! means "the blob exists".
//!
//! # Conditions
//!
//! * [`Condition::IfNoneMatchAny`] on [`BlobClient::put`] creates only: if the blob
//!   exists the service answers 409 `BlobAlreadyExists` (412 on some versions/emulators),
//!   and [`BlobError::is_condition_failed`] is true for both.
//! * [`Condition::IfMatch`] fails with 412 `ConditionNotMet` when the blob changed, and
//!   also when it no longer exists (verified against Azurite; HTTP semantics: no current
//!   version can match). Either way [`BlobError::is_condition_failed`] is true.
//!
//! # Errors
//!
//! [`BlobError`] messages name the operation, the container/blob, the HTTP status and the
//! service error code; they never contain the account key, a bearer token or a SAS
//! signature (transport errors are stripped of their URL; [`redact_sas`] is there for
//! anything else). [`BlobError::category`] sorts errors into
//! transient / throttling / auth / permanent / conflict. The client does not retry: the
//! caller decides, from the category.
//!
//! # Caveats
//!
//! * **Size**: `put` is a single `Put Blob` request with the whole body in memory. The
//!   service limit for that is 5000 MiB (API 2019-12-12 and later) and the client refuses
//!   more ([`MAX_PUT_BYTES`]), but it is meant for bodies up to about 256 MiB: no block
//!   lists, no resumable upload, nothing streamed. `get` reads the whole blob into memory
//!   as well.
//! * **Timeouts**: connect 10 s; each request as a whole 60 s by default (including the
//!   upload of a `put` body): raise it with [`BlobClient::with_timeout`] for big uploads.
//! * **Metadata** names must be C# identifiers (`[A-Za-z_][A-Za-z0-9_]*`) and values
//!   printable ASCII (encode anything else yourself); names are case-insensitive in the
//!   service, so the client **lower-cases** every metadata name it returns (headers come
//!   back lower-cased anyway), and refuses two names that differ only in case. Values
//!   lose leading/trailing whitespace in the service.
//! * **Blob names** are percent-encoded per `/`-separated segment, so names like
//!   `127.0.0.1:5672/hub/$default/checkpoint/0` work; a name may not be empty, longer
//!   than 1024 characters, or contain `.` or `..` segments (a URL would fold them).
//! * `delete` does not delete snapshots (a blob with snapshots fails with 409
//!   `SnapshotsPresent`); no leases, no versions, no snapshots, no range reads,
//!   no content MD5/CRC.
//! * `properties`/`delete` map every 404 to `None`/`false`, `ContainerNotFound` included.

mod auth;
mod connstr;
mod error;
mod xml;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response, StatusCode};

pub use connstr::{DEV_ACCOUNT, DEV_ENDPOINT, DEV_KEY};
pub use error::{BlobError, Category, ServiceError, Target, redact_sas};

/// The `x-ms-version` every request carries.
pub const API_VERSION: &str = "2021-08-06";
/// The largest body [`BlobClient::put`] sends (the service's single `Put Blob` limit).
pub const MAX_PUT_BYTES: u64 = 5000 * 1024 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Supplies Entra ID access tokens (scope `https://storage.azure.com/.default`) for
/// [`Credentials::Bearer`]. Called before every request: cache inside.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync {
    async fn token(&self) -> Result<String, BlobError>;
}

/// How requests authenticate. `Debug` never prints a key, token or SAS signature.
#[derive(Clone)]
pub enum Credentials {
    /// Account name and base64 account key.
    SharedKey { account: String, key: String },
    /// A SAS query string, without the leading `?`.
    Sas(String),
    /// Entra ID bearer tokens.
    Bearer(Arc<dyn TokenSource>),
    /// No authentication.
    Anonymous,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::SharedKey { account, .. } => {
                f.debug_struct("SharedKey").field("account", account).field("key", &"<redacted>").finish()
            }
            Credentials::Sas(s) => f.debug_tuple("Sas").field(&redact_sas(s)).finish(),
            Credentials::Bearer(_) => f.write_str("Bearer(<token source>)"),
            Credentials::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// An ETag precondition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    #[default]
    None,
    /// `If-Match`: only if the blob's current ETag is this one (quoted or bare; `*` = exists).
    IfMatch(String),
    /// `If-None-Match: *`: only if the blob does not exist (create only).
    IfNoneMatchAny,
}

/// Options of [`BlobClient::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions<'a> {
    /// `Content-Type` to store; the service defaults to `application/octet-stream`.
    pub content_type: Option<&'a str>,
    /// Metadata to store with the blob (replaces any existing metadata).
    pub metadata: &'a [(&'a str, &'a str)],
    pub condition: Condition,
}

/// What a write returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The new ETag, quoted (`"0x8D..."`), as in the `ETag` header.
    pub etag: String,
    pub last_modified: SystemTime,
}

/// One blob of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobItem {
    pub name: String,
    /// Quoted, same form as [`PutResult::etag`].
    pub etag: String,
    pub last_modified: SystemTime,
    pub size: u64,
    /// Names lower-cased.
    pub metadata: BTreeMap<String, String>,
}

/// A blob's system properties and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProperties {
    /// Quoted, same form as [`PutResult::etag`].
    pub etag: String,
    pub last_modified: SystemTime,
    pub size: u64,
    pub content_type: Option<String>,
    /// Names lower-cased.
    pub metadata: BTreeMap<String, String>,
}

/// A Blob Storage client for one account endpoint. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct BlobClient {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    endpoint: String,
    http: reqwest::Client,
    auth: Auth,
    timeout: Duration,
    list_page_size: Option<u32>,
}

#[derive(Clone)]
enum Auth {
    SharedKey { account: String, key: Vec<u8> },
    Sas(String),
    Bearer(Arc<dyn TokenSource>),
    Anonymous,
}

impl fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.inner.auth {
            Auth::SharedKey { account, .. } => format!("SharedKey({account})"),
            Auth::Sas(_) => "Sas".to_owned(),
            Auth::Bearer(_) => "Bearer".to_owned(),
            Auth::Anonymous => "Anonymous".to_owned(),
        };
        f.debug_struct("BlobClient").field("endpoint", &self.inner.endpoint).field("auth", &auth).finish()
    }
}

/// Quotes a bare ETag; leaves quoted, weak (`W/"..."`) and `*` alone.
pub(crate) fn normalize_etag(etag: &str) -> String {
    let t = etag.trim();
    if t == "*" || t.starts_with("W/") || (t.len() >= 2 && t.starts_with('"') && t.ends_with('"')) {
        t.to_owned()
    } else {
        format!("\"{}\"", t.trim_matches('"'))
    }
}

impl BlobClient {
    /// A client for `endpoint`: `https://ACCOUNT.blob.core.windows.net`, or path-style
    /// like Azurite's `http://127.0.0.1:10000/devstoreaccount1`. A trailing `/` is ignored.
    pub fn new(endpoint: &str, creds: Credentials) -> Result<Self, BlobError> {
        let endpoint = endpoint.trim().trim_end_matches('/').to_owned();
        let url =
            reqwest::Url::parse(&endpoint).map_err(|e| BlobError::Config(format!("endpoint is not a URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(BlobError::Config(format!("endpoint scheme must be http or https, not {}", url.scheme())));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(BlobError::Config("endpoint has no host".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(BlobError::Config(
                "endpoint must not carry a query or fragment (pass a SAS as Credentials::Sas)".into(),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(BlobError::Config("endpoint must not carry user info".into()));
        }
        let auth = match creds {
            Credentials::SharedKey { account, key } => {
                if account.trim().is_empty() {
                    return Err(BlobError::Config("shared key credentials need an account name".into()));
                }
                let key = auth::decode_key(&key)
                    .ok_or_else(|| BlobError::Config("account key is not valid base64".into()))?;
                Auth::SharedKey { account: account.trim().to_owned(), key }
            }
            Credentials::Sas(s) => {
                let s = s.trim().trim_start_matches('?').to_owned();
                if s.is_empty() {
                    return Err(BlobError::Config("SAS token is empty".into()));
                }
                if s.contains(['#', ' ', '\n']) {
                    return Err(BlobError::Config("SAS token must be a URL query string".into()));
                }
                Auth::Sas(s)
            }
            Credentials::Bearer(t) => Auth::Bearer(t),
            Credentials::Anonymous => Auth::Anonymous,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| BlobError::Config(format!("HTTP client: {e}")))?;
        Ok(BlobClient {
            inner: Arc::new(Inner { endpoint, http, auth, timeout: DEFAULT_TIMEOUT, list_page_size: None }),
        })
    }

    /// A client from a storage connection string. Keys (case-insensitive):
    /// `AccountName`, `AccountKey`, `BlobEndpoint`, `DefaultEndpointsProtocol`
    /// (default `https`), `EndpointSuffix` (default `core.windows.net`),
    /// `SharedAccessSignature`, `UseDevelopmentStorage=true` (Azurite at
    /// [`DEV_ENDPOINT`] with the well-known [`DEV_ACCOUNT`]/[`DEV_KEY`]; a `BlobEndpoint`
    /// or account given beside it wins). Other keys (`QueueEndpoint`, ...) are ignored.
    /// Without a key or SAS the client is anonymous. Errors name the bad or missing key,
    /// never a value.
    pub fn from_connection_string(cs: &str) -> Result<Self, BlobError> {
        let p = connstr::parse(cs)?;
        let creds = match (p.key, p.sas) {
            (Some(key), _) => Credentials::SharedKey { account: p.account.unwrap_or_default(), key },
            (None, Some(sas)) => Credentials::Sas(sas),
            (None, None) => Credentials::Anonymous,
        };
        Self::new(&p.endpoint, creds)
    }

    /// The endpoint, without a trailing `/`.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The same client with another per-request timeout (default 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.inner).timeout = timeout;
        self
    }

    /// The same client asking for at most `n` blobs per `List Blobs` page (`maxresults`;
    /// the service's default and maximum is 5000). Meant for tests of paging.
    pub fn with_list_page_size(mut self, n: u32) -> Self {
        Arc::make_mut(&mut self.inner).list_page_size = Some(n.max(1));
        self
    }

    /// Creates `container`; `Ok(false)` if it already existed.
    pub async fn create_container(&self, container: &str) -> Result<bool, BlobError> {
        const OP: &str = "create container";
        let t = target(OP, container, None)?;
        let q = [("restype", "container".to_owned())];
        let resp = self.execute(OP, &t, Method::PUT, &q, Vec::new(), Some(Bytes::new())).await?;
        if resp.status() == StatusCode::CONFLICT {
            let err = fail(OP, &t, resp).await;
            return if err.code() == Some("ContainerAlreadyExists") { Ok(false) } else { Err(err) };
        }
        ok(OP, &t, resp).await?;
        Ok(true)
    }

    /// All blobs of `container` whose names start with `prefix` (all blobs when empty),
    /// in name order, with their metadata. Follows `NextMarker` until the last page.
    pub async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobItem>, BlobError> {
        const OP: &str = "list blobs";
        let t = target(OP, container, None)?;
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut q = vec![
                ("restype", "container".to_owned()),
                ("comp", "list".to_owned()),
                ("include", "metadata".to_owned()),
            ];
            if !prefix.is_empty() {
                q.push(("prefix", prefix.to_owned()));
            }
            if let Some(n) = self.inner.list_page_size {
                q.push(("maxresults", n.to_string()));
            }
            if let Some(m) = &marker {
                q.push(("marker", m.clone()));
            }
            let resp = self.execute(OP, &t, Method::GET, &q, Vec::new(), None).await?;
            let resp = ok(OP, &t, resp).await?;
            let body = resp.text().await.map_err(|e| BlobError::transport(OP, &t, e))?;
            let page = xml::parse_list(body.trim_start_matches('\u{feff}'))
                .map_err(|e| BlobError::response(OP, &t, e.to_string()))?;
            out.extend(page.items);
            match page.next_marker {
                Some(m) if Some(&m) == marker.as_ref() => {
                    return Err(BlobError::response(OP, &t, "NextMarker repeats the marker"));
                }
                Some(m) => marker = Some(m),
                None => return Ok(out),
            }
        }
    }

    /// Writes a block blob in one `Put Blob` request (whole body in memory; at most
    /// [`MAX_PUT_BYTES`], meant for up to ~256 MiB). Replaces content, content type and
    /// metadata of an existing blob, subject to `opts.condition`.
    pub async fn put(
        &self,
        container: &str,
        name: &str,
        body: Bytes,
        opts: PutOptions<'_>,
    ) -> Result<PutResult, BlobError> {
        const OP: &str = "put blob";
        let t = target(OP, container, Some(name))?;
        if body.len() as u64 > MAX_PUT_BYTES {
            return Err(BlobError::InvalidInput(format!(
                "{OP} {t}: {} bytes exceed the single-request limit of {MAX_PUT_BYTES}",
                body.len()
            )));
        }
        let mut h = vec![("x-ms-blob-type".to_owned(), "BlockBlob".to_owned())];
        if let Some(ct) = opts.content_type {
            h.push(("content-type".to_owned(), ct.to_owned()));
        }
        push_metadata(&mut h, opts.metadata)?;
        push_condition(&mut h, &opts.condition);
        let resp = self.execute(OP, &t, Method::PUT, &[], h, Some(body)).await?;
        let resp = ok(OP, &t, resp).await?;
        put_result(OP, &t, resp.headers())
    }

    /// Replaces all metadata of a blob (an empty slice clears it), subject to `cond`.
    /// Changes the blob's ETag.
    pub async fn set_metadata(
        &self,
        container: &str,
        name: &str,
        metadata: &[(&str, &str)],
        cond: Condition,
    ) -> Result<PutResult, BlobError> {
        const OP: &str = "set blob metadata";
        let t = target(OP, container, Some(name))?;
        let mut h = Vec::new();
        push_metadata(&mut h, metadata)?;
        push_condition(&mut h, &cond);
        let q = [("comp", "metadata".to_owned())];
        let resp = self.execute(OP, &t, Method::PUT, &q, h, Some(Bytes::new())).await?;
        let resp = ok(OP, &t, resp).await?;
        put_result(OP, &t, resp.headers())
    }

    /// Reads a whole blob and its properties. A missing blob is an error (404 `BlobNotFound`).
    pub async fn get(&self, container: &str, name: &str) -> Result<(Bytes, BlobProperties), BlobError> {
        const OP: &str = "get blob";
        let t = target(OP, container, Some(name))?;
        let resp = self.execute(OP, &t, Method::GET, &[], Vec::new(), None).await?;
        let resp = ok(OP, &t, resp).await?;
        let mut props = properties_from(OP, &t, resp.headers(), false)?;
        let body = resp.bytes().await.map_err(|e| BlobError::transport(OP, &t, e))?;
        props.size = body.len() as u64;
        Ok((body, props))
    }

    /// A blob's properties and metadata (`HEAD`); `None` when the service answers 404
    /// (blob or container missing).
    pub async fn properties(&self, container: &str, name: &str) -> Result<Option<BlobProperties>, BlobError> {
        const OP: &str = "get blob properties";
        let t = target(OP, container, Some(name))?;
        let resp = self.execute(OP, &t, Method::HEAD, &[], Vec::new(), None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = ok(OP, &t, resp).await?;
        properties_from(OP, &t, resp.headers(), true).map(Some)
    }

    /// Deletes a blob; `false` when the service answers 404 (blob or container missing).
    pub async fn delete(&self, container: &str, name: &str) -> Result<bool, BlobError> {
        const OP: &str = "delete blob";
        let t = target(OP, container, Some(name))?;
        let resp = self.execute(OP, &t, Method::DELETE, &[], Vec::new(), None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        ok(OP, &t, resp).await?;
        Ok(true)
    }

    /// Builds, signs and sends one request. Any HTTP answer is `Ok`; callers check the status.
    async fn execute(
        &self,
        op: &'static str,
        t: &Target,
        method: Method,
        query: &[(&str, String)],
        mut headers: Vec<(String, String)>,
        body: Option<Bytes>,
    ) -> Result<Response, BlobError> {
        let inner = &*self.inner;
        let mut url = format!("{}/{}", inner.endpoint, t.container);
        if let Some(b) = &t.blob {
            url.push('/');
            url.push_str(&auth::encode_blob_path(b));
        }
        let mut qs: Vec<String> = query.iter().map(|(k, v)| format!("{}={}", k, auth::encode_component(v))).collect();
        if let Auth::Sas(sas) = &inner.auth {
            qs.push(sas.clone());
        }
        if !qs.is_empty() {
            url.push('?');
            url.push_str(&qs.join("&"));
        }
        let url = reqwest::Url::parse(&url)
            .map_err(|e| BlobError::InvalidInput(format!("{op} {t}: cannot form a URL: {e}")))?;

        headers.push(("x-ms-version".to_owned(), API_VERSION.to_owned()));
        headers.push(("x-ms-date".to_owned(), httpdate::fmt_http_date(SystemTime::now())));
        let len = body.as_ref().map_or(0, |b| b.len() as u64);
        match &inner.auth {
            Auth::SharedKey { account, key } => {
                let q: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                // Sign the path exactly as the URL will send it.
                let sts = auth::string_to_sign(method.as_str(), &headers, len, account, url.path(), &q);
                let sig = auth::sign(key, &sts);
                headers.push(("authorization".to_owned(), format!("SharedKey {account}:{sig}")));
            }
            Auth::Bearer(src) => {
                let token = src.token().await?;
                headers.push(("authorization".to_owned(), format!("Bearer {}", token.trim())));
            }
            Auth::Sas(_) | Auth::Anonymous => {}
        }

        let mut map = HeaderMap::with_capacity(headers.len());
        for (n, v) in &headers {
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| BlobError::InvalidInput(format!("{op} {t}: bad header name {n:?}")))?;
            let mut value = HeaderValue::from_str(v).map_err(|_| {
                let what = if n == "authorization" { "the authorization token" } else { n.as_str() };
                BlobError::InvalidInput(format!("{op} {t}: {what} is not a valid header value"))
            })?;
            if name == reqwest::header::AUTHORIZATION {
                value.set_sensitive(true);
            }
            map.insert(name, value);
        }
        let mut rb = inner.http.request(method.clone(), url.clone()).headers(map).timeout(inner.timeout);
        if let Some(b) = body {
            // Explicit, so that an empty PUT carries `Content-Length: 0` (hyper omits it).
            rb = rb.header(reqwest::header::CONTENT_LENGTH, b.len()).body(b);
        }
        tracing::trace!(op, target = %t, method = %method, url = %redact_sas(url.as_str()), "blob request");
        let resp = rb.send().await.map_err(|e| BlobError::transport(op, t, e))?;
        tracing::debug!(op, target = %t, status = resp.status().as_u16(), "blob response");
        Ok(resp)
    }
}

fn target(op: &'static str, container: &str, blob: Option<&str>) -> Result<Target, BlobError> {
    let c_ok = !container.is_empty()
        && container.len() <= 63
        && container.strip_prefix('$').unwrap_or(container).bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && container != "$";
    if !c_ok {
        return Err(BlobError::InvalidInput(format!(
            "{op}: container name {container:?} must be 3-63 letters, digits and hyphens"
        )));
    }
    if let Some(b) = blob {
        if b.is_empty() || b.chars().count() > 1024 {
            return Err(BlobError::InvalidInput(format!("{op} {container}/{b}: a blob name has 1 to 1024 characters")));
        }
        if b.split('/').any(|s| s == "." || s == "..") {
            return Err(BlobError::InvalidInput(format!(
                "{op} {container}/{b}: a blob name may not have '.' or '..' segments"
            )));
        }
    }
    Ok(Target { container: container.to_owned(), blob: blob.map(str::to_owned) })
}

fn push_metadata(h: &mut Vec<(String, String)>, metadata: &[(&str, &str)]) -> Result<(), BlobError> {
    let mut seen: Vec<String> = Vec::with_capacity(metadata.len());
    for (k, v) in metadata {
        let mut chars = k.chars();
        let ident = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return Err(BlobError::InvalidInput(format!(
                "metadata name {k:?} must be a C# identifier ([A-Za-z_][A-Za-z0-9_]*)"
            )));
        }
        if !v.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()) {
            return Err(BlobError::InvalidInput(format!("metadata {k:?}: value must be printable ASCII")));
        }
        let lower = k.to_ascii_lowercase();
        if seen.contains(&lower) {
            return Err(BlobError::InvalidInput(format!("metadata name {k:?} given twice (names ignore case)")));
        }
        seen.push(lower.clone());
        h.push((format!("x-ms-meta-{lower}"), v.trim().to_owned()));
    }
    Ok(())
}

fn push_condition(h: &mut Vec<(String, String)>, cond: &Condition) {
    match cond {
        Condition::None => {}
        Condition::IfMatch(etag) => h.push(("if-match".to_owned(), normalize_etag(etag))),
        Condition::IfNoneMatchAny => h.push(("if-none-match".to_owned(), "*".to_owned())),
    }
}

/// The response if it is a success, else the error it carries.
async fn ok(op: &'static str, t: &Target, resp: Response) -> Result<Response, BlobError> {
    if resp.status().is_success() { Ok(resp) } else { Err(fail(op, t, resp).await) }
}

async fn fail(op: &'static str, t: &Target, resp: Response) -> BlobError {
    let status = resp.status().as_u16();
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned());
    let code = header("x-ms-error-code").filter(|c| !c.is_empty());
    let request_id = header("x-ms-request-id");
    let body = resp.text().await.unwrap_or_default();
    let (body_code, message) = xml::parse_error(&body);
    BlobError::Status(Box::new(ServiceError {
        op,
        target: t.clone(),
        status,
        code: code.or(body_code),
        message,
        request_id,
    }))
}

fn header_str<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn etag_and_time(op: &'static str, t: &Target, h: &HeaderMap) -> Result<(String, SystemTime), BlobError> {
    let etag = header_str(h, "etag").ok_or_else(|| BlobError::response(op, t, "no ETag header"))?;
    let lm = header_str(h, "last-modified").ok_or_else(|| BlobError::response(op, t, "no Last-Modified header"))?;
    let lm = httpdate::parse_http_date(lm)
        .map_err(|_| BlobError::response(op, t, format!("bad Last-Modified header {lm:?}")))?;
    Ok((normalize_etag(etag), lm))
}

fn put_result(op: &'static str, t: &Target, h: &HeaderMap) -> Result<PutResult, BlobError> {
    let (etag, last_modified) = etag_and_time(op, t, h)?;
    Ok(PutResult { etag, last_modified })
}

fn properties_from(op: &'static str, t: &Target, h: &HeaderMap, need_len: bool) -> Result<BlobProperties, BlobError> {
    let (etag, last_modified) = etag_and_time(op, t, h)?;
    let size = match header_str(h, "content-length") {
        Some(s) => s.trim().parse().map_err(|_| BlobError::response(op, t, format!("bad Content-Length {s:?}")))?,
        None if need_len => return Err(BlobError::response(op, t, "no Content-Length header")),
        None => 0,
    };
    let content_type = header_str(h, "content-type").map(str::to_owned);
    let metadata = h
        .iter()
        .filter_map(|(n, v)| {
            let k = n.as_str().strip_prefix("x-ms-meta-")?;
            Some((k.to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        })
        .collect();
    Ok(BlobProperties { etag, last_modified, size, content_type, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_forms() {
        assert_eq!(normalize_etag("0x8D1"), "\"0x8D1\"");
        assert_eq!(normalize_etag("\"0x8D1\""), "\"0x8D1\"");
        assert_eq!(normalize_etag(" \"0x8D1\" "), "\"0x8D1\"");
        assert_eq!(normalize_etag("W/\"x\""), "W/\"x\"");
        assert_eq!(normalize_etag("*"), "*");
        assert_eq!(normalize_etag("\"half"), "\"half\"");
    }

    #[test]
    fn debug_hides_secrets() {
        let key = "c2VjcmV0a2V5c2VjcmV0a2V5";
        let creds = Credentials::SharedKey { account: "acct".into(), key: key.into() };
        assert!(!format!("{creds:?}").contains(key));
        let c = BlobClient::new("https://acct.blob.core.windows.net/", creds).unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("acct") && !d.contains(key), "{d}");
        assert_eq!(c.endpoint(), "https://acct.blob.core.windows.net");
        let sas = Credentials::Sas("sv=2021-08-06&sig=TOPSECRET".into());
        assert!(!format!("{sas:?}").contains("TOPSECRET"));
        let c = BlobClient::new("https://acct.blob.core.windows.net", sas).unwrap();
        assert!(!format!("{c:?}").contains("TOPSECRET"));
    }

    #[test]
    fn new_rejects_bad_config() {
        let e = BlobClient::new("not a url", Credentials::Anonymous).unwrap_err();
        assert!(e.to_string().contains("endpoint"));
        assert!(BlobClient::new("ftp://x", Credentials::Anonymous).is_err());
        assert!(BlobClient::new("https://x/?sv=1&sig=abc", Credentials::Anonymous).is_err());
        let e = BlobClient::new("https://x", Credentials::SharedKey { account: "a".into(), key: "***".into() })
            .unwrap_err();
        assert!(e.to_string().contains("base64") && !e.to_string().contains("***"));
        assert!(BlobClient::new("https://x", Credentials::Sas("".into())).is_err());
        let c = BlobClient::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(c.endpoint(), DEV_ENDPOINT);
    }

    #[test]
    fn names_and_metadata_validation() {
        assert!(target("op", "abc", Some("127.0.0.1:5672/hub/$default/checkpoint/0")).is_ok());
        assert!(target("op", "$root", Some("x")).is_ok());
        assert!(target("op", "", Some("x")).is_err());
        assert!(target("op", "a/b", None).is_err());
        assert!(target("op", "abc", Some("")).is_err());
        assert!(target("op", "abc", Some("a/../b")).is_err());
        assert!(target("op", "abc", Some(&"x".repeat(1025))).is_err());
        let mut h = Vec::new();
        push_metadata(&mut h, &[("OwnerId", " node-1 "), ("_x9", "")]).unwrap();
        assert_eq!(
            h,
            vec![("x-ms-meta-ownerid".to_owned(), "node-1".to_owned()), ("x-ms-meta-_x9".to_owned(), "".to_owned())]
        );
        assert!(push_metadata(&mut h, &[("9a", "x")]).is_err());
        assert!(push_metadata(&mut h, &[("a-b", "x")]).is_err());
        assert!(push_metadata(&mut h, &[("a", "ü")]).is_err());
        assert!(push_metadata(&mut h, &[("a", "x\ny")]).is_err());
        assert!(push_metadata(&mut h, &[("a", "x"), ("A", "y")]).is_err());
        let mut h = Vec::new();
        push_condition(&mut h, &Condition::IfMatch("0x1".into()));
        push_condition(&mut h, &Condition::IfNoneMatchAny);
        assert_eq!(
            h,
            vec![("if-match".to_owned(), "\"0x1\"".to_owned()), ("if-none-match".to_owned(), "*".to_owned())]
        );
    }
}
