//! Wire-level checks of the broker with fe2o3-amqp's own client.

use std::time::Duration;

use conveyor_eh_broker::{Broker, BrokerConfig, hash::partition_for_key};
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::link::{LinkStateError, RecvError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::{Connection, Receiver, Sender, Session, connection::ConnectionHandle};
use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition, Fields, LinkError};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::__private::Serializable;
use fe2o3_amqp_types::messaging::{
    AmqpValue, ApplicationProperties, Batch, Body, Data, Message, MessageAnnotations, MessageId, Outcome, Properties,
    Source, Target,
};
use fe2o3_amqp_types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Value};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;

const BATCH_FORMAT: u32 = 0x8001_3700;
const T: Duration = Duration::from_secs(10);

async fn broker(partitions: u32) -> Broker {
    Broker::start(BrokerConfig { listen: "127.0.0.1:0".parse().unwrap(), partitions, ..Default::default() })
        .await
        .unwrap()
}

async fn connect(b: &Broker) -> ConnectionHandle<()> {
    Connection::builder()
        .container_id("wire-test")
        .hostname("ns.servicebus.windows.net")
        .sasl_profile(SaslProfile::Anonymous)
        .open(format!("amqp://{}", b.local_addr()).as_str())
        .await
        .unwrap()
}

fn text_message(body: &str) -> Message<Body<Value>> {
    Message::builder().body(Body::Data(Batch::new(vec![Data(Binary::from(body.as_bytes().to_vec()))]))).build()
}

fn keyed(body: &str, key: Option<&str>) -> Message<Body<Value>> {
    let mut m = text_message(body);
    if let Some(k) = key {
        let mut anns = OrderedMap::new();
        anns.insert(OwnedKey::Symbol(Symbol::from("x-opt-partition-key")), Value::String(k.to_owned()));
        m.message_annotations = Some(MessageAnnotations(anns));
    }
    m
}

/// An Event Hubs batch: envelope with one data section per serialized message.
fn batch(bodies: &[&str], key: Option<&str>) -> Sendable<Body<Value>> {
    let sections: Vec<Data> =
        bodies.iter().map(|b| Data(Binary::from(serde_amqp::to_vec(&Serializable(keyed(b, key))).unwrap()))).collect();
    let mut envelope = keyed("", key);
    envelope.body = Body::Data(Batch::new(sections));
    Sendable::builder().message(envelope).message_format(BATCH_FORMAT).build()
}

fn annotation<'a>(m: &'a Message<Body<Value>>, key: &str) -> Option<&'a Value> {
    m.message_annotations.as_ref()?.0.get(&OwnedKey::Symbol(Symbol::from(key)))
}

fn body_text(m: &Message<Body<Value>>) -> String {
    match &m.body {
        Body::Data(b) => b.iter().map(|d| String::from_utf8_lossy(&d.0).into_owned()).collect(),
        other => format!("{other:?}"),
    }
}

fn selector(text: &str, numeric: bool) -> Value {
    let descriptor = if numeric {
        Descriptor::Code(0x0000_468C_0000_0004)
    } else {
        Descriptor::Name(Symbol::from("apache.org:selector-filter:string"))
    };
    Value::Described(Box::new(Described { descriptor, value: Value::String(text.to_owned()) }))
}

