//! Wire-level checks against a throw-away HTTP server on 127.0.0.1: bearer tokens,
//! throttling and server-error classification, timeouts, and what a request carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use conveyor_blob::{BlobClient, BlobError, Category, Condition, Credentials, PutOptions, TokenSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Serves the given raw responses, one per connection, in order; sends back each
/// request's head (request line + headers, as text).
async fn server(responses: Vec<String>) -> (String, mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for resp in responses {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            if resp == "HANG" {
                tokio::time::sleep(Duration::from_secs(30)).await;
                continue;
            }
            s.write_all(resp.as_bytes()).await.unwrap();
            s.shutdown().await.ok();
        }
    });
    (format!("http://{addr}/acct"), rx)
}

fn xml(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

const CREATED: &str = "HTTP/1.1 201 Created\r\nETag: \"0x8D1\"\r\nLast-Modified: Fri, 26 Jun 2015 23:39:12 GMT\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

struct Tokens(AtomicUsize);

#[async_trait::async_trait]
impl TokenSource for Tokens {
    async fn token(&self) -> Result<String, BlobError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        if n >= 2 { Err(BlobError::token("identity endpoint unreachable", true)) } else { Ok(format!("tok{n}")) }
    }
}

#[tokio::test]
async fn bearer_token_and_request_shape() {
    let (ep, mut rx) = server(vec![CREATED.into(), CREATED.into()]).await;
    let c = BlobClient::new(&ep, Credentials::Bearer(Arc::new(Tokens(AtomicUsize::new(0))))).unwrap();
    let r = c
        .put(
            "ckpt",
            "127.0.0.1:5672/hub/$default/checkpoint/0",
            Bytes::from_static(b"hello"),
            PutOptions {
                content_type: Some("text/plain"),
                metadata: &[("OwnerId", "n1")],
                condition: Condition::IfMatch("0x8D0".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.etag, "\"0x8D1\"");
    let head = rx.recv().await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("put /acct/ckpt/127.0.0.1%3a5672/hub/%24default/checkpoint/0 http/1.1\r\n"), "{head}");
    for h in [
        "authorization: bearer tok0\r\n",
        "x-ms-version: 2021-08-06\r\n",
        "x-ms-blob-type: blockblob\r\n",
        "x-ms-meta-ownerid: n1\r\n",
        "if-match: \"0x8d0\"\r\n",
        "content-type: text/plain\r\n",
        "content-length: 5\r\n",
        "x-ms-date: ",
    ] {
        assert!(head.contains(h), "missing {h:?} in\n{head}");
    }
    // a new token per request
    c.set_metadata("ckpt", "b", &[], Condition::IfNoneMatchAny).await.unwrap();
    let head = rx.recv().await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("put /acct/ckpt/b?comp=metadata http/1.1"), "{head}");
    assert!(head.contains("authorization: bearer tok1\r\n") && head.contains("if-none-match: *\r\n"), "{head}");
    assert!(head.contains("content-length: 0\r\n"), "{head}");
    // token source failure passes through with its category
    let e = c.delete("ckpt", "b").await.unwrap_err();
    assert_eq!(e.category(), Category::Transient, "{e}");
    assert!(matches!(e, BlobError::Token { .. }));
}

#[tokio::test]
async fn sas_is_appended_and_anonymous_sends_no_auth() {
    let list = xml(
        "200 OK",
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults><Blobs /><NextMarker /></EnumerationResults>",
    );
    let (ep, mut rx) = server(vec![list, CREATED.into()]).await;
    let c = BlobClient::new(&ep, Credentials::Sas("?sv=2021-08-06&sp=rl&sig=SECRET%3D".into())).unwrap();
    assert!(c.list("c", "a b/$x").await.unwrap().is_empty());
    let head = rx.recv().await.unwrap();
    let line = head.lines().next().unwrap();
    assert_eq!(
        line,
        "GET /acct/c?restype=container&comp=list&include=metadata&prefix=a%20b%2F%24x&sv=2021-08-06&sp=rl&sig=SECRET%3D HTTP/1.1"
    );
    assert!(!head.to_ascii_lowercase().contains("authorization"));
    let anon = BlobClient::new(&ep, Credentials::Anonymous).unwrap();
    anon.put("c", "x", Bytes::new(), PutOptions::default()).await.unwrap();
    let head = rx.recv().await.unwrap();
    assert!(head.starts_with("PUT /acct/c/x HTTP/1.1"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("authorization"));
}

#[tokio::test]
async fn throttling_server_errors_and_timeouts() {
    let (ep, _rx) = server(vec![
        "HTTP/1.1 503 Server Busy\r\nx-ms-error-code: ServerBusy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        xml("500 Internal Server Error", "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>OperationTimedOut</Code><Message>Timed out.\nRequestId:x</Message></Error>"),
        "HANG".into(),
    ])
    .await;
    let c = BlobClient::new(&ep, Credentials::Anonymous).unwrap().with_timeout(Duration::from_millis(300));
    let e = c.properties("c", "b").await.unwrap_err();
    assert_eq!((e.category(), e.code()), (Category::Throttling, Some("ServerBusy")), "{e}");
    let e = c.get("c", "b").await.unwrap_err();
    assert_eq!((e.category(), e.status()), (Category::Throttling, Some(429)), "{e}");
    let e = c.get("c", "b").await.unwrap_err();
    assert_eq!(e.category(), Category::Transient, "{e}");
    assert_eq!(e.to_string(), "get blob c/b: HTTP 500 OperationTimedOut: Timed out.");
    let e = c.get("c", "b").await.unwrap_err();
    assert_eq!(e.category(), Category::Transient, "{e}");
    assert!(matches!(e, BlobError::Transport { timeout: true, .. }), "{e:?}");
    assert!(e.to_string().starts_with("get blob c/b: timed out"), "{e}");
}
