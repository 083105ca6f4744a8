"""Writer's HubSpot calls go through the egress proxy the environment names (HTTP_PROXY and
friends, NO_PROXY), as the chart's docs suggest for a locked-down network.

A small forward proxy on loopback relays each connection to the sandbox and keeps the request
lines it saw: a request sent through a proxy names its whole URL (``POST http://host/path``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, SandboxServer
from hubsync.writer.circuit import CircuitBreakers
from hubsync.writer.hubspot_client import HubSpotClient, RetryPolicy, environment_proxy
from hubsync.writer.ratelimit import Budget, RateLimiter
from hubsync.writer.tokens import StaticTokenSource
from tests.helpers.writer_stack import PORTAL, sandbox_config

READ = "/crm/v3/objects/contacts/batch/read"


@contextlib.asynccontextmanager
async def forward_proxy(upstream_port: int) -> AsyncIterator[tuple[str, list[bytes]]]:
    """(the proxy's URL, the first line and any Proxy-Authorization line of every request it
    relayed)."""
    lines: list[bytes] = []
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, watch: bool) -> None:
        try:
            while data := await reader.read(65536):
                if watch:
                    lines.extend(
                        line
                        for line in data.split(b"\r\n")
                        if line.startswith((b"GET ", b"POST ", b"PUT ", b"Proxy-Authorization:"))
                    )
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        for task in (
            asyncio.create_task(pipe(reader, up_writer, True)),
            asyncio.create_task(pipe(up_reader, writer, False)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", lines
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def client(redis: Redis, base_url: str) -> HubSpotClient:
    return HubSpotClient(
        base_url,
        StaticTokenSource({PORTAL: DEFAULT_PRIVATE_TOKEN}),
        RateLimiter(redis, Budget("burst", 100, 10_000), Budget("search", 5, 1000)),
        CircuitBreakers(5, 30.0),
        RetryPolicy(max_attempts=1),
    )


async def read_one(redis: Redis, base_url: str) -> int:
    """One batch read through a fresh client (made now: it reads the environment's proxy)."""
    hubspot = client(redis, base_url)
    try:
        response = await hubspot.call(
            PORTAL,
            "POST",
            READ,
            route="/crm/v3/objects/{objectType}/batch/read",
            json={"inputs": [{"id": "1"}]},
        )
    finally:
        await hubspot.aclose()
    return response.status


async def test_calls_go_through_the_proxy_the_environment_names(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SandboxServer(sandbox_config()) as sb:
        port = int(sb.base_url.rsplit(":", 1)[1])
        async with forward_proxy(port) as (proxy, lines):
            for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("HTTP_PROXY", proxy)
            monkeypatch.delenv("http_proxy", raising=False)
            assert environment_proxy(sb.base_url) == proxy
            status = await read_one(redis, sb.base_url)
    assert status in (200, 207)
    # Through a proxy, the request line carries the whole URL (absolute form).
    assert f"POST {sb.base_url}{READ} HTTP/1.1".encode() in lines


async def test_no_proxy_sends_the_calls_directly(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    async with SandboxServer(sandbox_config()) as sb:
        port = int(sb.base_url.rsplit(":", 1)[1])
        async with forward_proxy(port) as (proxy, lines):
            for name in ("no_proxy", "all_proxy", "ALL_PROXY", "http_proxy"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("HTTP_PROXY", proxy)
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            assert environment_proxy(sb.base_url) is None
            status = await read_one(redis, sb.base_url)
    assert status in (200, 207)
    assert lines == []


async def test_the_proxys_credentials_go_in_a_header_not_the_request_line(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY=http://user:password@host:port: the proxy gets the credentials as Basic
    Proxy-Authorization (percent-escapes decoded); the request line carries the target alone."""
    async with SandboxServer(sandbox_config()) as sb:
        port = int(sb.base_url.rsplit(":", 1)[1])
        async with forward_proxy(port) as (proxy, lines):
            for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "http_proxy"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("HTTP_PROXY", proxy.replace("http://", "http://egress:p%40ss@"))
            status = await read_one(redis, sb.base_url)
    assert status in (200, 207)
    expected = base64.b64encode(b"egress:p@ss").decode()
    assert f"Proxy-Authorization: Basic {expected}".encode() in lines, lines
    assert f"POST {sb.base_url}{READ} HTTP/1.1".encode() in lines
