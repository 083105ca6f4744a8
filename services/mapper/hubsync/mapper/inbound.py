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

A portal whose connection is unusable is parked (:mod:`hubsync.mapper.inbound_queues`): its
entries move to its parked stream and its ready mark is scored to its next re-check, so no
replica reads its events until the connection works again — announced by auth on
``hubsync:auth:connection-changes``, or found by a re-check every ``parked_recheck_s`` (doubling
up to ``parked_recheck_max_s``). Then one replica replays the parked entries in order, unparks
the portal and marks it ready again. What can never succeed is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import metrics, trace
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubsync.api.writer.v1 import writer_pb2_grpc
from hubsync.core.keys import INBOUND_DLQ_PORTALS_KEY, PORTALS_KEY, events_key
from hubsync.core.outage import loop_error
from hubsync.core.ready import DEFAULT_SHARDS, EVENTS, Blocked, ReadyConsumer, group_work, now_ms
from hubsync.core.redis import as_str, follow_channel, group_lag
from hubsync.mapper import inbound_queues as queues
from hubsync.mapper.hydrate import COUNTED, PERMANENT, TRANSIENT, Hydrator, PortalUnusable
from hubsync.mapper.inbound_events import ParsedEntry, RecordChange, coalesce, parse_entry
from hubsync.mapper.objecttypes import CUSTOM_TYPES
from hubsync.mapper.publish import GROUP, DeadLetter, Publisher, Source
from hubsync.mapper.transforms import MappingSet

log = logging.getLogger(__name__)
tracer = trace.get_tracer("hubsync.mapper")
_meter = metrics.get_meter("hubsync.mapper")
_parked_events = _meter.create_counter("hubsync.mapper.inbound.parked", description="Inbound events parked")
_dead_events = _meter.create_counter(
    "hubsync.mapper.inbound.dead_letters", description="Inbound events dead-lettered"
)
_depth = _meter.create_gauge(
    "hubsync.mapper.inbound.depth", description="Inbound events parked or dead-lettered, all portals"
)
# How often the set of parked portals is read (parking replicas announce it too).
PARKED_DISCOVER_S = 5.0

__all__ = ["GROUP", "InboundWorker", "events_key"]

# A batch's outcome.
DONE = "done"
PARKED = "parked"
PARTIAL = "partial"  # some entries stay (transient failure): retried later


@dataclass
class _Parked:
    next_probe: float
    interval: float
    # Announced while a re-check was running: that re-check's failure must not defer the next.
    poked: bool = False


