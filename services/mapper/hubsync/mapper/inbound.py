"""The inbound pipeline: ingress's event streams → hydrate through writer → transform → feed.

Each portal's ``hubsync:{<portal>}:events`` stream is read in the consumer group ``mapper``, but
only while the portal has work: ingress marks it in the ``events`` ready set after appending
(:mod:`hubsync.core.ready`), and the replica leasing the portal's shard gives it turns of at most
``read_batch_size`` entries (a portal with a backlog goes to the back of the line after each turn,
so the others keep flowing). One turn per portal at a time: entries are processed in order, and
the next turn starts once the previous one is published. Entries a dead replica read but never
acknowledged are claimed after the visibility timeout (XAUTOCLAIM, only for portals in the
pending set); a live replica keeps the entries it is still working on (XCLAIM JUSTID, every third
of the timeout), so a slow read is never taken over. Events of one record read within the
coalesce window become one change; the records are read back from HubSpot through writer so the
feed carries each record as it is now (:mod:`hubsync.mapper.hydrate`), and published with the
ack of the input in one transaction (:mod:`hubsync.mapper.publish`). Idle portals cost nothing.

A portal whose connection is unusable (or whose daily HubSpot quota is spent: until the
reset writer names, with no re-check before) is parked (:mod:`hubsync.mapper.inbound_queues`): its
entries move to its parked stream and its ready mark is scored to its next re-check, so no
replica reads its events until the connection works again — announced by auth on
``hubsync:auth:connection-changes``, or found by a re-check every ``parked_recheck_s`` (doubling
up to ``parked_recheck_max_s``). Then one replica replays the parked entries in order, unparks
the portal and marks it ready again. What can never succeed is dead-lettered.

The stages, each in its own internal module behind :class:`InboundWorker`:

1. turns: :class:`hubsync.core.ready.ReadyConsumer` gives a portal with work a turn of entries;
2. batches (``_inbound_batches``): a turn split into batches, order per record kept, entries in
   flight kept claimed;
3. processing (``_inbound_process``): coalesce → hydrate → sort the failures → publish;
4. parking (``_inbound_parking``): unusable portals gated, re-checked, replayed;
5. backlog (``_inbound_backlog``): lag, the sweeper's probe, the depth gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2_grpc
from hubsync.core.keys import PORTALS_KEY, events_key
from hubsync.core.outage import reraise_if_cancelling
from hubsync.core.ready import DEFAULT_SHARDS, EVENTS, Blocked, FairShare, ReadyConsumer
from hubsync.mapper import _inbound_backlog as backlog
from hubsync.mapper._inbound_batches import InFlightBatches
from hubsync.mapper._inbound_parking import PARKED_DISCOVER_S, ParkedPortals
from hubsync.mapper._inbound_process import BatchProcessor, BatchResult
from hubsync.mapper.hydrate import Hydrator
from hubsync.mapper.inbound_events import ParsedEntry, parse_entry
from hubsync.mapper.objecttypes import CUSTOM_TYPES
from hubsync.mapper.publish import EVENTS_GROUP, Publisher, Source
from hubsync.mapper.transforms import MappingSet

__all__ = ["InboundWorker"]

log = logging.getLogger(__name__)
# How often the depth gauge is set.
_DEPTH_INTERVAL_S = 15.0


class InboundWorker:
    """One replica's share of the inbound pipeline."""

    def __init__(
        self,
        redis: Redis,
        writer: writer_pb2_grpc.WriterServiceStub,
        mappings: Callable[[str], Awaitable[MappingSet]],
        *,
        consumer: str,
        coalesce_window_ms: int = 50,
        visibility_timeout_ms: int = 30_000,
        read_batch_size: int = 100,
        hydrate_batch_size: int = 100,
        hydrate_deadline_s: float = 20.0,
        max_batches_in_flight: int = 8,
        stalled_batch_ms: int = 1000,
        max_attempts: int = 10,
        parked_recheck_s: float = 60.0,
        parked_recheck_max_s: float = 900.0,
        feed_max_len: int = 1_000_000,
        shards: int = DEFAULT_SHARDS,
        poll_s: float = 5.0,
        lease_ttl_ms: int = 30_000,
        sweep_interval_s: float = 3600.0,
        sweep_rate: float = 20.0,
        fair: FairShare | None = FairShare(),
    ) -> None:
        """Wire the stages (the keyword arguments are the mapper's and core's settings)."""
        self.redis = redis
        self.writer = writer
        self.visibility_ms = visibility_timeout_ms
        self.ready = ReadyConsumer(
            redis,
            EVENTS,
            name="inbound worker",
            stream=events_key,
            group=EVENTS_GROUP,
            consumer=consumer,
            handle=self._turn,
            shards=shards,
            quantum=read_batch_size,
            max_turns=max_batches_in_flight,
            visibility_ms=visibility_timeout_ms,
            poll_s=poll_s,
            lease_ttl_ms=lease_ttl_ms,
            coalesce_s=coalesce_window_ms / 1000,
            lag=functools.partial(backlog.lag, redis),
            gate=self._gate,
            fair=fair,
        )
        self.sweeper = self.ready.sweeper(
            PORTALS_KEY, functools.partial(backlog.probe, redis), interval_s=sweep_interval_s, rate=sweep_rate
        )
        self.parking = ParkedPortals(
            redis,
            self.ready.sets,
            self.process,
            consumer=consumer,
            recheck_s=parked_recheck_s,
            recheck_max_s=parked_recheck_max_s,
            batch_size=read_batch_size,
            visibility_ms=visibility_timeout_ms,
            # one batch's reads fit in it, with room
            hold_ms=int(hydrate_deadline_s * 2000),
        )
        self.processor = BatchProcessor(
            redis,
            mappings,
            Hydrator(writer, batch_size=hydrate_batch_size, deadline_s=hydrate_deadline_s),
            Publisher(redis, feed_max_len=feed_max_len, forget_later=True),
            max_attempts=max_attempts,
            park=self.parking.park,
        )
        self.in_flight = InFlightBatches(
            redis,
            self.process,
            consumer=consumer,
            max_in_flight=max_batches_in_flight,
            stall_s=stalled_batch_ms / 1000,
        )
        # One reporter for this worker's loops and the ready consumer's: a Redis outage is one
        # rate-limited "inbound worker: Redis unavailable, retrying", not one per loop.
        self._loop_error = self.ready.report_error

    @property
    def batches(self) -> int:
        """Batches processed by this replica."""
        return self.processor.batches

    async def run(self) -> None:
        """Consume until cancelled.

        A cancellation lost inside a client library is repeated by the service's stop.
        """
        side = [
            asyncio.create_task(self.parking.listen(), name="mapper-connection-changes"),
            asyncio.create_task(self._housekeeping(), name="mapper-inbound-housekeeping"),
            asyncio.create_task(self.sweeper.run(), name="mapper-inbound-sweeper"),
        ]
        try:
            await self.ready.run()
        finally:
            pending = [*side, *self.in_flight.tasks(), *self.parking.tasks()]
            for task in pending:
                task.cancel()
            # their entries stay pending: another consumer (or this one, restarted) reclaims them
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task

    async def process(self, portal: str, source: Source, entries: list[ParsedEntry]) -> BatchResult:
        """Turn one portal's entries into feed changes and finish them, atomically (parked when
        the portal's connection is unusable)."""
        return await self.processor.process(portal, source, entries)

    async def record_depth(self) -> None:
        """Set the depth gauge of the parked and dead-letter queues."""
        await backlog.record_depth(self.redis, self.parking.portals())

    async def _housekeeping(self) -> None:
        """Parked portals (discovery, re-checks), the heartbeat of entries in flight, the depth
        gauge: work proportional to parked portals and batches in flight, not to all portals."""
        next_discover = next_depth = next_beat = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_discover:
                    await self.parking.discover()
                    next_discover = now + PARKED_DISCOVER_S
                if now >= next_depth:
                    next_depth = now + _DEPTH_INTERVAL_S
                    await self.record_depth()
                if now >= next_beat:
                    next_beat = now + max(self.visibility_ms / 3000, 0.05)
                    await self.in_flight.heartbeat()
                self.parking.probe(now)
                self.in_flight.forget_finished_turns()
                # Publications marked and not yet forgotten in a later publication's round trip.
                await self.processor.publisher.marks.forget()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reraise_if_cancelling()
                self._loop_error(exc)
            await asyncio.sleep(0.1 if self.parking.portals() else 0.5)

    def _gate(self, portal: str) -> int | None:
        """A parked portal's events are not read: its mark waits for the next re-check."""
        return self.parking.gate(portal)

    async def _turn(self, portal: str, rows: list[tuple[bytes, dict[bytes, bytes]]]) -> Blocked | None:
        """One portal's turn: its entries as batches (entries of records that an earlier batch
        still holds wait for it); returns Blocked when the portal got parked meanwhile."""
        await self.in_flight.wait_for_room()
        entries = [parse_entry(i, f) for i, f in rows]
        # A custom object type id not learned for this portal: its types are learned now, before
        # the events are classified (on demand: no pass over known portals, no call otherwise).
        await CUSTOM_TYPES.ensure_ids(
            self.writer, int(portal), (e.what.object_type for e in entries if e.what)
        )
        await self.in_flight.turn(portal, Source(events_key(portal)), entries)
        until = self._gate(portal)
        return None if until is None else Blocked(until)
