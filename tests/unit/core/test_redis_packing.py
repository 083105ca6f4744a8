"""Every client ``create_redis`` makes packs its commands with hiredis, into the bytes redis-py's
own packer makes (libs/hubsync/core/redis.py, ``_CPacking``)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from hubsync.core.redis import _CPacking, c_packing, create_redis
from hubsync.core.settings import CoreSettings


def _both(*args: Any) -> tuple[bytes, bytes]:
    ours, theirs = c_packing(Connection)(), Connection()
    return b"".join(ours.pack_command(*args)), b"".join(theirs.pack_command(*args))


def _arg(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return "".join(rng.choice("aé{}:|= 0\u20ac\U0001f600") for _ in range(rng.randrange(0, 40)))
    if kind == 1:
        return rng.randbytes(rng.randrange(0, 9000))  # past redis-py's 6,000-byte chunking too
    if kind == 2:
        return rng.randrange(-(10**20), 10**20)
    if kind == 3:
        scaled = rng.random() * 10 ** rng.randrange(-9, 20)
        return rng.choice([0.0, -1.5, 1e20, 1e-7, 3.141592653589793, scaled])
    if kind == 4:
        return memoryview(rng.randbytes(rng.randrange(0, 100)))
    return rng.randrange(0, 1000)


def test_the_bytes_are_redis_pys_for_every_kind_of_argument() -> None:
    rng = random.Random(13)
    for _ in range(2_000):
        args = ["EVALSHA", *(_arg(rng) for _ in range(rng.randrange(0, 60)))]
        ours, theirs = _both(*args)
        assert ours == theirs, args


def test_what_hiredis_does_not_take_goes_to_redis_pys_packer() -> None:
    # a bytearray, a command of two words, a command given as bytes: packed as redis-py packs them
    for args in (("SET", "k", bytearray(b"v")), ("CONFIG GET", "maxmemory"), (b"GET", "k")):
        ours, theirs = _both(*args)
        assert ours == theirs
    # a value Redis has no encoding for is refused as redis-py refuses it
    bad: Any
    for bad in (None, True, object()):
        with pytest.raises(DataError):
            c_packing(Connection)().pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:1/0", Connection),
        ("rediss://127.0.0.1:1/0", SSLConnection),
        ("unix:///tmp/hubsync-none.sock", UnixDomainSocketConnection),
    ],
)
async def test_single_server_clients_pack_with_hiredis(url: str, base: type) -> None:
    client = create_redis(CoreSettings(redis_url=url))
    try:
        cls = client.connection_pool.connection_class
        assert issubclass(cls, _CPacking) and issubclass(cls, base)
    finally:
        await client.aclose()


async def test_sentinel_clients_pack_with_hiredis() -> None:
    settings = CoreSettings(
        redis_url="redis://ignored:1/0", redis_sentinels="127.0.0.1:1", redis_sentinel_master="m"
    )
    client = create_redis(settings)
    try:
        assert issubclass(client.connection_pool.connection_class, _CPacking)
    finally:
        await client.aclose()


async def test_cluster_clients_pack_with_hiredis_on_known_and_later_nodes() -> None:
    client: Any = create_redis(CoreSettings(redis_url="redis+cluster://127.0.0.1:1,127.0.0.1:2"))
    try:
        for node in client.nodes_manager.startup_nodes.values():
            assert issubclass(node.connection_class, _CPacking)
        # nodes learnt from the slot map are made from the manager's connection settings
        assert issubclass(client.nodes_manager.connection_kwargs["connection_class"], _CPacking)
    finally:
        await client.aclose()
