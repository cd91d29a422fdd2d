use super::checkpoint::Ownership;
use super::consumer::plan_claims;
use super::*;
use azure_core_amqp::{AmqpDescribedError, AmqpErrorCondition, AmqpOrderedMap};
use std::time::SystemTime;

fn described(cond: &str) -> AmqpError {
    let c: AmqpErrorCondition = cond.parse().unwrap();
    AmqpError::from(AmqpErrorKind::AmqpDescribedError(AmqpDescribedError::new(
        c,
        Some("x".into()),
        AmqpOrderedMap::new(),
    )))
}

fn eh(a: AmqpError) -> EventHubsError {
    EventHubsError::from(a)
}

fn io() -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))
}

#[test]
fn classification_table() {
    use ErrorCategory::*;
    let status = |n: u16| eh(AmqpError::from(AmqpErrorKind::ManagementStatusCode(n.into(), None)));
    let rows: Vec<(&str, EventHubsError, ErrorCategory, &str, bool)> = vec![
        ("server-busy", eh(described("com.microsoft:server-busy")), Throttling, "server_busy", false),
        ("resource limit", eh(described("amqp:resource-limit-exceeded")), Throttling, "resource_limit_exceeded", false),
        ("quota", eh(described("com.microsoft:quota-exceeded")), Throttling, "quota_exceeded", false),
        ("management 429", status(429), Throttling, "server_busy", false),
        ("management 503", status(503), Throttling, "server_busy", false),
        ("unauthorized", eh(described("amqp:unauthorized-access")), Auth, "unauthorized", false),
        ("CBS 401", status(401), Auth, "unauthorized", false),
        ("CBS 403", status(403), Auth, "unauthorized", false),
        ("too large", eh(described("amqp:link:message-size-exceeded")), Permanent, "message_too_large", false),
        ("not found", eh(described("amqp:not-found")), Permanent, "not_found", false),
        (
            "invalid batch",
            EventHubsError::from(EhKind::InvalidBatchSize { requested: 9, max_allowed: 1 }),
            Permanent,
            "invalid_batch_size",
            false,
        ),
        ("rejected", EventHubsError::from(EhKind::SendRejected(None)), Permanent, "send_rejected", false),
        (
            "connection dropped",
            eh(AmqpError::from(AmqpErrorKind::ConnectionDropped(io()))),
            Transient,
            "connection_lost",
            false,
        ),
        (
            "link detached",
            eh(AmqpError::from(AmqpErrorKind::LinkDetachedByRemote(io()))),
            Transient,
            "link_detached",
            false,
        ),
        ("idle timeout", eh(AmqpError::from(AmqpErrorKind::IdleTimeoutElapsed(io()))), Transient, "timeout", false),
        ("detach forced", eh(described("amqp:link:detach-forced")), Transient, "link_detached", false),
        ("connection forced", eh(described("amqp:connection:forced")), Transient, "connection_forced", false),
        ("service timeout", eh(described("com.microsoft:timeout")), Transient, "timeout", false),
        ("management 500", status(500), Transient, "management_error", false),
        ("link stolen", eh(described("amqp:link:stolen")), Transient, "ownership_lost", true),
        (
            "consumer disconnected",
            EventHubsError::from(EhKind::ConsumerDisconnected(None)),
            Transient,
            "ownership_lost",
            true,
        ),
        (
            "wrapped in azure_core",
            EventHubsError::from(azure_core::Error::new(
                azure_core::error::ErrorKind::Other,
                described("amqp:unauthorized-access"),
            )),
            Auth,
            "unauthorized",
            false,
        ),
        (
            "io in azure_core",
            EventHubsError::from(azure_core::Error::new(
                azure_core::error::ErrorKind::Io,
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
            )),
            Transient,
            "io",
            false,
        ),
    ];
    for (name, err, cat, kind, lost) in rows {
        let c = classify_error(&err);
        assert_eq!((c.category, c.kind, c.ownership_lost), (cat, kind, lost), "{name}: {err}");
    }
}

