"""The batches in flight: one portal's turn split into batches, order per record kept.

A turn's entries whose records no batch in flight holds start at once; the others wait for the
batches holding their records (so a record's events are published in order). A portal's next
turn is read while this one is hydrated and published, but not before the turn before is done
(at most two turns of a portal in flight); a batch still in flight after ``stall_s`` no longer
holds the portal back. The entries of batches in flight are re-claimed every third of the
visibility timeout (:meth:`InFlightBatches.heartbeat`), so no other replica takes over a batch
that is slow but alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubsync.core.outage import reraise_if_cancelling
from hubsync.mapper._inbound_process import BatchOutcome, BatchResult
from hubsync.mapper.inbound_events import ParsedEntry
from hubsync.mapper.publish import EVENTS_GROUP, Source

__all__ = ["InFlightBatches", "Process"]

log = logging.getLogger("hubsync.mapper.inbound")

# Processes one batch of a portal's entries (portal, source, entries).
Process = Callable[[str, Source, list[ParsedEntry]], Awaitable[BatchResult]]
# Entry ids re-claimed per XCLAIM call.
_CLAIM_CHUNK = 500


@dataclass(frozen=True)
class HeldRecord:
    """A record a batch in flight holds: a later batch with its events waits for that one."""

    portal: str
    object_type: str
    object_id: str

    @classmethod
    def of(cls, portal: str, entry: ParsedEntry) -> HeldRecord:
        """Return the record of an entry of a synced type (``entry.what`` set)."""
        assert entry.what is not None
        return cls(portal, entry.what.object_type, entry.what.object_id)


@dataclass
class HeldBatch:
    """The entries a batch in flight still holds (its heartbeat keeps them claimed)."""

    source: Source
    ids: list[bytes]
    started: float


class InFlightBatches:
    """The batches in flight of one replica, and the turn order of each portal."""

    def __init__(
        self, redis: Redis, process: Process, *, consumer: str, max_in_flight: int, stall_s: float
    ) -> None:
        """Set up the batches.

        Args:
            redis: The client (the heartbeat's XCLAIM).
            process: Processes one batch.
            consumer: This replica's consumer name in group ``mapper``.
            max_in_flight: Portals whose turns run at once; twice as many batches are let pile up.
            stall_s: How long a portal's next turn waits for the batches of the turn before.
        """
        self.redis = redis
        self.process = process
        self.consumer = consumer
        self.max_in_flight = max_in_flight
        self.stall_s = stall_s
        self._tasks: dict[asyncio.Task[None], HeldBatch] = {}
        # Set whenever a batch ends (wait_for_room waits for it).
        self._room = asyncio.Event()
        # The batches of each portal's last turn (the next turn waits for them).
        self._previous: dict[str, list[asyncio.Task[None]]] = {}
        # The latest batch task holding each record.
        self._holders: dict[HeldRecord, asyncio.Task[None]] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        """The batches in flight (cancelled when the worker stops)."""
        return list(self._tasks)

    async def wait_for_room(self) -> None:
        """Wait for one batch to finish while stalled batches pile up (twice ``max_in_flight``).

        An event set by each batch's end, not ``asyncio.wait`` over every batch in flight: that
        added and removed a callback on each of up to ``2 * max_in_flight`` tasks per turn (6 % of
        mapper's CPU at 1,000 portals with small turns, py-spy)."""
        while len(self._tasks) >= 2 * self.max_in_flight:
            self._room.clear()
            await self._room.wait()

    async def turn(self, portal: str, source: Source, entries: list[ParsedEntry]) -> None:
        """Start one portal's turn as batches; return once the portal may have its next turn."""
        tasks = self._dispatch(portal, source, entries)
        # The portal's next turn is read while this one is hydrated and published (its entries of
        # records this one holds wait for it), but not before the turn before this one is done:
        # at most two turns of a portal in flight, and the next read gathers what arrived
        # meanwhile. A batch still in flight after the stall time goes on alone.
        previous = self._previous.get(portal, [])
        self._previous[portal] = tasks
        waiting = [t for t in previous if not t.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=self.stall_s)
        if not tasks:
            self._previous.pop(portal, None)

    def forget_finished_turns(self) -> None:
        """Drop the portals whose last turn is done (housekeeping)."""
        self._previous = {p: t for p, t in self._previous.items() if not all(x.done() for x in t)}

    async def heartbeat(self) -> None:
        """Keep the entries of batches in flight: their idle time restarts, so no other replica
        claims a batch that is slow but alive (a hung read, writer's retries)."""
        by_key: dict[str, list[bytes]] = {}
        for held in self._tasks.values():
            if not held.source.parked:
                by_key.setdefault(held.source.key, []).extend(held.ids)
        for key, ids in by_key.items():
            for i in range(0, len(ids), _CLAIM_CHUNK):
                chunk = ids[i : i + _CLAIM_CHUNK]
                await self.redis.xclaim(key, EVENTS_GROUP, self.consumer, 0, chunk, justid=True)  # type: ignore[arg-type]

    def _dispatch(self, portal: str, source: Source, entries: list[ParsedEntry]) -> list[asyncio.Task[None]]:
        """Starts a batch for the entries whose records no batch in flight holds, and one that
        waits for those batches for the others; returns the batches started."""
        free: list[ParsedEntry] = []
        blocked: list[ParsedEntry] = []
        waits: set[asyncio.Task[None]] = set()
        for e in entries:
            holder = self._holders.get(HeldRecord.of(portal, e)) if e.what else None
            if holder is not None and not holder.done():
                blocked.append(e)
                waits.add(holder)
            else:
                free.append(e)
        started = []
        for part, after in ((free, set[asyncio.Task[None]]()), (blocked, waits)):
            if part:
                started.append(self._launch(portal, source, part, after))
        return started

    def _launch(
        self, portal: str, source: Source, entries: list[ParsedEntry], after: set[asyncio.Task[None]]
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(self._batch(portal, source, entries, after), name="mapper-inbound-batch")
        self._tasks[task] = HeldBatch(source, [e.id for e in entries], asyncio.get_running_loop().time())
        records = {HeldRecord.of(portal, e) for e in entries if e.what}
        for r in records:
            self._holders[r] = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.pop(t, None)
            self._room.set()
            for r in records:
                if self._holders.get(r) is t:
                    del self._holders[r]

        task.add_done_callback(done)
        return task

    async def _batch(
        self, portal: str, source: Source, entries: list[ParsedEntry], after: set[asyncio.Task[None]]
    ) -> None:
        if after:
            await asyncio.wait(after)
        try:
            result = await self.process(portal, source, entries)
            delay = 0.5
            # Transient failures (writer or HubSpot briefly unavailable) are retried a few times
            # here, the records still held; then the entries wait for the visibility timeout.
            for _ in range(3):
                if result.outcome != BatchOutcome.PARTIAL:
                    return
                await asyncio.sleep(delay)
                delay *= 2
                current = asyncio.current_task()
                held = self._tasks.get(current) if current is not None else None
                if held is not None:
                    held.ids = [e.id for e in result.left]
                result = await self.process(portal, source, result.left)
            if result.outcome == BatchOutcome.PARTIAL:
                log.warning(
                    "inbound events not read; retried after the visibility timeout",
                    extra={"portal": portal, "events": len(result.left)},
                )
        except asyncio.CancelledError:
            raise
        except (grpc.aio.AioRpcError, ConnectionError, ResponseError, OSError) as exc:
            reraise_if_cancelling()
            # The entries stay pending and come back after the visibility timeout.
            log.warning("inbound batch failed", extra={"portal": portal, "error": str(exc)[:300]})
        except Exception:
            reraise_if_cancelling()
            log.exception("inbound batch failed unexpectedly", extra={"portal": portal})
