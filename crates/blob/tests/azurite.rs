//! Integration tests against Azurite (the Azure Storage emulator), started by each test
//! on a free port through `scripts/azurite.sh` (which installs it into `.cache/node` when
//! missing). Without node/npm/Azurite these tests FAIL; they never skip.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conveyor_blob::{BlobClient, BlobError, Category, Condition, Credentials, DEV_ACCOUNT, DEV_KEY, PutOptions};

struct Azurite {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/azurite.sh")
}

impl Azurite {
    fn start() -> Azurite {
        static N: AtomicU32 = AtomicU32::new(0);
        let st = Command::new("bash")
            .arg(script())
            .arg("install")
            .status()
            .unwrap_or_else(|e| panic!("cannot run bash scripts/azurite.sh: {e}"));
        assert!(
            st.success(),
            "scripts/azurite.sh could not install Azurite into .cache/node (needs node, npm and the npm \
             registry); the blob integration tests need it and do not skip"
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!(
            "conveyor-blob-azurite-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = File::create(dir.with_extension("log")).unwrap();
        let child = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.join("data"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn scripts/azurite.sh start");
        let mut a = Azurite { child: Some(child), port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return a;
            }
            if let Some(st) = a.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(a.dir.with_extension("log")).unwrap_or_default();
                panic!("Azurite exited ({st}) before listening on {port}:\n{log}");
            }
            assert!(Instant::now() < deadline, "Azurite did not listen on 127.0.0.1:{port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    fn client(&self) -> BlobClient {
        BlobClient::new(&self.endpoint(), Credentials::SharedKey { account: DEV_ACCOUNT.into(), key: DEV_KEY.into() })
            .unwrap()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

fn opts<'a>(metadata: &'a [(&'a str, &'a str)], condition: Condition) -> PutOptions<'a> {
    PutOptions { content_type: None, metadata, condition }
}

const CKPT: &str = "127.0.0.1:5672/hub/$default/checkpoint/0";

#[tokio::test]
async fn containers_put_get_metadata_delete() {
    let az = Azurite::start();
    // through a connection string, as the daemon would configure it
    let c = BlobClient::from_connection_string(&format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint={}/;",
        az.endpoint()
    ))
    .unwrap();
    assert_eq!(c.endpoint(), az.endpoint());

    assert!(c.create_container("ckpt").await.unwrap(), "first create");
    assert!(!c.create_container("ckpt").await.unwrap(), "second create reports existing");

    let body = Bytes::from_static(b"{\"offset\":\"42\",\"sequence\":7}");
    let put = c
        .put(
            "ckpt",
            CKPT,
            body.clone(),
            PutOptions {
                content_type: Some("application/json"),
                metadata: &[("offset", "42"), ("SequenceNumber", "7"), ("empty", "")],
                condition: Condition::None,
            },
        )
        .await
        .unwrap();
    assert!(put.etag.starts_with('"') && put.etag.ends_with('"'), "quoted etag: {}", put.etag);

    let (got, props) = c.get("ckpt", CKPT).await.unwrap();
    assert_eq!(got, body);
    assert_eq!(props.etag, put.etag);
    assert_eq!(props.size, body.len() as u64);
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.last_modified, put.last_modified);
    assert_eq!(props.metadata.get("offset").map(String::as_str), Some("42"));
    assert_eq!(props.metadata.get("sequencenumber").map(String::as_str), Some("7"));

    let head = c.properties("ckpt", CKPT).await.unwrap().expect("exists");
    assert_eq!(head, props);

    // metadata round-trip through set_metadata (replaces all)
    let md = c.set_metadata("ckpt", CKPT, &[("ownerid", "node-2"), ("x", "a b=c&d")], Condition::None).await.unwrap();
    assert_ne!(md.etag, put.etag, "set_metadata changes the etag");
    let head = c.properties("ckpt", CKPT).await.unwrap().unwrap();
    assert_eq!(head.etag, md.etag);
    assert_eq!(head.metadata.len(), 2, "{:?}", head.metadata);
    assert_eq!(head.metadata["ownerid"], "node-2");
    assert_eq!(head.metadata["x"], "a b=c&d");
    let (again, _) = c.get("ckpt", CKPT).await.unwrap();
    assert_eq!(again, body, "metadata does not touch content");

    // odd names: spaces, '+', '%', unicode, '?', '#'
    for name in ["dir/a b+c%20d", "ünï/cödé", "q?x#y", "trailing/"] {
        c.put("ckpt", name, Bytes::from(name.as_bytes().to_vec()), PutOptions::default()).await.unwrap();
        let (b, _) = c.get("ckpt", name).await.unwrap();
        assert_eq!(b, name.as_bytes(), "{name}");
    }
    // empty body
    c.put("ckpt", "empty", Bytes::new(), PutOptions::default()).await.unwrap();
    let (b, p) = c.get("ckpt", "empty").await.unwrap();
    assert!(b.is_empty());
    assert_eq!(p.size, 0);

    // missing things
    assert_eq!(c.properties("ckpt", "nope").await.unwrap(), None);
    assert_eq!(c.properties("nocontainer", "nope").await.unwrap(), None);
    let e = c.get("ckpt", "nope").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(404), Some("BlobNotFound")), "{e}");
    assert_eq!(e.category(), Category::Permanent);
    let msg = e.to_string();
    assert!(
        msg.contains("get blob") && msg.contains("ckpt/nope") && msg.contains("404") && msg.contains("BlobNotFound"),
        "{msg}"
    );
    let e = c.put("nocontainer", "x", Bytes::new(), PutOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), Some("ContainerNotFound"), "{e}");
    assert!(!e.is_condition_failed());

    // delete
    assert!(c.delete("ckpt", CKPT).await.unwrap());
    assert!(!c.delete("ckpt", CKPT).await.unwrap());
    assert_eq!(c.properties("ckpt", CKPT).await.unwrap(), None);
}