#[test]
fn redacts_keys_and_signatures() {
    let s = "open failed: Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=abc+/=;EntityPath=h sig=zzz&se=1";
    let r = redact(s);
    assert!(!r.contains("abc+/=") && !r.contains("zzz"), "{r}");
    assert!(r.contains("SharedAccessKeyName=k"));
}

#[test]
fn endpoint_of_connection_strings() {
    assert_eq!(
        parse_endpoint(
            "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=k;SharedAccessKey=x;UseDevelopmentEmulator=true"
        ),
        Some(("127.0.0.1:5672".to_string(), true))
    );
    assert_eq!(
        parse_endpoint("endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=x"),
        Some(("ns.servicebus.windows.net".to_string(), false))
    );
    assert_eq!(parse_endpoint("SharedAccessKey=x"), None);
    assert_eq!(
        without_entity_path("Endpoint=sb://n/;SharedAccessKeyName=k;SharedAccessKey=x;EntityPath=orders"),
        "Endpoint=sb://n/;SharedAccessKeyName=k;SharedAccessKey=x"
    );
}

fn owned(pid: &str, owner: Option<&str>, age_s: u64) -> Ownership {
    Ownership {
        fully_qualified_namespace: "ns".into(),
        event_hub_name: "h".into(),
        consumer_group: "$Default".into(),
        partition_id: pid.into(),
        owner_id: owner.map(str::to_string),
        etag: Some("e".into()),
        last_modified_time: Some((SystemTime::now() - Duration::from_secs(age_s)).into()),
    }
}

fn mine(claims: &[Ownership], me: &str) -> Vec<String> {
    let mut v: Vec<String> =
        claims.iter().filter(|o| o.owner_id.as_deref() == Some(me)).map(|o| o.partition_id.clone()).collect();
    v.sort();
    v
}

#[test]
fn balancing_converges_to_fair_shares() {
    let parts: Vec<String> = (0..4).map(|i| i.to_string()).collect();
    let base = Ownership { fully_qualified_namespace: "ns".into(), event_hub_name: "h".into(), ..Default::default() };
    let exp = Duration::from_secs(60);
    let now = SystemTime::now();
    // alone: takes everything at once
    let c = plan_claims(&base, &parts, &[], "a", exp, now);
    assert_eq!(mine(&c, "a").len(), 4);
    assert!(c.iter().all(|o| o.event_hub_name == "h" && o.etag.is_none()));
    // b joins while a holds all 4: b steals one per round, a renews its own
    let listed: Vec<Ownership> = parts.iter().map(|p| owned(p, Some("a"), 1)).collect();
    let c = plan_claims(&base, &parts, &listed, "b", exp, now);
    assert_eq!(mine(&c, "b").len(), 1, "steal one");
    assert!(c.iter().all(|o| o.etag.is_some()), "steals are conditional on the listed etag");
    // 2 each: nobody moves
    let listed =
        vec![owned("0", Some("a"), 1), owned("1", Some("a"), 1), owned("2", Some("b"), 1), owned("3", Some("b"), 1)];
    assert_eq!(mine(&plan_claims(&base, &parts, &listed, "b", exp, now), "b"), vec!["2", "3"]);
    assert_eq!(mine(&plan_claims(&base, &parts, &listed, "a", exp, now), "a"), vec!["0", "1"]);
    // a died (expired): b takes its partitions
    let listed =
        vec![owned("0", Some("a"), 90), owned("1", Some("a"), 90), owned("2", Some("b"), 1), owned("3", Some("b"), 1)];
    assert_eq!(mine(&plan_claims(&base, &parts, &listed, "b", exp, now), "b"), vec!["0", "1", "2", "3"]);
    // released (owner empty): free for the taking
    let listed = vec![owned("0", None, 1), owned("1", None, 1), owned("2", Some("b"), 1), owned("3", Some("b"), 1)];
    assert_eq!(mine(&plan_claims(&base, &parts, &listed, "b", exp, now), "b").len(), 4);
    // 3 owners over 4 partitions: whoever has 1 stays put when one already has 2
    let listed =
        vec![owned("0", Some("a"), 1), owned("1", Some("a"), 1), owned("2", Some("b"), 1), owned("3", Some("c"), 1)];
    assert_eq!(mine(&plan_claims(&base, &parts, &listed, "c", exp, now), "c"), vec!["3"]);
}

