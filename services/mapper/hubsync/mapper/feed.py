"""The change feed: mapped HubSpot changes for internal services, at least once, with acks.

Storage is Redis streams, one per portal and object type (``hubsync:{<portal>}:feed:<type>``),
so every mapper replica serves the same feed and changes of one record stay in order. Each
subscriber consumer group is a Redis consumer group on those streams (created at the stream's
start, so a new group sees every retained change). Delivery is XREADGROUP; an unacked change is
claimed again (XAUTOCLAIM) once it has been idle for the subscriber's visibility timeout, which
also redelivers a dead consumer's changes to a live one; a restarted consumer with the same name
first gets its own pending changes back. Ack is XACK.

An ``ack_id`` is ``<portal>/<object_type>/<entry id>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubsync.core.bounds import name_problem
from hubsync.core.errors import InvalidArgument
from hubsync.core.keys import PORTALS_KEY, FeedEntry, feed_key
from hubsync.mapper.groups import ConsumerGroupLimit
from hubsync.mapper.mappings import CORE_TYPES
from hubsync.mapper.objecttypes import canonical_name, known_object_type

# How often new portals' streams are looked for: a new portal's first events wait at most this.
DISCOVER_INTERVAL_S = 0.25
DEFAULT_MAX_GROUPS = 64
_CHANGE = FeedEntry.CHANGE.encode()

_meter = metrics.get_meter("hubsync.mapper")
_delivered = _meter.create_counter("hubsync.feed.deliveries", description="Changes delivered to subscribers")
_redelivered = _meter.create_counter(
    "hubsync.feed.redeliveries", description="Changes delivered again after the visibility timeout"
)


@dataclass(frozen=True)
class Delivery:
    """One change handed to a subscriber (``payload`` is the serialized ``Change`` proto)."""

    ack_id: str
    payload: bytes
    attempt: int


@dataclass(frozen=True)
class Subscription:
    """What a subscriber asked for."""

    group: str
    consumer: str
    portal_ids: Sequence[int]
    object_types: Sequence[str]
    visibility_ms: int = 30_000
    max_in_flight: int = 100


def validate_subscription(sub: Subscription) -> None:
    """Raises InvalidArgument naming every bad field."""
    bad: dict[str, str] = {}
    # Both become Redis consumer group / consumer names and metric labels.
    if problem := name_problem(sub.group):
        bad["consumer_group"] = problem
    if problem := name_problem(sub.consumer):
        bad["consumer"] = problem
    for i, t in enumerate(sub.object_types):
        if not known_object_type(t):
            bad[f"object_types[{i}]"] = "must be a standard object type or a custom object's schema name"
        elif canonical_name(t) != t:
            bad[f"object_types[{i}]"] = f"use the mapping's name {canonical_name(t)!r}"
    for i, p in enumerate(sub.portal_ids):
        if p <= 0:
            bad[f"portal_ids[{i}]"] = "must be a positive HubSpot portal id"
    if sub.visibility_ms < 100 or sub.visibility_ms > 12 * 3600 * 1000:
        bad["visibility_timeout"] = "must be between 0.1 s and 12 h"
    if sub.max_in_flight < 1 or sub.max_in_flight > 10_000:
        bad["max_in_flight"] = "must be between 1 and 10000 (0 means 100)"
    if bad:
        raise InvalidArgument("invalid subscription", violations=bad)


def parse_ack_id(ack_id: str) -> tuple[str, str]:
    """``<portal>/<type>/<id>`` → (stream key, entry id); raises ValueError."""
    portal, object_type, entry = ack_id.split("/")
    if not portal.isdigit() or not known_object_type(object_type):
        raise ValueError(ack_id)
    ms, _, seq = entry.partition("-")
    if not ms.isdigit() or not seq.isdigit():
        raise ValueError(ack_id)
    return feed_key(portal, object_type), entry


class ChangeFeed:
    """Subscribing to and acknowledging the change feed (the publishing side is the inbound
    worker, which adds entries in the same Redis transaction that acks its input)."""

    def __init__(
        self,
        redis: Redis,
        *,
        poll_block_ms: int = 1000,
        discover_interval_s: float = DISCOVER_INTERVAL_S,
        max_groups: int = DEFAULT_MAX_GROUPS,
    ):
        self.redis: Any = redis
        self.poll_block_ms = poll_block_ms
        self.discover_interval_s = discover_interval_s
        self.groups = ConsumerGroupLimit(redis, max_groups)

    async def _streams(self, sub: Subscription) -> list[tuple[str, str, str]]:
        portals = [str(p) for p in sub.portal_ids]
        if not portals:
            members = await self.redis.smembers(PORTALS_KEY)  # type: ignore[misc]
            portals = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        # No types named: the core three (other types' feeds are subscribed to by name).
        types = list(sub.object_types) or list(CORE_TYPES)
        return [(feed_key(p, t), p, t) for p in portals for t in types]

    async def _ensure_group(self, key: str, group: str) -> None:
        try:
            await self.redis.xgroup_create(key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _attempts(self, key: str, group: str, consumer: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self.redis.xpending_range(
            key, group, min=ids[0], max=ids[-1], count=len(ids) + 1000, consumername=consumer
        )
        return {_s(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def _in_flight(self, streams: list[tuple[str, str, str]], sub: Subscription) -> int:
        total = 0
        for key, _, _ in streams:
            info = await self.redis.xpending(key, sub.group)
            for c in info.get("consumers", []) or []:
                if _s(c["name"]) == sub.consumer:
                    total += int(c["pending"])
        return total

    async def deliveries(
        self, sub: Subscription, gone: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[Delivery]:
        """Yields changes for one subscriber until cancelled or ``gone()`` (the client left).

        ``gone`` is checked between reads: a generator with nothing to yield would otherwise never
        notice a cancelled call and keep the server from stopping.
        """
        validate_subscription(sub)
        await self.groups.admit(sub.group)
        streams: list[tuple[str, str, str]] = []
        known: set[str] = set()
        next_discover = 0.0
        next_claim = 0.0
        claim_every = max(sub.visibility_ms / 4000, 0.05)
        in_flight = 0
        first = True
        while not gone():
            now = time.monotonic()
            if now >= next_discover:
                streams = await self._streams(sub)
                for key, _, _ in streams:
                    if key not in known:
                        await self._ensure_group(key, sub.group)
                        known.add(key)
                next_discover = now + self.discover_interval_s
            by_key = {key: (portal, t) for key, portal, t in streams}
            if first:
                # A restarted consumer gets its own unacked changes back first.
                first = False
                for key in by_key:
                    reply = await self.redis.xreadgroup(
                        sub.group, sub.consumer, {key: "0"}, count=sub.max_in_flight
                    )
                    entries = reply[0][1] if reply else []
                    ids = [_s(e[0]) for e in entries if e[1]]
                    attempts = await self._attempts(key, sub.group, sub.consumer, ids)
                    for entry_id, fields in entries:
                        if not fields:
                            continue  # trimmed away
                        eid = _s(entry_id)
                        yield self._delivery(by_key[key], eid, fields, attempts.get(eid, 2))
            if now >= next_claim:
                next_claim = now + claim_every
                for key in by_key:
                    async for delivery in self._claim(key, by_key[key], sub):
                        yield delivery
            if streams and in_flight >= sub.max_in_flight:
                in_flight = await self._in_flight(streams, sub)
                if in_flight >= sub.max_in_flight:
                    await asyncio.sleep(min(0.05 * (1 + in_flight // sub.max_in_flight), 0.5))
                    continue
            if not streams:
                await asyncio.sleep(min(self.discover_interval_s, 0.2))
                continue
            reply = await self.redis.xreadgroup(
                sub.group,
                sub.consumer,
                dict.fromkeys(by_key, ">"),
                count=max(sub.max_in_flight - in_flight, 1),
                block=min(self.poll_block_ms, int(claim_every * 1000) or 1),
            )
            for key_raw, entries in reply or []:
                key = _s(key_raw)
                for entry_id, fields in entries:
                    in_flight += 1
                    yield self._delivery(by_key[key], _s(entry_id), fields, 1)

    async def _claim(self, key: str, where: tuple[str, str], sub: Subscription) -> AsyncIterator[Delivery]:
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                key, sub.group, sub.consumer, min_idle_time=sub.visibility_ms, start_id=start, count=100
            )
            start = _s(reply[0])
            entries = [e for e in reply[1] if e and e[1]]
            ids = [_s(e[0]) for e in entries]
            attempts = await self._attempts(key, sub.group, sub.consumer, ids)
            for entry_id, fields in entries:
                eid = _s(entry_id)
                _redelivered.add(1, {"group": sub.group})
                yield self._delivery(where, eid, fields, attempts.get(eid, 2))
            if start == "0-0":
                return

    def _delivery(self, where: tuple[str, str], entry_id: str, fields: dict, attempt: int) -> Delivery:  # type: ignore[type-arg]
        portal, object_type = where
        _delivered.add(1, {"object_type": object_type})
        payload = fields.get(_CHANGE) or fields.get(FeedEntry.CHANGE) or b""
        return Delivery(f"{portal}/{object_type}/{entry_id}", payload, attempt)

    async def ack(self, group: str, ack_ids: Sequence[str]) -> int:
        """Acknowledges changes; returns how many were pending (already-acked ids do not count)."""
        if problem := name_problem(group):
            raise InvalidArgument("invalid ack", violations={"consumer_group": problem})
        by_key: dict[str, list[str]] = {}
        bad: dict[str, str] = {}
        for i, ack_id in enumerate(ack_ids):
            try:
                key, entry = parse_ack_id(ack_id)
            except ValueError:
                bad[f"ack_ids[{i}]"] = "not an ack id this service issued"
                continue
            by_key.setdefault(key, []).append(entry)
        if bad:
            raise InvalidArgument("invalid ack ids", violations=bad)
        if not by_key:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, entries in by_key.items():
                pipe.xack(key, group, *entries)
            counts = await pipe.execute(raise_on_error=False)
        return sum(int(c) for c in counts if isinstance(c, int))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
