use super::*;
use crate::health::Health;
use crate::retry::{H_ATTEMPT, to_retry};
use crate::transport::embedded::{Embedded, EmbeddedOptions};
use crate::transport::{EntitySpec, GroupSpec, Seek, StartPosition, Transport};

fn transport() -> Embedded {
    let specs: Vec<EntitySpec> = ["retry", "in", "moved", "dlq"]
        .iter()
        .map(|n| EntitySpec { key: n.to_string(), name: n.to_string(), partitions: 1 })
        .collect();
    let opts = EmbeddedOptions { name: "t".into(), capacity: 10_000, ..Default::default() };
    Embedded::open(
        opts,
        &specs,
        &[GroupSpec { entity: "retry".into(), group: GROUP.into(), start: StartPosition::Earliest, shared: false }],
    )
    .unwrap()
}

fn target(t: &Embedded, entity: &str) -> Target {
    Target { entity: entity.into(), physical: entity.into(), producer: t.producer() }
}

fn scheduler(t: &Embedded) -> Arc<Scheduler> {
    Arc::new(Scheduler {
        host: Host {
            entity: "retry".into(),
            physical: "retry".into(),
            group: GROUP.into(),
            start: StartPosition::Earliest,
            transport: Arc::new(t.clone()),
            health: Health::new().task("retry:retry", "retry-scheduler"),
            grace: Duration::from_secs(30),
        },
        own: target(t, "retry"),
        targets: HashMap::from([("in".to_string(), target(t, "in"))]),
        worker_inputs: HashMap::from([("w".to_string(), target(t, "in")), ("moved-w".to_string(), target(t, "moved"))]),
        dead_letters: BTreeMap::from([("w".to_string(), target(t, "dlq"))]),
        redelivered: Counter::default(),
        rerouted: Counter::default(),
        invalid: Counter::default(),
        reparked: Counter::default(),
        pending: Gauge::default(),
        lag: Arc::new(|_| Gauge::default()),
    })
}

fn retry_msg(id: &str, worker: &str, target: &str, delay: Duration) -> OutboundMessage {
    let base = PipelineMessage {
        entity: target.into(),
        partition: 0,
        position: 0,
        key: Some(id.to_string().into()),
        headers: Headers::default(),
        payload: id.to_string().into(),
        timestamp_ms: 0,
    };
    to_retry(&base, target, worker, 1, now_ms(), delay, "boom")
}

async fn payloads(t: &Embedded, entity: &str) -> Vec<String> {
    let mut r = t.open_reader(entity, 0, Seek::Earliest).await.unwrap();
    let mut out = Vec::new();
    while tokio::time::timeout(Duration::from_millis(1), r.fetch(10_000, &mut out)).await.is_ok() {}
    out.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect()
}

async fn committed(t: &Embedded) -> Option<i64> {
    t.group_positions("retry", GROUP).await.unwrap()[0].committed
}

