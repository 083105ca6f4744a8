"""Fairness across many tenants (issue 13): Zipf traffic over N portals beside a backlog and a block.

The whole suite runs as separate processes (``hubsync.cli.suite.Suite``). The sandbox holds
``--portals`` portals (hub ids from 30001), each with its own private app; each portal's
connection is stored through auth's ``CreatePrivateAppConnection``. Then:

- **Zipf traffic**: for ``--seconds`` the sandbox makes ``--rate`` UI edits per second in all,
  each on a portal drawn with probability proportional to ``1 / rank ** --zipf`` (the order drawn
  here, seeded; made inside the sandbox by ``POST /_sandbox/ui/contacts/churn-portals``): every
  edit becomes a real signed webhook to ingress, as in ``run.py``'s busy phase.
- **A backlog**: before the window, portal ``--backlog-rank`` gets ``--backlog`` propertyChange
  events on its stream, appended by ingress's own appender (``EventAppender``: the enqueue
  script, the compact entry format, the ready-set mark), over ``--backlog-records`` contacts
  that exist in the sandbox, so draining it costs real hydration under that portal's quota.
- **A DAILY 429**: portal ``--blocked-rank``'s daily budget is exhausted in the sandbox
  (``daily_limit`` 1 and one request spent) just before the window: its hydration reads get
  ``429 DAILY`` until midnight.
- A ``Subscribe`` client (one consumer group, acks in batches) reads the change feed for the
  whole run: webhook → subscriber latency (receipt minus the change's ``occurredAt``) per portal.

Reported: p50/p99/max over every other portal (the backlog and blocked portals excluded), each
portal's p99 (the worst ones), edits made vs changes and records delivered, the backlog portal's
progress (entries consumed per second), the blocked portal's events (still in Redis: nothing
lost), CPU per process over the window, ``uptime`` before and after, command and machine.

Run (full scale, a quiet machine): ``.venv/bin/python bench/tenants/fairness.py
--out bench/tenants/results/fairness-1000.json`` (``--redis-cluster``: on the local 3-master
Redis Cluster). Goal (issue 13): every other portal's p99 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import commandstats, cpu_ticks, process_pids, warm_feed_group  # type: ignore[import-not-found]

from bench.tenants._common import add_env_option, add_output_options, report, run_in_workdir
from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.cli.suite import SANDBOX_APP_ID, Suite
from hubsync.core.keys import events_key, inbound_dlq_key, inbound_parked_key
from hubsync.core.ready import DEFAULT_SHARDS
from hubsync.core.redis import LAG_COUNT_CAP, group_lag, redis_from_url
from hubsync.ingress._append import EventAppender
from hubsync.ingress._submission import NO_CONTEXT, Submission
from hubsync.ingress.events import WebhookEvent, parse_events
from hubsync.ingress.settings import IngressSettings

FIRST_PORTAL = 30_001
_COUNT_ALL_AFTER = "return #redis.call('XRANGE', KEYS[1], ARGV[1], '+')"
GROUP = "fairness"
BACKLOG_EVENT_ID0 = 10**12  # far above the sandbox's event ids


def token(portal: int) -> str:
    return f"pat-na1-00000000-0000-4000-8000-{portal:012d}"


def zipf_rates(portals: int, rate: float, exponent: float) -> list[float]:
    """Each rank's share of ``rate`` (rank 1 first): proportional to ``1 / rank ** exponent``."""
    weights = [1.0 / (k**exponent) for k in range(1, portals + 1)]
    total = sum(weights)
    return [rate * w / total for w in weights]


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50/p99/max in ms (None without values)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    v = sorted(values)
    q = statistics.quantiles(v, n=100, method="inclusive") if len(v) > 1 else [v[0]] * 99
    return {
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "max_ms": round(v[-1] * 1000, 1),
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


async def connect_all(suite: Suite, portals: list[int], concurrency: int = 16) -> None:
    """Each portal's private-app connection, through auth as ``hubsync connect`` does."""
    sem = asyncio.Semaphore(concurrency)
    async with suite.channel("auth") as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)

        async def one(portal: int) -> None:
            async with sem:
                await auth.CreatePrivateAppConnection(
                    auth_pb2.CreatePrivateAppConnectionRequest(
                        portal_id=portal, tenant="bench", access_token=token(portal)
                    ),
                    timeout=60,
                )

        await asyncio.gather(*(one(p) for p in portals))


