"""The sandbox's lean webhook client: keep-alive reuse, answer framings, failures, uvloop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from hubsync.sandbox.testing import ReceiverBehaviour, WebhookReceiver
from hubsync.sandbox.webhook_client import WebhookClient, WebhookClientError

HEADERS = {"Content-Type": "application/json", "X-HubSpot-Signature-Version": "v1"}


async def _deliveries(rx: WebhookReceiver) -> list[int]:
    client = WebhookClient()
    try:
        return [await client.post(rx.url + "?a=b", b'[{"n":%d}]' % n, HEADERS) for n in range(3)]
    finally:
        await client.aclose()


async def test_posts_reuse_one_connection() -> None:
    async with WebhookReceiver(behaviour=ReceiverBehaviour(statuses=[200, 500])) as rx:
        statuses = await _deliveries(rx)
        assert statuses == [200, 500, 200]
        assert [r.json() for r in rx.requests] == [[{"n": 0}], [{"n": 1}], [{"n": 2}]]
        assert rx.requests[0].url.endswith("/webhooks/hubspot?a=b")
        assert rx.requests[0].headers["x-hubspot-signature-version"] == "v1"
        assert rx.requests[0].headers["content-length"] == str(len(b'[{"n":0}]'))
        assert rx._server is not None
        assert len(rx._server.server_state.connections) == 1  # kept alive, reused


def test_under_uvloop() -> None:
    """The sandbox runs on uvloop (``python -m hubsync.sandbox``), whose transports differ."""

    async def main() -> list[int]:
        async with WebhookReceiver() as rx:
            return await _deliveries(rx)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [200, 200, 200]


async def _raw_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/hook"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\nbody until the end",
    ],
)
async def test_answer_framings(answer: bytes) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            writer.write(answer)
            await writer.drain()
            if b"close" in answer:
                break
        writer.close()

    server, url = await _raw_server(serve)
    client = WebhookClient()
    try:
        expected = int(answer.split(b" ")[1])
        assert [await client.post(url, b"[]", HEADERS) for _ in range(2)] == [expected, expected]
    finally:
        await client.aclose()
        server.close()


async def test_failures_raise() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    client = WebhookClient()
    try:
        for handler in (garbage, hang_up):
            server, url = await _raw_server(handler)
            with pytest.raises(WebhookClientError):
                await client.post(url, b"[]", HEADERS)
            server.close()
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(WebhookClientError):
            await client.post(f"http://127.0.0.1:{port}/hook", b"[]", HEADERS)
    finally:
        await client.aclose()
