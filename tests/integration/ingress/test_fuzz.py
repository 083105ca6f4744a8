"""Property-based fuzzing of POST /webhooks/hubspot: no 5xx, no crash, nothing from the unsigned."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as sync_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.core.devredis import RedisProcess
from tests.helpers.ingress import TEST_SECRET, event, running_ingress, v3_headers

OK = {200, 400, 401, 405, 413}


@pytest.fixture(scope="module")
def ingress_in_thread(
    redis_process: RedisProcess, caller_tokens: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """An ingress on its own event loop in a thread, so hypothesis can drive it synchronously."""
    ready: dict[str, Any] = {}
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        async with running_ingress(
            redis_url=redis_process.url,
            caller_tokens=caller_tokens,
            settings={"max_body_bytes": 4096},
        ) as (base, _grpc_address):
            ready["base"] = base
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(20)
    yield ready["base"], redis_process.url
    loop.call_soon_threadsafe(stop.set)
    thread.join(20)
    loop.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["portalId", "eventId", "objectId", "occurredAt", "subscriptionType", "propertyName", "propertyValue",
     "changeSource", "sourceId", "attemptNumber", "objectTypeId"]
)  # fmt: skip
mutated_events = st.builds(
    lambda base, drop, extra: {k: v for k, v in (base | extra).items() if k not in drop},
    st.builds(lambda o: event(object_id=o), st.integers(min_value=-(2**70), max_value=2**70)),
    st.sets(field_names, max_size=3),
    st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=3),
)
bodies = (
    st.binary(max_size=600)
    | st.builds(lambda v: json.dumps(v).encode(), json_values)
    | st.builds(lambda evs: json.dumps(evs).encode(), st.lists(mutated_events, max_size=5))
    | st.builds(lambda n: b"[" + b" " * n + b"]", st.integers(min_value=4000, max_value=9000))
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=bodies,
    signed=st.sampled_from(["none", "v3", "wrong", "garbage_ts"]),
    method=st.sampled_from(["POST", "POST", "POST", "PUT", "GET", "DELETE"]),
    query=st.sampled_from(["", "?a=%3A%20b", "?x=1&x=2"]),
)
def test_fuzzed_requests_never_break_ingress(
    ingress_in_thread: tuple[str, str], body: bytes, signed: str, method: str, query: str
) -> None:
    base, redis_url = ingress_in_thread
    url = f"{base}/webhooks/hubspot{query}"
    headers: dict[str, str] = {"Content-Type": "application/json"}
    if signed == "v3":
        headers = v3_headers(TEST_SECRET, url, body)
    elif signed == "wrong":
        headers = v3_headers(TEST_SECRET + "x", url, body)
    elif signed == "garbage_ts":
        headers = v3_headers(TEST_SECRET, url, body) | {"X-HubSpot-Request-Timestamp": "12ab"}
    client = sync_redis.Redis.from_url(redis_url)

    def lengths() -> dict[bytes, int]:
        return {key: int(client.xlen(key)) for key in client.scan_iter("hubsync:*:events")}

    try:
        before = lengths()
        reply = httpx.request(method, url, content=body, headers=headers, timeout=10)
        assert reply.status_code in OK, (reply.status_code, reply.text)
        if signed != "v3" or method != "POST" or reply.status_code != 200:
            # nothing enqueued anywhere: no stream grew, none appeared
            assert lengths() == before
    finally:
        client.close()
