"""Slow and oversized requests against a real ingress (uvicorn on real loopback sockets).

A client that trickles its headers or its body is disconnected once its read deadline passes,
an oversized header block is refused, and HubSpot's signed webhooks keep being answered 200 and
enqueued meanwhile. Deadlines are set to 1 s here; the tests wait for the outcome (generously,
for a loaded machine) and never assert how long it took.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from tests.helpers.ingress import PORTAL, TEST_SECRET, event, running_ingress, v3_headers

STREAM = f"hubsync:{{{PORTAL}}}:events"
# How long a test waits for ingress to cut a trickling client off before calling it a failure.
GIVE_UP_S = 60.0


@pytest.fixture
async def ingress(redis_url: str, caller_tokens: dict[str, str]) -> AsyncIterator[str]:
    settings = {"header_timeout_s": 1, "body_timeout_s": 1}
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens, settings=settings) as (
        http,
        _,
    ):
        yield http


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def trickle(base: str, head: bytes, drip: bytes) -> tuple[bool, bytes]:
    """Sends ``head``, then ``drip`` every 0.2 s, never finishing the request; returns whether
    ingress closed the connection (within :data:`GIVE_UP_S`) and what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(base))
    answer = b""
    closed = False
    loop = asyncio.get_running_loop()
    give_up = loop.time() + GIVE_UP_S
    try:
        writer.write(head)
        await writer.drain()
        while loop.time() < give_up:
            try:
                writer.write(drip)
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            answer += chunk
    finally:
        writer.close()
    return closed, answer


async def signed_post(base: str, client: httpx.AsyncClient, object_id: int) -> int:
    url = f"{base}/webhooks/hubspot"
    body = json.dumps([event(object_id=object_id)]).encode()
    reply = await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))
    return reply.status_code


async def webhooks_keep_flowing(base: str, stop: asyncio.Event) -> list[int]:
    """Posts signed one-event webhooks one after another until ``stop``; returns their statuses."""
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set() or not statuses:
            statuses.append(await signed_post(base, client, 700 + len(statuses)))
            await asyncio.sleep(0.05)
    return statuses


async def test_trickled_headers_and_body_are_cut_off_while_webhooks_flow(ingress: str, redis: Redis) -> None:
    base = ingress
    slow_headers = b"POST /webhooks/hubspot HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    slow_body = (
        b"POST /webhooks/hubspot HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: 100000\r\n\r\n["
    )
    stop = asyncio.Event()
    flowing = asyncio.create_task(webhooks_keep_flowing(base, stop))
    try:
        (headers_closed, headers_answer), (body_closed, body_answer) = await asyncio.gather(
            trickle(base, slow_headers, b"x"), trickle(base, slow_body, b" ")
        )
    finally:
        stop.set()
        statuses = await flowing
    assert headers_closed, "a client trickling its headers was never disconnected"
    assert headers_answer.startswith(b"HTTP/1.1 408 "), headers_answer[:200]
    assert body_closed, "a client trickling its body was never disconnected"
    assert body_answer.startswith(b"HTTP/1.1 408 "), body_answer[:200]
    assert statuses and set(statuses) == {200}
    assert await redis.xlen(STREAM) == len(statuses)


async def test_a_silent_connection_is_closed(ingress: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(ingress))
    try:
        # Ingress closes it (EOF) once the header deadline passes; the bound is the test's patience.
        assert await asyncio.wait_for(reader.read(), GIVE_UP_S) == b""
    finally:
        writer.close()


async def test_oversized_header_block_is_refused(ingress: str, redis: Redis) -> None:
    base = ingress
    url = f"{base}/webhooks/hubspot"
    body = json.dumps([event()]).encode()
    padding = {f"x-pad-{i}": "p" * 1000 for i in range(20)}  # 20 KB, past the 16 KiB default
    async with httpx.AsyncClient() as client:
        reply = await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body) | padding)
    assert reply.status_code == 431
    # One header line of 1 MiB, as the review sent: refused (and the connection closed) before
    # the whole block is read; ingress goes on answering.
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(base))
    answer = b""
    try:
        writer.write(b"POST /webhooks/hubspot HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: ")
        for _ in range(64):
            writer.write(b"b" * 16384)
            await writer.drain()
        writer.write(b"\r\ncontent-length: 2\r\n\r\n[]")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), GIVE_UP_S)
    except ConnectionError:
        pass  # closed with our bytes unread: a reset may overtake the 431
    finally:
        writer.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert await redis.exists(STREAM) == 0
    async with httpx.AsyncClient() as client:
        assert await signed_post(base, client, 901) == 200


