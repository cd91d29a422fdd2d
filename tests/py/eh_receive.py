"""The receive loop both Event Hubs test tools share (eh_tool.py, schema_tool.py)."""

import asyncio
import sys


async def on_error(ctx, err):
    """Logs a consumer error to stderr (the SDK retries on its own)."""
    pid = ctx.partition_id if ctx is not None else None
    print(f"consumer error on partition {pid}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)


async def receive_until(client, on_event, done, expect, timeout, starting_position):
    """Receives with `client` (an open aio EventHubConsumerClient) until `done` is set or
    `timeout` seconds pass (just `timeout` seconds when `expect` is 0), then stops receiving."""
    task = asyncio.create_task(
        client.receive(on_event=on_event, on_error=on_error, starting_position=starting_position)
    )
    try:
        if expect > 0:
            await asyncio.wait_for(done.wait(), timeout=timeout)
        else:
            await asyncio.sleep(timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # pylint: disable=broad-except
            pass
