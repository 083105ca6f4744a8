"""The change feed: mapped HubSpot changes for internal services, at least once, with acks.

Storage is Redis streams, one per portal and object type (``hubsync:{<portal>}:feed:<type>``),
so every mapper replica serves the same feed, changes of one record stay in order, and mapper
publishes a change in one transaction with the portal's other keys (one cluster slot). Each
subscriber consumer group is a Redis consumer group on those streams (created at the stream's
start, so a new group sees every retained change). Delivery is XREADGROUP; an unacked change is
claimed again (XAUTOCLAIM) once it has been idle for the subscriber's visibility timeout, which
also redelivers a dead consumer's changes to a live one; a restarted consumer with the same name
first gets its own pending changes back. Ack is XACK.

A subscriber never walks the portals: it takes the streams that have work for its group from the
group's ready and pending sets (:mod:`hubsync.mapper.feed_ready`), one stream per command, and
while nothing is ready it blocks on the group's nudge list. So an idle subscriber costs a few
commands a second whatever the number of portals, and a busy portal's changes are read at once.
A new group (and, after an upgrade, every group) is first *swept*: one pass over the known portals
marks the streams holding changes the group has not read or acked.

An ``ack_id`` is ``<portal>/<object_type>/<entry id>`` (unchanged: ids issued before the ready
sets existed are still accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubsync.core.bounds import name_problem
from hubsync.core.errors import InvalidArgument
from hubsync.core.keys import (
    PORTALS_KEY,
    FeedEntry,
    feed_key,
    feed_nudge_key,
    feed_sweep_key,
    feed_sweep_lock_key,
)
from hubsync.core.redis import as_str
from hubsync.mapper.feed_ready import FeedMarks, Taken
from hubsync.mapper.groups import ConsumerGroupLimit
from hubsync.mapper.mappings import CORE_TYPES
from hubsync.mapper.objecttypes import canonical_name, known_object_type

DEFAULT_MAX_GROUPS = 64
# The inbound worker's discovery period of new portals' event streams (the feed no longer
# discovers portals).
DISCOVER_INTERVAL_S = 0.25
# Streams taken from the ready set per turn, and changes read from one stream per turn: a portal
# with a large backlog gets one quantum and goes to the back of the line.
TAKE_LIMIT = 16
QUANTUM = 100
# A taken ready mark comes back by itself after this long (its subscriber died mid-read).
READY_LEASE_MS = 30_000
# An idle subscriber looks at its group's sets at least this often without being nudged.
IDLE_LOOK_S = 5.0
# How often a subscriber looks for stale publications and an unfinished sweep.
HOUSEKEEPING_S = 30.0
SWEEP_PAGE = 200
MIN_WAIT_MS = 20
SWEEP_LOCK_MS = 30_000
_CHANGE = FeedEntry.CHANGE.encode()

log = logging.getLogger(__name__)
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


@dataclass
class _Session:
    """One subscriber's state: what it asked for and what it holds."""

    sub: Subscription
    types: list[str]
    portals: list[str]
    # Streams this consumer read from, with how many of their changes it may still hold.
    holding: dict[tuple[str, str], int]
    in_flight: int = 0
    # When to look for unacked changes past their visibility timeout next (monotonic).
    next_claim: float = 0.0

    @property
    def claim_lease_ms(self) -> int:
        # A stream with unacked changes is looked at again after half the visibility timeout, so
        # a change comes back between 1 and 1.5 visibility timeouts after its delivery.
        return max(self.sub.visibility_ms // 2, 50)


class ChangeFeed:
    """Subscribing to and acknowledging the change feed (the publishing side is the inbound
    worker, which adds entries in the same Redis transaction that acks its input, then marks
    them ready through :class:`~hubsync.mapper.feed_ready.FeedMarks`)."""

    def __init__(
        self,
        redis: Redis,
        *,
        poll_block_ms: int = 1000,
        max_groups: int = DEFAULT_MAX_GROUPS,
    ):
        self.redis: Any = redis
        self.poll_block_ms = poll_block_ms
        self.groups = ConsumerGroupLimit(redis, max_groups)
        self.marks = FeedMarks(redis)

    async def deliveries(
        self, sub: Subscription, gone: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[Delivery]:
        """Yields changes for one subscriber until cancelled or ``gone()`` (the client left).

        ``gone`` is checked between reads: a generator with nothing to yield would otherwise never
        notice a cancelled call and keep the server from stopping.
        """
        validate_subscription(sub)
        await self.groups.admit(sub.group)
        s = _Session(sub, list(sub.object_types) or list(CORE_TYPES), [str(p) for p in sub.portal_ids], {})
        sweep: asyncio.Task[bool] | None = None
        next_housekeeping = 0.0
        next_ready = 0.0
        look = True  # nudged, or the last turn found work: look at the ready set now
        try:
            # A restarted consumer gets its own unacked changes back first.
            async for d in self._own_pending(s):
                yield d
            while not gone():
                now = time.monotonic()
                if now >= next_housekeeping:
                    next_housekeeping = now + HOUSEKEEPING_S
                    await self.marks.repair(CORE_TYPES)
                    if sweep is None or sweep.done():
                        sweep = asyncio.create_task(self.sweep(sub.group))
                worked = False
                if now >= s.next_claim:
                    async for d in self._claim(s):
                        worked = True
                        yield d
                if s.in_flight >= sub.max_in_flight:
                    await self._recount(s)
                    if s.in_flight >= sub.max_in_flight:
                        await asyncio.sleep(min(0.05 * (1 + s.in_flight // sub.max_in_flight), 0.5))
                        continue
                if look or now >= next_ready:
                    next_ready = now + IDLE_LOOK_S
                    async for d in self._read_ready(s):
                        worked = True
                        yield d
                look = worked
                if not worked:
                    # Nothing due: wait for a nudge (a portal became ready), the next claim look
                    # or the next look at the ready set (a lease that ran out).
                    until = min(s.next_claim, next_ready) - time.monotonic()
                    wait_ms = min(self.poll_block_ms, int(until * 1000))
                    # Redis reads a tiny timeout such as 0.001 s as 0 (block for ever): a wait
                    # that short sleeps here instead.
                    if wait_ms >= MIN_WAIT_MS:
                        look = bool(
                            await self.redis.blpop([feed_nudge_key(sub.group)], timeout=wait_ms / 1000)
                        )
                    else:
                        await asyncio.sleep(max(wait_ms, 1) / 1000)
        finally:
            if sweep is not None and not sweep.done():
                sweep.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sweep

    async def _own_pending(self, s: _Session) -> AsyncIterator[Delivery]:
        sub = s.sub
        for object_type in s.types:
            members = await self.marks.members(sub.group, "pending", object_type, 10_000)
            for portal in members:
                if s.portals and portal not in s.portals:
                    continue
                key = feed_key(portal, object_type)
                try:
                    reply = await self.redis.xreadgroup(
                        sub.group, sub.consumer, {key: "0"}, count=sub.max_in_flight
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        continue
                    raise
                entries = [e for e in (reply[0][1] if reply else []) if e[1]]  # empty: trimmed away
                attempts = await self._attempts(key, sub.group, sub.consumer, [as_str(e[0]) for e in entries])
                for entry_id, fields in entries:
                    eid = as_str(entry_id)
                    self._hold(s, object_type, portal, 1)
                    yield self._delivery(portal, object_type, eid, fields, attempts.get(eid, 2))

    async def _read_ready(self, s: _Session) -> AsyncIterator[Delivery]:
        """One turn over the due streams: read each once, settle its mark, then deliver."""
        sub = s.sub
        taken = await self.marks.take(
            sub.group, "ready", s.types, limit=TAKE_LIMIT, lease_ms=READY_LEASE_MS, portals=s.portals
        )
        if not taken:
            return
        # The taken streams are read at once (each stream's own steps in order): one by one, a
        # turn over 16 streams took ~50 sequential round trips, and with many portals each
        # holding a change or two the feed fell seconds behind the mapper's loop. Their room is
        # shared out so the subscriber's max_in_flight holds as before (at least 1 each).
        count = max(min((sub.max_in_flight - s.in_flight) // len(taken), QUANTUM), 1)

        async def one(t: Taken) -> list[Any]:
            entries = await self._read_new(sub, t, count)
            if entries is None:
                await self.marks.release(sub.group, "ready", t)  # the stream is gone
                return []
            # The ready mark settled and, when changes were read, the pending mark made: both in
            # the group's slot, one round trip.
            await self.marks.settle_and_hold(
                sub.group, t, requeue=len(entries) >= count, hold_ms=sub.visibility_ms if entries else None
            )
            return entries

        results = await asyncio.gather(*(one(t) for t in taken))
        for t, entries in zip(taken, results, strict=True):
            if entries:
                self._hold(s, t.object_type, t.portal, len(entries))
                s.next_claim = min(s.next_claim, time.monotonic() + sub.visibility_ms / 1000)
        for t, entries in zip(taken, results, strict=True):
            for entry_id, fields in entries:
                yield self._delivery(t.portal, t.object_type, as_str(entry_id), fields, 1)

    async def _read_new(self, sub: Subscription, t: Taken, count: int) -> list[Any] | None:
        """Up to ``count`` changes of the stream no one in the group read yet (None: no stream)."""
        key = feed_key(t.portal, t.object_type)
        for _ in range(2):
            try:
                reply = await self.redis.xreadgroup(sub.group, sub.consumer, {key: ">"}, count=count)
                return list(reply[0][1]) if reply else []
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
            # The group is new to this stream: it starts at the stream's beginning, so it sees
            # every retained change.
            if not await self.redis.exists(key):
                return None
            with contextlib.suppress(ResponseError):  # BUSYGROUP: another subscriber made it
                await self.redis.xgroup_create(key, sub.group, id="0")
        return []

    async def _claim(self, s: _Session) -> AsyncIterator[Delivery]:
        """Redelivers changes idle past the visibility timeout, on streams marked pending only."""
        sub = s.sub
        taken, wait = await self.marks.take_or_next(
            sub.group, "pending", s.types, limit=TAKE_LIMIT, lease_ms=s.claim_lease_ms, portals=s.portals
        )
        # Next look: soon while there are unacked changes to look at, else when the earliest is
        # due (at most IDLE_LOOK_S away, so no clock skew or lost mark can delay it for long).
        soon = min(max(sub.visibility_ms / 4000, 0.05), 1.0)
        s.next_claim = time.monotonic() + (
            soon if taken else min(max(wait or IDLE_LOOK_S, soon), IDLE_LOOK_S)
        )
        for t in taken:
            key = feed_key(t.portal, t.object_type)
            claimed = 0
            start = "0-0"
            # The stream's pending count, read with the first claim (one stream, one round trip):
            # what the look needs when it claims nothing (acked: release; not idle yet: keep).
            pending = 0
            try:
                while claimed < sub.max_in_flight:
                    if start == "0-0":
                        async with self.redis.pipeline(transaction=False) as pipe:
                            _autoclaim(pipe, key, sub, start)
                            pipe.xpending(key, sub.group)
                            reply, info = await pipe.execute()
                        pending = int(info.get("pending", 0) or 0)
                    else:
                        reply = await _autoclaim(self.redis, key, sub, start)
                    start = as_str(reply[0])
                    entries = [e for e in reply[1] if e and e[1]]
                    attempts = await self._attempts(
                        key, sub.group, sub.consumer, [as_str(e[0]) for e in entries]
                    )
                    for entry_id, fields in entries:
                        eid = as_str(entry_id)
                        claimed += 1
                        self._hold(s, t.object_type, t.portal, 1)
                        _redelivered.add(1, {"group": sub.group})
                        yield self._delivery(t.portal, t.object_type, eid, fields, attempts.get(eid, 2))
                    if start == "0-0":
                        break
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                    raise
                await self.marks.release(sub.group, "pending", t)
                continue
            if claimed:
                continue  # still pending (to this consumer now): looked at again after the lease
            if pending:
                continue  # not idle long enough yet: looked at again after the lease
            # Released only when no one holds a change; a delivery between the count and the
            # release found the mark there and added none, so count again once released.
            if await self.marks.release(sub.group, "pending", t) and await self._pending_count(
                key, sub.group
            ):
                stream = [(t.object_type, t.portal)]
                await self.marks.mark(sub.group, "pending", stream, delay_ms=sub.visibility_ms // 2)

    async def _pending_count(self, key: str, group: str) -> int:
        try:
            info = await self.redis.xpending(key, group)
        except ResponseError:
            return 0
        return int(info.get("pending", 0) or 0)

    async def _recount(self, s: _Session) -> None:
        """How many changes this consumer still holds, from the pending lists of the streams it
        read from (only those: the count costs what the subscriber holds, not the portals)."""
        keys = list(s.holding)
        async with self.redis.pipeline(transaction=False) as pipe:
            for object_type, portal in keys:
                pipe.xpending(feed_key(portal, object_type), s.sub.group)
            replies = await pipe.execute(raise_on_error=False)
        total = 0
        for where, info in zip(keys, replies, strict=True):
            mine = 0
            if isinstance(info, dict):
                for c in info.get("consumers", []) or []:
                    if as_str(c["name"]) == s.sub.consumer:
                        mine = int(c["pending"])
            if mine:
                s.holding[where] = mine
                total += mine
            else:
                del s.holding[where]
        s.in_flight = total

    def _hold(self, s: _Session, object_type: str, portal: str, n: int) -> None:
        s.holding[(object_type, portal)] = s.holding.get((object_type, portal), 0) + n
        s.in_flight += n

    async def _attempts(self, key: str, group: str, consumer: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self.redis.xpending_range(
            key, group, min=ids[0], max=ids[-1], count=len(ids) + 1000, consumername=consumer
        )
        return {as_str(r["message_id"]): int(r["times_delivered"]) for r in rows}

    def _delivery(self, portal: str, object_type: str, entry_id: str, fields: dict, attempt: int) -> Delivery:  # type: ignore[type-arg]
        _delivered.add(1, {"object_type": object_type})
        payload = fields.get(_CHANGE) or fields.get(FeedEntry.CHANGE) or b""
        return Delivery(f"{portal}/{object_type}/{entry_id}", payload, attempt)

    async def sweep(self, group: str) -> bool:
        """Marks, for ``group``, every known portal's streams that hold changes it has not read
        (ready) or not acked (pending): once per group, by one replica at a time, resumable.
        This is how a new group finds the retained changes and how an upgrade from per-portal
        polling finds what was published and unacked before. Every subscriber asks every
        ``HOUSEKEEPING_S`` (one HGET), so deleting the sweep hash makes the group sweep again.
        True when the sweep is done."""
        sweep_key, lock = feed_sweep_key(group), feed_sweep_lock_key(group)
        if await self.redis.hget(sweep_key, "done"):
            return True
        token = secrets.token_hex(8)
        if not await self.redis.set(lock, token, nx=True, px=SWEEP_LOCK_MS):
            return False  # another replica sweeps; this one looks again later
        try:
            cursor = int(await self.redis.hget(sweep_key, "cursor") or 0)
            while True:
                cursor, members = await self.redis.sscan(PORTALS_KEY, cursor, count=SWEEP_PAGE)
                portals = sorted({as_str(m) for m in members if as_str(m).isdigit()})
                if portals:
                    await self._sweep_page(group, portals)
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(sweep_key, "cursor", int(cursor))
                    pipe.pexpire(lock, SWEEP_LOCK_MS)
                    await pipe.execute()
                if int(cursor) == 0:
                    break
            await self.redis.hset(sweep_key, "done", int(time.time() * 1000))
            log.info("change-feed group swept", extra={"group": group})
            return True
        finally:
            if await self.redis.get(lock) == token.encode():
                await self.redis.delete(lock)

    async def _sweep_page(self, group: str, portals: list[str]) -> None:
        streams = [(t, p) for p in portals for t in CORE_TYPES]
        async with self.redis.pipeline(transaction=False) as pipe:
            for t, p in streams:
                pipe.xinfo_groups(feed_key(p, t))
                pipe.xrevrange(feed_key(p, t), count=1)
            replies = await pipe.execute(raise_on_error=False)
        ready: list[tuple[str, str]] = []
        pending: list[tuple[str, str]] = []
        for i, where in enumerate(streams):
            groups, last = replies[2 * i], replies[2 * i + 1]
            if not isinstance(groups, list) or not isinstance(last, list) or not last:
                continue  # no such stream, or nothing retained
            mine = next((g for g in groups if as_str(g["name"]) == group), None)
            if mine is None:
                ready.append(where)  # the group has not read this stream: every change is new
                continue
            if int(mine.get("pending") or 0):
                pending.append(where)
            if _entry_id(as_str(last[0][0])) > _entry_id(as_str(mine.get("last-delivered-id") or "0-0")):
                ready.append(where)
        await self.marks.mark(group, "ready", ready)
        await self.marks.mark(group, "pending", pending)

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


def _autoclaim(client: Any, key: str, sub: Subscription, start: str) -> Any:
    """``XAUTOCLAIM`` of up to 100 of ``key``'s changes idle past the subscriber's visibility
    timeout, from ``start`` (on a client: awaitable; on a pipeline: queued)."""
    return client.xautoclaim(
        key, sub.group, sub.consumer, min_idle_time=sub.visibility_ms, start_id=start, count=100
    )


def _entry_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
