//! The upload stage's Azure Blob target against Azurite (npm `azurite`).
#![cfg(feature = "eventhubs")]

mod support;

use conveyor::classify::ErrorCategory;
use conveyor::config::{BlobLocation, Secret, UploadConfig, UploadTarget};
use conveyor::stages::Upload;
use conveyor::stages::{Emit, Stage};
use conveyor::transport::{Headers, PipelineMessage};
use serde_json::{Value, json};
use support::azure::Azurite;

fn msg(v: &Value) -> PipelineMessage {
    PipelineMessage {
        entity: "cached".into(),
        partition: 0,
        position: 0,
        key: None,
        headers: Headers::default(),
        payload: serde_json::to_vec(v).unwrap().into(),
        timestamp_ms: 0,
    }
}

async fn run(u: &Upload, v: &Value) -> Result<Value, conveyor::stages::StageError> {
    let mut out: Vec<Emit> = Vec::new();
    u.process(&msg(v), &mut out).await?;
    Ok(serde_json::from_slice(&out[0].message.payload).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_once_to_azurite_and_classifies_an_unreachable_service() {
    let mut az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.pdf");
    std::fs::write(&file, vec![42u8; 5000]).unwrap();
    let cfg = UploadConfig {
        path_field: "cached.path".into(),
        target: UploadTarget::Blob(BlobLocation {
            connection_string: Some(Secret::new(az.conn())),
            endpoint: None,
            credential: None,
            container: "attachments".into(),
        }),
        name: "{{claim}}/{{cached.sha256}}.pdf".into(),
        into: "result".into(),
        remove_cache: true,
    };
    let u = Upload::new(cfg.clone(), 0).unwrap();
    let v = json!({ "claim": "C-1", "cached": { "path": file.to_str().unwrap(), "sha256": "abc", "content_type": "application/pdf" } });
    let r = run(&u, &v).await.unwrap();
    assert_eq!(r["result"]["name"], "C-1/abc.pdf");
    assert_eq!(r["result"]["size"], 5000);
    let (body, props) = az.client().get("attachments", "C-1/abc.pdf").await.unwrap();
    assert_eq!(body.len(), 5000);
    assert_eq!(props.content_type.as_deref(), Some("application/pdf"));
    assert!(!file.exists(), "cache removed after the upload");
    let etag = props.etag.clone();
    // redelivery (cache already gone): nothing uploaded again, same result
    let r2 = run(&u, &v).await.unwrap();
    assert_eq!(r2["result"], r["result"]);
    assert_eq!(az.client().properties("attachments", "C-1/abc.pdf").await.unwrap().unwrap().etag, etag);
    // a redelivery with the cache present again: same size → no second put
    std::fs::write(&file, vec![42u8; 5000]).unwrap();
    run(&u, &v).await.unwrap();
    assert_eq!(az.client().properties("attachments", "C-1/abc.pdf").await.unwrap().unwrap().etag, etag);
    // never uploaded and the cache is gone: permanent
    let gone = json!({ "claim": "C-2", "cached": { "path": "/nonexistent/x", "sha256": "z" } });
    assert_eq!(run(&u, &gone).await.unwrap_err().category(), ErrorCategory::Permanent);
    // Azurite down: transient (retried, not dead-lettered)
    az.stop();
    std::fs::write(&file, vec![1u8; 10]).unwrap();
    let v3 = json!({ "claim": "C-3", "cached": { "path": file.to_str().unwrap(), "sha256": "d" } });
    let e = run(&Upload::new(cfg, 0).unwrap(), &v3).await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
    assert!(file.exists(), "the cache file stays until the upload succeeds");
}