@dataclass
class _Held:
    source: Source
    ids: list[bytes]
    started: float


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
    ):
        self.redis: Any = redis
        self.mappings = mappings
        self.consumer = consumer
        self.coalesce_s = coalesce_window_ms / 1000
        self.visibility_ms = visibility_timeout_ms
        self.batch_size = read_batch_size
        self.max_in_flight = max_batches_in_flight
        self.stall_s = stalled_batch_ms / 1000
        self.max_attempts = max_attempts
        self.recheck_s = parked_recheck_s
        self.recheck_max_s = max(parked_recheck_max_s, parked_recheck_s)
        self.writer = writer
        self.hydrator = Hydrator(writer, batch_size=hydrate_batch_size, deadline_s=hydrate_deadline_s)
        self.publisher = Publisher(redis, feed_max_len=feed_max_len)
        self.ready = ReadyConsumer(
            redis,
            EVENTS,
            name="inbound worker",
            stream=events_key,
            group=GROUP,
            consumer=consumer,
            handle=self._turn,
            shards=shards,
            quantum=read_batch_size,
            max_turns=max_batches_in_flight,
            visibility_ms=visibility_timeout_ms,
            poll_s=poll_s,
            lease_ttl_ms=lease_ttl_ms,
            coalesce_s=self.coalesce_s,
            lag=self._lag,
            gate=self._gate,
        )
        self.sweeper = self.ready.sweeper(
            PORTALS_KEY, self._probe, interval_s=sweep_interval_s, rate=sweep_rate
        )
        self._parked: dict[str, _Parked] = {}
        self._draining: dict[str, asyncio.Task[None]] = {}
        # Portals announced while not parked here (until when the announcement counts): parked
        # by another replica, or an operator's replay; the next discovery re-checks them at once.
        self._announced: dict[str, float] = {}
        self._tasks: dict[asyncio.Task[None], _Held] = {}
        # The batches of each portal's last turn (the next turn waits for them).
        self._previous: dict[str, list[asyncio.Task[None]]] = {}
        # (portal, object type, id) → the latest batch task holding the record.
        self._holders: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self.batches = 0
        self._loop_error = loop_error(
            log, "inbound step failed unexpectedly", "inbound worker: Redis unavailable, retrying"
        )

    async def run(self) -> None:
        """Consumes until cancelled. (A cancellation lost inside a client library is repeated by
        the service's stop.)"""
        side = [
            asyncio.create_task(self._listen(), name="mapper-connection-changes"),
            asyncio.create_task(self._housekeeping(), name="mapper-inbound-housekeeping"),
            asyncio.create_task(self.sweeper.run(), name="mapper-inbound-sweeper"),
        ]
        try:
            await self.ready.run()
        finally:
            pending = [*side, *self._tasks, *self._draining.values()]
            for task in pending:
                task.cancel()
            # their entries stay pending: another consumer (or this one, restarted) reclaims them
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task

    async def _housekeeping(self) -> None:
        """Parked portals (discovery, re-checks), the heartbeat of entries in flight, the depth
        gauge: work proportional to parked portals and batches in flight, not to all portals."""
        next_discover = next_depth = next_beat = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_discover:
                    await self._discover()
                    next_discover = now + PARKED_DISCOVER_S
                if now >= next_depth:
                    next_depth = now + 15.0
                    await self.record_depth()
                if now >= next_beat:
                    next_beat = now + max(self.visibility_ms / 3000, 0.05)
                    await self._heartbeat()
                self._probe_parked(now)
                self._previous = {p: t for p, t in self._previous.items() if not all(x.done() for x in t)}
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _reraise_if_cancelling()
                self._loop_error(exc)
            await asyncio.sleep(0.1 if self._parked else 0.5)

    def _gate(self, portal: str) -> int | None:
        """A parked portal's events are not read: its mark waits for the next re-check."""
        state = self._parked.get(portal)
        if state is None:
            return None
        return now_ms() + max(int((state.next_probe - time.monotonic()) * 1000), 1000)

    async def _turn(self, portal: str, rows: list[tuple[bytes, dict[bytes, bytes]]]) -> Blocked | None:
        """One portal's turn: its entries as batches (entries of records that an earlier batch
        still holds wait for it); returns Blocked when the portal got parked meanwhile."""
        if len(self._tasks) >= 2 * self.max_in_flight:  # stalled batches pile up: wait for one
            await asyncio.wait(list(self._tasks), return_when=asyncio.FIRST_COMPLETED)
        if int(portal) not in CUSTOM_TYPES.portals:
            # Its custom object types, learned at its first turn (not by a pass over every known
            # portal: idle portals cost nothing), before its events are classified.
            await CUSTOM_TYPES.ensure(self.writer, int(portal))
        tasks = self._dispatch(portal, Source(events_key(portal)), [parse_entry(i, f) for i, f in rows])
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
        until = self._gate(portal)
        return None if until is None else Blocked(until)

    async def _lag(self, portals: list[str]) -> int:
        """Undelivered plus pending entries of the portals with work (group mapper)."""
        if not portals:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for portal in portals:
                pipe.xinfo_groups(events_key(portal))
            replies = await pipe.execute(raise_on_error=False)
        total = 0
        for portal, rows in zip(portals, replies, strict=True):
            for g in rows if isinstance(rows, list) else []:
                if as_str(g["name"]) == GROUP:
                    total += await group_lag(self.redis, events_key(portal), g) + int(g.get("pending") or 0)
        return total

    async def _probe(self, portals: list[str]) -> list[tuple[bool, bool]]:
        """The sweeper's look at a page of portals (undelivered entries, pending entries)."""
        return await group_work(self.redis, [events_key(p) for p in portals], GROUP)

    async def _discover(self) -> None:
        parked = {as_str(p) for p in await self.redis.smembers(queues.PARKED_PORTALS_KEY)}
        now = time.monotonic()
        for portal in parked:
            if portal not in self._parked:
                announced = self._announced.pop(portal, 0.0) > now
                self._parked[portal] = _Parked(now if announced else now + self.recheck_s, self.recheck_s)
        for portal, until in list(self._announced.items()):
            if until <= now:
                del self._announced[portal]
        unparked = [p for p in self._parked if p not in parked and p not in self._draining]
        for portal in unparked:
            del self._parked[portal]  # another replica unparked it
        if unparked:
            # This replica may have scored their marks to a re-check meanwhile: read them now.
            await self.ready.sets.mark(unparked, mode="LT")

    async def _heartbeat(self) -> None:
        """Keeps the entries of batches in flight: their idle time restarts, so no other replica
        claims a batch that is slow but alive (a hung read, writer's retries)."""
        by_key: dict[str, list[bytes]] = {}
        for held in self._tasks.values():
            if not held.source.parked:
                by_key.setdefault(held.source.key, []).extend(held.ids)
        for key, ids in by_key.items():
            for i in range(0, len(ids), 500):
                await self.redis.xclaim(key, GROUP, self.consumer, 0, ids[i : i + 500], justid=True)

    def _dispatch(self, portal: str, source: Source, entries: list[ParsedEntry]) -> list[asyncio.Task[None]]:
        """Starts a batch for the entries whose records no batch in flight holds, and one that
        waits for those batches for the others; returns the batches started."""
        free: list[ParsedEntry] = []
        blocked: list[ParsedEntry] = []
        waits: set[asyncio.Task[None]] = set()
        for e in entries:
            record = e.record
            holder = self._holders.get((portal, *record)) if record else None
            if holder is not None and not holder.done():
                blocked.append(e)
                waits.add(holder)
            else:
                free.append(e)
        started = []
        for part, after in ((free, set()), (blocked, waits)):
            if part:
                started.append(self._launch(portal, source, part, after))
        return started

    def _launch(
        self, portal: str, source: Source, entries: list[ParsedEntry], after: set[asyncio.Task[None]]
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(self._batch(portal, source, entries, after), name="mapper-inbound-batch")
        self._tasks[task] = _Held(source, [e.id for e in entries], asyncio.get_running_loop().time())
        records = {(portal, *e.record) for e in entries if e.record}
        for r in records:
            self._holders[r] = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.pop(t, None)
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
            outcome, left = await self.process(portal, source, entries)
            delay = 0.5
            # Transient failures (writer or HubSpot briefly unavailable) are retried a few times
            # here, the records still held; then the entries wait for the visibility timeout.
            for _ in range(3):
                if outcome != PARTIAL:
                    return
                await asyncio.sleep(delay)
                delay *= 2
                held = self._tasks.get(asyncio.current_task())  # type: ignore[arg-type]
                if held is not None:
                    held.ids = [e.id for e in left]
                outcome, left = await self.process(portal, source, left)
            if outcome == PARTIAL:
                log.warning(
                    "inbound events not read; retried after the visibility timeout",
                    extra={"portal": portal, "events": len(left)},
                )
        except asyncio.CancelledError:
            raise
        except (grpc.aio.AioRpcError, ConnectionError, ResponseError, OSError) as exc:
            _reraise_if_cancelling()
            # The entries stay pending and come back after the visibility timeout.
            log.warning("inbound batch failed", extra={"portal": portal, "error": str(exc)[:300]})
        except Exception:
            _reraise_if_cancelling()
            log.exception("inbound batch failed unexpectedly", extra={"portal": portal})

    async def process(
        self, portal: str, source: Source, entries: list[ParsedEntry]
    ) -> tuple[str, list[ParsedEntry]]:
        """Turns one portal's entries into feed changes and finishes them, atomically; parks them
        when the portal's connection is unusable. Returns DONE, PARKED or PARTIAL, and the entries
        left (a transient failure: retry them)."""
        self.batches += 1
        # The portal's mappings (default + overrides), one snapshot for the whole batch.
        mappings = await self.mappings(portal)
        batch = coalesce(entries, mappings)
        spans = {c.key: self._start_span(portal, c) for c in batch.changes}
        try:
            try:
                hydration = await self.hydrator.hydrate(portal, batch.changes, mappings, spans)
            except PortalUnusable as exc:
                await self._park(portal, source, entries, exc)
                return PARKED, []
            ok: list[RecordChange] = []
            retry: list[RecordChange] = []
            counted: list[RecordChange] = []
            dead = [DeadLetter(e, e.reason, e.detail, 1) for e in batch.dead]
            for c in batch.changes:
                failure = hydration.failure_of(c)
                if failure is None:
                    ok.append(c)
                elif failure.kind == TRANSIENT:
                    retry.append(c)
                elif failure.kind == PERMANENT:
                    dead += [DeadLetter(e, failure.reason, failure.detail, 1) for e in _entries(c, entries)]
                else:
                    assert failure.kind == COUNTED
                    counted.append(c)
            if counted:
                ids = [i for c in counted for i in c.entry_ids]
                counts = dict(zip(ids, await queues.count_failures(self.redis, portal, ids), strict=True))
                for c in counted:
                    failure = hydration.failure_of(c)
                    assert failure is not None
                    if max(counts[i] for i in c.entry_ids) >= self.max_attempts:
                        dead += [
                            DeadLetter(e, failure.reason, failure.detail, counts[e.id])
                            for e in _entries(c, entries)
                        ]
                    else:
                        retry.append(c)
            await self.publisher.publish(
                portal, source, ok, hydration, mappings, finished=batch.done, dead=dead
            )
            if dead:  # the depth gauge looks at portals with dead letters only
                await self.redis.sadd(INBOUND_DLQ_PORTALS_KEY, portal)
            for d in dead:
                _dead_events.add(1, {"reason": d.reason})
                log.warning(
                    "inbound event dead-lettered",
                    extra={"portal": portal, "reason": d.reason, "detail": d.detail[:200]},
                )
            left = [e for c in retry for e in _entries(c, entries)]
            return (PARTIAL, left) if left else (DONE, [])
        finally:
            for span in spans.values():
                span.end()

    async def _park(
        self, portal: str, source: Source, entries: list[ParsedEntry], exc: PortalUnusable
    ) -> None:
        rows = [(e.id, e.fields) for e in entries]
        await queues.park(
            self.redis,
            portal,
            rows,
            from_stream=None if source.parked else source.key,
            group=GROUP,
            reason=exc.reason,
            detail=exc.detail,
        )
        if not source.parked:
            _parked_events.add(len(rows))
        if portal not in self._parked:
            log.warning(
                "portal parked: its connection is unusable; its events wait until it works again",
                extra={"portal": portal, "reason": exc.reason, "detail": exc.detail[:200]},
            )
            self._parked[portal] = _Parked(time.monotonic() + self.recheck_s, self.recheck_s)

    # ---- parked portals ---------------------------------------------------------------------

    def _probe_parked(self, now: float) -> None:
        for portal, state in self._parked.items():
            if state.next_probe <= now and portal not in self._draining:
                task = asyncio.create_task(self._drain(portal), name="mapper-inbound-unpark")
                self._draining[portal] = task

    async def _listen(self) -> None:
        """Re-checks a parked portal as soon as its connection changes (auth announces it; the
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
        elif len(self._announced) < 10_000:
            self._announced[portal] = time.monotonic() + 5.0

    async def _drain(self, portal: str) -> None:
        """Replays a parked portal's entries in order (one replica at a time); unparks it once
        none is left, or parks it on (the next re-check later) if the connection still fails."""
        try:
            await self._replay_parked(portal)
        finally:
            self._draining.pop(portal, None)

    async def _replay_parked(self, portal: str) -> None:
        state = self._parked.get(portal)
        if state is None:
            return
        state.poked = False
        lock = queues.drain_lock_key(portal)
        owner = f"{self.consumer}:{time.monotonic()}"
        hold_ms = int(self.hydrator.deadline_s * 2000)  # one chunk's reads fit in it, with room
        try:
            if not await self.redis.set(lock, owner, nx=True, px=hold_ms):
                state.next_probe = time.monotonic() + state.interval
                return
            try:
                source = Source(queues.parked_key(portal), parked=True)
                while True:
                    await self.redis.pexpire(lock, hold_ms)
                    rows = await self.redis.xrange(source.key, "-", "+", count=self.batch_size)
                    if not rows:
                        if await queues.unpark_if_empty(self.redis, portal):
                            self._parked.pop(portal, None)
                            # Its events waiting on the stream are read now (the mark was
                            # scored to the re-check: brought forward).
                            await self.ready.sets.mark([portal], mode="LT")
                            log.info(
                                "portal unparked: its parked events are replayed", extra={"portal": portal}
                            )
                            return
                        continue
                    outcome, _left = await self.process(portal, source, [parse_entry(i, f) for i, f in rows])
                    if outcome == PARKED:
                        if not state.poked:
                            state.interval = min(state.interval * 2, self.recheck_max_s)
                            state.next_probe = time.monotonic() + state.interval
                        return
                    if outcome == PARTIAL:
                        state.next_probe = time.monotonic() + self.visibility_ms / 1000
                        return
            finally:
                if await self.redis.get(lock) == owner.encode():
                    await self.redis.delete(lock)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _reraise_if_cancelling()
            log.warning("replaying parked events failed", extra={"portal": portal, "error": str(exc)[:300]})
            state.next_probe = time.monotonic() + state.interval

    def _start_span(self, portal: str, change: RecordChange) -> trace.Span:
        parent = change.contexts[0] if change.contexts else None
        links = []
        for ctx in change.contexts[1:]:
            sc = trace.get_current_span(ctx).get_span_context()
            if sc.is_valid:
                links.append(trace.Link(sc))
        return tracer.start_span(
            "mapper.inbound",
            context=parent,
            links=links,
            attributes={
                "hubsync.portal_id": portal,
                "hubsync.object_type": change.object_type,
                "hubsync.object_id": change.object_id,
                "hubsync.coalesced_events": max(len(change.contexts), 1),
            },
        )

    async def record_depth(self) -> None:
        """``hubsync.mapper.inbound.depth`` of the parked and dead-letter queues, summed over the
        parked portals and the portals with dead letters (no per-portal label, no pass over every
        portal; a portal whose dead letters are gone leaves the set)."""
        parked = 0
        for portal in list(self._parked):
            parked += int(await self.redis.xlen(queues.parked_key(portal)))
        dead = 0
        for raw in await self.redis.smembers(INBOUND_DLQ_PORTALS_KEY):
            portal = as_str(raw)
            n = int(await self.redis.xlen(queues.dead_letter_key(portal)))
            if n == 0:
                await self.redis.srem(INBOUND_DLQ_PORTALS_KEY, portal)
                if await self.redis.xlen(queues.dead_letter_key(portal)):  # added meanwhile
                    await self.redis.sadd(INBOUND_DLQ_PORTALS_KEY, portal)
            dead += n
        _depth.set(parked, {"queue": "parked"})
        _depth.set(dead, {"queue": "dlq"})


def _entries(change: RecordChange, entries: list[ParsedEntry]) -> list[ParsedEntry]:
    ids = set(change.entry_ids)
    return [e for e in entries if e.id in ids]


def _reraise_if_cancelling() -> None:
    """A cancelled task whose cancellation surfaced as another error (a gRPC call reports
    CANCELLED) must still stop, not retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
