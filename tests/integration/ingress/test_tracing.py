"""What traces webhook requests open (``HUBSYNC_INGRESS_WEBHOOK_SPANS``), against real Redis and HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from hubsync.core.devredis import free_port
from hubsync.core.event_entries import decode_entry
from hubsync.core.redis import redis_from_url
from hubsync.core.telemetry import setup_tracing
from hubsync.ingress.committer import (
    COMMIT_SPAN,
    LISTED_IDS,
    CallerContext,
    CommitOutcome,
    EnqueueFailed,
    EventAppender,
    EventCommitter,
    RoundTripSpan,
)
from hubsync.ingress.events import parse_events
from hubsync.ingress.webhooks import SPAN_NAME
from tests.helpers.ingress import PORTAL, TEST_SECRET, event, running_ingress, v3_headers

STREAM = f"hubsync:{{{PORTAL}}}:events"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    found = InMemorySpanExporter()
    setup_tracing("hubsync-ingress", found)
    return found


async def post_as_hubspot(base: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """A POST without a trace context (the test process's httpx instrumentation is suppressed)."""
    url = f"{base}/webhooks/hubspot"
    with suppress_http_instrumentation():
        async with httpx.AsyncClient() as client:
            return await client.post(
                url, content=body, headers=v3_headers(TEST_SECRET, url, body) if headers is None else headers
            )


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def traceparents(redis: Redis) -> list[str]:
    entries: Any = await redis.xrange(STREAM)
    return [decode_entry(entry_id, fields).traceparent for entry_id, fields in entries]


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_refused_request_gets_a_server_span_with_its_status(  # type: ignore[no-untyped-def]
    redis_url, caller_tokens, redis: Redis, exporter: InMemorySpanExporter
) -> None:
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens) as (base, _):
        reply = await post_as_hubspot(base, b"[]", headers={"Content-Type": "application/json"})
    assert reply.status_code == 401
    [server] = named(exporter, SPAN_NAME)
    assert server.kind.name == "SERVER" and server.parent is None
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 401
    assert not named(exporter, COMMIT_SPAN)
    assert await redis.xlen(STREAM) == 0


async def test_request_mode_gives_every_request_its_server_span(  # type: ignore[no-untyped-def]
    redis_url, caller_tokens, redis: Redis, exporter: InMemorySpanExporter
) -> None:
    settings = {"webhook_spans": "request"}
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens, settings=settings) as (
        base,
        _,
    ):
        bodies = [json.dumps([event(object_id=i)]).encode() for i in range(4)]
        replies = await asyncio.gather(*(post_as_hubspot(base, body) for body in bodies))
    assert [r.status_code for r in replies] == [200] * 4
    servers = named(exporter, SPAN_NAME)
    assert len(servers) == 4 and all(s.parent is None for s in servers)
    assert not named(exporter, COMMIT_SPAN)
    by_object: dict[Any, ReadableSpan] = {
        s.attributes["hubsync.object_id"]: s for s in servers if s.attributes
    }
    assert sorted(by_object) == [0, 1, 2, 3]
    entries: Any = await redis.xrange(STREAM)
    for entry_id, fields in entries:
        entry = decode_entry(entry_id, fields)
        assert entry.event is not None
        assert entry.traceparent == traceparent_of(by_object[entry.event["objectId"]])


async def test_off_mode_records_no_span_and_keeps_the_callers_context(  # type: ignore[no-untyped-def]
    redis_url, caller_tokens, redis: Redis, exporter: InMemorySpanExporter
) -> None:
    settings = {"webhook_spans": "off"}
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens, settings=settings) as (
        base,
        _,
    ):
        plain = json.dumps([event(object_id=1)]).encode()
        assert (await post_as_hubspot(base, plain)).status_code == 200
        traced = json.dumps([event(object_id=2)]).encode()
        headers = v3_headers(TEST_SECRET, f"{base}/webhooks/hubspot", traced) | {"traceparent": caller}
        assert (await post_as_hubspot(base, traced, headers=headers)).status_code == 200
        assert (await post_as_hubspot(base, plain, headers={})).status_code == 401
    assert not named(exporter, SPAN_NAME) and not named(exporter, COMMIT_SPAN)
    assert await traceparents(redis) == ["", caller]


