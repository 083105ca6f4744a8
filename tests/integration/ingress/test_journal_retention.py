"""The journal (a portal's event stream) keeps events for a time and within a byte cap, stores
them compactly, and still reads the entries an older hubsync wrote.

Real ingress (HTTP) and redis-server. Retention by time is tested without waiting for it: the
old entries are appended with ids of 30 hours ago (a stream id is its time), then one webhook
arrives.
"""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import httpx
import orjson
from redis.asyncio import Redis

from hubsync.core.event_entries import decode_entry, encode_entry
from hubsync.core.keys import events_key
from hubsync.ingress.committer import CallerContext, EventAppender, EventCommitter
from hubsync.ingress.events import parse_events
from hubsync.ingress.journal import EventJournal
from hubsync.ingress.reconciler import Reconciler
from hubsync.ingress.servicer import event_pb
from tests.helpers.ingress import PORTAL, TEST_SECRET, event, running_ingress, v3_headers

STREAM = events_key(PORTAL)
HOUR_MS = 3_600_000
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def _post(base: str, events: list[dict[str, Any]]) -> httpx.Response:
    url = f"{base}/webhooks/hubspot"
    body = json.dumps(events).encode()
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))


def _legacy(item: dict[str, Any], origin: str = "webhook") -> dict[str, Any]:
    """An entry the way hubsync wrote it before the compact format."""
    return {
        "event": orjson.dumps(item),
        "traceparent": TRACEPARENT,
        "accepted_ms": str(item["occurredAt"]),
        "origin": origin,
    }


async def _ids_ms(redis: Redis) -> list[int]:
    entries: Any = await redis.xrange(STREAM)
    return [int(entry_id.split(b"-")[0]) for entry_id, _f in entries]


async def test_entries_older_than_the_retention_are_trimmed_newer_ones_kept(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    now = int(time.time() * 1000)
    old, recent = now - 30 * HOUR_MS, now - 25 * HOUR_MS
    # 250 entries of 30 h ago (today's format and the older one), 150 of 25 h ago.
    for i in range(250):
        item = event(object_id=i, occurred_at=old)
        fields: Any = _legacy(item) if i % 2 else encode_entry(item, origin="webhook")
        await redis.xadd(STREAM, fields, id=f"{old}-{i}")
    for i in range(150):
        fields = encode_entry(event(object_id=1000 + i, occurred_at=recent), origin="webhook")
        await redis.xadd(STREAM, fields, id=f"{recent}-{i}")
    settings = {"journal_retention_s": 26 * 3600}
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens, settings=settings) as (
        base,
        _,
    ):
        assert (await _post(base, [event(object_id=9999)])).status_code == 200
    stamps = await _ids_ms(redis)
    # MINID ~ drops whole stream nodes (100 entries each): of the 250 older than 26 h, at most the
    # ones sharing a node with newer entries stay. Everything within 26 h stays.
    assert sum(1 for t in stamps if t == old) < 100
    assert sum(1 for t in stamps if t == recent) == 150
    assert stamps[-1] >= now


async def test_a_portals_stream_stays_within_its_byte_cap(redis_url: str, redis: Redis) -> None:
    cap = 64 * 1024
    committer = EventCommitter(
        EventAppender(redis, retention_ms=26 * HOUR_MS, max_bytes=cap, dedupe_ttl_s=3600, dedupe_buckets=8),
        timeout_s=30,
    )
    sent = 0
    for _ in range(30):
        batch = [event(object_id=sent + i) for i in range(100)]
        sent += len(batch)
        await committer.submit(parse_events(orjson.dumps(batch)), tracing=CallerContext(TRACEPARENT))
        used = await redis.memory_usage(STREAM, samples=0)
        assert used is not None and used <= cap + 8 * 1024  # a node's worth of slack: trims are ~
    length = await redis.xlen(STREAM)
    assert 0 < length < sent
    newest: Any = await redis.xrevrange(STREAM, count=1)
    last = decode_entry(*newest[0])
    assert last.event is not None and last.event["objectId"] == sent - 1  # the oldest went, not the newest
    await committer.close()


