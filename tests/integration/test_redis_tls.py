"""rediss:// against a real redis-server behind a TLS terminator on loopback.

The redis-server the tests use is built without TLS, so a small asyncio proxy terminates TLS (with
a certificate of a throwaway CA, client certificates required) and relays the bytes to it. The
services' Redis client (create_redis) must verify the server against HUBSYNC_REDIS_TLS_CA_FILE,
present its client certificate, and refuse a server of another CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError

from hubsync.core.devcerts import DevCA, IssuedFiles
from hubsync.core.devredis import RedisProcess
from hubsync.core.redis import create_redis
from hubsync.core.settings import CoreSettings


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def tls_redis(
    redis_process: RedisProcess, tmp_path: Path
) -> AsyncIterator[tuple[int, DevCA, IssuedFiles]]:
    """(port of the TLS endpoint, its CA, the server's files): a TLS proxy in front of the
    session's single redis-server (also with HUBSYNC_TEST_REDIS=cluster: a cluster's nodes
    announce their own plaintext ports, which a proxy cannot stand in for)."""
    ca = DevCA("redis CA")
    server = ca.write(tmp_path / "redis", "redis")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(server.ca))
    context.load_cert_chain(str(server.cert), str(server.key))
    context.verify_mode = ssl.CERT_REQUIRED
    target = urlsplit(redis_process.url)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(target.hostname, target.port)
        for pair in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(_relay(*pair))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = proxy.sockets[0].getsockname()[1]
    yield port, ca, server
    proxy.close()
    for task in list(tasks):
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proxy.wait_closed(), 5)


async def test_rediss_with_ca_and_client_certificate(
    tls_redis: tuple[int, DevCA, IssuedFiles], tmp_path: Path
) -> None:
    port, ca, _ = tls_redis
    client = ca.write(tmp_path / "client", "hubsync")
    settings = CoreSettings(
        redis_url=f"rediss://127.0.0.1:{port}/0",
        redis_tls_ca_file=client.ca,
        redis_tls_cert_file=client.cert,
        redis_tls_key_file=client.key,
    )
    redis = create_redis(settings)
    try:
        assert await redis.ping()
        await redis.set("hubsync:tls-check", b"over TLS")
        assert await redis.get("hubsync:tls-check") == b"over TLS"
    finally:
        await redis.aclose()


async def test_rediss_refuses_a_server_of_another_ca(
    tls_redis: tuple[int, DevCA, IssuedFiles], tmp_path: Path
) -> None:
    port, ca, _ = tls_redis
    client = ca.write(tmp_path / "client", "hubsync")
    other = DevCA("not the redis CA").write(tmp_path / "other", "x")
    settings = CoreSettings(
        redis_url=f"rediss://127.0.0.1:{port}/0",
        redis_password=SecretStr("unused"),
        redis_tls_ca_file=other.ca,
        redis_tls_cert_file=client.cert,
        redis_tls_key_file=client.key,
    )
    redis = create_redis(settings)
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await redis.ping()
    finally:
        await redis.aclose()


async def test_rediss_without_a_client_certificate_is_refused(
    tls_redis: tuple[int, DevCA, IssuedFiles],
) -> None:
    port, _, server = tls_redis
    settings = CoreSettings(redis_url=f"rediss://127.0.0.1:{port}/0", redis_tls_ca_file=server.ca)
    redis = create_redis(settings)
    try:
        with pytest.raises(RedisConnectionError):
            await redis.ping()
    finally:
        await redis.aclose()
