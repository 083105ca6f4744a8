"""How much inbound work waits: the lag of the portals with work, the sweeper's look at a page of
portals, and the depth gauge of the parked and dead-letter queues.

Each costs work proportional to the portals it is given (the portals with work, a sweeper's
page, the parked portals and those with dead letters), never a pass over every known portal.
"""

from __future__ import annotations

from opentelemetry import metrics
from redis.asyncio import Redis

from hubsync.core.keys import INBOUND_DLQ_PORTALS_KEY, events_key, inbound_dlq_key, inbound_parked_key
from hubsync.core.ready import group_work
from hubsync.core.redis import as_str, group_lag
from hubsync.mapper.publish import EVENTS_GROUP

__all__ = ["lag", "probe", "record_depth"]

_meter = metrics.get_meter("hubsync.mapper")
_depth = _meter.create_gauge(
    "hubsync.mapper.inbound.depth", description="Inbound events parked or dead-lettered, all portals"
)


async def lag(redis: Redis, portals: list[str]) -> int:
    """Undelivered plus pending entries of the portals with work (group ``mapper``)."""
    if not portals:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for portal in portals:
            pipe.xinfo_groups(events_key(portal))
        replies = await pipe.execute(raise_on_error=False)
    total = 0
    for portal, rows in zip(portals, replies, strict=True):
        for g in rows if isinstance(rows, list) else []:
            if as_str(g["name"]) == EVENTS_GROUP:
                total += await group_lag(redis, events_key(portal), g) + int(g.get("pending") or 0)
    return total


async def probe(redis: Redis, portals: list[str]) -> list[tuple[bool, bool]]:
    """The sweeper's look at a page of portals: (undelivered entries, pending entries) each."""
    return await group_work(redis, [events_key(p) for p in portals], EVENTS_GROUP)


async def record_depth(redis: Redis, parked_portals: list[str]) -> None:
    """Set ``hubsync.mapper.inbound.depth`` of the parked and dead-letter queues, summed over the
    parked portals and the portals with dead letters (no per-portal label; a portal whose dead
    letters are gone leaves the set)."""
    parked = 0
    for portal in parked_portals:
        parked += int(await redis.xlen(inbound_parked_key(portal)))
    dead = 0
    for raw in await redis.smembers(INBOUND_DLQ_PORTALS_KEY):
        portal = as_str(raw)
        n = int(await redis.xlen(inbound_dlq_key(portal)))
        if n == 0:
            await redis.srem(INBOUND_DLQ_PORTALS_KEY, portal)
            if await redis.xlen(inbound_dlq_key(portal)):  # added meanwhile
                await redis.sadd(INBOUND_DLQ_PORTALS_KEY, portal)
        dead += n
    _depth.set(parked, {"queue": "parked"})
    _depth.set(dead, {"queue": "dlq"})