async def test_entries_of_the_older_format_are_read_replayed_and_reconciled(
    redis_url: str, redis: Redis
) -> None:
    now = int(time.time() * 1000)
    legacy = event(object_id=7, occurred_at=now - 60_000, unknownField={"a": 1})
    legacy_id: Any = await redis.xadd(STREAM, _legacy(legacy))  # type: ignore[arg-type]
    compact = event(object_id=8, occurred_at=now - 30_000)
    await redis.xadd(STREAM, encode_entry(compact, origin="webhook", traceparent=TRACEPARENT))  # type: ignore[arg-type]
    journal = EventJournal(redis, retention_ms=26 * HOUR_MS, replay_request_ttl_s=60)

    entries, _token = await journal.read(PORTAL, None, None, 10, "")
    assert [e.event for e in entries] == [legacy, compact]
    assert [e.traceparent for e in entries] == [TRACEPARENT, TRACEPARENT]
    assert entries[0].accepted_ms == legacy["occurredAt"]  # the old field is honoured
    shown = event_pb(entries[0])
    assert (shown.object_id, shown.traceparent) == (7, TRACEPARENT)
    assert shown.raw.fields["unknownField"].struct_value.fields["a"].number_value == 1

    assert await journal.replay(PORTAL, legacy_id.decode(), "", "") == 2
    entries, _token = await journal.read(PORTAL, None, None, 10, "")
    copies = entries[2:]
    assert [c.origin for c in copies] == ["replay", "replay"]
    assert [c.event for c in copies] == [legacy, compact]
    assert copies[0].replay_of == legacy_id.decode() and copies[0].accepted_ms == legacy["occurredAt"]
    raw: Any = await redis.xrange(STREAM)
    assert all(set(fields) == {b"e"} for _i, fields in raw[2:])  # copies are written compact

    async with grpc.aio.insecure_channel("127.0.0.1:9") as unused:  # the pass below searches nothing
        committer = EventCommitter(
            EventAppender(redis, retention_ms=26 * HOUR_MS, dedupe_ttl_s=3600, dedupe_buckets=8), timeout_s=30
        )
        reconciler = Reconciler(
            redis, committer, unused, object_types=["contacts"], lookback_s=0, interval_s=0
        )
        reported = await reconciler._reported(PORTAL, now - HOUR_MS)
    assert reported == {("contacts", 7): legacy["occurredAt"], ("contacts", 8): compact["occurredAt"]}


async def test_the_fields_format_is_written_while_older_mappers_still_run(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    settings = {"journal_format": "fields"}
    sent = [event(object_id=1), event(object_id=2, unknownField=[1, 2])]
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens, settings=settings) as (
        base,
        _,
    ):
        assert (await _post(base, sent)).status_code == 200
    raw: Any = await redis.xrange(STREAM)
    # what mapper 0.3 reads: the event's JSON and its context, field by field
    assert [orjson.loads(fields[b"event"]) for _i, fields in raw] == sent
    assert all(
        fields[b"origin"] == b"webhook" and fields[b"traceparent"].startswith(b"00-") for _i, fields in raw
    )
    assert all(int(fields[b"accepted_ms"]) > 0 for _i, fields in raw)
    journal = EventJournal(redis, retention_ms=26 * HOUR_MS, replay_request_ttl_s=60, entry_format="fields")
    assert await journal.replay(PORTAL, "", "", "") == 2
    raw = await redis.xrange(STREAM)
    assert [orjson.loads(fields[b"event"]) for _i, fields in raw[2:]] == sent
    assert [fields[b"replay_of"] for _i, fields in raw[2:]] == [entry_id for entry_id, _f in raw[:2]]