#[tokio::test(start_paused = true)]
async fn short_retries_are_not_held_back_by_long_ones_and_positions_stay_correct() {
    let t = transport();
    let batch = vec![
        retry_msg("a-30m", "w", "in", Duration::from_secs(1800)),
        retry_msg("b-10s", "w", "in", Duration::from_secs(10)),
        retry_msg("c-30m", "w", "in", Duration::from_secs(1800)),
        retry_msg("d-10s", "w", "in", Duration::from_secs(10)),
    ];
    t.producer().send("retry", batch).await.unwrap();
    let sched = scheduler(&t);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sched.clone().run(cancel.clone()));

    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(payloads(&t, "in").await.is_empty(), "nothing is due before 10 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(payloads(&t, "in").await, vec!["b-10s", "d-10s"], "10 s retries on time");
    assert_eq!(sched.pending.get(), 2);

    tokio::time::sleep(Duration::from_secs(1800)).await;
    let got = payloads(&t, "in").await;
    assert_eq!(got[..2], ["b-10s", "d-10s"]);
    let mut late = got[2..].to_vec();
    late.sort();
    assert_eq!(late, vec!["a-30m", "c-30m"]);
    assert_eq!(sched.redelivered.get(), 4);
    let next = t.partitions("retry").await.unwrap()[0].next;
    assert_eq!(committed(&t).await, Some(next), "everything done is committed");

    // re-delivered messages keep the attempt count, lose due/target
    let mut r = t.open_reader("in", 0, Seek::Earliest).await.unwrap();
    let mut out = Vec::new();
    r.fetch(10, &mut out).await.unwrap();
    let h = &out[0].headers;
    assert_eq!(h.get_str(H_ATTEMPT), Some("1"));
    assert_eq!(h.get_str(H_WORKER), Some("w"));
    assert!(h.get(H_DUE).is_none() && h.get(H_TARGET).is_none());
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_long_retry_does_not_make_a_restart_redeliver_the_short_ones() {
    let t = transport();
    // 1 due in an hour first, then 100 due now
    let mut batch = vec![retry_msg("long", "w", "in", Duration::from_secs(3600))];
    batch.extend((0..100).map(|i| retry_msg(&format!("now-{i}"), "w", "in", Duration::ZERO)));
    t.producer().send("retry", batch).await.unwrap();
    let sched = scheduler(&t);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sched.clone().run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(payloads(&t, "in").await.len(), 100, "the 100 are delivered");
    assert_eq!(sched.reparked.get(), 1, "the long one was written again behind them");
    cancel.cancel();
    run.await.unwrap().unwrap();

    // the scheduler restarts (a crash, a deploy)
    let again = scheduler(&t);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(again.clone().run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(payloads(&t, "in").await.len(), 100, "the target holds 100, not 200");
    assert_eq!(again.pending.get(), 1, "the long one is still pending");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let got = payloads(&t, "in").await;
    assert_eq!(got.len(), 101);
    assert_eq!(got.last().map(String::as_str), Some("long"), "and it arrives when due");
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn retries_a_reload_left_behind_are_rerouted_or_dead_lettered_and_counted() {
    let t = transport();
    let batch = vec![
        // worker "moved-w" now reads "moved": its old target is no target any more
        retry_msg("rerouted", "moved-w", "old-input", Duration::ZERO),
        // neither worker nor target exists
        retry_msg("orphan", "gone", "gone-input", Duration::ZERO),
        // not written by Conveyor at all
        OutboundMessage { payload: "foreign".into(), ..Default::default() },
        retry_msg("fine", "w", "in", Duration::ZERO),
    ];
    t.producer().send("retry", batch).await.unwrap();
    let sched = scheduler(&t);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sched.clone().run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(payloads(&t, "moved").await, vec!["rerouted"]);
    assert_eq!(payloads(&t, "in").await, vec!["fine"]);
    let mut r = t.open_reader("dlq", 0, Seek::Earliest).await.unwrap();
    let mut dead = Vec::new();
    r.fetch(10, &mut dead).await.unwrap();
    let envs: Vec<Envelope> = dead.iter().map(|m| Envelope::parse(&m.payload).unwrap()).collect();
    assert_eq!(envs.len(), 2);
    assert!(envs.iter().all(|e| e.error.kind == "retry_target_unknown"));
    let originals: Vec<Vec<u8>> = envs.iter().map(|e| e.original_payload().unwrap()).collect();
    assert_eq!(originals, vec![b"orphan".to_vec(), b"foreign".to_vec()]);
    assert_eq!((sched.rerouted.get(), sched.invalid.get()), (1, 2));
    let next = t.partitions("retry").await.unwrap()[0].next;
    assert_eq!(committed(&t).await, Some(next), "all four accounted for");
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[test]
fn repark_plan_table() {
    let p = |pos: i64| (pos, true);
    let d = |pos: i64| (pos, false);
    let mut one_long = vec![p(0)];
    one_long.extend((1..=100).map(d));
    type Case = (Vec<(i64, bool)>, Option<Repark>);
    let cases: Vec<Case> = vec![
        (vec![], None),
        (vec![p(0), p(1)], None),
        (vec![d(0), p(1)], None),
        (one_long, Some(Repark { repark: vec![0], through: 100 })),
        // best prefix: P D D D, not the whole run
        (
            vec![p(0), d(1), d(2), d(3), p(4), p(5), p(6), p(7), p(8), d(9)],
            Some(Repark { repark: vec![0], through: 3 }),
        ),
        // more pending than done before any done one: not worth writing
        (vec![p(0), p(1), p(2), d(3)], None),
        (vec![p(0), d(1)], Some(Repark { repark: vec![0], through: 1 })),
    ];
    for (i, (held, want)) in cases.into_iter().enumerate() {
        assert_eq!(repark_plan(&held), want, "case {i}");
    }
}

#[tokio::test]
async fn lanes_run_on_the_partition_host() {
    // the scheduler consumes like a worker: assignment, drain, stop
    let t = transport();
    let sched = scheduler(&t);
    let health = sched.host.health.clone();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sched.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(health.state(), crate::health::TaskState::Ready);
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(health.state(), crate::health::TaskState::Stopped);
}