async def test_more_than_100_events_is_400(ingress: str, redis: Redis) -> None:
    url = f"{ingress}/webhooks/hubspot"
    body = json.dumps([event(object_id=1 + i) for i in range(101)]).encode()
    async with httpx.AsyncClient() as client:
        reply = await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))
    assert reply.status_code == 400
    assert "at most 100" in reply.json()["message"]
    assert await redis.exists(STREAM) == 0


def widest_events(value_length: int) -> bytes:
    """100 events with every field at its widest and property values of ``value_length``."""
    big = 2**63 - 1
    items = [
        event(
            object_id=big - i,
            event_id=big - i,
            occurred_at=big,
            subscription_type="line_item.propertyChange",
            property_name="hs_" + "x" * 97,
            property_value="v" * value_length,
            change_source="INTEGRATION",
            sourceId=f"userId:{big}",
            subscriptionId=big,
            appId=big,
            attemptNumber=9,
        )
        for i in range(100)
    ]
    return json.dumps(items, separators=(",", ":")).encode()


async def test_body_limit_fits_hubspots_largest_deliveries(ingress: str, redis: Redis) -> None:
    url = f"{ingress}/webhooks/hubspot"
    async with httpx.AsyncClient() as client:
        fits = widest_events(2000)
        reply = await client.post(url, content=fits, headers=v3_headers(TEST_SECRET, url, fits))
        assert reply.status_code == 200, reply.text
        too_large = widest_events(3000)  # ~350 KB: past the 256 KiB default
        reply = await client.post(url, content=too_large, headers=v3_headers(TEST_SECRET, url, too_large))
        assert reply.status_code == 413
    assert await redis.xlen(STREAM) == 100


async def test_a_kept_alive_connection_trickling_its_next_request_is_cut_off(ingress: str) -> None:
    first = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    closed, answer = await trickle(ingress, first + b"POST /webhooks/hubspot HTTP/1.1\r\n", b"x")
    assert closed, "a kept-alive client trickling its next request's headers was never disconnected"
    assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answer, answer[:400]


async def test_headers_under_the_limit_arriving_in_pieces_are_accepted(ingress: str, redis: Redis) -> None:
    url = f"{ingress}/webhooks/hubspot"
    body = json.dumps([event()]).encode()
    headers = v3_headers(TEST_SECRET, url, body) | {f"x-pad-{i}": "p" * 1000 for i in range(12)}  # 12 KB
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /webhooks/hubspot HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n{head}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(ingress))
    try:
        for start in range(0, len(request), 2500):  # separate reads on the server's side
            writer.write(request[start : start + 2500])
            await writer.drain()
            await asyncio.sleep(0.05)
        answer = await asyncio.wait_for(reader.read(), GIVE_UP_S)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert await redis.xlen(STREAM) == 1


async def test_past_max_connections_requests_are_503_until_some_close(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    settings = {"max_connections": 3}
    async with (
        running_ingress(redis_url=redis_url, caller_tokens=caller_tokens, settings=settings) as (base, _),
        httpx.AsyncClient() as client,
    ):
        held = [await asyncio.open_connection("127.0.0.1", _port(base)) for _ in range(2)]
        for _, writer in held:
            writer.write(b"POST /webhooks/hubspot HTTP/1.1\r\n")  # and nothing more
            await writer.drain()
        assert await signed_post(base, client, 950) == 503  # the third connection
        for _, writer in held:
            writer.close()
            await writer.wait_closed()
        statuses = []
        async with httpx.AsyncClient() as fresh:
            # The server notices the closes on its next loop turns: wait for it, generously.
            for attempt in range(100):
                statuses.append(await signed_post(base, fresh, 951 + attempt))
                if statuses[-1] == 200:
                    break
                await asyncio.sleep(0.1)
        assert statuses[-1] == 200, statuses
    assert await redis.xlen(STREAM) == 1
