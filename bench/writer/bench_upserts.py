"""Benchmark: 50,000 contact upserts through writer into the sandbox at 110 requests per 10 s.

    .venv/bin/python bench/writer/bench_upserts.py --records 50000 --replicas 1
    .venv/bin/python bench/writer/bench_upserts.py --records 50000 --replicas 3

Starts a redis-server, the sandbox (one portal limited to 110 requests per rolling 10 s, as a
public app), auth in-process and ``--replicas`` writer processes (public_app preset, unchanged
detection on). Callers submit the records in submissions of ``--per-call`` writes
(``wait=true``), ``--concurrency`` at a time, spread round-robin over the replicas. Then the
same submissions run a second time. Reports, from the sandbox's request log: HubSpot write calls
(goal ≤ 510), 429s (goal 0), elapsed time against the quota floor (the earliest the rolling
window allows that many calls: 10 s x floor((calls-1)/110)), and the second run's write calls
(goal 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.writer._writes import contact_upserts  # noqa: E402
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc  # noqa: E402
from hubsync.core.channels import open_channel  # noqa: E402
from hubsync.core.devredis import RedisProcess  # noqa: E402
from hubsync.sandbox import PortalConfig, SandboxConfig, SandboxServer  # noqa: E402
from tests.helpers.auth import register_sandbox_private_app, running_auth  # noqa: E402
from tests.helpers.writer import writer_process  # noqa: E402

PORTAL = 12345
UPSERT = "POST /crm/v3/objects/{objectType}/batch/upsert"
BURST = 110


async def counts(base_url: str) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=base_url) as c:
        log = (await c.get("/_sandbox/requests", params={"limit": 1})).json()
    by = log["counts"]["byEndpointAndStatus"].get(UPSERT, {})
    return sum(by.values()), int(by.get("429", 0))


async def batch_sizes(base_url: str) -> dict[int, int]:
    """How many upsert calls carried each batch size."""
    async with httpx.AsyncClient(base_url=base_url) as c:
        log = (await c.get("/_sandbox/requests", params={"limit": 100_000})).json()
    out: dict[int, int] = {}
    for e in log["entries"]:
        if e["endpoint"] == UPSERT:
            size = int(e.get("batchSize") or 0)
            out[size] = out.get(size, 0) + 1
    return out


async def run_once(
    addresses: list[str], tokens: dict[str, str], records: int, per_call: int, concurrency: int
) -> float:
    sem = asyncio.Semaphore(concurrency)
    async with contextlib.AsyncExitStack() as stack:
        stubs = [
            writer_pb2_grpc.WriterServiceStub(
                await stack.enter_async_context(open_channel(a, tokens["mapper"]))
            )
            for a in addresses
        ]

        async def one(n: int) -> None:
            writes = contact_upserts(n * per_call, min(records, (n + 1) * per_call))
            async with sem:
                reply = await stubs[n % len(stubs)].SubmitWrites(
                    writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=writes, wait=True), timeout=900
                )
            bad = [r for r in reply.results if r.status not in (2, 5)]
            if bad:
                raise RuntimeError(f"write failed: {bad[0]}")

        start = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range((records + per_call - 1) // per_call)))
        return time.perf_counter() - start


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tokens = {n: secrets.token_urlsafe(16) for n in ["auth", "ingress", "mapper", "writer", "cli", "client"]}
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp)).start()
        try:
            config = SandboxConfig.model_validate(
                {"portals": [PortalConfig(burst_per_10s=BURST, daily_limit=100_000_000)]}
            )
            async with (
                SandboxServer(config) as sb,
                running_auth(redis_url=redis.url, caller_tokens=tokens, hubspot_api_base=sb.base_url) as auth,
            ):
                await register_sandbox_private_app(auth, tokens)
                env = {
                    "HUBSYNC_WRITER_RATE_LIMIT_PRESET": "public_app",
                    # Production defaults (the test fixture's environment is tuned for latency).
                    "HUBSYNC_WRITER_BATCH_MAX_WAIT_MS": "50",
                    "HUBSYNC_WRITER_BATCH_FILL_ABOVE": "0.25",
                    "HUBSYNC_WRITER_BATCH_MAX_WAIT_SATURATED_MS": "1000",
                    "HUBSYNC_WRITER_SKIP_UNCHANGED": "true",
                    "HUBSYNC_WRITER_BACKOFF_BASE_S": "0.5",
                    "HUBSYNC_WRITER_BACKOFF_MAX_S": "30",
                }
                async with contextlib.AsyncExitStack() as procs:
                    addresses = [
                        (
                            await procs.enter_async_context(
                                writer_process(
                                    redis_url=redis.url,
                                    caller_tokens=tokens,
                                    hubspot_api_base=sb.base_url,
                                    auth_address=auth,
                                    env=env,
                                )
                            )
                        ).address
                        for _ in range(args.replicas)
                    ]
                    elapsed = await run_once(addresses, tokens, args.records, args.per_call, args.concurrency)
                    calls, r429 = await counts(sb.base_url)
                    sizes = await batch_sizes(sb.base_url)
                    elapsed2 = await run_once(
                        addresses, tokens, args.records, args.per_call, args.concurrency
                    )
                    calls2, r429_2 = await counts(sb.base_url)
        finally:
            redis.stop()
    floor = 10.0 * ((calls - 1) // BURST)
    return {
        "command": " ".join(["bench/writer/bench_upserts.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "records": args.records,
        "replicas": args.replicas,
        "per_call": args.per_call,
        "concurrency": args.concurrency,
        "hubspot_write_calls": calls,
        "records_per_call": round(args.records / max(calls, 1), 1),
        "429s": r429,
        "elapsed_s": round(elapsed, 1),
        "quota_floor_s": floor,
        "over_floor_pct": round(100 * (elapsed - floor) / floor, 1) if floor else None,
        "partial_batches": {str(k): v for k, v in sorted(sizes.items()) if k < 100},
        "second_run_write_calls": calls2 - calls,
        "second_run_429s": r429_2 - r429,
        "second_run_elapsed_s": round(elapsed2, 1),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--per-call", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=300)
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=2))
