"""Helpers for the change-feed tests: today's per-portal feed layout, publishing the way mapper
does, and counting the Redis commands the server executed."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.core.keys import FEED_GROUPS_KEY, PORTALS_KEY, FeedEntry, events_key, feed_key
from hubsync.mapper.hydrate import Hydration
from hubsync.mapper.inbound_events import RecordChange
from hubsync.mapper.publish import Publisher, Source
from hubsync.mapper.registry import MappingRegistry
from hubsync.mapper.settings import PACKAGED_MAPPINGS
from hubsync.mapper.transforms import MappingSet

TYPES = ("companies", "contacts", "deals")


def change_fields(portal: int, object_type: str, hs_id: str, name: str) -> dict[Any, Any]:
    """A feed entry as mapper writes it."""
    change = mapper_pb2.Change(
        portal_id=portal, object_type=object_type, hubspot_id=hs_id, kind=mapper_pb2.CHANGE_KIND_UPDATED
    )
    change.fields.update({"name": name})
    return {FeedEntry.CHANGE: change.SerializeToString(), FeedEntry.HUBSPOT_ID: hs_id}


async def idle_portals(redis: Redis, first: int, count: int, group: str) -> None:
    """``count`` portals as a long-running install holds them: known, each with one published
    change per object type that ``group`` read and acked long ago (its consumer group on every
    stream, as the per-portal feed created them)."""
    for start in range(first, first + count, 500):
        async with redis.pipeline(transaction=False) as pipe:
            for portal in range(start, min(start + 500, first + count)):
                pipe.sadd(PORTALS_KEY, str(portal))
                for t in TYPES:
                    pipe.xadd(feed_key(portal, t), change_fields(portal, t, "1", "old"))
                    pipe.xgroup_create(feed_key(portal, t), group, id="$")
            await pipe.execute()
    await redis.sadd(FEED_GROUPS_KEY, group)


async def mappings() -> MappingSet:
    registry = MappingRegistry(PACKAGED_MAPPINGS)
    await registry.load()
    return registry.snapshot()


async def publish(redis: Redis, mapping_set: MappingSet, portal: int, names: dict[str, str]) -> None:
    """Publishes one UPDATED contact change per (HubSpot id → first name) through mapper's own
    publisher, as the inbound worker does after hydrating them."""
    await redis.sadd(PORTALS_KEY, str(portal))
    changes = [
        RecordChange("contacts", hs_id, kind=mapper_pb2.CHANGE_KIND_UPDATED, properties={"firstname"})
        for hs_id in names
    ]
    found = {("contacts", hs_id): {"firstname": name} for hs_id, name in names.items()}
    await Publisher(redis, feed_max_len=100_000).publish(
        str(portal),
        Source(events_key(portal)),
        changes,
        Hydration(found=found),
        mapping_set,
        finished=[],
        dead=[],
    )


async def command_counts(redis: Redis) -> dict[str, int]:
    """Calls per command the server executed so far (``INFO commandstats``)."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands executed between two snapshots, without the snapshots' own INFO calls."""
    out = {k: after[k] - before.get(k, 0) for k in after if k != "info"}
    return {k: v for k, v in out.items() if v}
