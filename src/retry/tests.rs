use super::*;
use crate::health::Health;
use crate::transport::embedded::{Embedded, EmbeddedOptions, EntitySpec};

fn transport() -> Embedded {
    let specs = [
        EntitySpec { name: "retry".into(), key: "retry".into(), partitions: 1 },
        EntitySpec { name: "in".into(), key: "in".into(), partitions: 1 },
    ];
    let opts = EmbeddedOptions { name: "t".into(), path: None, capacity: 1000 };
    Embedded::open(opts, &specs, &[("retry".into(), GROUP.into(), StartPosition::Earliest)]).unwrap()
}

fn retry_msg(id: &str, delay: Duration) -> OutboundMessage {
    let base = PipelineMessage {
        entity: "in".into(),
        partition: 0,
        position: 0,
        key: Some(id.to_string().into()),
        headers: Headers::default(),
        payload: id.to_string().into(),
        timestamp_ms: 0,
    };
    to_retry(&base, &base.headers, "in", "w", 1, now_ms(), delay, "boom")
}

async fn target_payloads(t: &Embedded) -> Vec<String> {
    let mut sub = t.subscribe("in", &format!("check-{}", fastrand::u32(..)), StartPosition::Earliest).await.unwrap();
    let Assignment::Assigned(mut r) = sub.next().await.unwrap() else { panic!() };
    let mut out = Vec::new();
    while tokio::time::timeout(Duration::from_millis(1), r.fetch(100, &mut out)).await.is_ok() {}
    out.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect()
}

#[tokio::test(start_paused = true)]
async fn short_retries_are_not_held_back_by_long_ones_and_positions_stay_correct() {
    let t = transport();
    let p = t.producer();
    let batch = vec![
        retry_msg("a-30m", Duration::from_secs(1800)),
        retry_msg("b-10s", Duration::from_secs(10)),
        retry_msg("c-30m", Duration::from_secs(1800)),
        retry_msg("d-10s", Duration::from_secs(10)),
    ];
    p.send("retry", batch).await.unwrap();
    let sched = Arc::new(Scheduler {
        entity: "retry".into(),
        physical: "retry".into(),
        transport: Arc::new(t.clone()),
        targets: HashMap::from([("in".to_string(), Target { physical: "in".into(), producer: t.producer() })]),
        redelivered: Counter::default(),
        invalid: Counter::default(),
        pending: Gauge::default(),
        lag: Arc::new(|_| Gauge::default()),
    });
    let cancel = CancellationToken::new();
    let health = Health::new().task("retry:retry", "retry-scheduler");
    let run = tokio::spawn(sched.clone().run(health, cancel.clone()));

    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(target_payloads(&t).await.is_empty(), "nothing is due before 10 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(target_payloads(&t).await, vec!["b-10s", "d-10s"], "10 s retries on time");
    // the 30 min message at position 0 is pending: nothing may be committed
    assert_eq!(t.committed("retry", GROUP).unwrap(), vec![Some(0)]);
    assert_eq!(sched.pending.get(), 2);

    tokio::time::sleep(Duration::from_secs(1800)).await;
    assert_eq!(target_payloads(&t).await, vec!["b-10s", "d-10s", "a-30m", "c-30m"]);
    assert_eq!(t.committed("retry", GROUP).unwrap(), vec![Some(4)]);
    assert_eq!(sched.redelivered.get(), 4);

    // re-delivered messages keep the attempt count, lose due/target
    let mut sub = t.subscribe("in", "inspect", StartPosition::Earliest).await.unwrap();
    let Assignment::Assigned(mut r) = sub.next().await.unwrap() else { panic!() };
    let mut out = Vec::new();
    r.fetch(10, &mut out).await.unwrap();
    let h = &out[0].headers;
    assert_eq!(h.get_str(H_ATTEMPT), Some("1"));
    assert_eq!(h.get_str(H_WORKER), Some("w"));
    assert!(h.get(H_DUE).is_none() && h.get(H_TARGET).is_none());
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[test]
fn schedule_repeats_its_last_delay() {
    let s = [Duration::from_secs(10), Duration::from_secs(60)];
    assert_eq!(delay_for(&s, 1), Duration::from_secs(10));
    assert_eq!(delay_for(&s, 2), Duration::from_secs(60));
    assert_eq!(delay_for(&s, 7), Duration::from_secs(60));
}

#[test]
fn strip_removes_only_bookkeeping() {
    let mut h = Headers::default();
    h.set("traceparent", "x");
    h.set(H_ATTEMPT, "2");
    h.set(H_FIRST_FAILURE, "1");
    h.set(H_LAST_ERROR, "e");
    assert!(has_retry_headers(&h));
    let s = strip(&h);
    assert_eq!(s.0.len(), 1);
    assert!(!has_retry_headers(&s));
    assert_eq!(RetryState::of(&h).attempts, 2);
}
