"""Parked portals: a portal whose connection is unusable (or whose daily HubSpot quota is spent)
waits, then its parked events replay.

Its batch's entries move to its parked stream (:mod:`hubsync.mapper.inbound_queues`) and its
ready mark is scored to its next re-check (:meth:`ParkedPortals.gate`), so no replica reads its
events until the connection works again — announced by auth on
``hubsync:auth:connection-changes`` (:meth:`ParkedPortals.listen`), or found by a re-check every
``recheck_s`` (doubling up to ``recheck_max_s``). Then one replica (the drain lock) replays the
parked entries in order, unparks the portal and marks it ready again. The set of parked portals
is read every :data:`PARKED_DISCOVER_S` (a portal parked by another replica is gated here too).

A portal whose daily quota is spent (:class:`~hubsync.mapper.hydrate.PortalBlocked`) is parked
the same way, but re-checked only at the time writer named (kept in the park hash, so every
replica waits for it): no read, no retry and no warning per batch until then, one WARNING when it
is parked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import metrics
from redis.asyncio import Redis

from hubsync.core.keys import (
    INBOUND_PARKED_PORTALS_KEY,
    inbound_drain_lock_key,
    inbound_park_key,
    inbound_parked_key,
)
from hubsync.core.outage import reraise_if_cancelling
from hubsync.core.ready import ReadySets, now_ms
from hubsync.core.redis import as_str, follow_channel
from hubsync.core.streams import stream_range
from hubsync.mapper import inbound_queues as queues
from hubsync.mapper._inbound_batches import Process
from hubsync.mapper._inbound_process import BatchOutcome
from hubsync.mapper.hydrate import PortalBlocked, PortalUnusable
from hubsync.mapper.inbound_events import ParsedEntry, parse_entry
from hubsync.mapper.publish import EVENTS_GROUP, Source

__all__ = ["PARKED_DISCOVER_S", "ParkedPortals"]

log = logging.getLogger("hubsync.mapper.inbound")
_meter = metrics.get_meter("hubsync.mapper")
_parked_events = _meter.create_counter("hubsync.mapper.inbound.parked", description="Inbound events parked")

# How often the set of parked portals is read (parking replicas announce it too).
PARKED_DISCOVER_S = 5.0
# How long an announcement for a portal not parked here counts (it may be parked meanwhile).
_ANNOUNCED_S = 5.0
# Most such announcements remembered.
_ANNOUNCED_MAX = 10_000


@dataclass
class ParkedState:
    """When a parked portal is checked again, and the current re-check interval."""

    next_probe: float
    interval: float
    # Announced while a re-check was running: that re-check's failure must not defer the next.
    poked: bool = False
    # The daily quota is spent: re-checked at ``next_probe`` (the reset), never doubled.
    blocked: bool = False


class ParkedPortals:
    """The portals parked as seen by this replica: gating, re-checks, replay."""

    def __init__(
        self,
        redis: Redis,
        sets: ReadySets,
        process: Process,
        *,
        consumer: str,
        recheck_s: float,
        recheck_max_s: float,
        batch_size: int,
        visibility_ms: int,
        hold_ms: int,
    ) -> None:
        """Set up the parked portals.

        Args:
            redis: The client.
            sets: The ``events`` ready sets (an unparked portal's mark is brought forward).
            process: Processes one batch (the replay of parked entries).
            consumer: This replica's consumer name (the drain lock's owner).
            recheck_s: The first re-check interval of a parked portal.
            recheck_max_s: The longest (the interval doubles after each failed re-check).
            batch_size: Parked entries replayed per batch.
            visibility_ms: After a transient failure, the replay is tried again this much later.
            hold_ms: How long the drain lock is held per batch (one batch's reads fit in it).
        """
        self.redis = redis
        self.sets = sets
        self.process = process
        self.consumer = consumer
        self.recheck_s = recheck_s
        self.recheck_max_s = max(recheck_max_s, recheck_s)
        self.batch_size = batch_size
        self.visibility_ms = visibility_ms
        self.hold_ms = hold_ms
        self._parked: dict[str, ParkedState] = {}
        self._draining: dict[str, asyncio.Task[None]] = {}
        # Portals announced while not parked here (until when the announcement counts): parked
        # by another replica, or an operator's replay; the next discovery re-checks them at once.
        self._announced: dict[str, float] = {}

    def portals(self) -> list[str]:
        """The portals parked here."""
        return list(self._parked)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The replays running (cancelled when the worker stops)."""
        return list(self._draining.values())

    def gate(self, portal: str) -> int | None:
        """When a parked portal's events may be read again (Unix ms; its mark waits for the next
        re-check), or None when the portal is not parked."""
        state = self._parked.get(portal)
        if state is None:
            return None
        return now_ms() + max(int((state.next_probe - time.monotonic()) * 1000), 1000)

    async def park(
        self, portal: str, source: Source, entries: list[ParsedEntry], exc: PortalUnusable
    ) -> None:
        """Move a batch's entries to the portal's parked stream; the portal is parked here."""
        rows = [(e.id, e.fields) for e in entries]
        until_ms = exc.until_ms if isinstance(exc, PortalBlocked) else None
        await queues.park(
            self.redis,
            portal,
            rows,
            from_stream=None if source.parked else source.key,
            group=EVENTS_GROUP,
            reason=exc.reason,
            detail=exc.detail,
            until_ms=until_ms,
        )
        if not source.parked:
            _parked_events.add(len(rows))
        state = self._parked.get(portal)
        if until_ms is not None:
            if state is None or not state.blocked:
                log.warning(
                    "portal blocked: its HubSpot daily limit is spent; its events wait until %s",
                    _iso(until_ms),
                    extra={"portal": portal, "reason": exc.reason, "until": _iso(until_ms)},
                )
            probe_at = _monotonic_at(until_ms)
            if state is None:
                self._parked[portal] = ParkedState(probe_at, self.recheck_s, blocked=True)
            else:
                state.next_probe, state.blocked = probe_at, True
            return
        if state is None:
            log.warning(
                "portal parked: its connection is unusable; its events wait until it works again",
                extra={"portal": portal, "reason": exc.reason, "detail": exc.detail[:200]},
            )
            self._parked[portal] = ParkedState(time.monotonic() + self.recheck_s, self.recheck_s)
        else:
            state.blocked = False

    async def discover(self) -> None:
        """Read the set of parked portals: gate those parked by another replica, forget those
        unparked by another."""
        members = await self.redis.smembers(INBOUND_PARKED_PORTALS_KEY)
        parked = {as_str(p) for p in members}
        now = time.monotonic()
        new = [p for p in parked if p not in self._parked]
        if new:
            # A portal blocked by its daily quota is re-checked at the time its parker stored.
            async with self.redis.pipeline(transaction=False) as pipe:
                for portal in new:
                    pipe.hget(inbound_park_key(portal), queues.PARK_UNTIL_FIELD)
                untils = await pipe.execute()
            for portal, raw in zip(new, untils, strict=True):
                announced = self._announced.pop(portal, 0.0) > now
                stored = as_str(raw) if raw is not None else ""
                if stored.isdigit():
                    self._parked[portal] = ParkedState(
                        _monotonic_at(int(stored)), self.recheck_s, blocked=True
                    )
                else:
                    self._parked[portal] = ParkedState(
                        now if announced else now + self.recheck_s, self.recheck_s
                    )
        for portal, until in list(self._announced.items()):
            if until <= now:
                del self._announced[portal]
        unparked = [p for p in self._parked if p not in parked and p not in self._draining]
        for portal in unparked:
            del self._parked[portal]  # another replica unparked it
        if unparked:
            # This replica may have scored their marks to a re-check meanwhile: read them now.
            await self.sets.mark(unparked, mode="LT")

    def probe(self, now: float) -> None:
        """Start the replay of each parked portal whose re-check is due."""
        for portal, state in self._parked.items():
            if state.next_probe <= now and portal not in self._draining:
                task = asyncio.create_task(self._drain(portal), name="mapper-inbound-unpark")
                self._draining[portal] = task

    async def listen(self) -> None:
        """Re-check a parked portal as soon as its connection changes (auth announces it; the
        periodic re-check covers a lost subscription)."""
        await follow_channel(
            self.redis, queues.CONNECTION_CHANGES_CHANNEL, self._connection_changed, what="connection-change"
        )

    def _connection_changed(self, portal: str) -> None:
        state = self._parked.get(portal)
        if state is not None:
            state.next_probe = 0.0
            state.interval = self.recheck_s
            state.poked = True
        elif len(self._announced) < _ANNOUNCED_MAX:
            self._announced[portal] = time.monotonic() + _ANNOUNCED_S

    async def _drain(self, portal: str) -> None:
        """Replays a parked portal's entries in order (one replica at a time); unparks it once
        none is left, or parks it on (the next re-check later) if the connection still fails."""
        try:
            await self._replay(portal)
        finally:
            self._draining.pop(portal, None)

    async def _replay(self, portal: str) -> None:
        state = self._parked.get(portal)
        if state is None:
            return
        state.poked = False
        lock = inbound_drain_lock_key(portal)
        owner = f"{self.consumer}:{time.monotonic()}"
        try:
            if not await self.redis.set(lock, owner, nx=True, px=self.hold_ms):
                state.next_probe = time.monotonic() + state.interval
                return
            try:
                source = Source(inbound_parked_key(portal), parked=True)
                while True:
                    await self.redis.pexpire(lock, self.hold_ms)
                    rows = await stream_range(self.redis, source.key, "-", "+", count=self.batch_size)
                    if not rows:
                        if await queues.unpark_if_empty(self.redis, portal):
                            self._parked.pop(portal, None)
                            # Its events waiting on the stream are read now (the mark was
                            # scored to the re-check: brought forward).
                            await self.sets.mark([portal], mode="LT")
                            log.info(
                                "portal unparked: its parked events are replayed", extra={"portal": portal}
                            )
                            return
                        continue
                    result = await self.process(portal, source, [parse_entry(i, f) for i, f in rows])
                    if result.outcome == BatchOutcome.PARKED:
                        if result.until_ms is not None:
                            return  # the daily quota is still spent: park set the next re-check
                        if not state.poked:
                            state.interval = min(state.interval * 2, self.recheck_max_s)
                            state.next_probe = time.monotonic() + state.interval
                        return
                    if result.outcome == BatchOutcome.PARTIAL:
                        state.next_probe = time.monotonic() + self.visibility_ms / 1000
                        return
            finally:
                if await self.redis.get(lock) == owner.encode():
                    await self.redis.delete(lock)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reraise_if_cancelling()
            log.warning("replaying parked events failed", extra={"portal": portal, "error": str(exc)[:300]})
            state.next_probe = time.monotonic() + state.interval


def _monotonic_at(unix_ms: int) -> float:
    """The ``time.monotonic()`` value at a Unix time (ms)."""
    return time.monotonic() + max(unix_ms - now_ms(), 0) / 1000


def _iso(unix_ms: int) -> str:
    """A Unix time (ms) as an ISO 8601 UTC timestamp, to the second."""
    return datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat(timespec="seconds")
