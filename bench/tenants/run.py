"""Many tenants at constant cost (issue 13): idle cost and one busy portal beside N idle ones.

The whole suite runs as separate processes (``hubsync.cli.suite.Suite``: Redis, the sandbox,
auth, ingress, mapper, writer). N idle portals are then laid into Redis in the state the services
leave a portal in after it sent one webhook that was processed and acknowledged: known to ingress
(``hubsync:portals``) and writer (``hubsync:writer:portals``), one event on its stream delivered and
acknowledged by group ``mapper``, an empty write queue with group ``writer``, one dedupe set
(laid directly, not sent through ingress: 10,000 signed webhooks of unconnected portals would
park them all, which is not the idle state measured here).

Phase 1, idle: after a settle time, for ``--idle-seconds``: CPU % of a core of every process
(utime + stime from ``/proc/<pid>/stat``), Redis commands/s (``INFO commandstats`` delta, INFO
itself excluded) by command, Redis memory per idle portal (``used_memory`` delta over N).

Phase 2, busy (``--rate`` > 0): the sandbox edits contacts of the connected portal 12345 at
``--rate`` per second for ``--seconds`` (bench/suite/latency_bench.py's load), a subscriber reads
the change feed: webhook → subscriber p50/p99, changes delivered.

Run: ``.venv/bin/python bench/tenants/run.py --portals 10000 --out bench/tenants/results-10000.json``
Goals (issue 13): every process <= 2 % of a core and Redis <= 100 commands/s idle; busy portal
p50 < 100 ms, p99 < 1 s, every change delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "suite"))

from latency_bench import PORTAL, _create, _measure  # type: ignore[import-not-found]

from hubsync.cli.demo import connect_sandbox_portal
from hubsync.cli.suite import Suite
from hubsync.core.devredis import RedisProcess
from hubsync.core.keys import (
    PORTALS_KEY,
    WRITER_PORTALS_KEY,
    dedupe_key,
    events_key,
    feed_key,
    writes_key,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


async def lay_idle_portals(redis: Redis, first: int, count: int) -> None:
    """``count`` portals from ``first``, each as after one processed, acknowledged webhook."""
    hour = int(time.time() * 1000) // 3_600_000
    for start in range(first, first + count, 500):
        async with redis.pipeline(transaction=False) as pipe:
            for p in range(start, min(first + count, start + 500)):
                event = json.dumps({"portalId": p, "objectId": 1, "subscriptionType": "contact.creation"})
                pipe.sadd(PORTALS_KEY, p)
                pipe.xadd(events_key(p), {"event": event, "accepted_ms": int(time.time() * 1000)})
                pipe.xgroup_create(events_key(p), "mapper", id="$")
                pipe.sadd(dedupe_key(p, hour, p % 8), p)
                pipe.expire(dedupe_key(p, hour, p % 8), 86_400)
                pipe.sadd(WRITER_PORTALS_KEY, p)
                pipe.xgroup_create(writes_key(p), "writer", id="$", mkstream=True)
            await pipe.execute()


async def commandstats(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


async def idle_phase(suite: Suite, redis: Redis, seconds: float) -> dict[str, Any]:
    pids = {name: proc.pid for name, proc in suite.procs.items()}
    # The bench runs one Redis server (not `hubsync run --redis-cluster`): its CPU is measured.
    assert isinstance(suite.redis, RedisProcess) and suite.redis.proc is not None
    pids["redis"] = suite.redis.proc.pid
    ticks0 = {n: cpu_ticks(p) for n, p in pids.items()}
    cmds0 = await commandstats(redis)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    cmds1 = await commandstats(redis)
    ticks1 = {n: cpu_ticks(p) for n, p in pids.items()}
    per_command = {k: round((v - cmds0.get(k, 0)) / elapsed, 1) for k, v in cmds1.items()}
    per_command = {k: v for k, v in sorted(per_command.items(), key=lambda kv: -kv[1]) if v > 0}
    return {
        "seconds": round(elapsed, 1),
        "cpu_percent_of_a_core": {n: round(100 * (ticks1[n] - ticks0[n]) / TICKS / elapsed, 1) for n in pids},
        "redis_commands_per_s": round(sum(per_command.values()), 1),
        "redis_commands_per_s_by_command": per_command,
    }


async def where_it_waits(redis: Redis) -> dict[str, Any]:
    """After the busy phase: the busy portal's events not yet consumed by mapper's inbound (its
    group's pending and undelivered) and what its change feed holds, to tell whether changes wait
    in the inbound pipeline or on the way to the subscriber (the feed)."""
    rows = await redis.xinfo_groups(events_key(PORTAL))
    group = next((g for g in rows if g["name"] in (b"mapper", "mapper")), None)
    last: Any = await redis.xrevrange(events_key(PORTAL), "+", "-", count=1)
    return {
        "inbound_pending": int(group["pending"]) if group else None,
        "inbound_caught_up": bool(group and last and group["last-delivered-id"] == last[0][0]),
        "feed_entries": int(await redis.xlen(feed_key(PORTAL, "contacts"))),
    }


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sandbox = {
        "portals": [{"hub_id": PORTAL, "plan": "professional", "burst_per_10s": 190}],
        "webhook_retry_jitter": 0.0,
    }
    extra_env = {"writer": {"HUBSYNC_WRITER_BURST_LIMIT": "190"}}
    result: dict[str, Any] = {"portals": args.portals}
    async with Suite(workdir, sandbox_config=sandbox, extra_env=extra_env) as suite:
        await connect_sandbox_portal(suite)
        assert suite.redis is not None
        redis = Redis.from_url(suite.redis.url)
        try:
            memory0 = int((await redis.info("memory"))["used_memory"])
            await lay_idle_portals(redis, 1_000_000, args.portals)
            memory1 = int((await redis.info("memory"))["used_memory"])
            result["redis_bytes_per_idle_portal"] = round((memory1 - memory0) / max(args.portals, 1))
            await asyncio.sleep(args.settle)
            result["idle"] = await idle_phase(suite, redis, args.idle_seconds)
            if args.rate > 0:
                async with httpx.AsyncClient(
                    base_url=suite.sandbox_url, timeout=30, limits=httpx.Limits(max_connections=32)
                ) as http:
                    ids = await _create(http, args.records)
                    await http.post("/_sandbox/webhooks/wait-idle", params={"timeout": 60})
                    await asyncio.sleep(11)  # the rate window refills
                    result["busy"] = await _measure(suite, http, ids, args.rate, args.seconds)
                    result["busy"]["after"] = await where_it_waits(redis)
        finally:
            await redis.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--portals", type=int, default=10_000, help="idle portals laid into Redis")
    parser.add_argument("--settle", type=float, default=20, help="seconds before measuring idle")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument(
        "--rate", type=int, default=500, help="UI edits per second on the busy portal (0: none)"
    )
    parser.add_argument("--seconds", type=float, default=20, help="how long the busy portal is edited")
    parser.add_argument("--records", type=int, default=2000, help="contacts the edits rotate over")
    parser.add_argument("--workdir", type=Path, help="keep the suite's logs here")
    parser.add_argument("--out", type=Path, help="also write the result JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.workdir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run(args, where))
    result["command"] = " ".join([".venv/bin/python bench/tenants/run.py", *sys.argv[1:]])
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
