#!/usr/bin/env python3
"""Event Hubs pass-through benchmark driver (see eventhubs_passthrough.sh).

Starts the local Event Hubs test broker (`conveyor dev eventhubs`), produces
N events of SIZE bytes into `bench-in` with the Python SDK, then runs, one
after the other on the same broker:
  (a) `conveyor run` with a pass-through worker bench-in -> bench-out-conveyor
      (file checkpoint store; SIGTERM once its output holds N),
  (b) bench/eh_passthrough.py (azure-eventhub, the seed's stack) bench-in ->
      bench-out-python (exits after N),
and prints, per stage: wall msgs/s (start -> output holds N), CPU seconds of
the stage process itself (user+sys from wait4), msgs per CPU-second, peak RSS,
and the ratio a/b. Each output must end with exactly N events.
"""
import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

from azure.eventhub import EventData
from azure.eventhub.aio import EventHubProducerClient, EventHubConsumerClient

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


async def produce(conn, hub, n, size, keys=0):
    body = b"x" * max(size - 16, 0)
    async with EventHubProducerClient.from_connection_string(conn, eventhub_name=hub) as p:
        i = 0
        while i < n:
            batch = await p.create_batch()
            while i < n:
                e = EventData(b"%015d " % i + body)
                if keys:
                    # a key per event, many keys to a batch (as a keyed
                    # producer's output looks once it is spread out)
                    e.raw_amqp_message.annotations[b"x-opt-partition-key"] = "k%d" % (i % keys)
                try:
                    batch.add(e)
                except ValueError:
                    break
                i += 1
            await p.send_batch(batch)


async def count(conn, hub):
    async with EventHubConsumerClient.from_connection_string(conn, consumer_group="$Default", eventhub_name=hub) as c:
        total = 0
        for pid in await c.get_partition_ids():
            pp = await c.get_partition_properties(pid)
            if not pp["is_empty"]:
                total += pp["last_enqueued_sequence_number"] - pp["beginning_sequence_number"] + 1
        return total


def run_stage(name, cmd, conn, out_hub, n, sigterm, log):
    t0 = time.monotonic()
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT)
    done_at = None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if done_at is None and asyncio.run(count(conn, out_hub)) >= n:
            done_at = time.monotonic()
            if sigterm:
                proc.send_signal(signal.SIGTERM)
        time.sleep(0.25)
    if done_at is None:
        done_at = time.monotonic()
    wall = done_at - t0
    cpu = ru.ru_utime + ru.ru_stime
    got = asyncio.run(count(conn, out_hub))
    return {"stage": name, "wall_s": wall, "cpu_s": cpu, "rss_mb": ru.ru_maxrss / 1024, "out": got,
            "msgs_per_s": n / wall, "msgs_per_cpu_s": n / cpu if cpu else 0.0, "exit": status}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conveyor", required=True)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--stages", default="a b")
    ap.add_argument("--keys", type=int, default=0,
                    help="distinct partition keys of the input events (0: none)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="eh-bench.")
    port = free_port()
    broker = subprocess.Popen([a.conveyor, "dev", "eventhubs", "--listen", f"127.0.0.1:{port}",
                               "--partitions", str(a.partitions)], stdout=subprocess.PIPE,
                              stderr=open(os.path.join(work, "broker.log"), "w"))
    try:
        broker.stdout.readline()
        conn = f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=bench;SharedAccessKey=bench;UseDevelopmentEmulator=true"
        print(f"== producing {a.count} x {a.size} B into bench-in", file=sys.stderr)
        t = time.monotonic()
        asyncio.run(produce(conn, "bench-in", a.count, a.size, a.keys))
        print(f"   {a.count / (time.monotonic() - t):.0f} events/s (Python producer)", file=sys.stderr)
        assert asyncio.run(count(conn, "bench-in")) == a.count
        cfg = os.path.join(work, "conveyor.yaml")
        with open(cfg, "w") as f:
            f.write(f"""service: {{ name: bench, http: {{ listen: "127.0.0.1:0" }}, log: {{ format: json, level: warn }} }}
transports:
  hubs:
    type: eventhubs
    connection_string: "{conn}"
    checkpoint_store: {{ type: file, path: {work}/cp }}
entities:
  in:  {{ transport: hubs, partitions: {a.partitions}, name: bench-in }}
  out: {{ transport: hubs, partitions: {a.partitions}, name: bench-out-conveyor }}
workers:
  copy: {{ input: in, consumer_group: bench-conveyor, outputs: {{ default: out }}, batch_size: 500 }}
""")
        results = []
        for s in a.stages.split():
            time.sleep(1)
            if s == "a":
                print("== stage (a) conveyor", file=sys.stderr)
                results.append(run_stage("(a) conveyor", [a.conveyor, "run", "--config", cfg], conn,
                                         "bench-out-conveyor", a.count, True, os.path.join(work, "a.log")))
            elif s == "b":
                print("== stage (b) python azure-eventhub", file=sys.stderr)
                results.append(run_stage("(b) python", [sys.executable, os.path.join(HERE, "eh_passthrough.py"),
                                                        "--conn", conn, "--input", "bench-in", "--output", "bench-out-python",
                                                        "--group", "bench-python", "--count", str(a.count)],
                                         conn, "bench-out-python", a.count, False, os.path.join(work, "b.log")))
        print()
        print(f"{'stage':<16}{'wall msgs/s':>12}{'CPU-s':>8}{'msgs/CPU-s':>12}{'peak RSS MB':>12}{'out':>10}")
        for r in results:
            print(f"{r['stage']:<16}{r['msgs_per_s']:>12.0f}{r['cpu_s']:>8.1f}{r['msgs_per_cpu_s']:>12.0f}{r['rss_mb']:>12.0f}{r['out']:>10}")
        if len(results) == 2:
            ra, rb = results
            print(f"\na/b wall: {ra['msgs_per_s'] / rb['msgs_per_s']:.2f}x   a/b per CPU-s: "
                  f"{ra['msgs_per_cpu_s'] / rb['msgs_per_cpu_s']:.2f}x   (target >= 5x)")
        print(json.dumps(results))
        bad = [r for r in results if r["out"] != a.count]
        if bad:
            print(f"ERROR: outputs not exactly {a.count}: {[(r['stage'], r['out']) for r in bad]}", file=sys.stderr)
            return 1
        return 0
    finally:
        broker.terminate()
        broker.wait()
        print(f"work dir: {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
