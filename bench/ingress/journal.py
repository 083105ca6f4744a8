"""Journal cost per event: Redis memory of a portal's event stream, per stored event, in the entry
format hubsync wrote of 0.1.0 (fields ``event``, ``traceparent``, ``accepted_ms``, ``origin``)
and in the compact one (field ``e``, a ``JournalEvent``), plus the CPU cost of encoding and
decoding an entry.

    .venv/bin/python bench/ingress/journal.py [--events 100000]

Both streams hold the same realistic events (a seeded mix of HubSpot's subscription types,
property names and values of the lengths HubSpot sends, 8-digit portals, 11-digit record ids,
change sources and source ids, one W3C trace context per round trip of 100). The compact stream
is written by the real :class:`EventCommitter` (dedupe, echo check, XADD in its Lua script), the
older one with the fields the committer of 0.1.0 wrote. Memory is ``MEMORY USAGE <key> SAMPLES 0``
(every node counted) over ``XLEN``, with the ``mapper`` consumer group created and caught up.
Writes ``journal.md`` and ``journal.json`` next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from hubsync.core.devredis import RedisProcess
from hubsync.core.event_entries import decode_entry, encode_entry
from hubsync.core.keys import events_key
from hubsync.ingress.committer import CallerContext, EventAppender, EventCommitter
from hubsync.ingress.events import parse_events

HERE = Path(__file__).parent
NEW_PORTAL = 48_213_977
OLD_PORTAL = 48_213_978
GOAL_BYTES = 200
CHUNK = 100

_PROPERTIES: list[tuple[str, Any]] = [
    ("firstname", lambda r: r.choice(["Ada", "Grace", "Linus", "Margaret", "Barbara", "Dennis"])),
    ("lastname", lambda r: r.choice(["Lovelace", "Hopper", "Torvalds", "Hamilton", "Liskov"])),
    ("email", lambda r: f"user{r.randrange(10**6)}@example-company.com"),
    ("phone", lambda r: f"+1 555 {r.randrange(1000, 9999)} {r.randrange(1000, 9999)}"),
    ("lifecyclestage", lambda r: r.choice(["subscriber", "lead", "marketingqualifiedlead", "customer"])),
    ("hs_lead_status", lambda r: r.choice(["NEW", "OPEN", "IN_PROGRESS", "CONNECTED"])),
    ("hubspot_owner_id", lambda r: str(r.randrange(10**8, 10**9))),
    ("amount", lambda r: f"{r.randrange(100, 500_000)}.{r.randrange(100):02d}"),
    ("dealstage", lambda r: r.choice(["appointmentscheduled", "qualifiedtobuy", "closedwon"])),
    ("closedate", lambda r: str(1_767_225_600_000 + r.randrange(10**9))),
    ("hs_lastmodifieddate", lambda r: str(1_767_225_600_000 + r.randrange(10**9))),
    ("jobtitle", lambda r: r.choice(["VP Engineering", "Head of Sales Operations", "CTO"])),
    ("city", lambda r: r.choice(["Berlin", "San Francisco", "Dublin", "São Paulo"])),
    ("annualrevenue", lambda r: str(r.randrange(10**5, 10**9))),
    (
        "description",
        lambda r: "Customer since 2019; renewal discussed with procurement in Q3."[: r.randrange(10, 60)],
    ),
]
_SOURCES = [("CRM_UI", "userId:{}"), ("INTEGRATION", "1160452"), ("API", ""), ("IMPORT", "import:{}"),
            ("WORKFLOWS", "workflow:{}")]  # fmt: skip


def realistic_event(rnd: random.Random, n: int, portal: int, now: int) -> dict[str, Any]:
    """One event as HubSpot sends it, of a kind drawn the way a busy CRM portal's stream mixes them."""
    kind = rnd.random()
    object_type = rnd.choices(["contact", "company", "deal"], [6, 2, 2])[0]
    event: dict[str, Any] = {
        "eventId": 3_816_279_340 + n * 7,
        "subscriptionId": 2_461_000 + rnd.randrange(30),
        "portalId": portal,
        "appId": 1_160_452,
        "occurredAt": now - rnd.randrange(5_000),
        "attemptNumber": 0,
        "objectId": 51_234_567_890 + rnd.randrange(10**6),
    }
    source, source_id = rnd.choice(_SOURCES)
    if kind < 0.80:
        name, value = rnd.choice(_PROPERTIES)
        event |= {
            "subscriptionType": f"{object_type}.propertyChange",
            "propertyName": name,
            "propertyValue": value(rnd),
        }
    elif kind < 0.90:
        event["subscriptionType"] = f"{object_type}.creation"
    elif kind < 0.97:
        event |= {
            "subscriptionType": f"{object_type}.associationChange",
            "associationType": "CONTACT_TO_COMPANY",
            "fromObjectId": event["objectId"],
            "toObjectId": 61_234_567_890 + rnd.randrange(10**6),
            "associationRemoved": False,
            "isPrimaryAssociation": True,
        }
    else:
        event["subscriptionType"] = f"{object_type}.deletion"
    event["changeSource"] = source
    if source_id:
        event["sourceId"] = source_id.format(rnd.randrange(10**7, 10**8))
    return event


def traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


