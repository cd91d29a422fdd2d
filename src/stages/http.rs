//! `type: http` — one HTTP request per message (reqwest, pooled
//! connections), templated from the message; the JSON response is merged
//! into the message at `merge_into`.
//!
//! Failures are classified by `classify::http_status` (408 → transient,
//! 429/503 → throttling, 401/403 → auth, other 4xx → permanent, 5xx →
//! transient); timeouts and connection errors are transient; a URL that does
//! not parse after templating is permanent. With `on_error`, permanent
//! failures are emitted to that output (with an `http_error` field) instead
//! of failing. `rate_limit` spaces requests evenly across all partitions of
//! the worker; concurrency is the worker's `concurrency`.

use super::json::{render, set};
use super::{BuildError, Emit, Outputs, Stage, StageError};
use crate::classify::{self, ErrorCategory};
use crate::config::HttpStageConfig;
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct HttpStage {
    client: reqwest::Client,
    method: reqwest::Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Body,
    auth: Vec<(String, String)>,
    /// The credential values, removed from error bodies an API echoes back.
    secrets: Vec<String>,
    merge_into: Option<String>,
    output: usize,
    on_error: Option<usize>,
    /// Rate limit: the earliest time of the next request, and the spacing.
    slots: Option<(Mutex<Instant>, Duration)>,
}

enum Body {
    Message,
    None,
    Template(String),
}

impl HttpStage {
    pub fn new(cfg: &HttpStageConfig, outputs: &Outputs) -> Result<Self, BuildError> {
        let method: reqwest::Method =
            cfg.method.to_ascii_uppercase().parse().map_err(|_| BuildError::Method(cfg.method.clone()))?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout.get())
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| BuildError::HttpClient(e.to_string()))?;
        let body = match cfg.body.as_deref() {
            Some("message") => Body::Message,
            Some("none") => Body::None,
            Some(t) => Body::Template(t.to_string()),
            None if matches!(method, reqwest::Method::POST | reqwest::Method::PUT | reqwest::Method::PATCH) => {
                Body::Message
            }
            None => Body::None,
        };
        let mut auth = Vec::new();
        let mut secrets = Vec::new();
        if let Some(a) = &cfg.auth {
            if let Some(token) = a.bearer_env.as_ref().and_then(|v| std::env::var(v).ok()) {
                auth.push(("authorization".to_string(), format!("Bearer {token}")));
                secrets.push(token);
            }
            if let (Some(h), Some(key)) = (&a.header, a.env.as_ref().and_then(|v| std::env::var(v).ok())) {
                auth.push((h.clone(), key.clone()));
                secrets.push(key);
            }
        }
        secrets.retain(|s| !s.is_empty());
        let output = outputs.index("default").ok_or(BuildError::NoDefaultOutput)?;
        let on_error = match &cfg.on_error {
            Some(o) => Some(outputs.index(o).ok_or_else(|| BuildError::UnknownOutput(o.clone()))?),
            None => None,
        };
        let slots =
            cfg.rate_limit.filter(|r| *r > 0.0).map(|r| (Mutex::new(Instant::now()), Duration::from_secs_f64(1.0 / r)));
        Ok(HttpStage {
            client,
            method,
            url: cfg.url.clone(),
            headers: cfg.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            body,
            auth,
            secrets,
            merge_into: cfg.merge_into.clone(),
            output,
            on_error,
            slots,
        })
    }

    async fn wait_for_slot(&self) {
        if let Some((next, gap)) = &self.slots {
            let at = {
                let mut n = next.lock().unwrap();
                let at = (*n).max(Instant::now());
                *n = at + *gap;
                at
            };
            tokio::time::sleep_until(at).await;
        }
    }
}

/// `text` with every occurrence of each of `secrets` replaced by `***`.
fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
}

fn failure(category: ErrorCategory, kind: &str, message: String) -> StageError {
    StageError::other(category, kind, message)
}

