use super::*;
use std::time::Duration;

fn specs(parts: u32) -> Vec<EntitySpec> {
    vec![
        EntitySpec { name: "in".into(), key: "in".into(), partitions: parts },
        EntitySpec { name: "sink".into(), key: "sink".into(), partitions: 1 },
    ]
}

fn group(entity: &str, group: &str) -> GroupSpec {
    GroupSpec { entity: entity.into(), group: group.into(), start: StartPosition::Earliest, shared: false }
}

fn open(path: Option<PathBuf>, capacity: usize, parts: u32) -> Embedded {
    let opts = EmbeddedOptions { name: "t".into(), path, capacity, max_message_bytes: 4096 };
    Embedded::open(opts, &specs(parts), &[group("in", "g")]).unwrap()
}

fn msg(key: &str, payload: &str) -> OutboundMessage {
    OutboundMessage {
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

async fn readers(t: &Embedded, group: &str) -> (Box<dyn Subscription>, Vec<Box<dyn PartitionReader>>) {
    let mut sub = t.subscribe("in", group, StartPosition::Earliest).await.unwrap();
    let n = t.partitions("in").await.unwrap().len();
    let mut rs = Vec::new();
    for _ in 0..n {
        match sub.next().await.unwrap() {
            Assignment::Assigned(r) => rs.push(r),
            Assignment::Revoked { .. } | Assignment::Health(_) => panic!("unexpected event"),
        }
    }
    (sub, rs)
}

async fn drain(r: &mut Box<dyn PartitionReader>) -> Vec<PipelineMessage> {
    let mut out = Vec::new();
    while tokio::time::timeout(Duration::from_millis(50), r.fetch(1000, &mut out)).await.is_ok() {}
    out
}

#[tokio::test]
async fn keyed_messages_keep_order_per_partition() {
    let t = open(None, 1000, 3);
    let p = t.producer();
    let batch: Vec<_> = (0..30).map(|i| msg(&format!("k{}", i % 5), &format!("{i}"))).collect();
    let res = p.send("in", batch).await.unwrap();
    assert_eq!(res.len(), 30);
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r.partition, key_partition(format!("k{}", i % 5).as_bytes(), 3));
    }
    let (_sub, mut rs) = readers(&t, "g").await;
    let mut total = 0;
    for r in rs.iter_mut() {
        let got = drain(r).await;
        total += got.len();
        // positions are dense and payload order is production order
        for w in got.windows(2) {
            assert_eq!(w[1].position, w[0].position + 1);
            let a: u32 = std::str::from_utf8(&w[0].payload).unwrap().parse().unwrap();
            let b: u32 = std::str::from_utf8(&w[1].payload).unwrap().parse().unwrap();
            assert!(a < b);
        }
    }
    assert_eq!(total, 30);
}