#[tokio::test]
async fn list_prefix_metadata_and_paging() {
    let az = Azurite::start();
    let c = az.client().with_list_page_size(2);
    c.create_container("lst").await.unwrap();
    let mut want = Vec::new();
    for i in 0..7 {
        let name = format!("127.0.0.1:5672/hub/$default/ownership/{i}");
        let owner = format!("node-{i}");
        let r = c
            .put(
                "lst",
                &name,
                Bytes::from(vec![b'x'; i]),
                opts(&[("ownerid", &owner), ("Kind", "own")], Condition::None),
            )
            .await
            .unwrap();
        want.push((name, r.etag, i as u64, owner));
    }
    c.put("lst", "127.0.0.1:5672/hub/$default/checkpoint/0", Bytes::from_static(b"c"), PutOptions::default())
        .await
        .unwrap();
    c.put("lst", "other", Bytes::from_static(b"o"), PutOptions::default()).await.unwrap();

    let items = c.list("lst", "127.0.0.1:5672/hub/$default/ownership/").await.unwrap();
    assert_eq!(items.len(), 7, "all pages followed: {:?}", items.iter().map(|i| &i.name).collect::<Vec<_>>());
    for (item, (name, etag, size, owner)) in items.iter().zip(&want) {
        assert_eq!(&item.name, name);
        assert_eq!(&item.etag, etag, "list etag form == put etag form");
        assert_eq!(item.size, *size);
        assert_eq!(item.metadata.get("ownerid"), Some(owner));
        assert_eq!(item.metadata.get("kind").map(String::as_str), Some("own"), "{:?}", item.metadata);
    }
    let props = c.properties("lst", &want[3].0).await.unwrap().unwrap();
    assert_eq!(props.last_modified, items[3].last_modified);

    assert_eq!(c.list("lst", "").await.unwrap().len(), 9);
    assert_eq!(az.client().list("lst", "").await.unwrap().len(), 9, "default page size");
    assert_eq!(c.list("lst", "127.0.0.1:5672/hub/$default/checkpoint/").await.unwrap().len(), 1);
    assert!(c.list("lst", "zzz").await.unwrap().is_empty());
    let e = c.list("missing", "").await.unwrap_err();
    assert_eq!(e.code(), Some("ContainerNotFound"), "{e}");
}

