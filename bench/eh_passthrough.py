#!/usr/bin/env python3
"""The Event Hubs pass-through stage written the way the seed pipeline does it
(azure-eventhub 5.x, asyncio): an EventHubConsumerClient receiving batches
(`receive_batch`, max_batch_size, prefetch) from every partition, and an
EventHubProducerClient sending each received batch on to the output hub
(partition key kept), with a checkpoint after each batch is sent. Exits once
N events have been copied.

    eh_passthrough.py --conn CS --input HUB --output HUB --group G --count N [--checkpoint-store CONN --container C]

Baseline for bench/eventhubs_passthrough.sh; the checkpoint store is
optional (without it checkpoints stay in memory, which only flatters Python).
"""
import argparse
import asyncio
import sys
import time

from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conn", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", default="$Default")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--checkpoint-store")
    ap.add_argument("--container", default="checkpoints")
    a = ap.parse_args()

    store = None
    if a.checkpoint_store:
        from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

        store = BlobCheckpointStore.from_connection_string(a.checkpoint_store, a.container)
    consumer = EventHubConsumerClient.from_connection_string(
        a.conn, consumer_group=a.group, eventhub_name=a.input, checkpoint_store=store
    )
    producer = EventHubProducerClient.from_connection_string(a.conn, eventhub_name=a.output)
    copied = 0
    done = asyncio.Event()
    t0 = time.monotonic()

    async def on_batch(ctx, events):
        nonlocal copied
        if not events:
            return
        # keep per-key routing: one producer batch per partition key
        by_key = {}
        for ev in events:
            by_key.setdefault(ev.partition_key, []).append(ev)
        for key, evs in by_key.items():
            batch = await producer.create_batch(partition_key=key) if key else await producer.create_batch()
            for ev in evs:
                out = EventData(ev.body_as_str(encoding="latin-1").encode("latin-1"))
                if ev.properties:
                    out.properties = dict(ev.properties)
                try:
                    batch.add(out)
                except ValueError:
                    await producer.send_batch(batch)
                    batch = await producer.create_batch(partition_key=key) if key else await producer.create_batch()
                    batch.add(out)
            if len(batch):
                await producer.send_batch(batch)
        await ctx.update_checkpoint(events[-1])
        copied += len(events)
        if copied >= a.count:
            done.set()

    async with producer, consumer:
        task = asyncio.create_task(
            consumer.receive_batch(on_event_batch=on_batch, max_batch_size=a.batch, starting_position="-1", prefetch=a.batch * 2)
        )
        await done.wait()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
    dt = time.monotonic() - t0
    print(f"copied {copied} in {dt:.2f}s ({copied / dt:.0f}/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