#[tokio::test]
async fn memory_backpressure_waits_for_commit_and_drops_nothing() {
    let t = open(None, 10, 1);
    let p = t.producer();
    p.send("in", (0..10).map(|i| msg("k", &i.to_string())).collect()).await.unwrap();
    // the 11th waits: group "g" has committed nothing
    let p2 = p.clone();
    let blocked = tokio::spawn(async move { p2.send("in", vec![msg("k", "10")]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!blocked.is_finished(), "producer should wait for room");
    let (_sub, mut rs) = readers(&t, "g").await;
    let mut got = Vec::new();
    rs[0].fetch(5, &mut got).await.unwrap();
    rs[0].commit(got.last().unwrap()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), blocked).await.unwrap().unwrap().unwrap();
    let rest = drain(&mut rs[0]).await;
    let all: Vec<String> =
        got.iter().chain(rest.iter()).map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect();
    assert_eq!(all, (0..11).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn groups_are_exclusive_until_the_holder_leaves() {
    let t = open(None, 100, 2);
    let (sub, _rs) = readers(&t, "g").await;
    let t2 = t.clone();
    let second = tokio::spawn(async move {
        let mut s = t2.subscribe("in", "g", StartPosition::Earliest).await.unwrap();
        matches!(s.next().await.unwrap(), Assignment::Assigned(_))
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished());
    drop(sub);
    assert!(tokio::time::timeout(Duration::from_secs(2), second).await.unwrap().unwrap());
}

#[tokio::test]
async fn groupless_entity_in_memory_keeps_newest_capacity() {
    let t = open(None, 4, 1);
    t.producer().send("sink", (0..10).map(|i| msg("k", &i.to_string())).collect()).await.unwrap();
    let info = t.partitions("sink").await.unwrap();
    assert_eq!((info[0].earliest, info[0].next), (6, 10));
}

#[tokio::test]
async fn durable_resumes_from_committed_position_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let t = open(Some(dir.path().into()), 100, 2);
        let p = t.producer();
        p.send("in", (0..100).map(|i| msg(&format!("k{i}"), &i.to_string())).collect()).await.unwrap();
        let (_sub, mut rs) = readers(&t, "g").await;
        // commit the first half of each partition
        for r in rs.iter_mut() {
            let got = drain(r).await;
            let half = &got[got.len() / 2 - 1];
            r.commit(half).await.unwrap();
        }
        t.flush().await.unwrap();
        // dropped without close: like a crash after the last flush
    }
    let t = open(Some(dir.path().into()), 100, 2);
    let info = t.partitions("in").await.unwrap();
    assert_eq!(info.iter().map(|i| i.next).sum::<i64>(), 100);
    let (_sub, mut rs) = readers(&t, "g").await;
    let mut seen = Vec::new();
    for r in rs.iter_mut() {
        let got = drain(r).await;
        let committed = t.group_positions("in", "g").await.unwrap()[r.partition() as usize].committed.unwrap();
        assert_eq!(got.first().unwrap().position, committed);
        seen.extend(got.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()));
    }
    // about half redelivered, and those carry their original payloads
    assert!((45..=55).contains(&seen.len()), "{}", seen.len());
    // new writes continue after the recovered positions
    let r = t.producer().send("in", vec![msg("k0", "new")]).await.unwrap();
    assert!(r[0].position >= 1);
}

#[tokio::test]
async fn durable_reads_fall_back_to_disk_beyond_the_memory_window() {
    let dir = tempfile::tempdir().unwrap();
    let t = open(Some(dir.path().into()), 8, 1);
    let p = t.producer();
    for chunk in 0..10 {
        p.send("in", (0..8).map(|i| msg("k", &(chunk * 8 + i).to_string())).collect()).await.unwrap();
    }
    let (_sub, mut rs) = readers(&t, "g").await;
    let got = drain(&mut rs[0]).await;
    let payloads: Vec<u32> = got.iter().map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap()).collect();
    assert_eq!(payloads, (0..80).collect::<Vec<_>>());
}

#[tokio::test]
async fn unknown_entity_and_partition_are_permanent() {
    let t = open(None, 10, 2);
    let e = t.producer().send("nope", vec![msg("k", "x")]).await.unwrap_err();
    assert_eq!(e.category(), crate::classify::ErrorCategory::Permanent);
    let mut m = msg("k", "x");
    m.partition = Some(7);
    let e = t.producer().send("in", vec![m]).await.unwrap_err();
    assert!(e.to_string().contains("partition 7"), "{e}");
}

#[tokio::test]
async fn a_group_removed_by_a_reload_stops_holding_records_back() {
    // memory mode, capacity 10: "g" commits nothing, so the 11th send waits
    let t = open(None, 10, 1);
    let p = t.producer();
    t.ensure(&specs(1), &[group("in", "g"), group("in", "old")]).await.unwrap();
    p.send("in", (0..10).map(|i| msg("k", &i.to_string())).collect()).await.unwrap();
    let (_sub, mut rs) = readers(&t, "g").await;
    let got = drain(&mut rs[0]).await;
    rs[0].commit(got.last().unwrap()).await.unwrap();
    // "old" (a worker the reload removed or renamed) still pins all ten
    let p2 = p.clone();
    let blocked = tokio::spawn(async move { p2.send("in", vec![msg("k", "10")]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!blocked.is_finished(), "the stale group holds the records");
    // the reload's ensure lists only "g": the send goes through
    t.ensure(&specs(1), &[group("in", "g")]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), blocked).await.expect("unblocked").unwrap().unwrap();
    let pos = t.group_positions("in", "old").await.unwrap();
    assert_eq!(pos[0].committed, None, "unregistered");
    assert_eq!(t.group_positions("in", "g").await.unwrap()[0].committed, Some(10));
}

#[tokio::test]
async fn a_group_that_comes_back_resumes_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let t = open(Some(dir.path().into()), 100, 1);
    t.producer().send("in", (0..6).map(|i| msg("k", &i.to_string())).collect()).await.unwrap();
    {
        let (_sub, mut rs) = readers(&t, "g").await;
        let got = drain(&mut rs[0]).await;
        rs[0].commit(&got[3]).await.unwrap();
    }
    t.ensure(&specs(1), &[]).await.unwrap();
    t.ensure(&specs(1), &[group("in", "g")]).await.unwrap();
    assert_eq!(t.group_positions("in", "g").await.unwrap()[0].committed, Some(4));
}

