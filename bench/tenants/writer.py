"""Writer across many portals, each at its own quota (issue 13): 100 portals x 2,000 upserts.

The whole suite as separate processes (``hubsync.cli.suite.Suite``, optionally on the local
Redis Cluster). The sandbox holds ``--portals`` portals (hub ids from 20001), each with a
private app and its own burst limit (``--min-burst`` .. ``--max-burst`` requests per rolling
10 s, spread over the portals); each portal's connection is stored through auth's
``CreatePrivateAppConnection`` and its limit set through mapper's ``ConfigService`` (as
``hubsync config set --portal P limits --burst N`` does), so writer plans every portal at its own
quota. Callers then submit ``--records`` upserts per portal (submissions of ``--per-call``
writes, ``wait=true``, ``--concurrency`` in flight over all portals, interleaved).
``--writer-replicas N`` runs N writer processes (as the chart's Deployment scales writer) and
spreads the submissions over them call by call, as a Service's per-call balancing would: the
replicas share each portal's quota through Redis, and each batches only what it was given.

Reported from the sandbox's request log: upsert calls (goal <= 1.02 x ceil(records/100) per
portal, summed), 429s (goal 0), elapsed against the slowest portal's quota floor (the earliest
its rolling window allows its calls: 10 s x floor((calls - 1) / burst); goal within 10 %).

``--no-echo-webhooks``: the sandbox sends no webhooks (by default it sends one for every contact
the writer creates or changes, as HubSpot does, to ingress, which journals them and drops them as
our own echoes). In production that echo work is HubSpot's and ingress's replicas'; on a small
machine it competes with writer for the same cores, so the run without it isolates writer's cost.

    .venv/bin/python bench/tenants/writer.py --out bench/tenants/results/writer-100.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.tenants._common import add_output_options, report, run_in_workdir
from bench.writer._writes import contact_upserts
from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.api.common.v1 import config_pb2 as doc_pb2
from hubsync.api.mapper.v1 import config_pb2, config_pb2_grpc
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.cli.suite import SANDBOX_APP_ID, Suite

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import TICKS, commandstats, cpu_ticks, process_pids  # type: ignore[import-not-found]

UPSERT = "POST /crm/v3/objects/{objectType}/batch/upsert"
FIRST_PORTAL = 20_001


def token(portal: int) -> str:
    return f"pat-na1-00000000-0000-4000-8000-{portal:012d}"


def bursts(portals: int, low: int, high: int) -> dict[int, int]:
    """Each portal's burst per 10 s, spread evenly from ``low`` to ``high``."""
    return {FIRST_PORTAL + i: low + (high - low) * i // max(portals - 1, 1) for i in range(portals)}


async def connect(suite: Suite, limits: dict[int, int]) -> None:
    """Each portal's private-app connection (auth) and its burst limit (mapper's ConfigService)."""
    async with suite.channel("auth") as a, suite.channel("mapper") as m:
        auth = auth_pb2_grpc.AuthServiceStub(a)
        config = config_pb2_grpc.ConfigServiceStub(m)
        for portal, burst in limits.items():
            await auth.CreatePrivateAppConnection(
                auth_pb2.CreatePrivateAppConnectionRequest(
                    portal_id=portal, tenant="bench", access_token=token(portal)
                ),
                timeout=30,
            )
            doc = doc_pb2.ConfigDocument()
            doc.limits.burst_limit = burst
            await config.SetConfig(
                config_pb2.SetConfigRequest(
                    scope=config_pb2.ConfigScope(portal_id=portal),
                    kind=doc_pb2.CONFIG_KIND_LIMITS,
                    document=doc,
                ),
                timeout=60,
            )


async def submit(
    suite: Suite,
    writers: list[str],
    portals: list[int],
    records: int,
    per_call: int,
    concurrency: int,
    failures: dict[str, int],
    finished: dict[int, float],
    started: list[float],
) -> tuple[float, float]:
    """Submits every portal's records, submission ``i`` to ``writers[i % len(writers)]``;
    failed submissions are counted in ``failures``, each portal's last answer in ``finished``
    (seconds since the start), when each call started in ``started``. Returns the elapsed
    seconds and the start (epoch ms).

    Every request is built before the clock starts, and the calls start a few at a time with
    the event loop turning in between. Started all in one turn, the client spent its first
    seconds building every call before any left, and that was counted as the writer's time: on
    this machine the first upsert reached the sandbox 2.3 s into a run of 5,000 submissions,
    and the last portal's first call 12.7 s into a run of 20,000 (now 0.5 s).
    """
    sem = asyncio.Semaphore(concurrency)
    # interleaved: every portal's first submission, then every portal's second, ...
    order = [
        (
            i,
            writer_pb2.SubmitWritesRequest(
                portal_id=p, writes=contact_upserts(n * per_call, min(records, (n + 1) * per_call)), wait=True
            ),
        )
        for i, (n, p) in enumerate((n, p) for n in range(math.ceil(records / per_call)) for p in portals)
    ]
    async with contextlib.AsyncExitStack() as stack:
        stubs = [
            writer_pb2_grpc.WriterServiceStub(await stack.enter_async_context(suite.channel(w, "mapper")))
            for w in writers
        ]
        start_ms = time.time() * 1000
        start = time.perf_counter()

        async def one(
            request: writer_pb2.SubmitWritesRequest, stub: writer_pb2_grpc.WriterServiceStub
        ) -> None:
            portal = request.portal_id
            async with sem:
                started.append(time.perf_counter() - start)
                try:
                    reply = await stub.SubmitWrites(request, timeout=900)
                except grpc.aio.AioRpcError as exc:  # counted and reported, the run goes on
                    key = f"{exc.code().name}: {exc.details()}"[:120]
                    failures[key] = failures.get(key, 0) + 1
                    return
                finally:
                    finished[portal] = max(finished.get(portal, 0.0), time.perf_counter() - start)
            for r in reply.results:
                if r.status not in (2, 5):
                    key = f"result status {r.status}"
                    failures[key] = failures.get(key, 0) + 1

        calls = []
        for i, request in order:
            calls.append(asyncio.create_task(one(request, stubs[i % len(stubs)])))
            if i % 25 == 24:
                await asyncio.sleep(0)  # let the calls started so far go out
        await asyncio.gather(*calls)
        return time.perf_counter() - start, start_ms


async def batch_sizes(suite: Suite, writers: list[str]) -> dict[str, Any]:
    """Records per upsert call, from every writer's ``hubsync_writer_batch_size`` histogram
    (Prometheus ``/metrics``): by size range and by why each went; and the open batches held
    once more for a late timer."""
    buckets: dict[str, float] = {}
    why: dict[str, dict[str, int]] = {}
    late = 0.0
    async with httpx.AsyncClient(timeout=30) as http:
        for w in writers:
            text = (await http.get(f"http://127.0.0.1:{suite.ports.metrics[w]}/metrics")).text
            for line in text.splitlines():
                if line.startswith("hubsync_writer_batch_late_holds_total"):
                    late += float(line.rsplit(" ", 1)[1])
                if not line.startswith("hubsync_writer_batch_size") or 'operation="upsert"' not in line:
                    continue
                name, value = line.rsplit(" ", 1)
                reason = name.split('why="')[1].split('"')[0] if 'why="' in name else "?"
                if name.startswith("hubsync_writer_batch_size_bucket"):
                    le = name.split('le="')[1].split('"')[0]
                    buckets[le] = buckets.get(le, 0.0) + float(value)
                elif name.startswith(("hubsync_writer_batch_size_count", "hubsync_writer_batch_size_sum")):
                    field = "calls" if "_count" in name else "records"
                    row = why.setdefault(reason, {"calls": 0, "records": 0})
                    row[field] += int(float(value))
    # cumulative counts per upper bound -> calls per range
    bounds = sorted(buckets, key=lambda b: math.inf if b == "+Inf" else float(b))
    ranges: dict[str, int] = {}
    below = 0.0
    for b in bounds:
        if buckets[b] - below:
            ranges[f"<= {b}"] = int(buckets[b] - below)
        below = buckets[b]
    return {"calls_by_size": ranges, "by_why": why, "late_holds": int(late)}


async def held_by_hubspot(http: httpx.AsyncClient, portals: list[int], records: int) -> dict[str, int]:
    """The witness: what the sandbox holds of the bench's contacts, over every portal."""
    held = {"contacts": 0, "missing": 0, "doubled": 0}
    for portal in portals:
        r = await http.get("/_sandbox/objects/contacts", params={"portal": portal})
        emails = [c["properties"].get("email", "") for c in r.json()["results"]]
        wanted = {f"bench{i}@example.com" for i in range(records)}
        held["contacts"] += len(emails)
        held["missing"] += len(wanted - set(emails))
        held["doubled"] += len(emails) - len(set(emails))
    return held


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    limits = bursts(args.portals, args.min_burst, args.max_burst)
    sandbox: dict[str, object] = {
        "portals": [
            {
                "hub_id": p,
                "plan": "professional",
                "burst_per_10s": b,
                "daily_limit": 100_000_000,
                "private_apps": [{"token": token(p)}],
            }
            for p, b in limits.items()
        ],
    }
    env = {
        "HUBSYNC_WRITER_RATE_LIMIT_PRESET": "public_app",
        # Production batching defaults, as bench/writer.
        "HUBSYNC_WRITER_BATCH_MAX_WAIT_MS": "50",
        "HUBSYNC_WRITER_BATCH_FILL_ABOVE": "0.25",
        "HUBSYNC_WRITER_BATCH_MAX_WAIT_SATURATED_MS": "1000",
    }
    async with Suite(
        workdir, sandbox_config=sandbox, extra_env={"writer": env}, redis_cluster=args.redis_cluster
    ) as suite:
        await connect(suite, limits)
        if not args.echo_webhooks:
            async with httpx.AsyncClient(base_url=suite.sandbox_url, timeout=60) as http:
                r = await http.put(f"/_sandbox/webhooks/{SANDBOX_APP_ID}", json={"target_url": None})
                r.raise_for_status()
        await asyncio.sleep(6)  # writer's per-portal config cache (5 s) holds the limits
        failures: dict[str, int] = {}
        writers = ["writer"] + [await suite.add_replica("writer") for _ in range(args.writer_replicas - 1)]
        pids = process_pids(suite)
        writer_pid = pids["writer"]
        # BENCH_PYSPY=<file.svg>: a py-spy profile of writer over the submissions (py-spy on PATH).
        profiler = None
        if os.environ.get("BENCH_PYSPY"):
            profiler = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(writer_pid),
                    "--output",
                    os.environ["BENCH_PYSPY"],
                    "--rate",
                    "50",
                    *os.environ.get("BENCH_PYSPY_ARGS", "").split(),
                ]
            )
        ticks = {name: cpu_ticks(pid) for name, pid in pids.items()}
        bench_cpu = time.process_time()
        redis_before = await commandstats(suite)
        finished: dict[int, float] = {}
        started: list[float] = []
        async with httpx.AsyncClient(base_url=suite.sandbox_url, timeout=60) as http:
            counts = (await http.get("/_sandbox/requests", params={"limit": 0})).json()["counts"]
            before_by_portal = counts.get("byPortal", {})
        elapsed, start_ms = await submit(
            suite,
            writers,
            list(limits),
            args.records,
            args.per_call,
            args.concurrency,
            failures,
            finished,
            started,
        )
        ticks = {name: cpu_ticks(pid) - ticks[name] for name, pid in pids.items()}
        bench_cpu = time.process_time() - bench_cpu
        writer_ticks = sum(ticks[w] for w in writers)
        sizes = await batch_sizes(suite, writers)
        redis_after = await commandstats(suite)
        redis_calls = {k: v - redis_before.get(k, 0) for k, v in redis_after.items()}
        redis_calls = {k: v for k, v in sorted(redis_calls.items(), key=lambda kv: -kv[1]) if v > 0}
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(timeout=120)
        # Generous: with echo webhooks the sandbox may still be delivering a backlog of them.
        async with httpx.AsyncClient(base_url=suite.sandbox_url, timeout=600) as http:
            log = (await http.get("/_sandbox/requests", params={"limit": 10_000})).json()
            witness = await held_by_hubspot(http, list(limits), args.records)
    by = log["counts"]["byEndpointAndStatus"].get(UPSERT, {})
    calls = sum(by.values())
    per_portal_calls = math.ceil(args.records / 100)
    submissions = args.portals * math.ceil(args.records / args.per_call)
    # The slowest portal's floor: its calls at its burst per rolling 10 s.
    floors = {p: 10.0 * ((per_portal_calls - 1) // b) for p, b in limits.items()}
    floor = max(floors.values())
    # The portal that answered last (it sets elapsed), with its own floor and calls.
    last = max(finished, key=lambda p: finished[p]) if finished else None
    by_portal = {k: v - before_by_portal.get(k, 0) for k, v in log["counts"].get("byPortal", {}).items()}
    # When the last portal's upsert calls reached HubSpot (s since the first submission): the
    # gaps say whether its quota or its records' arrival held it back.
    last_calls = [
        (round((e["at"] - start_ms) / 1000, 1), e.get("batchSize"))
        for e in log["entries"]
        if e["endpoint"] == UPSERT and e.get("portalId") == last and e["at"] >= start_ms
    ]
    upsert_at = [
        ((e["at"] - start_ms) / 1000, e.get("batchSize") or 0)
        for e in log["entries"]
        if e["endpoint"] == UPSERT
    ]
    windows = range(int(elapsed // 10) + 1)
    return {
        "portals": args.portals,
        "records_per_portal": args.records,
        "redis_cluster": args.redis_cluster,
        "writer_replicas": args.writer_replicas,
        "echo_webhooks": args.echo_webhooks,
        "bursts_per_10s": {"min": min(limits.values()), "max": max(limits.values())},
        "upsert_calls": calls,
        "upsert_calls_goal": math.floor(1.02 * per_portal_calls * args.portals),
        "upsert_calls_by_status": by,
        "upsert_batches": sizes,
        "429s": int(by.get("429", 0)),
        "rate_limited_by_policy": log["counts"].get("rateLimitedByPolicy", {}),
        "failed_submissions": failures,
        "hubspot_holds": witness,
        "elapsed_s": round(elapsed, 1),
        "submissions": submissions,
        "submissions_per_s": round(submissions / elapsed, 1),
        "writer_cpu_s": round(writer_ticks / TICKS, 2),
        "writer_cpu_us_per_submission": round(1e6 * writer_ticks / TICKS / submissions),
        # CPU seconds of each process over the submissions ("bench": this script, the callers).
        "cpu_s": {**{n: round(t / TICKS, 2) for n, t in ticks.items()}, "bench": round(bench_cpu, 2)},
        # Over every process of the run (writer's share dominates: it is the one writing).
        "redis_commands_per_submission": round(sum(redis_calls.values()) / submissions, 2),
        "redis_commands": redis_calls,
        "slowest_portal_floor_s": floor,
        "over_floor_pct": round(100 * (elapsed - floor) / floor, 1) if floor else None,
        "last_to_finish": None
        if last is None
        else {
            "portal": last,
            "burst_per_10s": limits[last],
            "finished_s": round(finished[last], 1),
            "floor_s": floors[last],
            "calls": by_portal.get(str(last)),
            "calls_at_s": last_calls,
        },
        # When the client had started half and all of its calls (its own pace, not writer's).
        "calls_started_s": {
            "half": round(sorted(started)[len(started) // 2], 1) if started else None,
            "all": round(max(started), 1) if started else None,
        },
        # When the upserts reached HubSpot: the first one, then calls and records per 10 s.
        "upserts_at_s": {
            "first": round(min(t for t, _ in upsert_at), 2) if upsert_at else None,
            "by_10s": [sum(1 for t, _ in upsert_at if 10 * k <= t < 10 * (k + 1)) for k in windows],
            "records_by_10s": [sum(n for t, n in upsert_at if 10 * k <= t < 10 * (k + 1)) for k in windows],
        },
        # Calls per portal during the submissions (the sandbox's count), for the lowest bursts.
        "calls_per_portal_by_burst": {
            str(b): sorted(by_portal.get(str(p), 0) for p in limits if limits[p] == b)
            for b in sorted(set(limits.values()))[:3]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--portals", type=int, default=100)
    parser.add_argument("--records", type=int, default=2000, help="upserts per portal")
    parser.add_argument("--min-burst", type=int, default=3, help="the slowest portal's burst per 10 s")
    parser.add_argument("--max-burst", type=int, default=20)
    parser.add_argument("--per-call", type=int, default=10, help="writes per SubmitWrites")
    parser.add_argument(
        "--concurrency", type=int, default=20_000, help="submissions in flight (default: all at once)"
    )
    parser.add_argument("--redis-cluster", action="store_true")
    parser.add_argument(
        "--writer-replicas", type=int, default=1, help="writer processes, submissions spread call by call"
    )
    parser.add_argument(
        "--echo-webhooks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the sandbox sends webhooks for the writer's own changes (as HubSpot does)",
    )
    add_output_options(parser)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = run_in_workdir(args, run)
    # The machine is shared: its load (1, 5, 15 min averages, as `uptime`) frames the numbers.
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report(result, "bench/tenants/writer.py", args.out)


if __name__ == "__main__":
    main()
