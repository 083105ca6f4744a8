"""Where inbound events wait: parked while a portal's connection is unusable, dead-lettered when
they can never become a change.

Keys (the portal's hash tag keeps each portal's keys in one cluster slot):

- ``hubsync:inbound:parked`` — set of parked portals: the inbound worker reads neither their event
  stream nor their parked stream, so a parked portal costs nothing per step.
- ``hubsync:{<portal>}:inbound:park`` — hash: why (``reason``, ``detail``) and since when.
- ``hubsync:{<portal>}:inbound:parked`` — stream of the parked entries, oldest first (the event
  entry's fields plus ``from_id``, ``parked_ms``); replayed in order once the connection works.
- ``hubsync:{<portal>}:inbound:dlq`` — stream of dead letters (the entry's fields plus
  ``reason``, ``detail``, ``from_id``, ``dead_ms``, ``attempts``).
- ``hubsync:{<portal>}:inbound:failures`` — hash: entry id → non-transient failures so far.

Parking writes the portal's keys in one MULTI/EXEC and adds the portal to the set before and
after it; unparking removes it only once the parked stream is empty, and looks again after
removing it (see :func:`unpark_if_empty`): a park and an unpark racing leave the portal parked,
never parked entries that nobody replays.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from hubsync.core.errors import InvalidArgument, NotFound
from hubsync.core.event_entries import decode_entry
from hubsync.core.keys import (
    CONNECTION_CHANGES_CHANNEL,
    INBOUND_PARKED_PORTALS_KEY,
    EventEntry,
    events_key,
    inbound_dlq_key,
    inbound_failures_key,
    inbound_park_key,
    inbound_parked_key,
)
from hubsync.core.ready import DEFAULT_SHARDS, EVENTS, ReadySets
from hubsync.core.redis import as_str
from hubsync.core.streams import StreamEntry, stream_range

__all__ = [
    "CONNECTION_CHANGES_CHANNEL",
    "DEAD_LETTER",
    "DEAD_LETTER_MAX_LEN",
    "PARKED",
    "PARK_UNTIL_FIELD",
    "InboundEvent",
    "InboundQueues",
    "ParkedPortal",
    "copied",
    "count_failures",
    "park",
    "queue_dead_letter",
    "unpark_if_empty",
]

DEAD_LETTER_MAX_LEN = 100_000
_FAILURES_TTL_S = 7 * 86_400
_COPIED = tuple(name.encode() for name in EventEntry.COPIED)

PARKED = "parked"
DEAD_LETTER = "dlq"
#: The park hash's field naming until when a portal whose daily quota is spent waits (Unix ms).
PARK_UNTIL_FIELD = "until_ms"


def copied(fields: dict[bytes, bytes]) -> dict[FieldT, EncodableT]:
    """The fields of an event entry that travel with it into another stream."""
    return {k: v for k, v in fields.items() if k in _COPIED}


def queue_dead_letter(
    pipe: Any,
    portal: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    reason: str,
    detail: str,
    attempts: int,
) -> None:
    """Adds an XADD of one dead letter to ``pipe`` (a MULTI of the portal's keys)."""
    entry = copied(fields)
    # An entry moved once already (parked) keeps its original id.
    entry[b"from_id"] = fields.get(b"from_id", entry_id)
    entry |= {
        b"reason": reason.encode(),
        b"detail": detail[:500].encode(),
        b"dead_ms": str(int(time.time() * 1000)).encode(),
        b"attempts": str(attempts).encode(),
    }
    pipe.xadd(inbound_dlq_key(portal), entry, maxlen=DEAD_LETTER_MAX_LEN, approximate=True)


async def count_failures(redis: Redis, portal: str, entry_ids: Sequence[bytes]) -> list[int]:
    """Counts one more non-transient failure of each entry; returns the counts."""
    if not entry_ids:
        return []
    key = inbound_failures_key(portal)
    async with redis.pipeline(transaction=False) as pipe:
        for entry_id in entry_ids:
            pipe.hincrby(key, entry_id, 1)
        pipe.expire(key, _FAILURES_TTL_S)
        counts = await pipe.execute()
    return [int(c) for c in counts[:-1]]


async def park(
    redis: Redis,
    portal: str,
    entries: Sequence[tuple[bytes, dict[bytes, bytes]]],
    *,
    from_stream: str | None,
    group: str,
    reason: str,
    detail: str,
    until_ms: int | None = None,
) -> None:
    """Moves entries of ``from_stream`` (acked there) to the portal's parked stream and marks the
    portal parked. With ``from_stream`` None the entries are parked already: only the reason is
    updated. ``until_ms``: the portal's daily quota is spent, no re-check before then (kept in
    the park hash for every replica)."""
    now = str(int(time.time() * 1000))
    await redis.sadd(INBOUND_PARKED_PORTALS_KEY, portal)
    async with redis.pipeline(transaction=True) as pipe:
        if from_stream is not None:
            for entry_id, fields in entries:
                pipe.xadd(
                    inbound_parked_key(portal),
                    copied(fields) | {b"from_id": entry_id, b"parked_ms": now.encode()},
                )
            if entries:
                pipe.xack(from_stream, group, *[e[0] for e in entries])
        info = inbound_park_key(portal)
        pipe.hset(info, mapping={"reason": reason, "detail": detail[:500]})
        if until_ms is not None:
            pipe.hset(info, PARK_UNTIL_FIELD, str(until_ms))
        else:
            pipe.hdel(info, PARK_UNTIL_FIELD)
        pipe.hsetnx(info, "since_ms", now)
        await pipe.execute()
    await redis.sadd(INBOUND_PARKED_PORTALS_KEY, portal)


async def unpark_if_empty(redis: Redis, portal: str) -> bool:
    """Unparks the portal if its parked stream is empty; returns whether it did."""
    key = inbound_parked_key(portal)
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        if await pipe.xlen(key):
            await pipe.unwatch()  # type: ignore[no-untyped-call]
            return False
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.delete(inbound_park_key(portal))
        await pipe.execute()
    await redis.srem(INBOUND_PARKED_PORTALS_KEY, portal)
    if await redis.xlen(key):  # parked again meanwhile: stay parked
        await redis.sadd(INBOUND_PARKED_PORTALS_KEY, portal)
        return False
    return True


@dataclass(frozen=True)
class InboundEvent:
    """A parked or dead-lettered event, as the API shows it."""

    id: str
    queue: str
    reason: str
    detail: str
    queued_ms: int
    attempts: int
    from_id: str
    raw_event: bytes


@dataclass(frozen=True)
class ParkedPortal:
    """A parked portal, as the API shows it: why, since when, how many events wait."""

    portal_id: int
    reason: str
    detail: str
    since_ms: int
    event_count: int


class InboundQueues:
    """The operator's view of parked and dead-lettered inbound events (list, show, replay, purge)."""

    def __init__(self, redis: Redis, *, shards: int = DEFAULT_SHARDS) -> None:
        self.redis = redis
        self.ready = ReadySets(redis, EVENTS, shards)

    @staticmethod
    def _key(portal_id: int, queue: str) -> str:
        if portal_id <= 0:
            raise InvalidArgument("invalid portal", violations={"portal_id": "must be a positive portal id"})
        if queue == PARKED:
            return inbound_parked_key(portal_id)
        if queue == DEAD_LETTER:
            return inbound_dlq_key(portal_id)
        raise InvalidArgument("invalid queue", violations={"queue": "must be PARKED or DEAD_LETTER"})

    async def parked_portals(self) -> list[ParkedPortal]:
        """Return the parked portals, each with why it was parked, since when, and its event count."""
        members = sorted(
            int(m) for m in await self.redis.smembers(INBOUND_PARKED_PORTALS_KEY) if as_str(m).isdigit()
        )
        out = []
        for portal in members:
            info = await self.redis.hgetall(inbound_park_key(portal))
            count = await self.redis.xlen(inbound_parked_key(portal))
            out.append(
                ParkedPortal(
                    portal,
                    as_str(info.get(b"reason")),
                    as_str(info.get(b"detail")),
                    int(info.get(b"since_ms") or 0),
                    int(count),
                )
            )
        return out

    async def page(
        self, portal_id: int, queue: str, page_size: int, page_token: str
    ) -> tuple[list[InboundEvent], str]:
        """Return a page of a portal's parked or dead-lettered events, and the next page's token."""
        key = self._key(portal_id, queue)
        size = page_size if 0 < page_size <= 1000 else 100
        start = "-"
        if page_token:
            _check_ids([page_token], "page_token")
            start = "(" + page_token
        rows = await stream_range(self.redis, key, start, "+", count=size + 1)
        events = [self._event(queue, r[0], r[1]) for r in rows[:size]]
        token = events[-1].id if len(rows) > size else ""
        if queue == PARKED:
            info = await self.redis.hgetall(inbound_park_key(portal_id))
            events = [self._with_park_reason(e, info) for e in events]
        return events, token

    async def get(self, portal_id: int, queue: str, entry_id: str) -> InboundEvent:
        """Return one parked or dead-lettered event; NotFound when there is none."""
        key = self._key(portal_id, queue)
        _check_ids([entry_id], "id")
        rows = await stream_range(self.redis, key, entry_id, entry_id, count=1)
        if not rows:
            raise NotFound(f"no {queue} inbound event {entry_id} for portal {portal_id}")
        event = self._event(queue, rows[0][0], rows[0][1])
        if queue == PARKED:
            event = self._with_park_reason(event, await self.redis.hgetall(inbound_park_key(portal_id)))
        return event

    async def replay(self, portal_id: int, queue: str, ids: Sequence[str], everything: bool) -> int:
        """Dead letters go back to the portal's event stream (in order, marked ``origin`` replay);
        parked events are re-tried now (the connection is checked again at once)."""
        key = self._key(portal_id, queue)
        if queue == PARKED:
            count = int(await self.redis.xlen(key))
            if count:
                # Marked parked first (if it somehow was not), so every replica re-checks it.
                await self.redis.sadd(INBOUND_PARKED_PORTALS_KEY, str(portal_id))
            await self.redis.publish(CONNECTION_CHANGES_CHANNEL, str(portal_id))
            return count
        rows = await self._select(key, ids, everything)
        if not rows:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry_id, fields in rows:
                entry = copied(fields) | {EventEntry.ORIGIN.encode(): b"inbound-dlq-replay"}
                pipe.xadd(events_key(portal_id), entry)
                pipe.xdel(key, entry_id)
            pipe.hdel(inbound_failures_key(portal_id), *[f.get(b"from_id", b"") or b"-" for _i, f in rows])
            await pipe.execute()
        await self.ready.mark([portal_id])  # after the append: the mapper reads them again
        return len(rows)

    async def purge(self, portal_id: int, queue: str, ids: Sequence[str], everything: bool) -> int:
        """Delete the named events (or all) of a portal's queue; return how many were deleted."""
        key = self._key(portal_id, queue)
        rows = await self._select(key, ids, everything)
        if not rows:
            return 0
        return int(await self.redis.xdel(key, *[r[0] for r in rows]))

    async def _select(
        self, key: str, ids: Sequence[str], everything: bool
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if everything == bool(ids):
            raise InvalidArgument("name the events", violations={"ids": "give ids, or all (not both)"})
        if everything:
            return await stream_range(self.redis, key, "-", "+", count=None)
        _check_ids(ids, "ids")
        rows: list[StreamEntry] = []
        for entry_id in ids:
            rows += await stream_range(self.redis, key, entry_id, entry_id, count=1)
        return rows

    @staticmethod
    def _event(queue: str, entry_id: bytes, fields: dict[bytes, bytes]) -> InboundEvent:
        stamp = fields.get(b"dead_ms") or fields.get(b"parked_ms") or b"0"
        return InboundEvent(
            id=as_str(entry_id),
            queue=queue,
            reason=as_str(fields.get(b"reason")),
            detail=as_str(fields.get(b"detail")),
            queued_ms=int(stamp) if stamp.isdigit() else 0,
            attempts=int(fields.get(b"attempts") or 0),
            from_id=as_str(fields.get(b"from_id")),
            raw_event=decode_entry(fields.get(b"from_id", entry_id), fields).event_json(),
        )

    @staticmethod
    def _with_park_reason(event: InboundEvent, info: dict[bytes | str, bytes | str]) -> InboundEvent:
        return replace(event, reason=as_str(info.get(b"reason")), detail=as_str(info.get(b"detail")))


def _check_ids(ids: Sequence[str], name: str) -> None:
    bad = {}
    for i, value in enumerate(ids):
        ms, _, seq = value.partition("-")
        if not ms.isdigit() or not seq.isdigit():
            bad[f"{name}[{i}]" if name == "ids" else name] = "not an id this service issued"
    if bad:
        raise InvalidArgument("invalid id", violations=bad)