#[tokio::test]
async fn etag_conditions() {
    let az = Azurite::start();
    let c = az.client();
    c.create_container("own").await.unwrap();
    let name = "127.0.0.1:5672/hub/$default/ownership/3";

    // create-only claim
    let first = c.put("own", name, Bytes::new(), opts(&[("ownerid", "a")], Condition::IfNoneMatchAny)).await.unwrap();
    let e = c.put("own", name, Bytes::new(), opts(&[("ownerid", "b")], Condition::IfNoneMatchAny)).await.unwrap_err();
    eprintln!("second create-only put: {e}");
    assert!(e.is_condition_failed(), "second create-only put: {e}");
    assert_eq!(e.category(), Category::Conflict);
    assert!(matches!(e.status(), Some(409) | Some(412)), "{e}");
    assert_eq!(c.properties("own", name).await.unwrap().unwrap().metadata["ownerid"], "a", "loser did not write");

    // If-Match with the etag from put (quoted form)
    let second = c
        .put("own", name, Bytes::new(), opts(&[("ownerid", "b")], Condition::IfMatch(first.etag.clone())))
        .await
        .unwrap();
    assert_ne!(second.etag, first.etag);
    // stale etag
    let e = c
        .put("own", name, Bytes::new(), opts(&[("ownerid", "c")], Condition::IfMatch(first.etag.clone())))
        .await
        .unwrap_err();
    assert!(e.is_condition_failed(), "{e}");
    assert_eq!((e.status(), e.code()), (Some(412), Some("ConditionNotMet")), "{e}");
    assert_eq!(e.category(), Category::Conflict);
    let msg = e.to_string();
    assert!(
        msg.contains("put blob") && msg.contains(name) && msg.contains("412") && msg.contains("ConditionNotMet"),
        "{msg}"
    );

    // If-Match with the etag from list
    let listed = c.list("own", "127.0.0.1:5672/hub/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].etag, second.etag);
    let third = c
        .put("own", name, Bytes::new(), opts(&[("ownerid", "c")], Condition::IfMatch(listed[0].etag.clone())))
        .await
        .unwrap();
    // ... and with the unquoted form
    let bare = third.etag.trim_matches('"').to_owned();
    let fourth = c.put("own", name, Bytes::new(), opts(&[("ownerid", "d")], Condition::IfMatch(bare))).await.unwrap();

    // set_metadata with conditions
    let e = c.set_metadata("own", name, &[("ownerid", "x")], Condition::IfMatch(third.etag.clone())).await.unwrap_err();
    assert!(e.is_condition_failed(), "{e}");
    let md = c.set_metadata("own", name, &[("ownerid", "e")], Condition::IfMatch(fourth.etag.clone())).await.unwrap();
    let e =
        c.set_metadata("own", name, &[("ownerid", "f")], Condition::IfMatch(fourth.etag.clone())).await.unwrap_err();
    assert!(e.is_condition_failed(), "{e}");
    let p = c.properties("own", name).await.unwrap().unwrap();
    assert_eq!((p.etag.as_str(), p.metadata["ownerid"].as_str()), (md.etag.as_str(), "e"));

    // If-Match on a missing blob fails the condition too (no current version to match)
    let e = c.put("own", "missing", Bytes::new(), opts(&[], Condition::IfMatch(md.etag.clone()))).await.unwrap_err();
    assert!(e.is_condition_failed(), "{e}");
    assert_eq!(e.status(), Some(412), "{e}");
    assert_eq!(c.properties("own", "missing").await.unwrap(), None, "nothing created");
    // If-None-Match:* on a fresh name succeeds
    c.put("own", "fresh", Bytes::new(), opts(&[], Condition::IfNoneMatchAny)).await.unwrap();
}

#[tokio::test]
async fn auth_failure_and_stopped_server() {
    let mut az = Azurite::start();
    let good = az.client();
    good.create_container("auth").await.unwrap();

    // a valid base64 key that is not the account's
    let wrong_key = "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZw==";
    let bad =
        BlobClient::new(&az.endpoint(), Credentials::SharedKey { account: DEV_ACCOUNT.into(), key: wrong_key.into() })
            .unwrap();
    let e = bad.put("auth", "x", Bytes::from_static(b"x"), PutOptions::default()).await.unwrap_err();
    assert_eq!(e.category(), Category::Auth, "{e}");
    eprintln!("wrong key: {e}");
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(!e.to_string().contains(wrong_key) && !e.to_string().contains(DEV_KEY));
    let e = bad.list("auth", "").await.unwrap_err();
    assert_eq!(e.category(), Category::Auth, "{e}");
    // HEAD has no body: the code must come from the header
    let e = bad.properties("auth", "x").await.unwrap_err();
    assert_eq!(e.category(), Category::Auth, "{e}");

    // anonymous access to a private container
    let anon = BlobClient::new(&az.endpoint(), Credentials::Anonymous).unwrap();
    let e = anon.list("auth", "").await.unwrap_err();
    assert!(matches!(e.category(), Category::Auth | Category::Permanent), "{e}");

    // server gone: transient
    az.stop();
    let e = good.put("auth", "x", Bytes::from_static(b"x"), PutOptions::default()).await.unwrap_err();
    eprintln!("server stopped: {e}");
    assert_eq!(e.category(), Category::Transient, "{e}");
    assert!(matches!(e, BlobError::Transport { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("put blob auth/x"), "{msg}");
    assert!(!msg.contains("127.0.0.1"), "no URL in transport errors: {msg}");
    let e = good.properties("auth", "x").await.unwrap_err();
    assert_eq!(e.category(), Category::Transient, "{e}");
}

/// An account SAS (version 2019-12-12 form of the string-to-sign) made with the
/// emulator's key, to check that SAS credentials reach the service intact.
fn account_sas(permissions: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let b64 = base64::engine::general_purpose::STANDARD;
    let (sv, ss, srt, se, spr) = ("2019-12-12", "b", "sco", "2099-01-01T00:00:00Z", "https,http");
    let sts = format!("{DEV_ACCOUNT}\n{permissions}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(DEV_KEY).unwrap()).unwrap();
    mac.update(sts.as_bytes());
    let sig = b64.encode(mac.finalize().into_bytes());
    let sig: String = sig
        .bytes()
        .map(|b| match b {
            b'+' => "%2B".to_owned(),
            b'/' => "%2F".to_owned(),
            b'=' => "%3D".to_owned(),
            _ => (b as char).to_string(),
        })
        .collect();
    format!("sv={sv}&ss={ss}&srt={srt}&sp={permissions}&se={se}&spr={}&sig={sig}", spr.replace(',', "%2C"))
}

#[tokio::test]
async fn sas_credentials() {
    let az = Azurite::start();
    let sas = account_sas("rwdlac");
    let c = BlobClient::from_connection_string(&format!("BlobEndpoint={};SharedAccessSignature=?{sas}", az.endpoint()))
        .unwrap();
    assert!(!format!("{c:?}").contains(&sas[sas.find("sig=").unwrap() + 4..]));
    assert!(c.create_container("sas").await.unwrap());
    let r = c.put("sas", CKPT, Bytes::from_static(b"v"), opts(&[("a", "1")], Condition::IfNoneMatchAny)).await.unwrap();
    let items = c.list("sas", "127.0.0.1:5672/").await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].etag, r.etag);
    c.put("sas", CKPT, Bytes::from_static(b"w"), opts(&[], Condition::IfMatch(items[0].etag.clone()))).await.unwrap();
    assert_eq!(c.get("sas", CKPT).await.unwrap().0, Bytes::from_static(b"w"));
    assert!(c.delete("sas", CKPT).await.unwrap());

    // read-only SAS: writes are refused as an auth problem, and the message has no signature
    let ro_sas = account_sas("rl");
    let ro = BlobClient::new(&az.endpoint(), Credentials::Sas(ro_sas.clone())).unwrap();
    assert!(ro.list("sas", "").await.unwrap().is_empty());
    let e = ro.put("sas", "x", Bytes::from_static(b"x"), PutOptions::default()).await.unwrap_err();
    eprintln!("read-only SAS put: {e}");
    assert_eq!(e.category(), Category::Auth, "{e}");
    let sig = &ro_sas[ro_sas.find("sig=").unwrap() + 4..];
    assert!(!e.to_string().contains(sig) && !format!("{e:?}").contains(sig));
}