#[tokio::test]
async fn counts_and_lengths_beyond_16_bits_are_refused_not_stored_corrupt() {
    for path in [None, Some(tempfile::tempdir().unwrap())] {
        let opts = EmbeddedOptions {
            name: "t".into(),
            path: path.as_ref().map(|d| d.path().to_path_buf()),
            capacity: 100,
            max_message_bytes: 64 << 20,
        };
        let t = Embedded::open(opts, &specs(1), &[group("in", "g")]).unwrap();
        let mut many = msg("k", "x");
        many.headers = Headers((0..=MAX_HEADERS).map(|i| (format!("h{i}"), Bytes::new())).collect());
        let e = t.producer().send("in", vec![msg("k", "before"), many]).await.unwrap_err();
        assert_eq!(e.category(), crate::classify::ErrorCategory::Permanent);
        assert!(e.to_string().contains("65536 headers"), "{e}");
        let mut long = msg("k", "x");
        long.headers.set(&"n".repeat(MAX_HEADER_NAME + 1), "v");
        let e = t.producer().send("in", vec![long]).await.unwrap_err();
        assert!(e.to_string().contains("header name of 65536 bytes"), "{e}");
        // nothing of those batches was written; the limits themselves are fine
        let mut edge = msg("k", "edge");
        edge.headers = Headers((0..MAX_HEADERS).map(|i| (format!("h{i}"), Bytes::from_static(b"v"))).collect());
        edge.headers.0[0].0 = "n".repeat(MAX_HEADER_NAME);
        t.producer().send("in", vec![edge.clone()]).await.unwrap();
        t.flush().await.unwrap();
        let mut r = t.open_reader("in", 0, Seek::Earliest).await.unwrap();
        let mut got = Vec::new();
        r.fetch(10, &mut got).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].headers, edge.headers, "read back intact");
        assert_eq!(got[0].payload, Bytes::from_static(b"edge"));
    }
}

#[tokio::test]
async fn too_large_messages_are_permanent_errors() {
    let t = open(None, 10, 1);
    let e = t.producer().send("in", vec![msg("k", &"x".repeat(5000))]).await.unwrap_err();
    assert!(matches!(e, TransportError::TooLarge { limit: 4096, .. }), "{e}");
    assert_eq!(e.category(), crate::classify::ErrorCategory::Permanent);
}

#[tokio::test]
async fn a_reader_without_a_group_reads_from_anywhere_and_cannot_commit() {
    let t = open(None, 100, 1);
    t.producer().send("in", (0..5).map(|i| msg("k", &i.to_string())).collect()).await.unwrap();
    let mut r = t.open_reader("in", 0, Seek::At(2)).await.unwrap();
    let got = drain(&mut r).await;
    assert_eq!(got.iter().map(|m| m.position).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert!(matches!(r.commit(&got[0]).await, Err(TransportError::ReadOnly)));
    assert_eq!(r.lag(), None);
    // the group's records are untouched
    assert_eq!(t.group_positions("in", "g").await.unwrap()[0].committed, Some(0));
    assert!(t.open_reader("in", 3, Seek::Earliest).await.is_err());
}

#[tokio::test]
async fn a_refusal_for_good_gives_the_whole_batch_back_and_writes_nothing() {
    let t = open(None, 100, 2);
    let oversize = OutboundMessage { payload: Bytes::from(vec![b'x'; 5000]), ..Default::default() };
    let bad_partition = OutboundMessage { partition: Some(7), ..msg("k", "p") };
    for refused in [oversize, bad_partition] {
        let batch = vec![msg("a", "1"), refused.clone(), msg("b", "2")];
        let r = t.send_or_return("in", batch.clone()).await.expect_err("refused");
        assert_eq!(r.error.category(), crate::classify::ErrorCategory::Permanent, "{}", r.error);
        let back = r.batch.expect("the batch comes back");
        assert_eq!(back.len(), 3);
        for (a, b) in back.iter().zip(&batch) {
            assert_eq!((&a.key, &a.payload, a.partition), (&b.key, &b.payload, b.partition));
        }
        // `send` is the same path
        let e = t.send("in", batch).await.expect_err("refused");
        assert_eq!(e.kind(), r.error.kind());
    }
    let written: i64 = t.partitions("in").await.unwrap().iter().map(|p| p.next).sum();
    assert_eq!(written, 0, "nothing of a refused batch is written");
    assert!(t.send_or_return("in", vec![msg("a", "1")]).await.is_ok());
}
