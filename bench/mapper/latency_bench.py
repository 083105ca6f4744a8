"""Webhook-to-subscriber latency at a sustained event rate, through the whole inbound path.

HubSpot (the sandbox) changes records at ``--rate`` changes/s (UI edits made in the sandbox's
process, so the load generator costs no HTTP); each change is delivered as a signed webhook to the
ingress stand-in (or real ingress, when it lands), appended to the event stream, consumed by the
mapper, hydrated through writer (auth in front of it), published to the change feed and streamed
to a subscriber, which acks. Latency = subscriber receipt - the change's ``occurredAt``.

Run: ``.venv/bin/python bench/mapper/latency_bench.py --rate 500 --seconds 20``.
Goals (issue 6): p50 < 100 ms, p99 < 1 s, at most one ``batch/read`` per 20 events.
Everything runs in one process and event loop here (sandbox, auth, writer, mapper, subscriber),
which is harsher than production, where each is its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import contextlib

from bench.feed_latency import latency_ms, subscribe
from hubsync.api.mapper.v1 import mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.devredis import RedisProcess
from hubsync.sandbox import PortalConfig, SandboxConfig, SandboxServer
from tests.helpers.auth import register_sandbox_private_app, running_auth
from tests.helpers.mapper import ingress_standin, running_mapper

PORTAL = 12345


async def run(rate: int, seconds: float, records: int, burst: int, coalesce_ms: int) -> dict[str, object]:
    from tests.helpers.writer import running_writer

    tokens = {n: secrets.token_urlsafe(16) for n in ["auth", "ingress", "mapper", "writer", "cli", "client"]}
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc = RedisProcess(Path(tmp)).start()
        try:
            config = SandboxConfig.model_validate(
                {
                    # A Professional portal: 190 requests per 10 s, as HubSpot grants private apps.
                    "portals": [PortalConfig(plan="professional", burst_per_10s=burst)],
                    "webhook_retry_jitter": 0.0,
                    "property_change_on_creation": False,
                }
            )
            async with ingress_standin(redis_proc.url) as receiver, SandboxServer(config) as sb:
                store = sb.state.stores[PORTAL]
                ids = [
                    store.create(
                        "contacts", {"email": f"u{i}@x.io", "external_id": f"e{i}"}, sb.state.ui_source()
                    ).id
                    for i in range(records)
                ]
                sb.state.webhooks.subs[1001].target_url = receiver.url
                async with running_auth(
                    redis_url=redis_proc.url, caller_tokens=tokens, hubspot_api_base=sb.base_url
                ) as auth_addr:
                    await register_sandbox_private_app(auth_addr, tokens)
                    async with (
                        running_writer(
                            redis_url=redis_proc.url,
                            caller_tokens=tokens,
                            hubspot_api_base=sb.base_url,
                            auth_address=auth_addr,
                            env={"HUBSYNC_WRITER_BURST_LIMIT": str(burst)},
                        ) as writer_addr,
                        running_mapper(
                            redis_proc.url, tokens, writer_address=writer_addr, coalesce_window_ms=coalesce_ms
                        ) as mapper,
                        open_channel(mapper.address, tokens["client"]) as channel,
                    ):
                        return await _measure(sb, store, ids, channel, rate, seconds)
        finally:
            redis_proc.stop()
    raise AssertionError("unreachable")


async def _measure(sb, store, ids, channel, rate: int, seconds: float) -> dict[str, object]:  # type: ignore[no-untyped-def]
    stub = mapper_pb2_grpc.MapperServiceStub(channel)
    latencies: list[float] = []
    arrivals: list[tuple[float, float]] = []  # (occurred, latency)
    expected = int(rate * seconds)
    done = asyncio.Event()

    def received(change: Any, now: float) -> None:
        occurred = change.occur_time.ToMilliseconds() / 1000
        latencies.append(now - occurred)
        arrivals.append((occurred, now - occurred))

    sub = asyncio.create_task(subscribe(stub, expected, done, received))
    await asyncio.sleep(1.5)  # the subscriber's group exists before the first change
    before = dict(sb.state.requests.by_endpoint)
    start = time.perf_counter()
    sent = 0
    source = sb.state.ui_source()
    rng = random.Random(7)
    while sent < expected:
        due = int((time.perf_counter() - start) * rate) + 1
        while sent < min(due, expected):
            obj = store.get("contacts", str(rng.choice(ids)))
            store.update("contacts", obj, {"firstname": f"n{sent}"}, source)
            sent += 1
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 30)
    sub.cancel()
    after = dict(sb.state.requests.by_endpoint)
    reads = sum(v - before.get(k, 0) for k, v in after.items() if "batch/read" in k)
    first = min(o for o, _ in arrivals) if arrivals else 0.0
    by_second: dict[int, list[float]] = {}
    for o, lat_s in arrivals:
        by_second.setdefault(int(o - first), []).append(lat_s)
    worst_by_second = {k: round(max(v) * 1000) for k, v in sorted(by_second.items())}
    return {
        "worst_ms_by_second": worst_by_second,
        "changes_made": sent,
        "achieved_rate_per_s": round(sent / elapsed, 1),
        "changes_received": len(latencies),
        **latency_ms(latencies, 50, 99),
        "batch_read_calls": reads,
        "events_per_batch_read": round(sent / reads, 1) if reads else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--burst", type=int, default=190, help="the portal's requests per 10 s")
    parser.add_argument("--coalesce-ms", type=int, default=100)
    args = parser.parse_args()
    result = asyncio.run(run(args.rate, args.seconds, args.records, args.burst, args.coalesce_ms))
    result["command"] = " ".join(["bench/mapper/latency_bench.py", *sys.argv[1:]])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
