"""Webhook-to-subscriber latency through the whole suite, every part its own process.

``hubsync.cli.suite.Suite`` starts Redis, the sandbox, auth, ingress, mapper and writer as separate
processes, exactly as ``hubsync run`` does. This script then has the sandbox edit contacts "in
HubSpot's UI" (changeSource ``CRM_UI``) at a steady ``--rate`` per second (``POST
/_sandbox/ui/contacts/churn``: the edits are made inside the sandbox, as people's edits are made
inside HubSpot, so the load generator costs no HTTP request per edit). Each edit
becomes a v3-signed webhook to real ingress (verify, dedupe, echo check, Redis stream), mapper
(consumer group, coalescing, hydrate through writer → auth → sandbox ``batch/read``, transform,
change feed) and a ``Subscribe`` client here that acks in batches.

Latency = receipt at the subscriber minus the change's ``occurredAt`` (HubSpot's time of the change).
HubSpot reads = ``batch/read`` calls in the sandbox's request log during the run.

Run: ``.venv/bin/python bench/suite/latency_bench.py --rate 500 --seconds 20``
Goals (issue 6): p50 < 100 ms, p99 < 1 s, at most one ``batch/read`` per 20 events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.feed_latency import latency_ms, percentiles_ms, subscribe
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.cli.demo import connect_sandbox_portal
from hubsync.cli.suite import Suite

PORTAL = 12345


async def run(
    rate: int, seconds: float, records: int, burst: int, coalesce_ms: int, workdir: Path | None = None
) -> dict[str, Any]:
    sandbox = {
        # A Professional portal: 190 requests per 10 s, as HubSpot grants private apps.
        "portals": [{"hub_id": PORTAL, "plan": "professional", "burst_per_10s": burst}],
        "webhook_retry_jitter": 0.0,
    }
    extra_env = {
        "writer": {"HUBSYNC_WRITER_BURST_LIMIT": str(burst)},
        "mapper": {"HUBSYNC_MAPPER_COALESCE_WINDOW_MS": str(coalesce_ms)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        where = workdir or Path(tmp)
        async with Suite(where, sandbox_config=sandbox, extra_env=extra_env) as suite:
            await connect_sandbox_portal(suite)
            async with httpx.AsyncClient(
                base_url=suite.sandbox_url, timeout=30, limits=httpx.Limits(max_connections=32)
            ) as http:
                ids = await _create(http, records)
                # let the creations' webhooks drain and the rate window refill
                await http.post("/_sandbox/webhooks/wait-idle", params={"timeout": 60})
                await asyncio.sleep(11)
                return await _measure(suite, http, ids, rate, seconds)
    raise AssertionError("unreachable")


async def _create(http: httpx.AsyncClient, records: int) -> list[str]:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with sem:
            reply = await http.post(
                "/_sandbox/ui/contacts",
                params={"portal": PORTAL},
                json={"properties": {"email": f"u{i}@bench.example", "external_id": f"e{i}"}},
            )
            reply.raise_for_status()
            return str(reply.json()["id"])

    return list(await asyncio.gather(*(one(i) for i in range(records))))


async def _reads(http: httpx.AsyncClient) -> int:
    counts = (await http.get("/_sandbox/requests", params={"limit": 0})).json()["counts"]["byEndpoint"]
    return sum(v for k, v in counts.items() if "batch/read" in k)


async def _measure(
    suite: Suite, http: httpx.AsyncClient, ids: list[str], rate: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    # The two halves of each latency, split at the change's feed entry (its id's milliseconds):
    # webhook → feed entry (ingress, inbound, mapping) and feed entry → subscriber (the feed).
    to_feed: list[float] = []
    from_feed: list[float] = []
    expected = int(rate * seconds)
    done = asyncio.Event()
    received_ids: set[str] = set()

    def received(c: Any, now: float) -> None:
        latencies.append(now - c.occur_time.ToMilliseconds() / 1000)
        entry_s = int(c.ack_id.rsplit("/", 1)[1].split("-")[0]) / 1000
        to_feed.append(entry_s - c.occur_time.ToMilliseconds() / 1000)
        from_feed.append(now - entry_s)
        received_ids.add(c.hubspot_id)

    async def subscriber() -> None:
        async with suite.channel("mapper", "demo-client") as channel:
            stub = mapper_pb2_grpc.MapperServiceStub(channel)
            await subscribe(stub, expected, done, received, kind=mapper_pb2.CHANGE_KIND_UPDATED)

    sub = asyncio.create_task(subscriber())
    await asyncio.sleep(1.5)  # the subscriber's group exists before the first change
    reads_before = await _reads(http)
    churn = await http.post(
        "/_sandbox/ui/contacts/churn",
        params={"portal": PORTAL},
        json={"ids": ids, "property": "firstname", "rate": rate, "seconds": seconds},
        timeout=seconds + 60,
    )
    churn.raise_for_status()
    sent = int(churn.json()["made"])
    elapsed = float(churn.json()["elapsedSeconds"])
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 30)
    await asyncio.sleep(1.0)
    sub.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sub
    reads = await _reads(http) - reads_before
    return {
        "changes_made": sent,
        "achieved_rate_per_s": round(sent / elapsed, 1),
        "changes_received": len(latencies),
        "records_edited": len(set(ids[n % len(ids)] for n in range(sent))),
        "records_received": len(received_ids),
        **latency_ms(latencies, 50, 90, 99),
        "to_feed_ms": percentiles_ms(to_feed, 50, 99),
        "feed_to_subscriber_ms": percentiles_ms(from_feed, 50, 99),
        "batch_read_calls": reads,
        "events_per_batch_read": round(sent / reads, 1) if reads else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=int, default=500, help="UI edits per second")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--records", type=int, default=2000, help="contacts the edits rotate over")
    parser.add_argument("--burst", type=int, default=190, help="the portal's requests per 10 s")
    parser.add_argument("--coalesce-ms", type=int, default=50, help="mapper's coalesce window")
    parser.add_argument("--workdir", type=Path, help="keep the suite's logs here (default: a temporary dir)")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(
        run(args.rate, args.seconds, args.records, args.burst, args.coalesce_ms, args.workdir)
    )
    result["command"] = " ".join([".venv/bin/python bench/suite/latency_bench.py", *sys.argv[1:]])
    result["machine"] = f"{platform.machine()}, python {platform.python_version()}"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
