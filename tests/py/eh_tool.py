#!/usr/bin/env python3
"""Event Hubs test tool on the official Python SDK (azure-eventhub 5.15, asyncio).

An independent client used to cross-check Conveyor's Event Hubs transport and the
local test broker (`conveyor-eh-broker` / `conveyor dev eventhubs`).

Subcommands:
  produce  --conn CS --hub H --count N [--prefix P] [--partition-key K | --partition-id I] [--batch]
           sends N events with bodies P<i> (i from 0); prints "produced N".
  consume  --conn CS --hub H --group G --expect N [--timeout S]
           [--checkpoint-store CONN --container C] [--start earliest|latest]
           prints "BODY\t<partition>\t<seq>" per event until N distinct bodies were seen;
           exit 0 when reached, 3 on timeout.
  props    --conn CS --hub H : hub and partition properties as JSON.

Local broker connection string:
  Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=k;SharedAccessKey=x;UseDevelopmentEmulator=true
(`UseDevelopmentEmulator=true` makes the SDK dial plain AMQP on PORT).
"""

import argparse
import asyncio
import datetime
import json
import logging
import sys

from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from eh_receive import receive_until


def _jsonable(v):
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(_jsonable(k)): _jsonable(x) for k, x in v.items()}
    return v


async def produce(args):
    opts = {}
    if args.partition_key is not None:
        opts["partition_key"] = args.partition_key
    if args.partition_id is not None:
        opts["partition_id"] = args.partition_id
    sent = 0
    async with EventHubProducerClient.from_connection_string(args.conn, eventhub_name=args.hub) as producer:
        if args.batch:
            batch = await producer.create_batch(**opts)
            for i in range(args.count):
                ev = EventData(f"{args.prefix}{i}")
                try:
                    batch.add(ev)
                except ValueError:
                    await producer.send_batch(batch)
                    sent += len(batch)
                    batch = await producer.create_batch(**opts)
                    batch.add(ev)
            if len(batch):
                await producer.send_batch(batch)
                sent += len(batch)
        else:
            for i in range(args.count):
                await producer.send_event(EventData(f"{args.prefix}{i}"), **opts)
                sent += 1
    print(f"produced {sent}", flush=True)
    return 0


async def _ensure_container(store):
    """Creates the checkpoint container if missing (Azurite starts empty)."""
    from azure.core.exceptions import ResourceExistsError

    try:
        await store._container_client.create_container()  # pylint: disable=protected-access
    except ResourceExistsError:
        pass


async def consume(args):
    store = None
    if args.checkpoint_store:
        from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

        store = BlobCheckpointStore.from_connection_string(args.checkpoint_store, args.container)
        await _ensure_container(store)
    client = EventHubConsumerClient.from_connection_string(
        args.conn, consumer_group=args.group, eventhub_name=args.hub, checkpoint_store=store
    )
    seen = set()
    done = asyncio.Event()

    async def on_event(ctx, event):
        if event is None:
            return
        body = event.body_as_str()
        key = event.partition_key or ""
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        print(f"{body}\t{ctx.partition_id}\t{event.sequence_number}\t{key}", flush=True)
        seen.add(body)
        if store is not None:
            await ctx.update_checkpoint(event)
        if len(seen) >= args.expect:
            done.set()

    start = "-1" if args.start == "earliest" else "@latest"

    async def run():
        async with client:
            await receive_until(client, on_event, done, args.expect, args.timeout, start)

    if store is not None:
        async with store:
            await run()
    else:
        await run()
    if len(seen) >= args.expect:
        return 0
    print(f"timeout: saw {len(seen)} of {args.expect} distinct bodies", file=sys.stderr, flush=True)
    return 3


async def props(args):
    async with EventHubProducerClient.from_connection_string(args.conn, eventhub_name=args.hub) as producer:
        hub = await producer.get_eventhub_properties()
        parts = [await producer.get_partition_properties(pid) for pid in hub["partition_ids"]]
    print(json.dumps({"hub": _jsonable(hub), "partitions": _jsonable(parts)}, indent=2, sort_keys=True))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default="WARNING", help="Python logging level (e.g. DEBUG)")
    sub = p.add_subparsers(dest="cmd", required=True)

    pp = sub.add_parser("produce")
    pp.add_argument("--conn", required=True)
    pp.add_argument("--hub", required=True)
    pp.add_argument("--count", type=int, required=True)
    pp.add_argument("--prefix", default="e")
    g = pp.add_mutually_exclusive_group()
    g.add_argument("--partition-key")
    g.add_argument("--partition-id")
    pp.add_argument("--batch", action="store_true", help="send in batches (default: one send per event)")

    pc = sub.add_parser("consume")
    pc.add_argument("--conn", required=True)
    pc.add_argument("--hub", required=True)
    pc.add_argument("--group", default="$Default")
    pc.add_argument("--expect", type=int, required=True)
    pc.add_argument("--timeout", type=float, default=30.0)
    pc.add_argument("--checkpoint-store")
    pc.add_argument("--container")
    pc.add_argument("--start", choices=["earliest", "latest"], default="earliest")

    pr = sub.add_parser("props")
    pr.add_argument("--conn", required=True)
    pr.add_argument("--hub", required=True)

    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING), stream=sys.stderr)
    if args.cmd == "consume" and args.checkpoint_store and not args.container:
        p.error("--checkpoint-store needs --container")
    fn = {"produce": produce, "consume": consume, "props": props}[args.cmd]
    return asyncio.run(fn(args))


if __name__ == "__main__":
    sys.exit(main())
