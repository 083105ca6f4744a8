"""rediss+cluster:// against a real three-master Redis Cluster reachable only over TLS.

Each node announces the port of its own TLS terminator (``cluster-announce-port``), so the slot
map and every MOVED reply name TLS ports: the services' client (create_redis) must take TLS, its
CA, its client certificate and the password (every node requires one, as in production) to
every node, for commands, scripts, pipelines, transactions (:class:`_NodeTransaction`, its own
connections) and pub/sub (:func:`subscription`, its own connection), and refuse a cluster whose
certificate another CA signed, or a node whose certificate names another address. That nothing reached a
node's plaintext port is checked on the nodes: every client connection ``CLIENT LIST`` shows is
one the proxies opened.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisClusterException

from hubsync.core.devcerts import DevCA, IssuedFiles
from hubsync.core.devredis import CLUSTER_SLOTS
from hubsync.core.redis import create_redis, subscription
from hubsync.core.settings import CoreSettings
from tests.helpers.redis_tls import TLSRedisCluster, client_addresses
from tests.helpers.writer import writer_process

# Every node requires it, as in production (rediss+cluster:// and a password).
PASSWORD = secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedisCluster]:
    cluster = TLSRedisCluster(Path(tmp_path_factory.mktemp("tls-cluster")), password=PASSWORD).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client_files(tls_cluster: TLSRedisCluster, tmp_path_factory: pytest.TempPathFactory) -> IssuedFiles:
    return tls_cluster.ca.write(Path(tmp_path_factory.mktemp("client")), "hubsync")


def _settings(cluster: TLSRedisCluster, client: IssuedFiles, ca: Path | None = None) -> CoreSettings:
    return CoreSettings(
        redis_url=cluster.url,
        redis_password=SecretStr(PASSWORD),
        redis_tls_ca_file=ca or client.ca,
        redis_tls_cert_file=client.cert,
        redis_tls_key_file=client.key,
    )


@pytest.fixture
async def redis(tls_cluster: TLSRedisCluster, client_files: IssuedFiles) -> AsyncIterator[Redis]:
    client = create_redis(_settings(tls_cluster, client_files))
    await client.flushall()
    yield client
    await client.aclose()


def _key_on_each_node(cluster: TLSRedisCluster) -> list[str]:
    """A key (a hash tag) whose slot each node serves, in node order."""
    slots = [CLUSTER_SLOTS * i // len(cluster.nodes) for i in range(len(cluster.nodes))]
    keys: list[str] = []
    n = 0
    while len(keys) < len(slots):
        key = f"{{t{n}}}"
        slot = key_slot(key.encode())
        if slots[len(keys)] <= slot < CLUSTER_SLOTS * (len(keys) + 1) // len(slots):
            keys.append(key)
        n += 1
    return keys


def assert_only_tls_clients(cluster: TLSRedisCluster, *, on_every_node: bool = True) -> None:
    """Every client connection of every node came from its TLS proxy (and, ``on_every_node``,
    each node has some)."""
    seen = 0
    for index, proxy in enumerate(cluster.proxies):
        with cluster.direct(index) as node:
            ports = {int(a.rpartition(":")[2]) for a in client_addresses(node)}
        assert ports or not on_every_node, f"no client connection on node {index}"
        stray = sorted(ports - proxy.upstream_ports)
        assert not stray, f"node {index} has connections the TLS proxy did not open: {stray}"
        seen += len(ports)
    assert seen, "no client connection on any node"


async def test_commands_scripts_pipelines_and_transactions_go_over_tls(
    tls_cluster: TLSRedisCluster, redis: Redis
) -> None:
    # The slot map names the proxies' ports only.
    slot_map = await redis.execute_command("CLUSTER SLOTS")  # {(first, last): {"primary": (host, port)}}
    slot_ports = {int(served["primary"][1]) for served in slot_map.values()}
    assert slot_ports == {p.port for p in tls_cluster.proxies}

    keys = _key_on_each_node(tls_cluster)
    for key in keys:
        await redis.set(f"{key}:a", key)
    assert [await redis.get(f"{key}:a") for key in keys] == [k.encode() for k in keys]

    # A script with two keys of one slot, on each node.
    script = "redis.call('SET', KEYS[2], ARGV[1]); return redis.call('GET', KEYS[1])"
    for key in keys:
        assert await redis.eval(script, 2, f"{key}:a", f"{key}:b", "b") == key.encode()
        assert await redis.get(f"{key}:b") == b"b"

    # A transaction (WATCH, a read, MULTI/EXEC) on one slot of each node: _NodeTransaction.
    for key in keys:
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.watch(f"{key}:n")
            before = await pipe.get(f"{key}:n")
            pipe.multi()
            pipe.set(f"{key}:n", 1 if before is None else int(before) + 1)
            pipe.incr(f"{key}:n")
            assert await pipe.execute() == [True, 2]

    # A pipeline spanning every node's slots.
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.incr(f"{key}:n")
        pipe.get(f"{key}:a")
    assert await pipe.execute() == [v for key in keys for v in (3, key.encode())]

    for proxy in tls_cluster.proxies:
        assert proxy.connections > 0
    assert_only_tls_clients(tls_cluster)


async def test_a_moved_reply_sends_the_client_to_a_tls_port(
    tls_cluster: TLSRedisCluster, redis: Redis
) -> None:
    """MOVED names the announced (TLS) port, so a redirection stays on TLS."""
    key = _key_on_each_node(tls_cluster)[1]
    with tls_cluster.direct(0) as wrong, pytest.raises(MovedError) as moved:  # node 0 serves key 0's slots
        wrong.get(key)
    assert moved.value.port == tls_cluster.proxies[1].port
    await redis.set(key, b"x")
    assert await redis.get(key) == b"x"
    assert_only_tls_clients(tls_cluster)


async def test_pub_sub_on_every_node_goes_over_tls(tls_cluster: TLSRedisCluster, redis: Redis) -> None:
    """subscription() opens its own connection to a node (a different one each time)."""
    before = [p.connections for p in tls_cluster.proxies]
    for n in range(len(tls_cluster.proxies)):
        channel = f"tls-announcements-{n}"
        async with subscription(redis, channel) as pubsub:
            message = None
            for _ in range(150):  # until the subscription is in place (up to ~30 s)
                await redis.publish(channel, f"hello {n}")
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if message is not None:
                    break
            assert message is not None and message["data"] == f"hello {n}".encode()
            assert_only_tls_clients(tls_cluster)
    # One subscription per node: each proxy saw a new connection.
    assert all(p.connections > b for p, b in zip(tls_cluster.proxies, before, strict=True))


async def test_a_cluster_of_another_ca_is_refused_without_plaintext(
    tls_cluster: TLSRedisCluster, client_files: IssuedFiles, tmp_path: Path
) -> None:
    other = DevCA("not the redis CA").write(tmp_path / "other", "x")
    received = _connections_received(tls_cluster)
    client = create_redis(_settings(tls_cluster, client_files, ca=other.ca))
    try:
        # No node answered: redis-py's "cannot be connected", caused by the failed verification.
        with pytest.raises(RedisClusterException, match="CERTIFICATE_VERIFY_FAILED") as refused:
            await asyncio.wait_for(client.get("anything"), 30)
        assert isinstance(refused.value.__cause__, RedisConnectionError)
    finally:
        await client.aclose()
    # Nothing reached a node: only the connection of this check is new on each.
    assert _connections_received(tls_cluster) == [r + 1 for r in received]


async def test_a_node_whose_certificate_names_another_address_is_refused(
    tls_cluster: TLSRedisCluster, client_files: IssuedFiles, tmp_path: Path
) -> None:
    """The host name is verified for every node the slot map names, not only the seeds: a node
    (the third) presenting a certificate of the right CA for another address is refused, while
    the nodes whose certificates name them keep working."""
    keys = _key_on_each_node(tls_cluster)
    cert, key = tls_cluster.ca.issue("redis", ("redis.elsewhere.test",), ip_addresses=())
    (tmp_path / "elsewhere.crt").write_bytes(cert)
    (tmp_path / "elsewhere.key").write_bytes(key)
    proxy = tls_cluster.proxies[2]
    proxy.context.load_cert_chain(tmp_path / "elsewhere.crt", tmp_path / "elsewhere.key")
    client = create_redis(_settings(tls_cluster, client_files))
    try:
        await client.set(f"{keys[0]}:a", b"fine")
        assert await client.get(f"{keys[0]}:a") == b"fine"
        with pytest.raises(
            (RedisConnectionError, RedisClusterException), match=re.escape("not valid for '127.0.0.1'")
        ):
            await asyncio.wait_for(client.set(f"{keys[2]}:a", b"refused"), 60)
    finally:
        await client.aclose()
        proxy.context.load_cert_chain(tls_cluster.server.cert, tls_cluster.server.key)
    with tls_cluster.direct(2) as node:
        assert not node.exists(f"{keys[2]}:a")


def _connections_received(cluster: TLSRedisCluster) -> list[int]:
    """Each node's count of connections accepted so far (this check's own included)."""
    counts = []
    for index in range(len(cluster.nodes)):
        with cluster.direct(index) as node:
            counts.append(int(node.info("stats")["total_connections_received"]))
    return counts


async def test_a_writer_process_runs_on_the_tls_cluster(
    tls_cluster: TLSRedisCluster, client_files: IssuedFiles, caller_tokens: dict[str, str]
) -> None:
    """``python -m hubsync.writer`` with the TLS settings in its environment: it becomes SERVING
    (its ready lease, scripts and ready-nudge subscription live in Redis) over TLS only."""
    env = {
        "HUBSYNC_REDIS_PASSWORD": PASSWORD,
        "HUBSYNC_REDIS_TLS_CA_FILE": str(client_files.ca),
        "HUBSYNC_REDIS_TLS_CERT_FILE": str(client_files.cert),
        "HUBSYNC_REDIS_TLS_KEY_FILE": str(client_files.key),
    }
    before = sum(p.connections for p in tls_cluster.proxies)
    async with writer_process(
        redis_url=tls_cluster.url,
        caller_tokens=caller_tokens,
        hubspot_api_base="http://127.0.0.1:9",
        auth_address="127.0.0.1:9",
        env=env,
        ready_timeout=60,
    ):
        assert sum(p.connections for p in tls_cluster.proxies) > before
        assert_only_tls_clients(tls_cluster, on_every_node=False)