async fn open_receiver(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
    filter: Option<Value>,
    epoch: Option<i64>,
) -> Result<Receiver, String> {
    let mut source = Source::builder().address(address.to_owned());
    if let Some(f) = filter {
        let mut set = OrderedMap::new();
        set.insert(Symbol::from("apache.org:selector-filter:string"), f);
        source = source.filter(set);
    }
    let mut props = Fields::new();
    if let Some(e) = epoch {
        props.insert(Symbol::from("com.microsoft:epoch"), Value::Long(e));
    }
    Receiver::builder()
        .name(name)
        .source(source.build())
        .target(Target::builder().address(format!("{name}-target")).build())
        .properties(props)
        .attach(session)
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn recv(rx: &mut Receiver) -> Message<Body<Value>> {
    let d = tokio::time::timeout(T, rx.recv::<Body<Value>>()).await.expect("recv timed out").expect("recv failed");
    let _ = rx.accept(&d).await;
    d.into_message()
}

/// The link must end with `cond` (either on attach or on the next receive).
async fn expect_link_error(attach: Result<Receiver, String>, cond: ErrorCondition) {
    let mut rx = match attach {
        Err(e) => {
            assert!(e.contains(&format!("{cond:?}")), "attach error {e} lacks {cond:?}");
            return;
        }
        Ok(rx) => rx,
    };
    match tokio::time::timeout(T, rx.recv::<Body<Value>>()).await.expect("no detach") {
        Err(RecvError::LinkStateError(
            LinkStateError::RemoteDetachedWithError(e) | LinkStateError::RemoteClosedWithError(e),
        )) => assert_eq!(e.condition, cond),
        other => panic!("expected {cond:?}, got {other:?}"),
    }
}

fn request(op: &str, kind: &str, name: &str, partition: Option<&str>, id: u64, reply_to: &str) -> Message<Body<Value>> {
    let mut ap = OrderedMap::new();
    ap.insert("operation".to_owned(), SimpleValue::String(op.to_owned()));
    ap.insert("type".to_owned(), SimpleValue::String(kind.to_owned()));
    ap.insert("name".to_owned(), SimpleValue::String(name.to_owned()));
    if let Some(p) = partition {
        ap.insert("partition".to_owned(), SimpleValue::String(p.to_owned()));
    }
    Message::builder()
        .properties(Properties::builder().message_id(id).reply_to(reply_to.to_owned()).build())
        .application_properties(ApplicationProperties(ap))
        .body(Body::Value(AmqpValue(Value::String("token".to_owned()))))
        .build()
}

fn status(m: &Message<Body<Value>>) -> SimpleValue {
    m.application_properties.as_ref().unwrap().0.get("status-code").cloned().unwrap()
}

fn body_map(m: &Message<Body<Value>>) -> OrderedMap<Value, Value> {
    match &m.body {
        Body::Value(AmqpValue(Value::Map(map))) => map.clone(),
        other => panic!("not a map body: {other:?}"),
    }
}

fn field<'a>(map: &'a OrderedMap<Value, Value>, k: &str) -> &'a Value {
    map.get(&Value::String(k.to_owned())).unwrap_or_else(|| panic!("missing {k}"))
}

