"""CPU per batch of writer's two per-record Lua scripts: the version claim and the written values.

Right before a batch goes to HubSpot writer claims each record's property versions
(``RecordVersions.claim``, ordering.py); after HubSpot answers it keeps what it wrote for
ingress's echo check (``BatchSender._record_written``, batches.py). Both are one script call per
batch with a key per record. This measures, against a real redis-server on loopback, writer's
own CPU per call (``time.process_time``), the wall time, and Redis's CPU per call (INFO
commandstats, ``evalsha``), for batches of 100 records with ``--properties`` properties each.

Run it on two trees to compare them (the same file, copied into the other tree):

    .venv/bin/python bench/writer/script_args.py --out bench/writer/results/script_args.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hubsync.core.devredis import RedisProcess
from hubsync.core.redis import create_redis
from hubsync.core.settings import CoreSettings
from hubsync.writer.batches import BatchKey, BatchOp, BatchSender
from hubsync.writer.ordering import RecordRef, RecordVersions

PORTAL = 20_001


async def evalsha_usec(redis: Any) -> tuple[int, int]:
    """(calls, µs) of EVALSHA so far, from INFO commandstats."""
    stats = await redis.info("commandstats")
    row = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(row["calls"]), int(row["usec"])


async def measure(redis: Any, batches: int, records: int, properties: int) -> dict[str, float]:
    """Runs ``batches`` claims and written-value calls; returns µs per call of each."""
    versions = RecordVersions(redis, ttl_s=3600)
    sender = BatchSender(None, redis, None, learn_ids=False)  # type: ignore[arg-type]  # scripts only
    key = BatchKey(PORTAL, "contacts", BatchOp.UPSERT, "email")
    out: dict[str, float] = {}
    for name in ("claim", "record_written"):
        calls0, usec0 = await evalsha_usec(redis)
        cpu, wall = time.process_time(), time.perf_counter()
        for b in range(batches):
            ids = [f"bench{b * records + i}@example.com" for i in range(records)]
            if name == "claim":
                items = [
                    (
                        RecordRef("contacts", "email", i),
                        {f"prop{p}": 1_764_000_000_000_000 + b for p in range(properties)},
                    )
                    for i in ids
                ]
                await versions.claim(PORTAL, "contacts", items)
            else:
                written = [
                    (
                        str(10_000_000 + b * records + n),
                        {f"prop{p}": f"value {p} of {i}" for p in range(properties)},
                    )
                    for n, i in enumerate(ids)
                ]
                await sender._record_written(key, written)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        calls1, usec1 = await evalsha_usec(redis)
        out[f"{name}_writer_cpu_us"] = 1e6 * cpu / batches
        out[f"{name}_wall_us"] = 1e6 * wall / batches
        out[f"{name}_redis_us"] = (usec1 - usec0) / max(calls1 - calls0, 1)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hubsync-bench-scripts-") as tmp:
        server = RedisProcess(Path(tmp), appendonly=False).start()
        try:
            redis = create_redis(CoreSettings(redis_url=server.url))
            try:
                await measure(redis, 20, args.records, args.properties)  # warm-up: scripts loaded
                rounds = [
                    await measure(redis, args.batches, args.records, args.properties)
                    for _ in range(args.rounds)
                ]
            finally:
                await redis.aclose()
        finally:
            server.stop()
    return {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "records_per_batch": args.records,
        "properties_per_record": args.properties,
        "batches_per_round": args.batches,
        "median_us_per_call": {k: round(statistics.median(r[k] for r in rounds)) for k in rounds[0]},
        "rounds": [{k: round(v) for k, v in r.items()} for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=100, help="records per batch")
    parser.add_argument("--properties", type=int, default=3, help="properties per record")
    parser.add_argument("--batches", type=int, default=200, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