async def create_records(
    http: httpx.AsyncClient, wanted: dict[int, int], tag: str, concurrency: int = 16
) -> dict[int, list[str]]:
    """``wanted[portal]`` contacts in each portal, created as a user (their webhooks flow too)."""
    sem = asyncio.Semaphore(concurrency)
    made: dict[int, list[str]] = {p: [] for p in wanted}

    async def one(portal: int, i: int) -> None:
        email = f"{tag}{i}@p{portal}.example"
        body = {"properties": {"email": email, "external_id": f"{tag}{i}", "firstname": tag}}
        async with sem:
            for attempt in range(5):
                try:
                    reply = await http.post("/_sandbox/ui/contacts", params={"portal": portal}, json=body)
                except httpx.TransportError:
                    # A kept-alive connection the sandbox closed meanwhile (a loaded machine): the
                    # request may or may not have been made; a repeat finds the contact by email.
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                if reply.status_code == 409 and attempt:
                    message = str(reply.json().get("message", ""))
                    made[portal].append(message.rsplit("Existing ID:", 1)[1].strip().rstrip("."))
                    return
                reply.raise_for_status()
                made[portal].append(str(reply.json()["id"]))
                return
            raise RuntimeError(f"contact {email} not created after 5 attempts")

    await asyncio.gather(*(one(p, i) for p, n in wanted.items() for i in range(n)))
    return made


async def stream_state(redis: Redis, portal: int) -> dict[str, int]:
    """A portal's inbound stream: length, entries not yet delivered to mapper's group, entries
    delivered but not acknowledged, and what mapper moved to its parked stream or dead-lettered."""
    key = events_key(portal)
    rows = await redis.xinfo_groups(key) if await redis.exists(key) else []
    group = next((g for g in rows if g["name"] in (b"mapper", "mapper")), None)
    length = int(await redis.xlen(key))
    lag = await group_lag(redis, key, group) if group else length
    if group and lag >= LAG_COUNT_CAP:
        # Redis 6.2 has no lag in XINFO and group_lag stops counting at its cap: a 100,000-event
        # backlog would look stuck at 10,000. Counted in full here (inside Redis, once a sample).
        last = group["last-delivered-id"]
        after = f"({last.decode() if isinstance(last, bytes) else last}"
        lag = int(await redis.eval(_COUNT_ALL_AFTER, 1, key, after))  # type: ignore[misc]
    return {
        "length": length,
        "undelivered": lag,
        "pending": int(group["pending"]) if group else 0,
        "parked": int(await redis.xlen(inbound_parked_key(portal))),
        "dead_lettered": int(await redis.xlen(inbound_dlq_key(portal))),
    }


async def others_state(redis: Redis, portals: list[int]) -> dict[str, int]:
    """Every other portal's inbound streams summed: entries not yet delivered to mapper, entries
    read by mapper but not acknowledged, and the longest time (ms) such an entry has been idle (a
    read entry nobody works on waits for the visibility timeout)."""
    total = {"undelivered": 0, "pending": 0, "portals_with_pending": 0, "max_pending_idle_ms": 0}
    for p in portals:
        state = await stream_state(redis, p)
        total["undelivered"] += state["undelivered"]
        total["pending"] += state["pending"]
        if state["pending"]:
            total["portals_with_pending"] += 1
            rows = await redis.xpending_range(events_key(p), "mapper", "-", "+", 100)
            idle = max((int(r["time_since_delivered"]) for r in rows), default=0)
            total["max_pending_idle_ms"] = max(total["max_pending_idle_ms"], idle)
    return total