#[tokio::test]
async fn management_and_cbs_replies_have_the_sdk_types() {
    let b = broker(3).await;
    let mut conn = connect(&b).await;
    let mut s = Session::begin(&mut conn).await.unwrap();
    // Rust-SDK style: reply link target is a private address, requests carry reply-to.
    let mut tx = Sender::attach(&mut s, "mgmt-tx", "$management").await.unwrap();
    let mut rx = Receiver::builder()
        .name("mgmt-rx")
        .source("$management")
        .target("eventhubs_management")
        .attach(&mut s)
        .await
        .unwrap();

    let out =
        tx.send(request("READ", "com.microsoft:eventhub", "Orders", None, 7, "eventhubs_management")).await.unwrap();
    assert!(matches!(out, Outcome::Accepted(_)));
    let reply = recv(&mut rx).await;
    assert_eq!(reply.properties.as_ref().unwrap().correlation_id, Some(MessageId::Ulong(7)));
    assert_eq!(status(&reply), SimpleValue::Int(200));
    let map = body_map(&reply);
    assert_eq!(field(&map, "name"), &Value::String("Orders".into()));
    assert!(matches!(field(&map, "created_at"), Value::Timestamp(_)));
    assert_eq!(field(&map, "partition_count"), &Value::Int(3));
    match field(&map, "partition_ids") {
        Value::Array(a) => {
            assert_eq!(a.0, vec![Value::String("0".into()), Value::String("1".into()), Value::String("2".into())])
        }
        other => panic!("partition_ids is not an array: {other:?}"),
    }

    // Partition properties of an empty partition.
    tx.send(request("READ", "com.microsoft:partition", "orders", Some("1"), 8, "eventhubs_management")).await.unwrap();
    let map = body_map(&recv(&mut rx).await);
    assert_eq!(field(&map, "type"), &Value::String("com.microsoft:partition".into()));
    assert_eq!(field(&map, "partition"), &Value::String("1".into()));
    assert_eq!(field(&map, "begin_sequence_number"), &Value::Long(0));
    assert_eq!(field(&map, "last_enqueued_sequence_number"), &Value::Long(-1));
    assert!(matches!(field(&map, "last_enqueued_sequence_number_epoch"), Value::Long(_)));
    assert_eq!(field(&map, "last_enqueued_offset"), &Value::String("-1".into()));
    assert!(matches!(field(&map, "last_enqueued_time_utc"), Value::Timestamp(_)));
    assert_eq!(field(&map, "is_partition_empty"), &Value::Bool(true));

    // Unknown partition: 404.
    tx.send(request("READ", "com.microsoft:partition", "orders", Some("9"), 9, "eventhubs_management")).await.unwrap();
    assert_eq!(status(&recv(&mut rx).await), SimpleValue::Int(404));

    // CBS on its own session, Python style (no reply-to; reply link source = node).
    let mut s2 = Session::begin(&mut conn).await.unwrap();
    let mut ctx = Sender::attach(&mut s2, "cbs-tx", "$cbs").await.unwrap();
    let mut crx = Receiver::builder().name("cbs-rx").source("$cbs").target("$cbs").attach(&mut s2).await.unwrap();
    let mut put = request("put-token", "servicebus.windows.net:sastoken", "sb://h/orders", None, 1, "x");
    put.properties.as_mut().unwrap().reply_to = None;
    ctx.send(put.clone()).await.unwrap();
    let r = recv(&mut crx).await;
    assert_eq!(status(&r), SimpleValue::Int(202));
    assert_eq!(r.properties.as_ref().unwrap().correlation_id, Some(MessageId::Ulong(1)));
    b.faults().cbs_unauthorized(1);
    ctx.send(put.clone()).await.unwrap();
    assert_eq!(status(&recv(&mut crx).await), SimpleValue::Int(401));
    ctx.send(put).await.unwrap();
    assert_eq!(status(&recv(&mut crx).await), SimpleValue::Int(202));
    assert_eq!(b.faults().counts().cbs_unauthorized, 1);

    drop((tx, rx, ctx, crx));
    let _ = conn.close().await;
    b.shutdown().await;
}

