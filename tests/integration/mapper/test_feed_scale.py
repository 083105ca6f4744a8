"""The change feed's cost follows work, not portals (issue 13), and an upgrade from the per-portal
polling feed delivers what it left behind.

Counts, never timings: the Redis commands the server executed (``INFO commandstats``) while a
subscriber is connected and idle, with 10 and with 2,000 known portals; and while a busy portal's
changes reach a subscriber beside 2,000 idle ones."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from redis.asyncio import Redis

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core import keys
from hubsync.core.channels import open_channel
from hubsync.core.keys import FEED_GROUPS_KEY, PORTALS_KEY, feed_key
from hubsync.mapper.transforms import MappingSet
from tests.helpers.mapper import running_mapper
from tests.helpers.mapper_feed_layout import (
    TYPES,
    change_fields,
    command_counts,
    delta,
    idle_portals,
    mappings,
    publish,
)

# Thousands of streams to set up, and a mapper started per case: generous on a loaded machine.
pytestmark = pytest.mark.timeout(480)

BUSY = 7
NO_VALIDATION: dict[str, object] = {"validate_properties": False}


async def _wait_until(check, timeout: float = 120.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _connected(
    stub: mapper_pb2_grpc.MapperServiceStub, redis: Redis, mapping_set: MappingSet, **request: object
) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
    """A subscriber past its start: a probe change reached it, and its group's one-off sweep of the
    known portals (where the feed has one) is over."""
    call = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c", **request))  # type: ignore[arg-type]
    await publish(redis, mapping_set, BUSY, {"probe": "P"})
    change = (await asyncio.wait_for(call.read(), 120)).change
    assert change.hubspot_id == "probe"
    await stub.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[change.ack_id]))
    sweep_key = getattr(keys, "feed_sweep_key", None)
    if sweep_key is not None:
        ready = [keys.feed_ready_key("g", t) for t in TYPES]

        async def swept() -> bool:
            return (
                bool(await redis.hexists(sweep_key("g"), "done"))
                and sum([await redis.zcard(k) for k in ready]) == 0
            )

        await _wait_until(swept, what="the sweep")
    return call


async def _idle_commands(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis, portals: int
) -> dict[str, int]:
    await redis.flushall()
    await idle_portals(redis, 1000, portals, "g")
    mapping_set = await mappings()
    async with (
        running_mapper(redis_url, caller_tokens, inbound_enabled=False, settings=NO_VALIDATION) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        # A short visibility timeout makes the subscriber look for unacked changes twice a second.
        call = await _connected(stub, redis, mapping_set, visibility_timeout=duration_pb2.Duration(seconds=2))
        before = await command_counts(redis)
        await asyncio.sleep(8)  # a window of idleness (what is asserted is a count, not a time)
        after = await command_counts(redis)
        call.cancel()
    return delta(before, after)


async def test_an_idle_subscriber_costs_the_same_with_10_or_2000_portals(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    small = await _idle_commands(redis_url, caller_tokens, redis, 10)
    large = await _idle_commands(redis_url, caller_tokens, redis, 2000)
    # Per-portal polling issued thousands (XAUTOCLAIM per portal and type per claim pass).
    assert sum(large.values()) <= 2 * sum(small.values()) + 40, (small, large)
    for command, calls in large.items():
        assert calls <= 2 * small.get(command, 0) + 20, (command, small, large)


async def _take(
    call: grpc.aio.UnaryStreamCall, stub, count: int, acked: bool = True
) -> list[mapper_pb2.Change]:  # type: ignore[no-untyped-def,type-arg]
    got: list[mapper_pb2.Change] = []
    while len(got) < count:
        change = (await asyncio.wait_for(call.read(), 120)).change
        got.append(change)
        if acked:
            await stub.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[change.ack_id]))
    return got


async def test_a_busy_portals_changes_reach_a_subscriber_beside_2000_idle_portals(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    await idle_portals(redis, 1000, 2000, "g")
    mapping_set = await mappings()
    async with (
        running_mapper(redis_url, caller_tokens, inbound_enabled=False, settings=NO_VALIDATION) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        call = await _connected(stub, redis, mapping_set)
        before = await command_counts(redis)
        reader = asyncio.create_task(_take(call, stub, 300))
        # 100 records, three changes each, published ten records at a time as the inbound worker does.
        for version in ("v1", "v2", "v3"):
            for batch in range(10):
                await publish(redis, mapping_set, BUSY, {f"r{batch}-{i}": version for i in range(10)})
        got = await reader
        after = await command_counts(redis)
        call.cancel()
    seen = [(c.hubspot_id, c.fields["first_name"]) for c in got]
    assert sorted(seen) == sorted(
        (f"r{b}-{i}", v) for b in range(10) for i in range(10) for v in ("v1", "v2", "v3")
    )
    for record in {r for r, _ in seen}:
        assert [v for r, v in seen if r == record] == ["v1", "v2", "v3"], record
    # What publishing, delivering and acking 300 changes cost (about 2,300-3,100 commands counting
    # those scripts run, ~35 per published batch of 10); walking 6,000 idle feed streams cost
    # 18,000 more (XPENDING per stream each time the subscriber reached max_in_flight).
    used = delta(before, after)
    assert sum(used.values()) <= 15 * 300 + 600, used


async def test_an_upgrade_delivers_every_change_left_on_the_per_portal_feed_exactly_once(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    """Today's layout: per-portal feed streams, group ``g`` on each, some changes read and acked,
    some read by a consumer and never acked, some never read. After the upgrade every change not
    acked reaches the group exactly once (acked with ack ids in today's form, also for changes the
    old consumer held), and none that was acked comes back."""
    portals = range(500, 540)
    expected: set[str] = set()
    acked_before: set[str] = set()
    old_ids: list[str] = []
    r: Any = redis
    await redis.sadd(FEED_GROUPS_KEY, "g")
    for portal in portals:
        await redis.sadd(PORTALS_KEY, str(portal))
        for t in TYPES:
            key = feed_key(portal, t)
            await redis.xgroup_create(key, "g", id="0", mkstream=True)
            ids = [(await r.xadd(key, change_fields(portal, t, str(n), f"n{n}"))).decode() for n in range(6)]
            # Two read and acked, two read by "old" and unacked, two never read.
            reply = await r.xreadgroup("g", "old", {key: ">"}, count=4)
            assert [e[0].decode() for e in reply[0][1]] == ids[:4]
            await redis.xack(key, "g", *ids[:2])
            acked_before |= {f"{portal}/{t}/{i}" for i in ids[:2]}
            expected |= {f"{portal}/{t}/{i}" for i in ids[2:]}
            old_ids.append(f"{portal}/{t}/{ids[2]}")
    # A subscriber acks one change the old consumer held, with the ack id it was given before.
    early = old_ids[::7]
    async with (
        running_mapper(redis_url, caller_tokens, inbound_enabled=False, settings=NO_VALIDATION) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        reply = await stub.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=early))
        assert reply.acked_count == len(early)
        expected -= set(early)
        request = mapper_pb2.SubscribeRequest(
            consumer_group="g",
            consumer="new",
            # Long enough that a change acked on receipt is never redelivered on a loaded machine;
            # the old consumer's changes are claimed once idle this long.
            visibility_timeout=duration_pb2.Duration(seconds=10),
            max_in_flight=1000,
        )
        call = stub.Subscribe(request)
        got = await _take(call, stub, len(expected))
        # Quiet again: the group's pending lists are empty and the feed has looked at every mark
        # (a redelivery would have come from one of them).
        marked = getattr(keys, "feed_ready_key", None), getattr(keys, "feed_pending_key", None)
        ready = [f("g", t) for f in marked if f is not None for t in TYPES]

        async def settled() -> bool:
            pending = sum(
                [int((await redis.xpending(feed_key(p, t), "g"))["pending"]) for p in portals for t in TYPES]
            )
            marks = sum([await redis.zcard(k) for k in ready])
            return pending == 0 and marks == 0

        await _wait_until(settled, what="every mark looked at")
        call.cancel()
    delivered = Counter(c.ack_id for c in got)
    assert set(delivered) == expected
    assert [a for a, n in delivered.items() if n > 1] == []
    assert not set(delivered) & (acked_before | set(early))