async def fill(url: str, events: int) -> dict[str, Any]:
    redis = Redis.from_url(url)
    try:
        await redis.flushall()
        rnd = random.Random(13)
        now = int(time.time() * 1000)
        committer = EventCommitter(
            EventAppender(redis, retention_ms=26 * 3_600_000, dedupe_ttl_s=90_000, dedupe_buckets=64),
            timeout_s=60,
        )
        json_bytes = entry_bytes = 0
        samples: list[dict[str, Any]] = []
        for start in range(0, events, CHUNK):
            batch = [realistic_event(rnd, start + i, NEW_PORTAL, now) for i in range(CHUNK)]
            samples.extend(batch[:2])
            carrier = {"traceparent": traceparent()}
            outcomes = await committer.submit(
                parse_events(orjson.dumps(batch)), tracing=CallerContext.of(carrier)
            )
            assert all(o == 0 for o in outcomes), "every event must be new"
            old = [dict(e, portalId=OLD_PORTAL) for e in batch]
            async with redis.pipeline(transaction=False) as pipe:
                for item in old:
                    text = orjson.dumps(item)
                    json_bytes += len(text)
                    fields = {
                        "event": text,
                        "traceparent": carrier["traceparent"],
                        "accepted_ms": str(now),
                        "origin": "webhook",
                    }
                    entry_bytes += len(
                        encode_entry(item, origin="webhook", traceparent=carrier["traceparent"])[b"e"]
                    )
                    pipe.xadd(events_key(OLD_PORTAL), fields)  # type: ignore[arg-type]
                await pipe.execute()
        await committer.close()
        out: dict[str, Any] = {
            "events": events,
            "mean_event_json_bytes": json_bytes / events,
            "mean_compact_entry_bytes": entry_bytes / events,
        }
        for name, portal in (("fields_format", OLD_PORTAL), ("compact", NEW_PORTAL)):
            key = events_key(portal)
            await redis.xgroup_create(key, "mapper", id="$")  # caught up: nothing pending
            used = await redis.memory_usage(key, samples=0)
            length = await redis.xlen(key)
            out[name] = {"bytes": used, "entries": length, "bytes_per_event": (used or 0) / length}
        info = await redis.info("server")
        out["redis_version"] = info["redis_version"]
        out["cpu"] = cpu_costs(samples[:200], now)
        return out
    finally:
        await redis.aclose()


def cpu_costs(samples: list[dict[str, Any]], now: int) -> dict[str, float]:
    """µs per entry to encode and decode, each format (best of 5 runs over the sample events)."""
    tp = traceparent()
    old = [
        {b"event": orjson.dumps(e), b"traceparent": tp.encode(), b"accepted_ms": b"1", b"origin": b"webhook"}
        for e in samples
    ]
    new = [encode_entry(e, origin="webhook", traceparent=tp) for e in samples]
    n = len(samples)

    def best(fn: Any) -> float:
        return min(timeit.repeat(fn, number=20, repeat=5)) / (20 * n) * 1e6

    return {
        "encode_compact_us": best(
            lambda: [encode_entry(e, origin="webhook", traceparent=tp) for e in samples]
        ),
        "encode_json_us": best(lambda: [orjson.dumps(e) for e in samples]),
        "decode_compact_us": best(lambda: [decode_entry("1-0", f) for f in new]),
        "decode_fields_format_us": best(lambda: [decode_entry("1-0", f) for f in old]),
    }


def render(meta: dict[str, Any], r: dict[str, Any]) -> str:
    old, new, cpu = r["fields_format"], r["compact"], r["cpu"]
    met = "met" if new["bytes_per_event"] <= GOAL_BYTES else "NOT met"
    return "\n".join(
        [
            "# journal: bytes per stored event",
            "",
            f"- command: `{meta['command']}`",
            f"- machine: {meta['machine']}; redis-server {r['redis_version']}",
            f"- {meta['date']}: {r['events']:,} realistic events per stream (mean event JSON "
            f"{r['mean_event_json_bytes']:.0f} B; mean compact entry {r['mean_compact_entry_bytes']:.0f} B)",
            "- bytes: `MEMORY USAGE <stream> SAMPLES 0` (every node) with the `mapper` group, over `XLEN`",
            "",
            "| format | stream bytes | entries | bytes/event |",
            "|---|---|---|---|",
            f"| fields (of 0.1.0: event, traceparent, accepted_ms, origin) | {old['bytes']:,} | "
            f"{old['entries']:,} | {old['bytes_per_event']:.0f} |",
            f"| compact (`e`: JournalEvent) | {new['bytes']:,} | {new['entries']:,} | "
            f"{new['bytes_per_event']:.0f} |",
            "",
            f"Goal ≤ {GOAL_BYTES} B per stored event: {new['bytes_per_event']:.0f} B, {met} "
            f"({new['bytes_per_event'] / old['bytes_per_event']:.2f} of the older format).",
            "",
            "CPU per entry (µs, best of 5, one core of the shared machine):",
            "",
            "| | compact | before |",
            "|---|---|---|",
            f"| encode | {cpu['encode_compact_us']:.1f} | {cpu['encode_json_us']:.1f} (JSON text) |",
            f"| decode (`decode_entry`) | {cpu['decode_compact_us']:.1f} | "
            f"{cpu['decode_fields_format_us']:.1f} |",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp), appendonly=False).start()
        try:
            results = asyncio.run(fill(redis.url, args.events))
        finally:
            redis.stop()
    meta = {
        "command": " ".join([".venv/bin/python bench/ingress/journal.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        "shared with other engineers' test runs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (HERE / "journal.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (HERE / "journal.md").write_text(render(meta, results))
    print((HERE / "journal.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
