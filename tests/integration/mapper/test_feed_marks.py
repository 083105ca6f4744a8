"""The change feed's ready sets on a real Redis: leases, no lost wake-up, fairness, crash repair."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any, cast

from redis.asyncio import Redis

from hubsync.core.keys import FEED_GROUPS_KEY, FEED_PUBLISHING_KEY, feed_nudge_key
from hubsync.core.ready import EVENTS, ReadySets
from hubsync.core.redis import redis_from_url
from hubsync.mapper.feed import ChangeFeed, Delivery, Subscription
from hubsync.mapper.feed_ready import FeedMarks
from tests.helpers.mapper_feed_layout import mappings, publish

TYPES = ["companies", "contacts", "deals"]


async def test_a_taken_mark_comes_back_when_its_subscriber_dies(redis: Redis) -> None:
    marks = FeedMarks(redis)
    await marks.mark("g", "ready", [("contacts", "7")])
    [taken] = await marks.take("g", "ready", TYPES, limit=10, lease_ms=300)
    assert (taken.object_type, taken.portal) == ("contacts", "7")
    assert await marks.take("g", "ready", TYPES, limit=10, lease_ms=300) == []
    # Never settled (the subscriber died mid-read): due again once the lease ends.
    deadline = time.monotonic() + 30
    while not (again := await marks.take("g", "ready", TYPES, limit=10, lease_ms=300)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert [(t.object_type, t.portal) for t in again] == [("contacts", "7")]


async def test_a_mark_made_while_the_stream_is_read_survives_the_release(redis: Redis) -> None:
    marks = FeedMarks(redis)
    await marks.mark("g", "ready", [("deals", "8")])
    [taken] = await marks.take("g", "ready", TYPES, limit=10, lease_ms=60_000)
    # The publisher appended after the subscriber's read and marked the stream again.
    assert await marks.mark("g", "ready", [("deals", "8")]) == 1
    assert await marks.release("g", "ready", taken) is False
    [taken] = await marks.take("g", "ready", TYPES, limit=10, lease_ms=60_000)
    assert taken.portal == "8"
    # Without a new mark the release removes it; each mark that made it due woke a waiter.
    assert await marks.release("g", "ready", taken) is True
    assert await marks.take("g", "ready", TYPES, limit=10, lease_ms=0) == []
    assert await redis.llen(feed_nudge_key("g")) == 2


async def test_a_requeued_stream_waits_behind_the_others(redis: Redis) -> None:
    marks = FeedMarks(redis)
    await marks.mark("g", "ready", [("contacts", "1")])
    await asyncio.sleep(0.01)
    await marks.mark("g", "ready", [("companies", "2")])
    [first] = await marks.take("g", "ready", TYPES, limit=1, lease_ms=60_000)
    assert first.portal == "1"
    await marks.requeue("g", "ready", first)  # it read a full quantum: more may wait
    [second] = await marks.take("g", "ready", TYPES, limit=1, lease_ms=60_000)
    assert second.portal == "2"
    # Only the portals a subscriber asked for are taken.
    assert await marks.take("g", "ready", TYPES, limit=5, lease_ms=60_000, portals=["9"]) == []
    assert [t.portal for t in await marks.take("g", "ready", TYPES, limit=5, lease_ms=1, portals=["1"])] == [
        "1"
    ]


async def test_marks_a_dead_publisher_never_made_are_repaired(redis: Redis) -> None:
    marks = FeedMarks(redis)
    await redis.sadd(FEED_GROUPS_KEY, "g", "h")
    await marks.begin("42")  # ... its transaction ran, then the replica died before marking
    assert await marks.repair(TYPES, age_ms=60_000) == 0  # a live publisher is left alone
    assert await marks.repair(TYPES, age_ms=0) == 1
    assert await redis.zcard(FEED_PUBLISHING_KEY) == 0
    for group in ("g", "h"):
        taken = await marks.take(group, "ready", TYPES, limit=10, lease_ms=60_000)
        assert sorted((t.object_type, t.portal) for t in taken) == [(t, "42") for t in TYPES]


async def test_the_feed_marks_with_the_queues_script(redis: Redis) -> None:
    """One ready-set implementation: a feed mark runs (and loads) the script the queues mark with."""
    await redis.script_flush()
    await FeedMarks(redis).mark("g", "ready", [("contacts", "7")])
    sha = ReadySets(redis, EVENTS).mark_command("7")[1]
    assert all(await redis.script_exists(sha))


async def test_a_publication_is_marked_for_every_group_after_redis_lost_its_scripts(redis: Redis) -> None:
    """A publisher marks its streams for the groups it knew and, in the same round trip, reads
    them again; Redis losing the mark script (restart, SCRIPT FLUSH) in between costs a reload,
    not a mark, and a group new since is marked too."""
    await redis.sadd(FEED_GROUPS_KEY, "g")
    marks = FeedMarks(redis)
    token = await marks.begin("7", ["contacts"])
    await marks.published("7", ["contacts"], token)  # learns group g
    [taken] = await marks.take("g", "ready", TYPES, limit=10, lease_ms=60_000)
    await marks.release("g", "ready", taken)
    await redis.sadd(FEED_GROUPS_KEY, "h")
    await redis.script_flush()
    token = await marks.begin("7", ["deals"])
    await marks.published("7", ["deals"], token)
    for group in ("g", "h"):
        again = await marks.take(group, "ready", TYPES, limit=10, lease_ms=60_000)
        assert [(t.object_type, t.portal) for t in again] == [("deals", "7")], group
    assert await redis.zcard(FEED_PUBLISHING_KEY) == 0


async def test_a_subscriber_reads_the_taken_streams_at_once(redis_url: str) -> None:
    """With many portals holding a change or two each, one read after the other (~3 round trips
    per stream, 16 streams a turn) kept the feed seconds behind mapper (bench/tenants
    fairness.py at 1,000 portals). The taken streams are read concurrently, each in order, and
    every change is delivered once."""
    client = redis_from_url(redis_url)
    mapping_set = await mappings()
    reads = {"now": 0, "most": 0}
    xreadgroup = client.xreadgroup

    async def counting(*args: Any, **kwargs: Any) -> Any:
        reads["now"] += 1
        reads["most"] = max(reads["most"], reads["now"])
        try:
            return await xreadgroup(*args, **kwargs)
        finally:
            reads["now"] -= 1

    client.xreadgroup = counting  # type: ignore[method-assign]
    feed = ChangeFeed(client)
    sub = Subscription(group="g", consumer="c", portal_ids=[], object_types=["contacts"], max_in_flight=1000)
    stream = cast(AsyncGenerator[Delivery, None], feed.deliveries(sub))
    try:
        await publish(client, mapping_set, 1, {"probe": "P"})
        first = await asyncio.wait_for(anext(stream), 60)  # the group exists from here on
        assert first.ack_id.startswith("1/contacts/")
        portals = list(range(100, 116))
        for p in portals:
            await publish(client, mapping_set, p, {f"r{p}": f"n{p}"})
        reads["most"] = 0
        got = [await asyncio.wait_for(anext(stream), 60) for _ in portals]
        assert sorted(int(d.ack_id.split("/")[0]) for d in got) == portals
        assert reads["most"] > 1
    finally:
        await stream.aclose()
        await client.aclose()