#[tokio::test]
async fn batches_keys_annotations_and_selectors() {
    let b = broker(4).await;
    let mut conn = connect(&b).await;
    let mut s = Session::begin(&mut conn).await.unwrap();
    let mut tx = Sender::attach(&mut s, "send", "amqps://ns.servicebus.windows.net/Hub").await.unwrap();
    assert!(tx.max_message_size().unwrap_or(0) > 0, "attach must carry max-message-size");

    let out = tx.send(batch(&["k0", "k1", "k2"], Some("user-42"))).await.unwrap();
    assert!(matches!(out, Outcome::Accepted(_)));
    let want = partition_for_key("user-42", 4);
    let ev = b.events("hub");
    assert_eq!(ev.len(), 3);
    assert!(ev.iter().all(|e| e.partition == want && e.partition_key.as_deref() == Some("user-42")));
    assert_eq!(ev.iter().map(|e| e.sequence_number).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(ev[0].body, b"k0");

    // Explicit partition address, plain (non-batch) message.
    let explicit = (want + 1) % 4;
    let mut tx2 = Sender::attach(&mut s, "send-px", format!("amqps://ns/hub/Partitions/{explicit}")).await.unwrap();
    tx2.send(text_message("px")).await.unwrap();
    assert!(b.events("HUB").iter().any(|e| e.partition == explicit && e.body == b"px"));

    // Earliest, numeric descriptor (Rust SDK).
    let src = format!("amqps://ns/hub/ConsumerGroups/$Default/Partitions/{want}");
    let mut rx =
        open_receiver(&mut s, "r-earliest", &src, Some(selector("amqp.annotation.x-opt-offset > '-1'", true)), None)
            .await
            .unwrap();
    let m0 = recv(&mut rx).await;
    assert_eq!(body_text(&m0), "k0");
    assert_eq!(annotation(&m0, "x-opt-sequence-number"), Some(&Value::Long(0)));
    let off0 = match annotation(&m0, "x-opt-offset") {
        Some(Value::String(s)) => s.parse::<i64>().expect("numeric offset"),
        other => panic!("offset is not a string: {other:?}"),
    };
    assert_ne!(off0, 0, "offset must differ from the sequence number");
    assert!(matches!(annotation(&m0, "x-opt-enqueued-time"), Some(Value::Timestamp(_))));
    assert_eq!(annotation(&m0, "x-opt-partition-key"), Some(&Value::String("user-42".into())));
    let m1 = recv(&mut rx).await;
    assert_eq!(annotation(&m1, "x-opt-sequence-number"), Some(&Value::Long(1)));

    // Sequence number, symbolic descriptor (Python), exclusive and inclusive.
    let mut rx2 = open_receiver(
        &mut s,
        "r-seq",
        &src,
        Some(selector("amqp.annotation.x-opt-sequence-number > '1'", false)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(body_text(&recv(&mut rx2).await), "k2");
    let mut rx3 = open_receiver(
        &mut s,
        "r-seq-incl",
        &src,
        Some(selector("amqp.annotation.x-opt-sequence-number >='1'", true)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(body_text(&recv(&mut rx3).await), "k1");
    // Offset exclusive: after k0.
    let mut rx4 = open_receiver(
        &mut s,
        "r-off",
        &src,
        Some(selector(&format!("amqp.annotation.x-opt-offset > '{off0}'"), true)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(body_text(&recv(&mut rx4).await), "k1");

    // Latest (and no filter = latest): only new events arrive.
    let mut latest =
        open_receiver(&mut s, "r-latest", &src, Some(selector("amqp.annotation.x-opt-offset > '@latest'", true)), None)
            .await
            .unwrap();
    let mut nofilter = open_receiver(&mut s, "r-none", &src, None, None).await.unwrap();
    tx.send(batch(&["new"], Some("user-42"))).await.unwrap();
    assert_eq!(body_text(&recv(&mut latest).await), "new");
    assert_eq!(body_text(&recv(&mut nofilter).await), "new");
    // ... and the earliest receiver continues with k2 then new.
    assert_eq!(body_text(&recv(&mut rx).await), "k2");
    assert_eq!(body_text(&recv(&mut rx).await), "new");

    // Client-initiated close is answered.
    tokio::time::timeout(T, latest.close()).await.expect("close hangs").unwrap();

    // Unknown partition: attach then detach with amqp:not-found (send and receive).
    expect_link_error(
        open_receiver(&mut s, "r-bad", "amqps://ns/hub/ConsumerGroups/$Default/Partitions/9", None, None).await,
        ErrorCondition::AmqpError(AmqpError::NotFound),
    )
    .await;

    let _ = conn.close().await;
    b.shutdown().await;
}

#[tokio::test]
async fn epochs_and_faults() {
    let b = broker(2).await;
    let mut conn = connect(&b).await;
    let mut s = Session::begin(&mut conn).await.unwrap();
    let src = "amqps://ns/eh/ConsumerGroups/cg1/Partitions/0";
    let earliest = || Some(selector("amqp.annotation.x-opt-offset > '-1'", true));

    // A non-epoch receiver, then an epoch receiver kicks it.
    let plain = open_receiver(&mut s, "plain", src, earliest(), None).await;
    let e1 = open_receiver(&mut s, "e1", src, earliest(), Some(1)).await.unwrap();
    expect_link_error(plain, ErrorCondition::LinkError(LinkError::Stolen)).await;
    // Lower epoch and non-epoch are refused while e1 lives.
    expect_link_error(
        open_receiver(&mut s, "e0", src, earliest(), Some(0)).await,
        ErrorCondition::LinkError(LinkError::Stolen),
    )
    .await;
    expect_link_error(
        open_receiver(&mut s, "plain2", src, earliest(), None).await,
        ErrorCondition::LinkError(LinkError::Stolen),
    )
    .await;
    // Other consumer groups are independent.
    let mut other =
        open_receiver(&mut s, "other-cg", "amqps://ns/eh/ConsumerGroups/cg2/Partitions/0", earliest(), None)
            .await
            .unwrap();
    // Equal epoch wins over the current one.
    let e1b = open_receiver(&mut s, "e1b", src, earliest(), Some(1)).await;
    expect_link_error(Ok(e1), ErrorCondition::LinkError(LinkError::Stolen)).await;
    let mut e1b = e1b.unwrap();

    // steal_partition kicks the current receivers of (hub, cg, partition).
    let mut tx = Sender::attach(&mut s, "send", "amqps://ns/eh/Partitions/0").await.unwrap();
    tx.send(text_message("x")).await.unwrap();
    assert_eq!(body_text(&recv(&mut e1b).await), "x");
    b.faults().steal_partition("EH", "CG1", 0);
    expect_link_error(Ok(e1b), ErrorCondition::LinkError(LinkError::Stolen)).await;
    assert_eq!(b.faults().counts().stolen_receivers, 1);

    // detach_receivers: detach-forced on every receive link of the hub.
    assert_eq!(body_text(&recv(&mut other).await), "x");
    b.faults().detach_receivers("eh");
    expect_link_error(Ok(other), ErrorCondition::LinkError(LinkError::DetachForced)).await;
    assert_eq!(b.faults().counts().detached_receivers, 1);

    // server-busy: the next send is rejected, the one after accepted.
    b.faults().server_busy_sends(1);
    match tx.send(text_message("busy")).await.unwrap() {
        Outcome::Rejected(r) => {
            assert_eq!(r.error.unwrap().condition, ErrorCondition::Custom(Symbol::from("com.microsoft:server-busy")))
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    assert!(matches!(tx.send(text_message("ok")).await.unwrap(), Outcome::Accepted(_)));
    assert_eq!(b.faults().counts().server_busy, 1);
    let bodies: Vec<Vec<u8>> = b.events("eh").into_iter().map(|e| e.body).collect();
    assert_eq!(bodies, vec![b"x".to_vec(), b"ok".to_vec()]);

    // drop_connections: the client's connection dies without an AMQP close.
    assert_eq!(b.faults().live_connections(), 1);
    b.faults().drop_connections();
    assert_eq!(b.faults().counts().dropped_connections, 1);
    let dropped = tokio::time::timeout(T, async {
        while !conn.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(dropped.is_ok(), "the client did not notice the dropped connection");
    drop(tx);
    // The broker still accepts new connections.
    let mut conn2 = connect(&b).await;
    let mut s2 = Session::begin(&mut conn2).await.unwrap();
    let mut tx2 = Sender::attach(&mut s2, "send2", "eh").await.unwrap();
    assert!(matches!(tx2.send(text_message("again")).await.unwrap(), Outcome::Accepted(_)));
    let _ = conn2.close().await;
    b.shutdown().await;
}
