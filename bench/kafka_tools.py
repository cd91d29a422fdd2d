#!/usr/bin/env python3
"""Helpers for bench/kafka_passthrough.sh (confluent-kafka based).

  kafka_tools.py create  BOOTSTRAP PARTITIONS TOPIC...
  kafka_tools.py produce BOOTSTRAP TOPIC N SIZE
  kafka_tools.py warmup  BOOTSTRAP TOPIC             # group coordinator ready
  kafka_tools.py count   BOOTSTRAP TOPIC             # sum of high watermarks
  kafka_tools.py stage   --id a|b|c --name NAME --bootstrap B --out TOPIC --count N
                         [--sigterm] [--timeout S] [--log FILE] [--json FILE] -- CMD...
  kafka_tools.py report  RESULTS.jsonl N SIZE

`stage` runs CMD as its direct child, polls the output topic's high
watermarks until they sum to N (wall time = process start -> output holds N),
then (with --sigterm) sends SIGTERM to that process, waits for it and takes
its CPU (user+sys) and peak RSS from wait4()'s rusage - i.e. the stage process
itself, not this watcher. One JSON line per stage is appended to --json.
"""
import argparse
import json
import os
import signal
import sys
import time

from confluent_kafka import Producer, TopicPartition, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def cmd_create(a):
    ac = admin(a.bootstrap)
    topics = [NewTopic(t, num_partitions=a.partitions, replication_factor=1) for t in a.topics]
    for t, f in ac.create_topics(topics, operation_timeout=30).items():
        f.result()
    # wait until the metadata shows every partition with a leader
    deadline = time.time() + 30
    while True:
        md = ac.list_topics(timeout=10)
        ok = all(t in md.topics and len(md.topics[t].partitions) == a.partitions
                 and all(p.leader >= 0 for p in md.topics[t].partitions.values())
                 for t in a.topics)
        if ok:
            break
        if time.time() > deadline:
            sys.exit("topics not ready: %s" % a.topics)
        time.sleep(0.2)
    print("created %s (%d partitions each)" % (", ".join(a.topics), a.partitions), file=sys.stderr)


def cmd_produce(a):
    p = Producer({
        "bootstrap.servers": a.bootstrap,
        "linger.ms": 50,
        "batch.size": 1000000,
        "queue.buffering.max.messages": 500000,
        "queue.buffering.max.kbytes": 1048576,
        "enable.idempotence": True,
        "acks": "all",
    })
    errors = []

    def dr(err, _msg):
        if err is not None:
            errors.append(err)

    base = os.urandom(a.size)
    t0 = time.time()
    for i in range(a.n):
        key = b"k%010d" % i
        value = key + base[len(key):] if a.size > len(key) else key[:a.size]
        while True:
            try:
                p.produce(a.topic, value=value, key=key, on_delivery=dr)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    left = p.flush(120)
    dt = time.time() - t0
    if left or errors:
        sys.exit("produce failed: %d undelivered, %d errors (first: %s)"
                 % (left, len(errors), errors[:1]))
    print("produced %d x %d B to %s in %.1fs (%.0f msgs/s)" % (a.n, a.size, a.topic, dt, a.n / dt),
          file=sys.stderr)


def cmd_warmup(a):
    """Make the group coordinator ready (creates __consumer_offsets and loads it)
    so that the first stage measured does not pay for it."""
    from confluent_kafka import Consumer
    deadline = time.time() + 60
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "bench-warmup",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        while True:
            try:
                # commit (and read back) an offset: needs a ready group coordinator
                c.commit(offsets=[TopicPartition(a.topic, 0, 0)], asynchronous=False)
                if c.committed([TopicPartition(a.topic, 0)], timeout=5)[0].offset == 0:
                    break
            except KafkaException:
                pass
            if time.time() > deadline:
                sys.exit("group coordinator not ready after 60s")
            time.sleep(0.2)
    finally:
        c.close()
    ac = admin(a.bootstrap)
    ac.delete_consumer_groups(["bench-warmup"])["bench-warmup"].result()


def high_watermarks(ac, topic, parts=None):
    """Sum of the high watermarks (low is 0: nothing is ever deleted here)."""
    if parts is None:
        md = ac.list_topics(topic, timeout=10)
        parts = list(md.topics[topic].partitions)
    req = {TopicPartition(topic, p): OffsetSpec.latest() for p in parts}
    res = ac.list_offsets(req, request_timeout=10)
    return sum(f.result().offset for f in res.values()), parts