async def wait_drained(redis: Redis, portals: list[int], timeout: float) -> float:
    """Waits until every portal's inbound stream is consumed and acknowledged; returns seconds."""
    t0 = time.monotonic()
    left = list(portals)
    while left and time.monotonic() - t0 < timeout:
        states = [await stream_state(redis, p) for p in left]
        left = [p for p, s in zip(left, states, strict=True) if s["undelivered"] or s["pending"]]
        if left:
            await asyncio.sleep(1)
    if left:
        raise RuntimeError(f"{len(left)} portals not drained after {timeout} s, e.g. {left[:5]}")
    return round(time.monotonic() - t0, 1)


async def append_backlog(redis: Redis, portal: int, ids: list[str], count: int) -> float:
    """``count`` propertyChange events on ``portal``'s stream through ingress's own appender
    (dedupe, enqueue script, compact entries, ready mark), in submissions of 2,000 events.
    Returns the seconds it took."""
    defaults = IngressSettings.model_fields
    appender = EventAppender(
        redis,
        retention_ms=int(defaults["journal_retention_s"].default) * 1000,
        dedupe_ttl_s=int(defaults["dedupe_ttl_s"].default),
        dedupe_buckets=int(defaults["dedupe_buckets"].default),
        max_bytes=int(defaults["journal_max_bytes"].default),
        ready_shards=DEFAULT_SHARDS,
    )
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    for start in range(0, count, 2000):
        events: list[WebhookEvent] = []
        for first in range(start, min(count, start + 2000), 100):
            body = [
                {
                    "eventId": BACKLOG_EVENT_ID0 + n,
                    "subscriptionId": 1,
                    "portalId": portal,
                    "appId": SANDBOX_APP_ID,
                    "occurredAt": int(time.time() * 1000),
                    "subscriptionType": "contact.propertyChange",
                    "attemptNumber": 0,
                    "objectId": int(ids[n % len(ids)]),
                    "propertyName": "firstname",
                    "propertyValue": f"backlog-{n}",
                    "changeSource": "CRM_UI",
                    "sourceId": "userId:1",
                }
                for n in range(first, min(count, start + 2000, first + 100))
            ]
            events.extend(parse_events(orjson.dumps(body)))
        sub = Submission(events, "webhook", NO_CONTEXT, loop.create_future(), 0.0, ())
        await appender.append([sub])
    return round(time.monotonic() - t0, 1)


async def block_daily(http: httpx.AsyncClient, portal: int) -> dict[str, Any]:
    """Exhausts ``portal``'s daily budget: limit 1 (a new limit restarts the day's count), one
    request spends it; the next answers ``429 DAILY``, which is checked and returned."""
    (await http.put(f"/_sandbox/portals/{portal}", json={"daily_limit": 1})).raise_for_status()
    headers = {"Authorization": f"Bearer {token(portal)}"}
    first = await http.get("/crm/v3/objects/contacts", params={"limit": 1}, headers=headers)
    second = await http.get("/crm/v3/objects/contacts", params={"limit": 1}, headers=headers)
    body = second.json()
    if second.status_code != 429 or body.get("policyName") != "DAILY":
        raise RuntimeError(f"portal {portal} not blocked: {second.status_code} {body}")
    return {"spent_status": first.status_code, "then": second.status_code, "policyName": "DAILY"}


