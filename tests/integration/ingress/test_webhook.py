"""POST /webhooks/hubspot against a real ingress and redis-server: what HubSpot sees, what lands."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from hubsync.core.event_entries import decode_entry
from hubsync.core.telemetry import setup_tracing
from tests.helpers.ingress import (
    PORTAL,
    TEST_SECRET,
    event,
    running_ingress,
    v1_headers,
    v3_headers,
)

STREAM = f"hubsync:{{{PORTAL}}}:events"


@pytest.fixture
async def ingress(redis_url: str, caller_tokens: dict[str, str]) -> AsyncIterator[tuple[str, str]]:
    async with running_ingress(
        redis_url=redis_url, caller_tokens=caller_tokens, secrets=["old-secret", TEST_SECRET]
    ) as addresses:
        yield addresses


async def post(
    base: str, body: bytes, headers: dict[str, str] | None = None, path: str = "/webhooks/hubspot"
):  # type: ignore[no-untyped-def]
    url = f"{base}{path}"
    async with httpx.AsyncClient() as client:
        return await client.post(
            url, content=body, headers=v3_headers(TEST_SECRET, url, body) if headers is None else headers
        )


async def stream_events(redis: Redis) -> list[dict[str, Any]]:
    entries: Any = await redis.xrange(STREAM)
    records = [decode_entry(entry_id, fields) for entry_id, fields in entries]
    return [(r.event or {}) | {"_entry": r} for r in records]


async def test_signed_batch_is_enqueued_with_trace_context(ingress, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    setup_tracing("hubsync-ingress", exporter)
    base, _ = ingress
    events = [event(object_id=1), event(object_id=2, subscription_type="contact.creation", unknownField=7)]
    with suppress_http_instrumentation():  # no traceparent, as from HubSpot
        reply = await post(base, json.dumps(events).encode())
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"accepted": 2, "duplicates": 0, "echoes": 0}
    stored = await stream_events(redis)
    assert [e["objectId"] for e in stored] == [1, 2]
    assert stored[1]["unknownField"] == 7  # unknown fields travel on
    entry = stored[0]["_entry"]
    assert entry.origin == "webhook" and entry.accepted_ms > 0
    assert entry.traceparent.startswith("00-")
    assert await redis.smembers("hubsync:portals") == {str(PORTAL).encode()}
    # the round trip's span is the root of the events' trace; an accepted request without a
    # trace context has no server span of its own
    finished = exporter.get_finished_spans()
    assert not [s for s in finished if s.name == "POST /webhooks/hubspot"]
    [commit] = [s for s in finished if s.name == "ingress.commit"]
    assert commit.kind.name == "PRODUCER" and commit.parent is None
    attributes: Any = commit.attributes
    assert attributes["hubsync.portal_id"] == PORTAL
    assert attributes["hubsync.request_count"] == 1
    assert attributes["hubsync.event_count"] == 2
    assert list(attributes["hubsync.object_id"]) == [1, 2]
    assert list(attributes["hubsync.event_id"]) == [e["eventId"] for e in events]
    assert (attributes["hubsync.accepted"], attributes["hubsync.duplicates"]) == (2, 0)
    _version, trace_id, span_id, _flags = entry.traceparent.split("-")
    assert trace_id == format(commit.context.trace_id, "032x")
    assert span_id == format(commit.context.span_id, "016x")
    assert stored[1]["_entry"].traceparent == entry.traceparent


async def test_callers_trace_context_is_continued(ingress, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    setup_tracing("hubsync-ingress", exporter)
    base, _ = ingress
    body = json.dumps([event(object_id=5), event(object_id=6)]).encode()
    url = f"{base}/webhooks/hubspot"
    # the caller's trace (httpx is instrumented here: its client span is the server span's parent)
    caller = trace.NonRecordingSpan(
        trace.SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, trace.TraceFlags(1))
    )
    with trace.use_span(caller):
        async with httpx.AsyncClient() as client:
            reply = await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))
    assert reply.status_code == 200
    # a request that brings a trace context gets a server span of its own, the events' parent
    finished = exporter.get_finished_spans()
    assert not [s for s in finished if s.name == "ingress.commit"]
    [server] = [s for s in finished if s.name == "POST /webhooks/hubspot"]
    assert server.kind.name == "SERVER"
    assert server.parent is not None and server.parent.is_remote
    assert format(server.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    attributes: Any = server.attributes
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == "/webhooks/hubspot"
    assert attributes["http.response.status_code"] == 200
    assert attributes["hubsync.portal_id"] == PORTAL
    assert attributes["hubsync.event_count"] == 2
    assert list(attributes["hubsync.object_id"]) == [5, 6]
    traceparents = {f["_entry"].traceparent for f in await stream_events(redis)}
    assert traceparents == {f"00-0af7651916cd43dd8448eb211c80319c-{server.context.span_id:016x}-01"}


@pytest.mark.on_cluster
async def test_same_batch_five_times_is_enqueued_once(ingress, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    base, _ = ingress
    body = json.dumps([event(object_id=i) for i in range(10)]).encode()
    replies = [await post(base, body) for _ in range(5)]
    assert [r.status_code for r in replies] == [200] * 5
    assert replies[0].json()["accepted"] == 10
    assert all(r.json() == {"accepted": 0, "duplicates": 10, "echoes": 0} for r in replies[1:])
    assert await redis.xlen(STREAM) == 10


async def test_same_event_id_other_object_is_not_a_duplicate(ingress, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    base, _ = ingress
    now = int(time.time() * 1000)
    body = json.dumps(
        [event(object_id=1, event_id=7, occurred_at=now), event(object_id=2, event_id=7, occurred_at=now)]
    )
    assert (await post(base, body.encode())).json()["accepted"] == 2


@pytest.mark.on_cluster
async def test_echo_of_our_own_write_is_dropped(ingress, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    base, _ = ingress
    # what writer records after writing firstname=Grace to contact 77
    await redis.hset(f"hubsync:{{{PORTAL}}}:written:contacts:77", mapping={"firstname": "Grace"})
    echo = event(object_id=77, property_value="Grace", change_source="API")
    own_app = event(object_id=78, change_source="INTEGRATION", sourceId="1001")
    own_private_app = event(object_id=79, change_source="INTEGRATION", sourceId="2001")
    other_app = event(object_id=80, change_source="INTEGRATION", sourceId="3001")
    real = event(object_id=77, property_value="Hopper")
    generic = event(
        object_id=77, subscription_type="object.propertyChange", property_value="Grace", objectTypeId="0-1"
    )
    reply = await post(base, json.dumps([echo, own_app, own_private_app, other_app, real, generic]).encode())
    assert reply.json() == {"accepted": 2, "duplicates": 0, "echoes": 4}
    stored = await stream_events(redis)
    assert [(e["objectId"], e["propertyValue"]) for e in stored] == [(80, "Ada"), (77, "Hopper")]
    # Every echo is journaled as one, for reconciliation to count as reported (issue 12).
    journal: Any = await redis.xrange(f"hubsync:{{{PORTAL}}}:echoes")
    records = sorted(f[b"r"].decode().rsplit(":", 1)[0] for _i, f in journal)
    assert records == ["contacts:77", "contacts:77", "contacts:78", "contacts:79"]


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("unsigned", 401),
        ("wrong_secret", 401),
        ("tampered_body", 401),
        ("stale", 401),
        ("future", 401),
        ("other_url", 401),
        ("v1_not_enabled", 401),
        ("not_json", 400),
        ("not_array", 400),
        ("empty_array", 400),
        ("missing_field", 400),
        ("string_id", 400),
        ("too_large", 413),
        ("too_large_no_length", 413),
    ],
)
async def test_bad_requests_get_their_status_and_enqueue_nothing(
    ingress, redis: Redis, case: str, status: int
) -> None:  # type: ignore[no-untyped-def]
    base, _ = ingress
    url = f"{base}/webhooks/hubspot"
    good = json.dumps([event()]).encode()
    body, headers = good, v3_headers(TEST_SECRET, url, good)
    old = int(time.time() * 1000) - 6 * 60_000
    if case == "unsigned":
        headers = {"Content-Type": "application/json"}
    elif case == "wrong_secret":
        headers = v3_headers("not-the-secret", url, good)
    elif case == "tampered_body":
        body = good.replace(b"Ada", b"Eve")
    elif case == "stale":
        headers = v3_headers(TEST_SECRET, url, good, old)
    elif case == "future":
        headers = v3_headers(TEST_SECRET, url, good, int(time.time() * 1000) + 6 * 60_000)
    elif case == "other_url":
        headers = v3_headers(TEST_SECRET, "https://elsewhere.example.com/webhooks/hubspot", good)
    elif case == "v1_not_enabled":
        headers = v1_headers(TEST_SECRET, good)
    elif case in ("not_json", "not_array", "empty_array", "missing_field", "string_id"):
        body = {
            "not_json": b"{not json",
            "not_array": json.dumps(event()).encode(),
            "empty_array": b"[]",
            "missing_field": json.dumps([{k: v for k, v in event().items() if k != "occurredAt"}]).encode(),
            "string_id": json.dumps([event() | {"objectId": "12"}]).encode(),
        }[case]
        headers = v3_headers(TEST_SECRET, url, body)
    elif case == "too_large":
        body = b"[" + b" " * (1024 * 1024) + b"]"
        headers = v3_headers(TEST_SECRET, url, body)
    if case == "too_large_no_length":

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b" " * 32768

        async with httpx.AsyncClient() as client:
            reply = await client.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    else:
        reply = await post(base, body, headers)
    assert reply.status_code == status, reply.text
    if status == 400:
        assert reply.json()["message"]
    assert await redis.exists(STREAM) == 0


async def test_wrong_method_is_405(ingress) -> None:  # type: ignore[no-untyped-def]
    base, _ = ingress
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/webhooks/hubspot")).status_code == 405
        assert (await client.put(f"{base}/webhooks/hubspot", content=b"[]")).status_code == 405


async def test_healthz(ingress) -> None:  # type: ignore[no-untyped-def]
    base, _ = ingress
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{base}/healthz")
    assert reply.status_code == 200


async def test_signature_covers_the_query_string(ingress, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    base, _ = ingress
    body = json.dumps([event()]).encode()
    url = f"{base}/webhooks/hubspot?app=hub%20sync&x=%3Ay"
    reply = await post(
        base, body, v3_headers(TEST_SECRET, url, body), path="/webhooks/hubspot?app=hub%20sync&x=%3Ay"
    )
    assert reply.status_code == 200
    reply = await post(
        base, body, v3_headers(TEST_SECRET, f"{base}/webhooks/hubspot", body), path="/webhooks/hubspot?app=1"
    )
    assert reply.status_code == 401


async def test_event_comes_back_exactly(ingress, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    base, _ = ingress
    value = 'Zoë 🚀 "quoted" \\ back\nslash / \u0000 end'
    sent = event(object_id=5, property_value=value)
    assert (await post(base, json.dumps([sent]).encode())).status_code == 200
    [stored] = await stream_events(redis)
    stored.pop("_entry")
    assert stored == sent and stored["propertyValue"] == value