async def test_grouped_submissions_of_one_round_trip_share_one_commit_span(  # type: ignore[no-untyped-def]
    redis_url, redis: Redis, exporter: InMemorySpanExporter
) -> None:
    committer = EventCommitter(
        EventAppender(redis_from_url(redis_url), retention_ms=3_600_000, dedupe_ttl_s=3600, dedupe_buckets=8),
        timeout_s=3,
    )
    batches = [parse_events(json.dumps([event(object_id=i)]).encode()) for i in range(3)]
    first = time.time_ns() - 5_000_000  # the earliest request arrived 5 ms ago
    received = [first + 1_000_000, first, first + 2_000_000]
    # submitted in one loop turn: one round trip
    outcomes = await asyncio.gather(
        *(
            committer.submit(batch, tracing=RoundTripSpan(at))
            for batch, at in zip(batches, received, strict=True)
        ),
        committer.submit(batches[0], tracing=RoundTripSpan()),  # a duplicate in the same round trip
    )
    assert committer.round_trips == 1
    assert outcomes == [[CommitOutcome.ACCEPTED]] * 3 + [[CommitOutcome.DUPLICATE]]
    [commit] = named(exporter, COMMIT_SPAN)
    attributes: Any = commit.attributes
    assert attributes["hubsync.request_count"] == 4 and attributes["hubsync.event_count"] == 4
    assert (attributes["hubsync.accepted"], attributes["hubsync.duplicates"]) == (3, 1)
    assert commit.start_time == first
    assert await traceparents(redis) == [traceparent_of(commit)] * 3
    await committer.close()


async def test_a_failed_round_trip_marks_its_span_as_an_error(exporter: InMemorySpanExporter) -> None:
    # nothing listens on this port: the round trip fails
    committer = EventCommitter(
        EventAppender(
            Redis.from_url(f"redis://127.0.0.1:{free_port()}"),
            retention_ms=3_600_000,
            dedupe_ttl_s=3600,
            dedupe_buckets=8,
        ),
        timeout_s=2,
    )
    with pytest.raises(EnqueueFailed):
        await committer.submit(parse_events(json.dumps([event()]).encode()), tracing=RoundTripSpan())
    [commit] = named(exporter, COMMIT_SPAN)
    assert commit.status.status_code.name == "ERROR"
    assert "redis did not take the events" in (commit.status.description or "")


async def test_commit_span_lists_the_ids_of_the_first_events_only(  # type: ignore[no-untyped-def]
    redis_url, redis: Redis, exporter: InMemorySpanExporter
) -> None:
    committer = EventCommitter(
        EventAppender(redis_from_url(redis_url), retention_ms=3_600_000, dedupe_ttl_s=3600, dedupe_buckets=8),
        timeout_s=3,
    )
    # A round trip carries several requests' events (a request holds at most 100).
    ids = range(LISTED_IDS + 20)
    events = [
        e
        for part in (ids[:100], ids[100:])
        for e in parse_events(json.dumps([event(object_id=i) for i in part]).encode())
    ]
    await committer.submit(events, tracing=RoundTripSpan())
    [commit] = named(exporter, COMMIT_SPAN)
    attributes: Any = commit.attributes
    assert attributes["hubsync.event_count"] == LISTED_IDS + 20
    assert list(attributes["hubsync.object_id"]) == list(range(LISTED_IDS))
    assert await redis.xlen(STREAM) == LISTED_IDS + 20
    await committer.close()


class _BrokenSpan:
    """A RequestSpan whose span cannot be opened."""

    closed: list[str | None]

    def __init__(self) -> None:
        self.closed = []

    def open(self) -> CallerContext:
        raise RuntimeError("tracing is broken")

    def close(self, error: str | None) -> None:
        self.closed.append(error)


async def test_a_tracing_failure_does_not_keep_events_out_of_redis(redis_url, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    committer = EventCommitter(
        EventAppender(redis_from_url(redis_url), retention_ms=3_600_000, dedupe_ttl_s=3600, dedupe_buckets=8),
        timeout_s=3,
    )
    broken = _BrokenSpan()
    outcomes = await committer.submit(parse_events(json.dumps([event()]).encode()), tracing=broken)
    assert outcomes == [CommitOutcome.ACCEPTED]
    assert await redis.xlen(STREAM) == 1
    assert broken.closed == [None]
    await committer.close()