/// The event for `m`; the batch check (`check_event`) must agree.
fn to_event_(m: &OutboundMessage) -> Result<EventData, TransportError> {
    let r = to_event(m, false);
    assert_eq!(check_event(m).map_err(|e| e.to_string()).err(), r.as_ref().map_err(|e| e.to_string()).err());
    r
}

#[test]
fn what_event_hubs_cannot_carry_is_refused_never_merged() {
    let msg = |key: &[u8], headers: Vec<(&str, &[u8])>| OutboundMessage {
        key: Some(key.to_vec().into()),
        headers: crate::transport::Headers(
            headers.into_iter().map(|(n, v)| (n.to_string(), bytes::Bytes::copy_from_slice(v))).collect(),
        ),
        payload: "p".into(),
        ..Default::default()
    };
    // distinct binary keys would become the same lossy string
    for key in [&[0xff, 0x01][..], &[0xfe, 0x01][..]] {
        let e = to_event_(&msg(key, vec![])).unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent);
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }
    let e = to_event_(&msg(b"k", vec![("trace", b"a"), ("x", b"1"), ("trace", b"b")])).unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Permanent);
    assert!(e.to_string().contains("\"trace\" appears more than once"), "{e}");
    // binary values are kept as they are
    let ev = to_event_(&msg(b"k", vec![("bin", &[0xff, 0x00]), ("txt", b"v")])).unwrap();
    let props = ev.properties().unwrap();
    assert_eq!(props.get("bin"), Some(&AmqpSimpleValue::Binary(vec![0xff, 0x00])));
    assert_eq!(props.get("txt"), Some(&AmqpSimpleValue::String("v".into())));
    // an explicit partition carries the key (and a timestamp) as properties;
    // the names are reserved
    let mut m = msg(b"k", vec![]);
    m.timestamp_ms = Some(42);
    let ev = to_event(&m, true).unwrap();
    let props = ev.properties().unwrap();
    assert_eq!(props.get(KEY_PROPERTY), Some(&AmqpSimpleValue::String("k".into())));
    assert_eq!(props.get(TIMESTAMP_PROPERTY), Some(&AmqpSimpleValue::Long(42)));
    assert!(to_event_(&msg(b"k", vec![(KEY_PROPERTY, b"x")])).is_err());
}

#[test]
fn where_a_message_goes() {
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(numbered(&ids(&["0", "1", "2", "3"])), Some(4));
    assert_eq!(numbered(&ids(&["0", "2"])), None, "a gap");
    assert_eq!(numbered(&ids(&["1", "0"])), None, "out of order");
    assert_eq!(numbered(&ids(&["a"])), None);
    assert_eq!(numbered(&[]), None);
    let m = |partition: Option<u32>, key: Option<&str>| OutboundMessage {
        partition,
        key: key.map(|k| k.as_bytes().to_vec().into()),
        ..Default::default()
    };
    let table = [
        // (explicit partition, key, hub partitions) → target
        (Some(2), Some("7"), Some(4), Target::Partition(2)),
        (Some(2), None, None, Target::Partition(2)),
        // the cross-SDK vector: "7" hashes to -15263, |-15263 % 4| = 3
        (None, Some("7"), Some(4), Target::Hashed(3)),
        (None, Some("7"), None, Target::Key("7".into())),
        (None, None, Some(4), Target::Any),
        (None, None, None, Target::Any),
    ];
    for (partition, key, n, want) in table {
        assert_eq!(target(&m(partition, key), n), want, "{partition:?} {key:?} {n:?}");
    }
}
