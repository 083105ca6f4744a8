"""The connections to the sentinels themselves are as secure as the master's: the sentinels'
password (``HUBSYNC_REDIS_SENTINEL_PASSWORD``, the sentinels' ``requirepass``) and, with
``rediss://``, TLS with the master's CA and client certificate.

Real processes on loopback: a redis-server master and a sentinel (the same binary in sentinel
mode). That redis-server is built without TLS, so TLS proxies (tests/helpers/redis_tls.py) stand in
front: one before the sentinel, and one at the address the sentinel monitors and names to clients,
relaying TLS (clients) and plaintext (the sentinel's own monitoring) to the master.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from hubsync.core.devcerts import DevCA, IssuedFiles
from hubsync.core.devredis import RedisProcess
from hubsync.core.redis import create_redis
from hubsync.core.settings import CoreSettings
from tests.helpers.redis_sentinel import SentinelProcess
from tests.helpers.redis_tls import TLSProxy, server_context

MASTER = "hubsync-main"
MASTER_PASSWORD = "master-secret-4f1c"
SENTINEL_PASSWORD = "sentinel-secret-9a2e"


@pytest.fixture
def guarded_sentinel(tmp_path: Path) -> Iterator[tuple[RedisProcess, SentinelProcess]]:
    """A master requiring MASTER_PASSWORD and a sentinel requiring SENTINEL_PASSWORD."""
    master = RedisProcess(tmp_path / "master").start()
    sentinel = SentinelProcess(
        tmp_path / "sentinel",
        MASTER,
        master.port,
        password=SENTINEL_PASSWORD,
        master_password=MASTER_PASSWORD,
    )
    try:
        with SyncRedis(port=master.port) as direct:
            direct.config_set("requirepass", MASTER_PASSWORD)
        sentinel.start()
        yield master, sentinel
    finally:
        sentinel.stop()
        master.stop()


def _settings(sentinel_port: int, **extra: object) -> CoreSettings:
    return CoreSettings(
        redis_url="redis://ignored-host:1/2",
        redis_password=SecretStr(MASTER_PASSWORD),
        redis_sentinels=f"127.0.0.1:{sentinel_port}",
        redis_sentinel_master=MASTER,
        **extra,  # type: ignore[arg-type]
    )


async def test_the_sentinels_password_reaches_the_master(
    guarded_sentinel: tuple[RedisProcess, SentinelProcess],
) -> None:
    master, sentinel = guarded_sentinel
    client = create_redis(_settings(sentinel.port, redis_sentinel_password=SecretStr(SENTINEL_PASSWORD)))
    try:
        await client.set("hubsync:sentinel-auth", b"via the sentinel")
    finally:
        await client.aclose()
    with SyncRedis(port=master.port, db=2, password=MASTER_PASSWORD) as direct:
        assert direct.get("hubsync:sentinel-auth") == b"via the sentinel"


@pytest.mark.parametrize(
    ("sentinel_password", "answer", "hint"),
    [
        # No password at all reaches the sentinel (NOAUTH): the master's is not sent in its place.
        (None, "authenticat", "HUBSYNC_REDIS_SENTINEL_PASSWORD (the sentinels' requirepass) is not set"),
        ("not-the-sentinel-password", "invalid username-password", "check HUBSYNC_REDIS_SENTINEL_PASSWORD"),
    ],
)
async def test_a_missing_or_wrong_sentinel_password_is_a_clear_error(
    guarded_sentinel: tuple[RedisProcess, SentinelProcess],
    sentinel_password: str | None,
    answer: str,
    hint: str,
) -> None:
    _, sentinel = guarded_sentinel
    extra = {} if sentinel_password is None else {"redis_sentinel_password": SecretStr(sentinel_password)}
    client = create_redis(_settings(sentinel.port, **extra))
    try:
        with pytest.raises(RedisConnectionError) as raised:
            await client.ping()
    finally:
        await client.aclose()
    message = str(raised.value)
    assert f"sentinel 127.0.0.1:{sentinel.port}" in message
    assert answer in message
    assert hint in message
    for secret in (MASTER_PASSWORD, SENTINEL_PASSWORD, "not-the-sentinel-password"):
        assert secret not in message


@dataclass
class TLSSentinel:
    """A master and a sentinel reachable by clients only over TLS."""

    master: RedisProcess
    sentinel: SentinelProcess
    sentinel_front: TLSProxy  # TLS only, before the sentinel
    master_front: TLSProxy  # the address the sentinel monitors and names: TLS and plaintext
    ca: DevCA
    server: IssuedFiles


@pytest.fixture
def tls_sentinel(tmp_path: Path) -> Iterator[TLSSentinel]:
    ca = DevCA("redis sentinel CA")
    server = ca.write(tmp_path / "redis", "redis")
    master = RedisProcess(tmp_path / "master").start()
    master_front = TLSProxy(master.port, server_context(server), plaintext_too=True).start()
    sentinel = SentinelProcess(tmp_path / "sentinel", MASTER, master_front.port)
    sentinel_front: TLSProxy | None = None
    try:
        sentinel.start()
        sentinel_front = TLSProxy(sentinel.port, server_context(server)).start()
        yield TLSSentinel(master, sentinel, sentinel_front, master_front, ca, server)
    finally:
        if sentinel_front is not None:
            sentinel_front.stop()
        sentinel.stop()
        master_front.stop()
        master.stop()


async def test_rediss_asks_the_sentinels_over_tls(tls_sentinel: TLSSentinel, tmp_path: Path) -> None:
    """The only sentinel hubsync is given speaks TLS only (client certificate required): with
    ``rediss://`` the client asks it over TLS, then reaches the master it names over TLS too."""
    setup = tls_sentinel
    client_files = setup.ca.write(tmp_path / "client", "hubsync")
    settings = CoreSettings(
        redis_url="rediss://ignored-host:1/4",
        redis_sentinels=f"127.0.0.1:{setup.sentinel_front.port}",
        redis_sentinel_master=MASTER,
        redis_tls_ca_file=client_files.ca,
        redis_tls_cert_file=client_files.cert,
        redis_tls_key_file=client_files.key,
    )
    client = create_redis(settings)
    try:
        await client.set("hubsync:sentinel-tls", b"over TLS")
        assert await client.get("hubsync:sentinel-tls") == b"over TLS"
    finally:
        await client.aclose()
    assert setup.sentinel_front.connections >= 1  # TLS handshakes completed at the sentinel's proxy
    assert setup.master_front.connections >= 1  # and at the master's, for the client's commands
    with SyncRedis(port=setup.master.port, db=4) as direct:
        assert direct.get("hubsync:sentinel-tls") == b"over TLS"


async def test_rediss_refuses_a_sentinel_of_another_ca(tls_sentinel: TLSSentinel, tmp_path: Path) -> None:
    """The sentinels' certificate is verified against HUBSYNC_REDIS_TLS_CA_FILE, as the master's."""
    setup = tls_sentinel
    client_files = setup.ca.write(tmp_path / "client", "hubsync")
    other = DevCA("not the redis CA").write(tmp_path / "other", "x")
    settings = CoreSettings(
        redis_url="rediss://ignored-host:1/0",
        redis_sentinels=f"127.0.0.1:{setup.sentinel_front.port}",
        redis_sentinel_master=MASTER,
        redis_tls_ca_file=other.ca,
        redis_tls_cert_file=client_files.cert,
        redis_tls_key_file=client_files.key,
    )
    client = create_redis(settings)
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()
    finally:
        await client.aclose()
    assert setup.master_front.connections == 0  # no master was named, none was reached
