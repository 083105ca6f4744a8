"""rediss:// against a real redis-server behind a TLS terminator on loopback.

The redis-server the tests use is built without TLS, so a small TLS proxy (tests/helpers/redis_tls.py)
terminates TLS (with a certificate of a throwaway CA, client certificates required) and relays the
bytes to it. The services' Redis client (create_redis) must verify the server against
HUBSYNC_REDIS_TLS_CA_FILE, present its client certificate, and refuse a server of another CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError

from hubsync.core.devcerts import DevCA, IssuedFiles
from hubsync.core.devredis import RedisProcess
from hubsync.core.redis import create_redis
from hubsync.core.settings import CoreSettings
from tests.helpers.redis_tls import TLSProxy, server_context


@pytest.fixture
def tls_redis(redis_process: RedisProcess, tmp_path: Path) -> Iterator[tuple[int, DevCA, IssuedFiles]]:
    """(port of the TLS endpoint, its CA, the server's files): a TLS proxy in front of the
    session's single redis-server. Redis Cluster over TLS: test_redis_cluster_tls.py."""
    ca = DevCA("redis CA")
    server = ca.write(tmp_path / "redis", "redis")
    proxy = TLSProxy(redis_process.port, server_context(server)).start()
    yield proxy.port, ca, server
    proxy.stop()


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