def committed_sum(ac, group, topic, parts):
    """Sum of the group's committed offsets on topic (None if it has none)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    req = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in parts])]
    res = ac.list_consumer_group_offsets(req, request_timeout=10)[group].result()
    offs = [tp.offset for tp in res.topic_partitions if tp.offset >= 0]
    return sum(offs) if offs else None


def cmd_count(a):
    print(high_watermarks(admin(a.bootstrap), a.topic)[0])


def cmd_stage(a):
    import subprocess

    ac = admin(a.bootstrap)
    before, parts = high_watermarks(ac, a.out)
    if before != 0:
        sys.exit("%s: output topic %s is not empty (%d)" % (a.name, a.out, before))
    log = open(a.log, "wb") if a.log else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(a.cmd, stdout=log, stderr=subprocess.STDOUT if a.log else None)
    pid = proc.pid
    t_done = None
    status = rusage = None
    hw = 0
    timed_out = False
    while True:
        try:
            hw, _ = high_watermarks(ac, a.out, parts)
        except KafkaException:
            pass
        now = time.monotonic()
        if hw >= a.count and t_done is None:
            t_done = now
        if status is None:
            wpid, st, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                status, rusage = st, ru
                t_exit = time.monotonic()
        if status is not None:
            break
        if t_done is not None:
            if a.sigterm:
                os.kill(pid, signal.SIGTERM)
                t_term = time.monotonic()
                break
            if now - t_done > a.exit_grace:  # should exit by itself
                break
        if now - t0 > a.timeout:
            timed_out = True
            print("%s: TIMEOUT after %.0fs with %d/%d in %s" % (a.name, a.timeout, hw, a.count, a.out),
                  file=sys.stderr)
            break
        time.sleep(a.poll)

    killed = False
    if status is None:
        if not (a.sigterm and t_done is not None):
            os.kill(pid, signal.SIGTERM)
            t_term = time.monotonic()
        deadline = time.monotonic() + a.kill_after
        while status is None:
            wpid, st, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                status, rusage = st, ru
                t_exit = time.monotonic()
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                killed = True
                _, status, rusage = os.wait4(pid, 0)
                t_exit = time.monotonic()
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again

    final, _ = high_watermarks(ac, a.out, parts)
    committed = None
    if a.group:
        try:
            _, in_parts = high_watermarks(ac, a.input)
            committed = committed_sum(ac, a.group, a.input, in_parts)
        except KafkaException as e:
            print("%s: could not read the committed offsets of %s: %s" % (a.name, a.group, e), file=sys.stderr)
    if t_done is None and final >= a.count:
        t_done = t_exit  # reached N between the last poll and the exit
    r = {
        "id": a.id,
        "stage": a.name,
        "out": a.out,
        "count": a.count,
        "wall_s": (t_done - t0) if t_done is not None else None,
        "life_s": t_exit - t0,
        "user_s": rusage.ru_utime,
        "sys_s": rusage.ru_stime,
        "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "maxrss_mb": rusage.ru_maxrss / 1024.0,
        "exit": proc.returncode,
        "sigterm": bool(a.sigterm and t_done is not None),
        "shutdown_s": (t_exit - t_term) if (a.sigterm and t_done is not None) else None,
        "killed": killed,
        "timed_out": timed_out,
        "out_hw": final,
        "group": a.group,
        "committed": committed,
    }
    with open(a.json, "a") as f:
        f.write(json.dumps(r) + "\n")
    print("%s: exit=%s wall=%s cpu=%.2fs rss=%.0fMB out=%d committed=%s%s%s" % (
        a.name, r["exit"], "%.2fs" % r["wall_s"] if r["wall_s"] else "-", r["cpu_s"],
        r["maxrss_mb"], final, committed,
        " shutdown=%.2fs" % r["shutdown_s"] if r["shutdown_s"] is not None else "",
        " (SIGKILLed)" if killed else ""), file=sys.stderr)


def cmd_report(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    print()
    print("Kafka pass-through, %d messages x %d B, 6 partitions, one broker on this machine" % (a.n, a.size))
    print("wall = stage process start -> output topic holds N; CPU = user+sys of the stage process (wait4 rusage)")
    print()
    hdr = "%-20s %7s %8s %7s %6s %7s %11s %7s %8s %-10s %-9s" % (
        "stage", "wall s", "msgs/s", "user s", "sys s", "CPU-s", "msgs/CPU-s", "RSS MB", "exit", "output", "committed")
    print(hdr)
    print("-" * len(hdr))
    by = {}
    for r in rows:
        by[r["id"]] = r
        n = r["count"]
        r["rate"] = n / r["wall_s"] if r["wall_s"] else None
        r["eff"] = n / r["cpu_s"] if r["cpu_s"] else None
        ok = ("%d" % r["out_hw"]) + (" OK" if r["out_hw"] == n else " BAD")
        cm = r.get("committed")
        cm = "-" if cm is None else ("%d" % cm) + (" OK" if cm == n else " BAD")
        ex = str(r["exit"]) + ("/TERM" if r["sigterm"] else "")
        print("%-20s %7s %8s %7.2f %6.2f %7.2f %11s %7.0f %8s %-10s %-9s" % (
            r["stage"],
            "%.2f" % r["wall_s"] if r["wall_s"] else "-",
            "%.0f" % r["rate"] if r["rate"] else "-",
            r["user_s"], r["sys_s"], r["cpu_s"],
            "%.0f" % r["eff"] if r["eff"] else "-",
            r["maxrss_mb"], ex, ok, cm))
    print()
    print("output = sum of the output topic's high watermarks (OK = exactly N); committed = sum of the")
    print("stage group's committed offsets on bench-in after it exited (OK = N: all input committed)")
    for r in rows:
        if r.get("shutdown_s") is not None:
            print("%s: SIGTERM once the output held N; drained and exited in %.2fs (included in its CPU-s)"
                  % (r["stage"], r["shutdown_s"]))
    print()
    a_ = by.get("a")
    for other in [k for k in sorted(by) if k != "a"]:
        o = by[other]
        if not a_:
            break
        tag = "a/" + other
        eff = "%.2f" % (a_["eff"] / o["eff"]) if a_.get("eff") and o.get("eff") else "n/a"
        rate = "%.2f" % (a_["rate"] / o["rate"]) if a_.get("rate") and o.get("rate") else "n/a"
        print("ratio %-5s  msgs per CPU-second: %6s   wall msgs/s: %6s   (%s vs %s)" % (
            tag, eff, rate, a_["stage"], o["stage"]))
    bad = [r["stage"] for r in rows if r["out_hw"] != r["count"] or r["exit"] != 0 or r["timed_out"]
           or (r.get("committed") is not None and r["committed"] != r["count"])]
    for r in rows:
        cm = r.get("committed")
        if cm is not None and cm > r["count"]:
            print("WARNING %s: committed offsets sum to %d > N=%d, i.e. beyond the input's log end "
                  "(+%d over the partitions): a restarted consumer would skip messages"
                  % (r["stage"], cm, r["count"], cm - r["count"]))
        elif cm is not None and cm < r["count"]:
            print("WARNING %s: committed offsets sum to %d < N=%d: %d messages would be redelivered"
                  % (r["stage"], cm, r["count"], r["count"] - cm))
    print()
    if bad:
        print("PROBLEMS: %s (see above and the stage logs)" % ", ".join(bad))
    else:
        print("all outputs hold exactly N=%d messages, all groups committed N; all stages exited 0" % a.n)
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("bootstrap")
    c.add_argument("partitions", type=int)
    c.add_argument("topics", nargs="+")
    c.set_defaults(fn=cmd_create)
    p = sub.add_parser("produce")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("n", type=int)
    p.add_argument("size", type=int)
    p.set_defaults(fn=cmd_produce)
    w = sub.add_parser("warmup")
    w.add_argument("bootstrap")
    w.add_argument("topic")
    w.set_defaults(fn=cmd_warmup)
    w = sub.add_parser("count")
    w.add_argument("bootstrap")
    w.add_argument("topic")
    w.set_defaults(fn=cmd_count)
    s = sub.add_parser("stage")
    s.add_argument("--id", required=True, help="a, b or c (used for the ratios)")
    s.add_argument("--name", required=True)
    s.add_argument("--bootstrap", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--group", help="the stage's consumer group: its committed offsets on --input are reported")
    s.add_argument("--input", default="bench-in")
    s.add_argument("--sigterm", action="store_true", help="SIGTERM the process once the output holds N")
    s.add_argument("--timeout", type=float, default=1800)
    s.add_argument("--exit-grace", type=float, default=120,
                   help="without --sigterm: how long to wait for a self-exit after N reached")
    s.add_argument("--kill-after", type=float, default=60)
    s.add_argument("--poll", type=float, default=0.05)
    s.add_argument("--log")
    s.add_argument("--json", required=True)
    s.add_argument("cmd", nargs="+")
    s.set_defaults(fn=cmd_stage)
    r = sub.add_parser("report")
    r.add_argument("results")
    r.add_argument("n", type=int)
    r.add_argument("size", type=int)
    r.set_defaults(fn=cmd_report)
    a = ap.parse_args()
    rc = a.fn(a)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
