"""Services reach Redis through Sentinel: a real redis-server master and a real sentinel
(the same binary in sentinel mode) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hubsync.core.devredis import RedisProcess
from hubsync.core.redis import create_redis
from hubsync.core.settings import CoreSettings
from tests.helpers.redis_sentinel import SentinelProcess


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[RedisProcess, int]]:
    master = RedisProcess(tmp_path / "master").start()
    sentinel = SentinelProcess(tmp_path / "sentinel", "hubsync-main", master.port)
    try:
        sentinel.start()
        yield master, sentinel.port
    finally:
        sentinel.stop()
        master.stop()


async def _until_answering(client: Redis) -> None:
    for _ in range(100):  # the sentinel needs a moment to start answering
        try:
            await client.ping()
            return
        except Exception:
            await asyncio.sleep(0.05)


async def test_client_finds_the_master_through_sentinel(sentinel_setup: tuple[RedisProcess, int]) -> None:
    master, port = sentinel_setup
    settings = CoreSettings(
        redis_url="redis://ignored-host:1/3",
        redis_sentinels=f"127.0.0.1:{port}",
        redis_sentinel_master="hubsync-main",
    )
    client = create_redis(settings)
    try:
        await _until_answering(client)
        await client.xadd("hubsync:{1}:events", {"event": "x"})
        assert await client.xlen("hubsync:{1}:events") == 1
    finally:
        await client.aclose()
    # it was the master, database 3 of redis_url
    direct = create_redis(CoreSettings(redis_url=master.url.rsplit("/", 1)[0] + "/3"))
    try:
        assert await direct.xlen("hubsync:{1}:events") == 1
    finally:
        await direct.aclose()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"redis_sentinels": "127.0.0.1:26379"}, "must be set together"),
        ({"redis_sentinel_master": "m"}, "must be set together"),
        ({"redis_sentinels": "nohost", "redis_sentinel_master": "m"}, "host:port"),
    ],
)
def test_bad_sentinel_settings_are_refused(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        CoreSettings(**env)  # type: ignore[arg-type]


async def test_a_sentinel_client_recovers_after_the_master_restarts(
    sentinel_setup: tuple[RedisProcess, int],
) -> None:
    """The master restarts on the same address: the first commands after it is back, many at
    once, all succeed (no pooled connection the restart closed is handed out and fails)."""
    master, port = sentinel_setup
    settings = CoreSettings(
        redis_sentinels=f"127.0.0.1:{port}", redis_sentinel_master="hubsync-main", redis_url="redis://x:1/0"
    )
    client = create_redis(settings)
    restarted = RedisProcess(master.data_dir, port=master.port)
    try:
        await _until_answering(client)
        await asyncio.gather(*(client.blpop(["hubsync:none"], timeout=0.2) for _ in range(8)))
        await asyncio.to_thread(master.stop)
        await asyncio.to_thread(restarted.start)
        results = await asyncio.gather(*(client.incr("hubsync:n") for _ in range(8)), return_exceptions=True)
        assert sorted(r for r in results if isinstance(r, int)) == list(range(1, 9)), results
    finally:
        await client.aclose()
        restarted.stop()