class Subscriber:
    """Reads the change feed for the whole run and keeps every change's latency by portal."""

    def __init__(self, suite: Suite, visibility_s: float = 0.0) -> None:
        self.suite = suite
        # The subscription's visibility timeout (0: mapper's default).
        self.visibility_s = visibility_s
        # portal → [(occurred s, received s, record id, churn value or "", feed entry s)]
        self.changes: dict[int, list[tuple[float, float, str, str, float]]] = {}
        self.other_kinds = 0
        self.errors: list[str] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        """Subscribes again after an error (an overloaded mapper answers UNAVAILABLE when its
        Redis pool is exhausted): a subscriber in production retries, and what it had not acked
        is delivered again (counted as received twice, not lost)."""
        while True:
            try:
                await self._subscribe()
            except grpc.aio.AioRpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}"[:200])
                await asyncio.sleep(1)

    async def _subscribe(self) -> None:
        async with self.suite.channel("mapper", "demo-client") as channel:
            stub = mapper_pb2_grpc.MapperServiceStub(channel)
            request = mapper_pb2.SubscribeRequest(consumer_group=GROUP, consumer="b", max_in_flight=5000)
            if self.visibility_s:
                request.visibility_timeout.FromMilliseconds(int(self.visibility_s * 1000))
            call = stub.Subscribe(request)
            acks: list[str] = []
            last_ack = time.monotonic()
            async for msg in call:
                now = time.time()
                c = msg.change
                acks.append(c.ack_id)
                if c.kind == mapper_pb2.CHANGE_KIND_UPDATED:
                    value = ""
                    for v in c.fields.fields.values():
                        if v.HasField("string_value") and v.string_value.startswith("churn-"):
                            value = v.string_value
                    # The feed entry's id (the ack id's tail) holds when mapper published it.
                    entry_s = int(c.ack_id.rsplit("/", 1)[1].split("-")[0]) / 1000
                    self.changes.setdefault(c.portal_id, []).append(
                        (c.occur_time.ToMilliseconds() / 1000, now, c.hubspot_id, value, entry_s)
                    )
                else:
                    self.other_kinds += 1
                if len(acks) >= 200 or time.monotonic() - last_ack > 0.5:
                    await stub.Ack(mapper_pb2.AckRequest(consumer_group=GROUP, ack_ids=acks))
                    acks, last_ack = [], time.monotonic()


def draw_edits(
    portals: list[int], rates: list[float], ids: dict[int, list[str]], total: int, seed: int
) -> list[tuple[int, str]]:
    """``total`` edits, each on a portal drawn by its Zipf rate, rotating over that portal's records."""
    rng = random.Random(seed)
    drawn = rng.choices(range(len(portals)), weights=rates, k=total)
    turn = [0] * len(portals)
    edits = []
    for i in drawn:
        p = portals[i]
        edits.append((p, ids[p][turn[i] % len(ids[p])]))
        turn[i] += 1
    return edits


def summarize(
    sub: Subscriber,
    edits: list[tuple[int, str]],
    t0: float,
    excluded: set[int],
) -> dict[str, Any]:
    """Latency over every other portal, per-portal p99s, edits made vs delivered."""
    made: dict[int, int] = {}
    last_value: dict[tuple[int, str], str] = {}
    for n, (p, oid) in enumerate(edits):
        made[p] = made.get(p, 0) + 1
        last_value[(p, oid)] = f"churn-{n}"
    others: list[float] = []
    to_feed: list[float] = []
    from_feed: list[float] = []
    per_portal: dict[int, dict[str, Any]] = {}
    final_seen: set[tuple[int, str]] = set()
    for p, rows in sub.changes.items():
        window = [r for r in rows if r[0] >= t0 - 0.001]
        lat = [r[1] - r[0] for r in window]
        for _occ, _rec, oid, value, _entry in window:
            if value and last_value.get((p, oid)) == value:
                final_seen.add((p, oid))
        if p not in excluded:
            others.extend(lat)
            to_feed.extend(r[4] - r[0] for r in window)
            from_feed.extend(r[1] - r[4] for r in window)
        if lat:
            per_portal[p] = {"changes": len(lat), **quantiles(lat)}
    worst = sorted(
        ((p, v) for p, v in per_portal.items() if p not in excluded), key=lambda kv: -(kv[1]["p99_ms"] or 0)
    )
    records_other = {k for k in last_value if k[0] not in excluded}
    changes_other = sum(v["changes"] for p, v in per_portal.items() if p not in excluded)
    portals_made = {p for p in made if p not in excluded}
    return {
        "every_other_portal": {
            **quantiles(others),
            "edits_made": sum(v for p, v in made.items() if p not in excluded),
            "changes_received": changes_other,
            "portals_with_edits": len(portals_made),
            "portals_with_a_change": len(portals_made & set(per_portal)),
            "records_edited": len(records_other),
            "records_whose_last_edit_arrived": len(final_seen & records_other),
            "portals_p99_over_1s": sum(
                1 for p, v in per_portal.items() if p not in excluded and v["p99_ms"] > 1000
            ),
        },
        # The latency split at the change's feed entry: webhook → published (ingress, mapper's
        # inbound turns, hydration) and published → subscriber (the change feed).
        "every_other_portal_to_feed": quantiles(to_feed),
        "every_other_portal_feed_to_subscriber": quantiles(from_feed),
        "worst_portals_by_p99": [{"portal": p, **v} for p, v in worst[:10]],
        "_made": made,
        "_final": final_seen,
        "_last": last_value,
    }


