#!/usr/bin/env python3
"""Pass-through stage in Python/aiokafka: the baseline (b) of bench/kafka_passthrough.sh.

A faithful, reasonably written at-least-once copy stage in the user's current
stack: batched getmany(), sends pipelined per batch (send() futures gathered,
not awaited one by one), offsets committed per batch only after every send of
that batch is acknowledged (acks=all, idempotent producer). Exits after
--count messages.

  aiokafka_passthrough.py --bootstrap B --from bench-in --to bench-out-aiokafka \
      --group bench-aiokafka --count N
"""
import argparse
import asyncio
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def run(a):
    consumer = AIOKafkaConsumer(
        a.src,
        bootstrap_servers=a.bootstrap,
        group_id=a.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=a.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        # librdkafka's default batch.size is 1,000,000 B; aiokafka's default
        # (16 KiB = 16 messages of 1 KB) would be an unfairly weak baseline.
        max_batch_size=a.max_batch_size,
    )
    await producer.start()
    await consumer.start()
    n = 0
    t0 = None
    try:
        while n < a.count:
            batches = await consumer.getmany(timeout_ms=a.timeout_ms, max_records=a.max_records)
            if not batches:
                continue
            if t0 is None:
                t0 = time.monotonic()
            futures = []
            offsets = {}
            for tp, msgs in batches.items():
                for m in msgs:
                    # send() only waits when the accumulator is full; it returns a
                    # future resolved by the delivery (ack) of this message.
                    futures.append(await producer.send(a.dst, m.value, key=m.key))
                offsets[tp] = msgs[-1].offset + 1
                n += len(msgs)
            await asyncio.gather(*futures)  # every send of the batch acknowledged ...
            await consumer.commit(offsets)  # ... before its offsets are committed
    finally:
        await consumer.stop()
        await producer.stop()
    dt = time.monotonic() - (t0 or time.monotonic())
    print("aiokafka copy: %d messages in %.2fs (%.0f msgs/s)" % (n, dt, n / dt if dt else 0.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--from", dest="src", default="bench-in")
    ap.add_argument("--to", dest="dst", default="bench-out-aiokafka")
    ap.add_argument("--group", default="bench-aiokafka")
    ap.add_argument("--count", type=int, required=True, help="exit after this many messages")
    ap.add_argument("--max-records", type=int, default=1000, help="getmany() max_records per batch")
    ap.add_argument("--timeout-ms", type=int, default=100, help="getmany() timeout_ms")
    ap.add_argument("--max-batch-size", type=int, default=1000000, help="producer max_batch_size (bytes)")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
