"""What one idle change-feed subscriber costs with N known portals (issue 13).

Starts a local redis-server, lays out N portals as a long-running install holds them (each with
one change per object type that the group read and acked), runs one subscriber of the mapper's
``ChangeFeed`` in this process, waits until it is past its start (the group's one-off sweep, where
the feed has one), then measures over a window: Redis commands/s (``INFO commandstats`` delta,
round trips and all commands scripts ran) and this process's CPU (% of one core).

    .venv/bin/python bench/mapper/feed_idle_bench.py --portals 10000 --window 30

Runs against whatever ``hubsync.mapper.feed`` is importable, so the same script measures older code
(``PYTHONPATH`` pointing at another checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.core import keys
from hubsync.core.devredis import RedisProcess
from hubsync.core.keys import FEED_GROUPS_KEY, PORTALS_KEY, FeedEntry, feed_key
from hubsync.mapper.feed import ChangeFeed, Subscription

TYPES = ("companies", "contacts", "deals")
# Commands a Lua script runs are counted by INFO commandstats too; these are the round trips.
_INNER = {"time", "zrange", "zrangebyscore", "zscore", "zadd", "zrem", "lpush", "ltrim"}


async def _layout(redis: Any, portals: int) -> None:
    change = mapper_pb2.Change(kind=mapper_pb2.CHANGE_KIND_UPDATED).SerializeToString()
    for start in range(0, portals, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for p in range(1000 + start, 1000 + min(start + 1000, portals)):
                pipe.sadd(PORTALS_KEY, str(p))
                for t in TYPES:
                    pipe.xadd(feed_key(p, t), {FeedEntry.CHANGE: change})
                    pipe.xgroup_create(feed_key(p, t), "g", id="$")
            await pipe.execute()
    await redis.sadd(FEED_GROUPS_KEY, "g")


async def _counts(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def main(portals: int, window: float) -> None:
    proc = RedisProcess(Path(tempfile.mkdtemp())).start()
    redis = Redis.from_url(proc.url)
    try:
        await _layout(redis, portals)
        feed = ChangeFeed(Redis.from_url(proc.url))

        async def subscriber() -> None:
            async for _ in feed.deliveries(Subscription("g", "c", [], [])):
                pass

        task = asyncio.create_task(subscriber())
        sweep_key = getattr(keys, "feed_sweep_key", None)
        deadline = time.monotonic() + 600
        while sweep_key is not None and not await redis.hexists(sweep_key("g"), "done"):
            assert time.monotonic() < deadline, "the sweep did not finish"
            await asyncio.sleep(0.2)
        await asyncio.sleep(10)  # past the start: the swept marks looked at
        before, cpu0, t0 = await _counts(redis), time.process_time(), time.monotonic()
        await asyncio.sleep(window)
        after, cpu1, t1 = await _counts(redis), time.process_time(), time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        elapsed = t1 - t0
        used = {k: after[k] - before.get(k, 0) for k in after if k != "info" and after[k] - before.get(k, 0)}
        total = sum(used.values())
        trips = sum(v for k, v in used.items() if k not in _INNER)
        top = ", ".join(f"{k} {v / elapsed:,.1f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1])[:6])
        print(
            f"portals {portals:,}: Redis {total / elapsed:,.1f} commands/s "
            f"({trips / elapsed:,.1f} round trips/s; {top}), "
            f"subscriber CPU {100 * (cpu1 - cpu0) / elapsed:.1f}% of a core over {elapsed:.0f} s"
        )
    finally:
        await redis.aclose()
        proc.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portals", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(main(args.portals, args.window))