#[async_trait]
impl Stage for HttpStage {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let v: Value = serde_json::from_slice(&msg.payload).map_err(|e| StageError::InvalidJson(e.to_string()))?;
        let url = render(&self.url, &v, true);
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| failure(ErrorCategory::Permanent, "bad_url", format!("URL {url:?} does not parse: {e}")))?;
        let mut req = self.client.request(self.method.clone(), parsed);
        for (k, t) in &self.headers {
            req = req.header(k.as_str(), render(t, &v, false));
        }
        for (k, val) in &self.auth {
            req = req.header(k.as_str(), val.as_str());
        }
        req = match &self.body {
            Body::Message => req.header("content-type", "application/json").body(msg.payload.clone()),
            Body::None => req,
            Body::Template(t) => req.body(render(t, &v, false)),
        };
        self.wait_for_slot().await;
        let resp = req.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "request"
            };
            // reqwest's message names the URL (templated from the message,
            // never from secrets: credentials travel in headers only)
            failure(ErrorCategory::Transient, kind, format!("{} {url}: {e}", self.method))
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| failure(ErrorCategory::Transient, "read", e.to_string()))?;
        if let Some(cat) = classify::http_status(status) {
            // a body of any bytes, without our credentials (an API may echo
            // the request), cut at a character boundary
            let short = crate::text::clip(&redact(&text, &self.secrets), 200).to_string();
            let err = failure(cat, "http_status", format!("HTTP {status} from {} {url}: {short}", self.method));
            if let (ErrorCategory::Permanent, Some(o)) = (cat, self.on_error) {
                let mut v = v;
                set(&mut v, "http_error", serde_json::json!({ "status": status, "body": short, "url": url }));
                let mut m = OutboundMessage::from_message(msg);
                m.payload = serde_json::to_vec(&v).expect("JSON values serialize").into();
                out.push(Emit { output: o, message: m });
                return Ok(());
            }
            return Err(err);
        }
        let mut m = OutboundMessage::from_message(msg);
        if let Some(path) = &self.merge_into {
            let mut v = v;
            let r = serde_json::from_str(&text).unwrap_or(Value::String(text));
            set(&mut v, path, r);
            m.payload = serde_json::to_vec(&v).expect("JSON values serialize").into();
        }
        out.push(Emit { output: self.output, message: m });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get as route_get, post};
    use bytes::Bytes;

    async fn server() -> std::net::SocketAddr {
        let app = Router::new()
            .route(
                "/claims/{id}",
                route_get(|Path(id): Path<String>, h: HeaderMap| async move {
                    let auth = h.get("authorization").map(|v| v.to_str().unwrap().to_string());
                    axum::Json(serde_json::json!({ "id": id, "auth": auth, "src": h.get("x-src").map(|v| v.to_str().unwrap()) }))
                }),
            )
            .route("/status/{code}", route_get(|Path(code): Path<u16>| async move { (StatusCode::from_u16(code).unwrap(), "nope") }))
            .route("/slow", route_get(|| async { tokio::time::sleep(Duration::from_secs(5)).await; "late" }))
            // byte 200 of the body falls inside a 3-byte character
            .route("/busy", route_get(|| async { (StatusCode::SERVICE_UNAVAILABLE, format!("{}€€€ réessayez", "x".repeat(199))) }))
            .route("/echo", post(|body: Bytes| async move { body }))
            // an API that echoes the request's credentials in its error
            .route(
                "/echo-auth",
                route_get(|h: HeaderMap| async move {
                    let auth = h.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                    (StatusCode::SERVICE_UNAVAILABLE, format!("busy; you sent {auth}"))
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    }

    fn stage(yaml: &str) -> HttpStage {
        let cfg: HttpStageConfig = serde_yaml::from_str(yaml).unwrap();
        HttpStage::new(&cfg, &Outputs::new(["default".to_string(), "errors".to_string()])).unwrap()
    }

    fn msg(p: &str) -> PipelineMessage {
        crate::stages::test_message(p.as_bytes())
    }

    async fn run(s: &HttpStage, p: &str) -> Result<(usize, Value), StageError> {
        let mut out = Vec::new();
        s.process(&msg(p), &mut out).await?;
        let e = out.pop().unwrap();
        Ok((e.output, serde_json::from_slice(&e.message.payload).unwrap()))
    }

    #[tokio::test]
    async fn templated_request_merges_the_response() {
        let a = server().await;
        // PATH is always set: it stands in for a token variable
        let s = stage(&format!(
            "url: http://{a}/claims/{{{{claim.id}}}}\nheaders: {{ x-src: '{{{{src}}}}' }}\nmerge_into: enrichment.api\nauth: {{ bearer_env: PATH }}"
        ));
        let (o, v) = run(&s, r#"{"claim":{"id":"a b/1"},"src":"xact"}"#).await.unwrap();
        assert_eq!(o, 0);
        assert_eq!(v["enrichment"]["api"]["id"], "a b/1", "path segment was percent-encoded and decoded");
        assert_eq!(v["enrichment"]["api"]["src"], "xact");
        assert!(v["enrichment"]["api"]["auth"].as_str().unwrap().starts_with("Bearer "));
        assert_eq!(v["claim"]["id"], "a b/1");
    }

    #[tokio::test]
    async fn statuses_timeouts_and_bad_urls_are_classified() {
        let a = server().await;
        let s = stage(&format!("url: http://{a}/status/{{{{code}}}}"));
        for (code, want) in [
            (500, ErrorCategory::Transient),
            (503, ErrorCategory::Throttling),
            (429, ErrorCategory::Throttling),
            (408, ErrorCategory::Transient),
            (401, ErrorCategory::Auth),
            (403, ErrorCategory::Auth),
            (404, ErrorCategory::Permanent),
            (422, ErrorCategory::Permanent),
        ] {
            let e = run(&s, &format!("{{\"code\":{code}}}")).await.unwrap_err();
            assert_eq!(e.category(), want, "{code}: {e}");
        }
        let slow = stage(&format!("url: http://{a}/slow\ntimeout: 200ms"));
        let e = run(&slow, "{}").await.unwrap_err();
        assert_eq!((e.category(), e.kind()), (ErrorCategory::Transient, "timeout"), "{e}");
        let refused = stage("url: http://127.0.0.1:1/x\ntimeout: 2s");
        assert_eq!(run(&refused, "{}").await.unwrap_err().category(), ErrorCategory::Transient);
        let bad = stage("url: '{{u}}'");
        let e = run(&bad, r#"{"u":"not a url"}"#).await.unwrap_err();
        assert_eq!((e.category(), e.kind()), (ErrorCategory::Permanent, "bad_url"));
    }

    #[tokio::test]
    async fn a_throttled_call_with_a_multibyte_body_is_throttling_not_a_panic() {
        let a = server().await;
        let s = stage(&format!("url: http://{a}/busy"));
        let e = run(&s, "{}").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Throttling, "{e}");
        assert!(e.to_string().ends_with(&"x".repeat(199)), "the body is cut before the character: {e}");
        let on_error = stage(&format!("url: http://{a}/status/404\non_error: errors"));
        assert!(run(&on_error, "{}").await.is_ok());
    }

    #[tokio::test]
    async fn credentials_an_api_echoes_in_an_error_never_reach_the_error() {
        let a = server().await;
        let token = std::env::var("PATH").unwrap();
        let s = stage(&format!("url: http://{a}/echo-auth\nauth: {{ bearer_env: PATH }}"));
        let e = run(&s, "{}").await.unwrap_err().to_string();
        assert!(e.contains("you sent Bearer ***"), "{e}");
        assert!(!e.contains(&token[..token.len().min(20)]), "{e}");
    }

    #[tokio::test]
    async fn permanent_failures_go_to_on_error_and_post_sends_the_message() {
        let a = server().await;
        let s = stage(&format!("url: http://{a}/status/404\non_error: errors"));
        let (o, v) = run(&s, r#"{"id":1}"#).await.unwrap();
        assert_eq!(o, 1);
        assert_eq!(v["http_error"]["status"], 404);
        let post = stage(&format!("method: POST\nurl: http://{a}/echo\nmerge_into: echoed"));
        let (_, v) = run(&post, r#"{"id":7}"#).await.unwrap();
        assert_eq!(v["echoed"]["id"], 7);
    }

    #[tokio::test]
    async fn rate_limit_spaces_requests() {
        let a = server().await;
        let s = stage(&format!("url: http://{a}/claims/x\nrate_limit: 20"));
        let t0 = std::time::Instant::now();
        for _ in 0..6 {
            run(&s, "{}").await.unwrap();
        }
        // 6 requests at 20/s: the 6th may not start before 250 ms
        assert!(t0.elapsed() >= Duration::from_millis(250), "{:?}", t0.elapsed());
    }
}
