//! A running daemon's entity API (`/v1/entities/...`, served by
//! `admin::entities`) as a [`Transport`]: what the tools (`tail`, `produce`,
//! `dlq inspect`) use for an embedded transport while the daemon holds its
//! store (one process at a time) or keeps it in memory.
//!
//! It reads partitions and produces; it joins no consumer group
//! (`subscribe` and `group_positions` fail, naming what to do instead):
//! `dlq redrive` asks the daemon to run it ([`Remote::post_json`]), and
//! `migrate verify` still needs the daemon stopped for an embedded store. Entities are addressed by their config name:
//! the transport maps the physical names tools pass back to them.
//!
//! Errors: a daemon that does not answer, or answers `5xx` or `429`, is
//! `Transient`; `401`/`403` is `Auth`; any other refusal is `Permanent`.

use super::json::{DAEMON_STARTING, Outbound, Position, Record};
use super::{
    GroupPosition, GroupSpec, OutboundMessage, PartitionInfo, PartitionReader, PipelineMessage, ProduceResult,
    Producer, Seek, StartPosition, Subscription, Transport, TransportError,
};
use crate::classify::ErrorCategory;
use crate::config::Secret;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one long-poll read waits on the daemon's side.
const POLL: Duration = Duration::from_secs(5);
/// Longest request to the daemon (a poll and its answer, or a produce).
const REQUEST: Duration = Duration::from_secs(120);
/// Largest body of one produce request (the daemon takes up to
/// `admin::entities::MAX_PRODUCE_BYTES`); a batch is split to fit.
const PRODUCE_BYTES: usize = 16 << 20;
/// Longest wait for a starting daemon to apply its first config.
const STARTING: Duration = Duration::from_secs(30);

struct Client {
    base: String,
    /// Why no daemon can be reached (its address is unknown): every call
    /// fails with this.
    unusable: Option<String>,
    token: Option<Secret>,
    http: reqwest::Client,
    /// physical name → config name
    names: HashMap<String, String>,
}

/// The entity API of the daemon at `base` (`http://127.0.0.1:9464`).
pub struct Remote {
    client: Arc<Client>,
}

/// `name` as one URL path segment (percent-encoded but for unreserved
/// characters).
pub fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn err(category: ErrorCategory, message: String) -> TransportError {
    TransportError::Other { category, kind: "daemon_api", message }
}

impl Client {
    fn entity<'a>(&'a self, physical: &'a str) -> &'a str {
        self.names.get(physical).map_or(physical, String::as_str)
    }

    fn url(&self, physical: &str, tail: &str) -> String {
        format!("{}/v1/entities/{}/{tail}", self.base, segment(self.entity(physical)))
    }

