"""``tenant show|delete`` on Redis Cluster: a portal's keys are read from the node that owns its
slot only (``CLUSTER GETKEYSINSLOT``), and the registries of portals, on other nodes, are cleaned.

The three-master cluster is started here from the same ``redis-server`` binary (no replicas);
when the shared cluster fixture lands (branch ``cluster``), this test can use it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from hubsync.core import keys
from hubsync.core.devredis import free_port, redis_server_binary
from hubsync.core.tenants import TenantStore

SLOTS = 16384


@contextlib.contextmanager
def _masters(tmp_path: Path, count: int) -> Iterator[list[int]]:
    ports = [free_port() for _ in range(count)]
    procs = []
    try:
        for port in ports:
            work = tmp_path / str(port)
            work.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        redis_server_binary(),
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(work / "nodes.conf"),
                        "--dir",
                        str(work),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


async def _form_cluster(ports: list[int]) -> None:
    nodes = [Redis(host="127.0.0.1", port=p) for p in ports]
    try:
        for node in nodes:  # a loaded machine may take seconds to start them
            for _ in range(400):
                with contextlib.suppress(RedisConnectionError):
                    if await node.ping():
                        break
                await asyncio.sleep(0.05)
        share = SLOTS // len(nodes) + 1
        for i, node in enumerate(nodes):
            slots = list(range(i * share, min((i + 1) * share, SLOTS)))
            await node.execute_command("CLUSTER ADDSLOTS", *slots)
        for port in ports[1:]:
            await nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        for _ in range(800):
            infos = [_text(await n.execute_command("CLUSTER INFO")) for n in nodes]
            if all("cluster_state:ok" in i and "cluster_known_nodes:3" in i for i in infos):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the local cluster did not become ok")
    finally:
        for node in nodes:
            await node.aclose()


def _text(value: object) -> str:
    """CLUSTER INFO's answer as text (redis-py parses it into a dict on some versions)."""
    if isinstance(value, dict):
        return "\n".join(f"{_text(k)}:{_text(v)}" for k, v in value.items())
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[RedisCluster]:
    with _masters(tmp_path, 3) as ports:
        await _form_cluster(ports)
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        await client.initialize()
        try:
            yield client
        finally:
            await client.aclose()


async def _fill(redis: RedisCluster, portal: int) -> int:
    await redis.hset(keys.auth_connection_key(portal), mapping={"v": 1, "state": "active"})  # type: ignore[misc]
    await redis.xadd(keys.events_key(portal), {"event": "{}"})
    for hour in range(20):
        await redis.sadd(keys.dedupe_key(portal, hour, 0), "digest")  # type: ignore[misc]
    await redis.sadd(keys.PORTALS_KEY, str(portal))  # type: ignore[misc]
    await redis.zadd(keys.AUTH_CONNECTIONS_KEY, {str(portal): portal})
    return 22


async def test_delete_on_a_cluster_reads_one_slot_and_cleans_every_registry(cluster: RedisCluster) -> None:
    # Portals whose slots sit on different nodes, and share none.
    portals = [42, 43, 4242]
    slots = {cluster.keyslot(keys.events_key(p)) for p in portals}
    assert len(slots) == 3
    for p in portals:
        assert await _fill(cluster, p) == 22
    store = TenantStore(cluster)  # type: ignore[arg-type]

    shown = await store.show(42)
    assert sum(shown.keys.values()) == 22
    assert set(shown.registries) == {keys.PORTALS_KEY, keys.AUTH_CONNECTIONS_KEY}

    report = await store.delete(42)
    assert report.total == 22 and report.remaining == 0
    assert set(report.registries) == {keys.PORTALS_KEY, keys.AUTH_CONNECTIONS_KEY}
    assert (await store.census(42)).total == 0
    for other in (43, 4242):
        assert (await store.census(other)).total == 22
        assert await cluster.sismember(keys.PORTALS_KEY, str(other))  # type: ignore[misc]
    rows, _ = await store.list_portals(100)
    assert sorted(r.portal_id for r in rows) == [43, 4242]
