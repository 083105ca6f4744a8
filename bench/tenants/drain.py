"""Mapper CPU per event on a fixed backlog: a cost per event that does not depend on machine load.

``run.py``'s cost per change depends on how far the pipeline falls behind (a loaded machine
makes bigger batches and coalesces more edits, which is cheaper per edit), so two runs on a
shared machine are hard to compare. Here the suite runs with mapper's inbound off while the
sandbox makes ``--edits`` UI edits of ``--records`` contacts of portal 12345 (ingress appends
them to the portal's event stream); then a second mapper process with inbound on drains that
backlog in full batches (``HUBSYNC_MAPPER_READ_BATCH_SIZE``), and the CPU of that mapper, of
writer (its hydration reads) and of Redis is measured from its first read to the drained
stream, per event. Batches are full whatever the load, so runs of two versions compare.

Run: ``.venv/bin/python bench/tenants/drain.py --out bench/tenants/results/drain.json``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "suite"))

from latency_bench import PORTAL, _create  # type: ignore[import-not-found]
from run import TICKS, cpu_ticks, redis_nodes  # type: ignore[import-not-found]

from bench.tenants._common import add_output_options, report, run_in_workdir
from hubsync.cli.demo import connect_sandbox_portal
from hubsync.cli.suite import Suite
from hubsync.core.devredis import free_port
from hubsync.core.keys import events_key
from hubsync.core.redis import as_str, redis_from_url


async def group_state(redis: Redis) -> tuple[bool, bool]:
    """(the mapper group has read anything, the stream is drained: all delivered and acked)."""
    key = events_key(PORTAL)
    rows = await redis.xinfo_groups(key)
    group = next((g for g in rows if as_str(g["name"]) == "mapper"), None)
    if group is None:
        return False, False
    last: Any = await redis.xrevrange(key, "+", "-", count=1)
    started = as_str(group["last-delivered-id"]) != "0-0"
    drained = bool(last) and group["last-delivered-id"] == last[0][0] and int(group["pending"]) == 0
    return started, drained


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sandbox = {
        "portals": [{"hub_id": PORTAL, "plan": "professional", "burst_per_10s": 190}],
        "webhook_retry_jitter": 0.0,
    }
    extra_env = {
        "writer": {"HUBSYNC_WRITER_BURST_LIMIT": "190"},
        "mapper": {"HUBSYNC_MAPPER_INBOUND_ENABLED": "false"},
    }
    result: dict[str, Any] = {"records": args.records, "edits": args.edits}
    async with Suite(workdir, sandbox_config=sandbox, extra_env=extra_env) as suite:
        await connect_sandbox_portal(suite)
        assert suite.redis is not None
        redis = redis_from_url(suite.redis.url)
        drainer: subprocess.Popen[bytes] | None = None
        try:
            async with httpx.AsyncClient(base_url=suite.sandbox_url, timeout=600) as http:
                ids = await _create(http, args.records)
                churn = await http.post(
                    "/_sandbox/ui/contacts/churn",
                    params={"portal": PORTAL},
                    json={
                        "ids": ids,
                        "property": "firstname",
                        "rate": args.rate,
                        "seconds": args.edits / args.rate,
                    },
                )
                churn.raise_for_status()
                await http.post("/_sandbox/webhooks/wait-idle", params={"timeout": 300})
            result["events"] = int(await redis.xlen(events_key(PORTAL)))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "OTEL_"))}
            env |= suite.env_for("mapper") | {
                "HUBSYNC_GRPC_PORT": str(free_port()),
                "HUBSYNC_METRICS_PORT": str(free_port()),
                "HUBSYNC_MAPPER_INBOUND_ENABLED": "true",
                "HUBSYNC_MAPPER_CONSUMER_NAME": "drain",
            }
            with (workdir / "drain-mapper.log").open("ab") as log:
                drainer = subprocess.Popen(
                    [sys.executable, "-m", "hubsync.mapper"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            pids = {"mapper": drainer.pid, "writer": suite.procs["writer"].pid}
            for i, node in enumerate(redis_nodes(suite)):
                assert node.proc is not None
                pids[f"redis-{i}" if i else "redis"] = node.proc.pid
            while not (await group_state(redis))[0]:
                await asyncio.sleep(0.05)
            ticks0 = {n: cpu_ticks(p) for n, p in pids.items()}
            t0 = time.monotonic()
            while not (await group_state(redis))[1]:
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - t0
            ticks1 = {n: cpu_ticks(p) for n, p in pids.items()}
            events = max(result["events"], 1)
            result["drain_seconds"] = round(elapsed, 1)
            result["cpu_us_per_event"] = {
                n: round(1e6 * (ticks1[n] - ticks0[n]) / TICKS / events) for n in pids
            }
            result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        finally:
            if drainer is not None:
                drainer.terminate()
                drainer.wait(30)
            await redis.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=2000, help="contacts the edits rotate over")
    parser.add_argument("--edits", type=int, default=10_000, help="UI edits in the backlog")
    parser.add_argument("--rate", type=float, default=500, help="edits per second while making the backlog")
    add_output_options(parser)
    args = parser.parse_args()
    report(run_in_workdir(args, run), "bench/tenants/drain.py", args.out)


if __name__ == "__main__":
    main()