    /// Sends `req` (waiting out a daemon that is still starting); the body
    /// of a `2xx` answer.
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<bytes::Bytes, TransportError> {
        if let Some(why) = &self.unusable {
            return Err(err(ErrorCategory::Permanent, why.clone()));
        }
        let until = tokio::time::Instant::now() + STARTING;
        loop {
            let attempt =
                req.try_clone().ok_or_else(|| err(ErrorCategory::Permanent, "unrepeatable request".into()))?;
            match self.once(attempt).await {
                Err(TransportError::Other { message, .. })
                    if message.contains(DAEMON_STARTING) && tokio::time::Instant::now() < until =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn once(&self, req: reqwest::RequestBuilder) -> Result<bytes::Bytes, TransportError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            err(ErrorCategory::Transient, format!("the daemon's entity API at {} does not answer: {e}", self.base))
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| err(ErrorCategory::Transient, format!("the daemon's answer broke off: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let why = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| crate::text::clip(&String::from_utf8_lossy(&body), 200).to_string());
        let category = match status.as_u16() {
            401 | 403 => ErrorCategory::Auth,
            s if s >= 500 || s == 429 => ErrorCategory::Transient,
            _ => ErrorCategory::Permanent,
        };
        Err(err(category, format!("the daemon answered {status}: {why}")))
    }
}

impl Remote {
    /// The daemon at `base`, whose config names entity `physical → name`
    /// by `names`.
    pub fn new(base: String, token: Option<Secret>, names: HashMap<String, String>) -> Remote {
        let http = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
        Remote { client: Arc::new(Client { base, unusable: None, token, http, names }) }
    }

    /// A daemon that cannot be reached, for `why`: every call fails with
    /// it (a `Permanent` error), and nothing fails before a call.
    pub fn unreachable(why: String) -> Remote {
        let client = Client {
            base: String::new(),
            unusable: Some(why),
            token: None,
            http: reqwest::Client::new(),
            names: HashMap::new(),
        };
        Remote { client: Arc::new(client) }
    }
}

impl Remote {
    /// `POST`s `body` as JSON to `/v1/{path}` of the daemon's API and reads
    /// the JSON answer, waiting up to `timeout` (a long job the daemon runs
    /// for a tool, such as a redrive).
    pub async fn post_json<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, TransportError> {
        let c = &self.client;
        let url = format!("{}/v1/{path}", c.base);
        let answer = c.call(c.http.post(url).json(body).timeout(timeout)).await?;
        serde_json::from_slice(&answer)
            .map_err(|e| err(ErrorCategory::Transient, format!("unreadable answer of /v1/{path}: {e}")))
    }
}

fn refuse(what: &str) -> TransportError {
    err(
        ErrorCategory::Permanent,
        format!("{what} is not possible through the daemon's entity API; stop the daemon to use the store directly"),
    )
}

#[async_trait]
impl Transport for Remote {
    fn kind(&self) -> &'static str {
        "daemon"
    }

    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(RemoteProducer { client: self.client.clone() })
    }

    async fn subscribe(
        &self,
        _entity: &str,
        _group: &str,
        _start: StartPosition,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        Err(refuse("joining a consumer group"))
    }

    async fn partitions(&self, entity: &str) -> Result<Vec<PartitionInfo>, TransportError> {
        let c = &self.client;
        let body = c.call(c.http.get(c.url(entity, "partitions")).timeout(REQUEST)).await?;
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body)
            .map_err(|e| err(ErrorCategory::Transient, format!("unreadable partitions answer: {e}")))?;
        let name: Arc<str> = Arc::from(entity);
        Ok(v.iter()
            .map(|p| PartitionInfo {
                entity: name.clone(),
                partition: p["partition"].as_u64().unwrap_or(0) as u32,
                earliest: p["earliest"].as_i64().unwrap_or(0),
                next: p["next"].as_i64().unwrap_or(0),
            })
            .collect())
    }

    async fn ensure(&self, _entities: &[super::EntitySpec], _groups: &[GroupSpec]) -> Result<(), TransportError> {
        Ok(())
    }

    async fn group_positions(&self, _entity: &str, _group: &str) -> Result<Vec<GroupPosition>, TransportError> {
        Err(refuse("reading a consumer group's positions"))
    }

    async fn open_reader(
        &self,
        entity: &str,
        partition: u32,
        from: Seek,
    ) -> Result<Box<dyn PartitionReader>, TransportError> {
        let next = match from {
            Seek::Earliest => None,
            Seek::At(p) => Some(p),
        };
        Ok(Box::new(RemoteReader {
            client: self.client.clone(),
            physical: entity.to_string(),
            entity: Arc::from(entity),
            partition,
            next,
        }))
    }
}

struct RemoteProducer {
    client: Arc<Client>,
}

#[async_trait]
impl Producer for RemoteProducer {
    async fn send(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, TransportError> {
        let name: Arc<str> = Arc::from(entity);
        let mut done = Vec::with_capacity(batch.len());
        let mut body = String::new();
        let mut lines = 0usize;
        for (i, m) in batch.iter().enumerate() {
            // an outbound message always serializes (string keys)
            let line = serde_json::to_string(&Outbound::of(m)).unwrap_or_default();
            if !body.is_empty() && body.len() + line.len() + 1 > PRODUCE_BYTES {
                done.extend(self.post(&name, std::mem::take(&mut body), lines).await?);
                lines = 0;
            }
            body.push_str(&line);
            body.push('\n');
            lines += 1;
            if i + 1 == batch.len() {
                done.extend(self.post(&name, std::mem::take(&mut body), lines).await?);
            }
        }
        Ok(done)
    }
}

impl RemoteProducer {
    /// One `POST` of `lines` messages; their positions.
    async fn post(&self, entity: &Arc<str>, body: String, lines: usize) -> Result<Vec<ProduceResult>, TransportError> {
        let c = &self.client;
        let answer = c.call(c.http.post(c.url(entity, "messages")).body(body).timeout(REQUEST)).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            positions: Vec<Position>,
        }
        let a: Answer = serde_json::from_slice(&answer)
            .map_err(|e| err(ErrorCategory::Transient, format!("unreadable produce answer: {e}")))?;
        if a.positions.len() != lines {
            return Err(err(
                ErrorCategory::Transient,
                format!("the daemon acknowledged {} of {lines} messages", a.positions.len()),
            ));
        }
        Ok(a.positions
            .into_iter()
            .map(|p| ProduceResult { entity: entity.clone(), partition: p.partition, position: p.position })
            .collect())
    }
}

struct RemoteReader {
    client: Arc<Client>,
    physical: String,
    entity: Arc<str>,
    partition: u32,
    /// The next position to read; `None`: the first stored.
    next: Option<i64>,
}

#[async_trait]
impl PartitionReader for RemoteReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    async fn fetch(&mut self, max: usize, out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        loop {
            let c = &self.client;
            let mut url = format!(
                "{}?partition={}&max={}&wait_ms={}",
                c.url(&self.physical, "messages"),
                self.partition,
                max.max(1),
                POLL.as_millis()
            );
            if let Some(n) = self.next {
                url.push_str(&format!("&from={n}"));
            }
            let body = c.call(c.http.get(url).timeout(REQUEST)).await?;
            let mut got = Vec::new();
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let m = serde_json::from_slice::<Record>(line)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.message(&self.entity).map_err(|e| e.to_string()))
                    .map_err(|e| err(ErrorCategory::Transient, format!("unreadable message from the daemon: {e}")))?;
                got.push(m);
            }
            if let Some(last) = got.last() {
                let next = last.position.checked_add(1).ok_or_else(|| {
                    err(ErrorCategory::Transient, format!("the daemon answered position {}", last.position))
                })?;
                self.next = Some(next);
                out.extend(got);
                return Ok(());
            }
        }
    }

    async fn commit(&mut self, _last: &PipelineMessage) -> Result<(), TransportError> {
        Err(TransportError::ReadOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_names_are_one_path_segment() {
        let table = [
            ("xact.downloads.results", "xact.downloads.results"),
            ("a b/c?d#e", "a%20b%2Fc%3Fd%23e"),
            ("caf\u{e9}", "caf%C3%A9"),
        ];
        for (name, want) in table {
            assert_eq!(segment(name), want);
        }
    }
}