def deliveries_summary(log: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """The sandbox's webhook deliveries from the window's start: attempts, failures by status or
    error (a failed attempt is retried by HubSpot's schedule: 60 s later, the first time), and how
    long ingress took to answer."""
    rows = [d for d in log if d["at"] >= t0 * 1000]
    failed: dict[str, int] = {}
    for d in rows:
        if not d["ok"]:
            key = str(d["status"] or d["error"])[:80]
            failed[key] = failed.get(key, 0) + 1
    first_failure = min((d["at"] for d in rows if not d["ok"]), default=None)
    return {
        "attempts": len(rows),
        "events": sum(len(d["eventIds"]) for d in rows),
        "failed_attempts": failed,
        "retry_attempts": sum(1 for d in rows if d["attemptNumber"] > 0),
        "first_failure_s_after_start": round(first_failure / 1000 - t0, 1) if first_failure else None,
        "answer": quantiles([d["durationMs"] / 1000 for d in rows]),
    }


def timeline(sub: Subscriber, t0: float, excluded: set[int], step: float = 5.0) -> list[dict[str, Any]]:
    """Every other portal's changes by when they occurred (``step`` s buckets from the window's
    start): how many, p50/p99/max latency, and the p99 of each part (to the feed entry, feed to
    subscriber), to see when a stall began and where."""
    buckets: dict[int, list[tuple[float, float, float]]] = {}
    for p, rows in sub.changes.items():
        if p in excluded:
            continue
        for occurred, received, _oid, _value, entry in rows:
            if occurred >= t0 - 0.001:
                parts = (received - occurred, entry - occurred, received - entry)
                buckets.setdefault(int((occurred - t0) // step), []).append(parts)
    return [
        {
            "from_s": b * step,
            "changes": len(v),
            **quantiles([x[0] for x in v]),
            "to_feed_p99_ms": quantiles([x[1] for x in v])["p99_ms"],
            "feed_to_subscriber_p99_ms": quantiles([x[2] for x in v])["p99_ms"],
        }
        for b, v in sorted(buckets.items())
    ]


def start_py_spy(out: Path | None, pids: dict[str, int], seconds: float) -> list[subprocess.Popen[bytes]]:
    """With ``--py-spy DIR``: py-spy samples every process (collapsed stacks, one file each) over
    the edits' window, without pausing them (``--nonblocking``)."""
    if out is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out / f"{name.split()[0]}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
        if name != "redis"
    ]


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    portals = [FIRST_PORTAL + i for i in range(args.portals)]
    rates = zipf_rates(args.portals, args.rate, args.zipf)
    backlog_portal = portals[args.backlog_rank - 1]
    blocked_portal = portals[args.blocked_rank - 1] if args.blocked_rank else 0
    sandbox: dict[str, object] = {
        "portals": [
            {
                "hub_id": p,
                "plan": "professional",
                "burst_per_10s": 190,
                "daily_limit": 100_000_000,
                "private_apps": [{"token": token(p)}],
            }
            for p in portals
        ],
        "webhook_retry_jitter": 0.0,
        # Every delivery attempt of the run stays in the log the result sums up.
        "delivery_log_size": 200_000,
    }
    extra_env: dict[str, dict[str, str]] = {
        "writer": {"HUBSYNC_WRITER_BURST_LIMIT": "190"},
        # Turns at once: with many active portals each turn holds a change or two and waits on
        # its hydration round trip, so 8 turns in flight (the default, sized for a few busy
        # portals) cap the throughput at 8 / turn latency, far below 1,000 portals' need.
        # 32: with 64 an overloaded mapper ran out of its 100 pooled Redis connections (each
        # held from a command's send until its reply is read, stretched by a starved loop).
        "mapper": {"HUBSYNC_MAPPER_MAX_BATCHES_IN_FLIGHT": str(args.turns)},
    }
    for setting in args.env:
        service, _, assignment = setting.partition(":")
        name, _, value = assignment.partition("=")
        extra_env.setdefault(service, {})[name] = value
    result: dict[str, Any] = {
        "portals": args.portals,
        "rate_per_s": args.rate,
        "zipf_exponent": args.zipf,
        "seconds": args.seconds,
        "backlog": {"portal": backlog_portal, "rank": args.backlog_rank, "events": args.backlog},
        "blocked": {"portal": blocked_portal, "rank": args.blocked_rank},
        "top_rates_per_s": [round(r, 2) for r in rates[:5]],
        "lowest_rate_per_s": round(rates[-1], 4),
        "uptime_before": uptime(),
    }
    setup: dict[str, Any] = {}
    t_setup = time.monotonic()
    result["redis_cluster"] = args.redis_cluster
    async with Suite(
        workdir, sandbox_config=sandbox, extra_env=extra_env, redis_cluster=args.redis_cluster
    ) as suite:
        assert suite.redis is not None
        redis = redis_from_url(suite.redis.url)
        sub = Subscriber(suite, args.visibility_s)
        try:
            async with httpx.AsyncClient(
                base_url=suite.sandbox_url, timeout=120, limits=httpx.Limits(max_connections=32)
            ) as http:
                t = time.monotonic()
                await connect_all(suite, portals)
                setup["connect_seconds"] = round(time.monotonic() - t, 1)
                setup["feed_group_sweep_seconds"] = await warm_feed_group(suite, redis, GROUP)
                sub.start()
                # Each record edited about once per --record-period seconds at its portal's rate.
                wanted = {
                    p: max(1, math.ceil(r * args.record_period)) for p, r in zip(portals, rates, strict=True)
                }
                t = time.monotonic()
                ids = await create_records(http, wanted, "zipf")
                backlog_ids = (await create_records(http, {backlog_portal: args.backlog_records}, "backlog"))[
                    backlog_portal
                ]
                setup["records"] = sum(wanted.values()) + args.backlog_records
                setup["create_seconds"] = round(time.monotonic() - t, 1)
                await http.post("/_sandbox/webhooks/wait-idle", params={"timeout": 600}, timeout=660)
                setup["drain_seconds"] = await wait_drained(redis, portals, args.drain_timeout)
                edits = draw_edits(portals, rates, ids, int(args.rate * args.seconds), args.seed)
                await asyncio.sleep(11)  # the rate windows of the setup's reads refill
                if blocked_portal:
                    result["blocked"]["daily_429"] = await block_daily(http, blocked_portal)
                    result["blocked"]["before"] = await stream_state(redis, blocked_portal)
                # Appended right before the window, so the window starts with the whole backlog.
                setup["backlog_append_seconds"] = await append_backlog(
                    redis, backlog_portal, backlog_ids, args.backlog
                )
                setup["seconds"] = round(time.monotonic() - t_setup, 1)
                result["setup"] = setup

                pids = process_pids(suite)
                pids["bench (subscriber)"] = os.getpid()
                ticks0 = {n: cpu_ticks(pid) for n, pid in pids.items()}
                commands0 = await commandstats(suite)
                backlog_start = await stream_state(redis, backlog_portal)
                spies = start_py_spy(args.py_spy, pids, args.seconds + 5)
                t0 = time.time()
                w0 = time.monotonic()
                churn = await http.post(
                    "/_sandbox/ui/contacts/churn-portals",
                    json={"edits": edits, "property": "firstname", "rate": args.rate},
                    timeout=args.seconds * 3 + 120,
                )
                churn.raise_for_status()
                result["churn"] = churn.json()
                for spy in spies:
                    spy.wait()
                churn_seconds = time.monotonic() - w0
                backlog_at_churn_end = await stream_state(redis, backlog_portal)
                others = [p for p in portals if p not in (backlog_portal, blocked_portal)]
                result["every_other_portal_inbound"] = {"at_churn_end": await others_state(redis, others)}
                # The tail: wait until every other portal's records show their last edit.
                excluded = {backlog_portal, blocked_portal}
                deadline = time.monotonic() + args.tail_timeout
                while time.monotonic() < deadline:
                    s = summarize(sub, edits, t0, excluded)
                    o = s["every_other_portal"]
                    if o["records_whose_last_edit_arrived"] >= o["records_edited"]:
                        break
                    if "20_s_after_churn" not in result["every_other_portal_inbound"] and (
                        time.monotonic() - w0 > churn_seconds + 20
                    ):
                        sample = await others_state(redis, others)
                        result["every_other_portal_inbound"]["20_s_after_churn"] = sample
                    await asyncio.sleep(1)
                window = time.monotonic() - w0
                ticks1 = {n: cpu_ticks(pid) for n, pid in pids.items()}
                commands1 = await commandstats(suite)
                backlog_end = await stream_state(redis, backlog_portal)
                result["every_other_portal_inbound"]["at_end"] = await others_state(redis, others)
                blocked_end = await stream_state(redis, blocked_portal) if blocked_portal else {}
                requests = (await http.get("/_sandbox/requests", params={"limit": 0})).json()["counts"]
                log = (await http.get("/_sandbox/webhooks/deliveries", params={"body": "false"})).json()
                result["webhook_deliveries"] = deliveries_summary(log["results"], t0)
        finally:
            await sub.stop()
            await redis.aclose()

    s = summarize(sub, edits, t0, excluded)
    made, final, last = s.pop("_made"), s.pop("_final"), s.pop("_last")
    result.update(s)
    result["window_seconds"] = round(window, 1)
    result["cpu_percent_of_a_core"] = {
        n: round(100 * (ticks1[n] - ticks0[n]) / os.sysconf("SC_CLK_TCK") / window, 1) for n in pids
    }
    # CPU per UI edit made (µs of a core): robust to the machine's load, unlike the latencies.
    # The window includes the tail and the backlog's draining, both counted against the edits.
    result["cpu_us_per_edit"] = {
        n: round(1e6 * (ticks1[n] - ticks0[n]) / os.sysconf("SC_CLK_TCK") / max(1, len(edits))) for n in pids
    }
    result["cpu_us_per_edit"]["total"] = sum(result["cpu_us_per_edit"].values())
    # Redis commands per UI edit made, by command (commands scripts run counted by their names,
    # as INFO commandstats counts them), over the same window.
    per_edit = {
        name: round((commands1.get(name, 0) - commands0.get(name, 0)) / max(1, len(edits)), 2)
        for name in commands1
    }
    counted = sorted(((n, v) for n, v in per_edit.items() if v), key=lambda kv: -kv[1])
    result["redis_commands_per_edit"] = dict(counted)
    result["redis_commands_per_edit"]["total"] = round(sum(per_edit.values()), 2)

    def waiting(state: dict[str, int]) -> int:
        return state["undelivered"] + state["pending"] + state["parked"]

    def consumed(a: dict[str, int], b: dict[str, int]) -> int:
        """Entries consumed and acknowledged between two states (appends counted in)."""
        return waiting(a) + (b["length"] - a["length"]) - waiting(b)

    backlog_changes = [r for r in sub.changes.get(backlog_portal, []) if r[0] >= t0 - 0.001]

    result["backlog"].update(
        {
            "records": args.backlog_records,
            "at_window_start": backlog_start,
            "at_churn_end": backlog_at_churn_end,
            "at_end": backlog_end,
            "entries_consumed_per_s_during_churn": round(
                consumed(backlog_start, backlog_at_churn_end) / churn_seconds, 1
            ),
            "entries_consumed_per_s_whole_window": round(consumed(backlog_start, backlog_end) / window, 1),
            "its_own_edits_made": made.get(backlog_portal, 0),
            "its_own_edit_changes_received": len(backlog_changes),
            "its_own_edits_latency": quantiles([r[1] - r[0] for r in backlog_changes]),
        }
    )
    if blocked_portal:
        blocked_changes = [r for r in sub.changes.get(blocked_portal, []) if r[0] >= t0 - 0.001]
        added = blocked_end["length"] - result["blocked"]["before"]["length"]
        result["blocked"].update(
            {
                "edits_made": made.get(blocked_portal, 0),
                "changes_received": len(blocked_changes),
                "at_end": blocked_end,
                "events_added_in_window": added,
                # Each event of the window is still in Redis (undelivered, pending or parked) or
                # its change arrived, and none was dead-lettered.
                "nothing_lost": waiting(blocked_end) + len(blocked_changes) >= added
                and blocked_end["dead_lettered"] == 0,
            }
        )
    result["timeline_every_other_portal"] = timeline(sub, t0, excluded)
    result["sandbox"] = {
        "rate_limited_by_policy": requests.get("rateLimitedByPolicy", {}),
        "by_status": requests.get("byStatus", {}),
    }
    result["records_whose_last_edit_arrived_all_portals"] = len(final)
    result["records_edited_all_portals"] = len(last)
    result["subscriber_other_kinds"] = sub.other_kinds
    result["subscriber_errors"] = sub.errors
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["uptime_after"] = uptime()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--portals", type=int, default=1000, help="active portals (Zipf ranks)")
    parser.add_argument("--rate", type=float, default=500, help="UI edits per second over all portals")
    parser.add_argument("--seconds", type=float, default=60, help="how long the edits are made")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the portals' shares")
    parser.add_argument("--backlog", type=int, default=100_000, help="events queued on the backlog portal")
    parser.add_argument(
        "--backlog-records", type=int, default=1000, help="contacts the backlog's events name"
    )
    parser.add_argument("--backlog-rank", type=int, default=1, help="the backlog portal's Zipf rank")
    parser.add_argument("--blocked-rank", type=int, default=2, help="the DAILY-429 portal's Zipf rank")
    parser.add_argument(
        "--record-period", type=float, default=2.0, help="each portal gets rate x this many contacts"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=900, help="setup: seconds for the creations")
    parser.add_argument("--tail-timeout", type=float, default=60, help="seconds to wait for last edits")
    parser.add_argument("--turns", type=int, default=32, help="mapper's HUBSYNC_MAPPER_MAX_BATCHES_IN_FLIGHT")
    parser.add_argument(
        "--visibility-s", type=float, default=0.0, help="the subscriber's visibility timeout (0: the default)"
    )
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="sample every process with py-spy into this folder"
    )
    parser.add_argument(
        "--redis-cluster", action="store_true", help="the local 3-master Redis Cluster, not one Redis"
    )
    add_env_option(parser)
    add_output_options(parser)
    args = parser.parse_args()
    if args.backlog_rank == args.blocked_rank or max(args.backlog_rank, args.blocked_rank) > args.portals:
        parser.error("--backlog-rank and --blocked-rank must differ and be at most --portals")
    report(run_in_workdir(args, run), "bench/tenants/fairness.py", args.out)


if __name__ == "__main__":
    main()
