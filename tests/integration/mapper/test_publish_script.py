"""Publishing a batch on a real Redis: once under races, all or nothing, and what it costs.

Counts, never timings: the commands the server executed (``INFO commandstats``).
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.core.keys import FEED_GROUPS_KEY, FEED_PUBLISHING_KEY, events_key, feed_key, feed_ready_key
from hubsync.mapper._publish_script import PUBLISH_SCRIPT, Writes
from hubsync.mapper.hydrate import Hydration
from hubsync.mapper.inbound_events import RecordChange
from hubsync.mapper.publish import Publisher, Source
from tests.helpers.mapper_feed_layout import command_counts, delta, mappings

PORTAL = 4242


def _change(hs_id: str) -> RecordChange:
    return RecordChange("contacts", hs_id, kind=mapper_pb2.CHANGE_KIND_UPDATED, properties={"firstname"})


async def _publish(publisher: Publisher, names: dict[str, str], finished: tuple[bytes, ...] = ()) -> None:
    found = {
        ("contacts", hs_id): {"firstname": name, "external_id": f"x{hs_id}"} for hs_id, name in names.items()
    }
    await publisher.publish(
        str(PORTAL),
        Source(events_key(PORTAL)),
        [_change(h) for h in names],
        Hydration(found=found),
        await mappings(),
        finished=list(finished),
        dead=[],
    )


async def test_replicas_racing_on_the_same_change_publish_it_once(redis: Redis) -> None:
    # Ten replicas (publishers of their own) hold the same change (a duplicated webhook, a
    # reclaimed entry) and publish at once: each reads "not published yet", one script applies.
    await redis.sadd(FEED_GROUPS_KEY, "g")
    await asyncio.gather(*(_publish(Publisher(redis, feed_max_len=1000), {"1": "Ada"}) for _ in range(10)))
    assert await redis.xlen(feed_key(PORTAL, "contacts")) == 1
    # A different state of the record is a new change; its repeat is not.
    await asyncio.gather(*(_publish(Publisher(redis, feed_max_len=1000), {"1": "Bea"}) for _ in range(10)))
    assert await redis.xlen(feed_key(PORTAL, "contacts")) == 2
    assert await redis.zcard(FEED_PUBLISHING_KEY) == 0  # every publication recorded was forgotten


async def test_the_writes_run_only_if_every_expected_value_holds(redis: Redis) -> None:
    await redis.set("{p}:a", b"\x00one")
    await redis.hset("{p}:h", mapping={"f": "1"})

    def writes(a: bytes | None, f: bytes | None, g: bytes | None) -> Writes:
        w = Writes()
        w.expect("{p}:a", (), [a])
        w.expect("{p}:h", ("f", "g"), [f, g])
        w.set("{p}:out", "done", ex=60)
        w.xadd("{p}:s", {"k": "v"}, maxlen=10)
        return w

    # Any value that differs (a string, a hash field, a field expected absent) writes nothing.
    assert not await PUBLISH_SCRIPT.run(redis, writes(b"\x00two", b"1", None))
    assert not await PUBLISH_SCRIPT.run(redis, writes(b"\x00one", b"2", None))
    assert not await PUBLISH_SCRIPT.run(redis, writes(b"\x00one", b"1", b""))
    assert not await PUBLISH_SCRIPT.run(redis, writes(None, b"1", None))
    assert await redis.exists("{p}:out", "{p}:s") == 0
    # All hold: every write runs.
    assert await PUBLISH_SCRIPT.run(redis, writes(b"\x00one", b"1", None))
    assert await redis.get("{p}:out") == b"done"
    assert await redis.xlen("{p}:s") == 1
    # The script survives Redis losing it (a restart, SCRIPT FLUSH).
    await redis.script_flush()
    assert await PUBLISH_SCRIPT.run(redis, writes(b"\x00one", b"1", None))
    assert await redis.xlen("{p}:s") == 2


async def test_publishing_a_change_takes_no_watch_and_marks_the_group(redis: Redis, redis_kind: str) -> None:
    await redis.sadd(FEED_GROUPS_KEY, "g")
    publisher = Publisher(redis, feed_max_len=1000)
    await _publish(publisher, {"1": "Ada"})  # the group is learned here
    await redis.xgroup_create(events_key(PORTAL), "mapper", id="0", mkstream=True)
    added = await redis.xadd(events_key(PORTAL), {"e": "1"})
    entry = added if isinstance(added, bytes) else added.encode()
    await redis.xreadgroup("mapper", "c", {events_key(PORTAL): ">"})
    before = await command_counts(redis)
    await _publish(publisher, {"2": "Bea"}, finished=(entry,))
    used = delta(before, await command_counts(redis))
    if redis_kind == "single":  # a cluster client's INFO is one node's
        # Was: WATCH, the reads, MULTI ... EXEC, and SMEMBERS and the mark apart.
        assert not {"watch", "multi", "exec", "unwatch"} & set(used), used
        # The record of the publication, the publish script, the group's mark.
        assert used.get("evalsha") == 3, used
        assert used.get("smembers") == 1, used
    assert await redis.xlen(feed_key(PORTAL, "contacts")) == 2
    assert (await redis.xpending(events_key(PORTAL), "mapper"))["pending"] == 0
    assert await redis.zscore(feed_ready_key("g", "contacts"), str(PORTAL)) is not None
    # A group added since is marked too (in a round trip of its own, once).
    await redis.sadd(FEED_GROUPS_KEY, "h")
    await _publish(publisher, {"3": "Cy"})
    assert await redis.zscore(feed_ready_key("h", "contacts"), str(PORTAL)) is not None


async def test_a_publication_record_is_forgotten_in_the_next_round_trip(redis: Redis) -> None:
    # The inbound worker's publisher forgets a publication (marks made) in the next one's reads.
    await redis.sadd(FEED_GROUPS_KEY, "g")
    publisher = Publisher(redis, feed_max_len=1000, forget_later=True)
    await _publish(publisher, {"1": "Ada"})
    [first] = await redis.zrange(FEED_PUBLISHING_KEY, 0, -1)
    await _publish(publisher, {"2": "Bea"})
    left = await redis.zrange(FEED_PUBLISHING_KEY, 0, -1)
    assert first not in left and len(left) == 1
    # The worker's housekeeping forgets the last one; a publisher that died before would have
    # left it to the repair, which marks its streams again (a subscriber finds nothing new).
    await publisher.marks.forget()
    assert await redis.zcard(FEED_PUBLISHING_KEY) == 0
    assert await redis.zscore(feed_ready_key("g", "contacts"), str(PORTAL)) is not None
