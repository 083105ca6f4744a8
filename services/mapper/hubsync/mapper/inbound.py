"""The inbound pipeline: ingress's event streams → hydrate through writer → transform → feed.

Every replica reads each portal's ``hubsync:{<portal>}:events`` stream in the consumer group
``mapper`` (portals are discovered from the set ``hubsync:portals``). Entries a dead replica read
but never acknowledged are claimed after the visibility timeout (XAUTOCLAIM); a live replica
keeps the entries it is still working on (XCLAIM JUSTID, every third of the timeout), so a slow
read is never taken over. Events of one record read within the coalesce window become one
change; the records are read back from HubSpot through writer so the feed carries each record as
it is now (:mod:`hubsync.mapper.hydrate`), and published with the ack of the input in one
transaction (:mod:`hubsync.mapper.publish`).

Normally one batch is in flight and the next is read and coalesced meanwhile; a batch in flight
longer than ``stalled_batch_ms`` no longer holds the next ones back, so batches then run
concurrently (up to ``max_batches_in_flight``) and one slow HubSpot read holds up only its own
batch. Order per record is kept: entries of a record that a batch in flight holds wait for that
batch and form a batch of their own after it.

A portal whose connection is unusable is parked (:mod:`hubsync.mapper.inbound_queues`): its
entries move to its parked stream and no replica reads its events until the connection works
again — announced by auth on ``hubsync:auth:connection-changes``, or found by a re-check every
``parked_recheck_s`` (doubling up to ``parked_recheck_max_s``). Then one replica replays the
parked entries in order and unparks the portal. What can never succeed is dead-lettered.
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
from hubsync.core.keys import PORTALS_KEY, events_key, feed_key
from hubsync.core.outage import loop_error, redis_outage
from hubsync.core.portal_metrics import PortalGauge
from hubsync.core.redis import group_lag
from hubsync.mapper import inbound_queues as queues
from hubsync.mapper.feed import DISCOVER_INTERVAL_S
from hubsync.mapper.hydrate import COUNTED, PERMANENT, TRANSIENT, Hydrator, PortalUnusable
from hubsync.mapper.inbound_events import ParsedEntry, RecordChange, coalesce, parse_entry
from hubsync.mapper.publish import GROUP, DeadLetter, Publisher, Source
from hubsync.mapper.transforms import MappingSet

log = logging.getLogger(__name__)
tracer = trace.get_tracer("hubsync.mapper")
_meter = metrics.get_meter("hubsync.mapper")
_lag = PortalGauge("sum")
_meter.create_observable_gauge(
    "hubsync.stream.lag", callbacks=[_lag.observe], description="Entries a consumer group has not read yet"
)
_parked_events = _meter.create_counter("hubsync.mapper.inbound.parked", description="Inbound events parked")
_dead_events = _meter.create_counter(
    "hubsync.mapper.inbound.dead_letters", description="Inbound events dead-lettered"
)
_depth = PortalGauge("sum")
_meter.create_observable_gauge(
    "hubsync.mapper.inbound.depth",
    callbacks=[_depth.observe],
    description="Inbound events parked or dead-lettered",
)

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
        read_batch_size: int = 500,
        read_block_ms: int = 200,
        hydrate_batch_size: int = 100,
        hydrate_deadline_s: float = 20.0,
        max_batches_in_flight: int = 8,
        stalled_batch_ms: int = 1000,
        max_attempts: int = 10,
        parked_recheck_s: float = 60.0,
        parked_recheck_max_s: float = 900.0,
        feed_max_len: int = 1_000_000,
    ):
        self.redis: Any = redis
        self.mappings = mappings
        self.consumer = consumer
        self.coalesce_s = coalesce_window_ms / 1000
        self.visibility_ms = visibility_timeout_ms
        self.batch_size = read_batch_size
        self.block_ms = read_block_ms
        self.max_in_flight = max_batches_in_flight
        self.stall_s = stalled_batch_ms / 1000
        self.max_attempts = max_attempts
        self.recheck_s = parked_recheck_s
        self.recheck_max_s = max(parked_recheck_max_s, parked_recheck_s)
        self.hydrator = Hydrator(writer, batch_size=hydrate_batch_size, deadline_s=hydrate_deadline_s)
        self.publisher = Publisher(redis, feed_max_len=feed_max_len)
        self._streams: dict[str, str] = {}  # stream key → portal
        self._parked: dict[str, _Parked] = {}
        self._draining: dict[str, asyncio.Task[None]] = {}
        # Portals announced while not parked here (until when the announcement counts): parked
        # by another replica, or an operator's replay; the next discovery re-checks them at once.
        self._announced: dict[str, float] = {}
        self._tasks: dict[asyncio.Task[None], _Held] = {}
        # (portal, object type, id) → the latest batch task holding the record.
        self._holders: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self.batches = 0
        self._loop_error = loop_error(
            log, "inbound step failed unexpectedly", "inbound worker: Redis unavailable, retrying"
        )

    async def run(self) -> None:
        """Consumes until cancelled. (A cancellation lost inside a client library is repeated by
        the service's stop.)"""
        listener = asyncio.create_task(self._listen(), name="mapper-connection-changes")
        try:
            await self._run()
        finally:
            pending = [listener, *self._tasks, *self._draining.values()]
            for task in pending:
                task.cancel()
            # their entries stay pending: another consumer (or this one, restarted) reclaims them
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task

    async def _run(self) -> None:
        next_discover = next_claim = next_lag = next_beat = 0.0
        every = max(self.visibility_ms / 4000, 0.05)
        while True:
            try:
                now = time.monotonic()
                if now >= next_discover:
                    await self._discover()
                    next_discover = now + DISCOVER_INTERVAL_S
                if now >= next_lag:
                    next_lag = now + 5.0
                    await self.record_lag()
                if now >= next_beat:
                    next_beat = now + max(self.visibility_ms / 3000, 0.05)
                    await self._heartbeat()
                self._probe_parked(now)
                if len(self._tasks) >= self.max_in_flight:
                    await asyncio.wait(
                        list(self._tasks), timeout=self.block_ms / 1000, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                if now >= next_claim:
                    next_claim = now + every
                    for key, portal in self._active().items():
                        claimed = await self._claim(key)
                        if claimed:
                            self._dispatch(portal, Source(key), [parse_entry(i, f) for i, f in claimed])
                if not self._active():
                    await asyncio.sleep(0.1)
                    continue
                await self.step()
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, ConnectionError, ResponseError, OSError) as exc:
                _reraise_if_cancelling()
                if "NOGROUP" in str(exc):  # Redis came back without its data: groups made again
                    self._streams.clear()
                    next_discover = 0.0
                # The entries stay pending and come back after the visibility timeout.
                if redis_outage(exc) is not None:  # READONLY after a failover, LOADING, BUSY
                    self._loop_error(exc)
                else:
                    log.warning("inbound step failed", extra={"error": str(exc)[:300]})
                await asyncio.sleep(0.5)
            except Exception as exc:
                _reraise_if_cancelling()
                # A bug must not stop the pipeline for every portal: log, leave entries pending.
                # (A Redis outage is a rate-limited warning: the loop resumes when Redis is back.)
                self._loop_error(exc)
                await asyncio.sleep(1.0)

    def _active(self) -> dict[str, str]:
        """The event streams read now: every known portal's, except parked portals'."""
        if not self._parked:
            return self._streams
        return {k: p for k, p in self._streams.items() if p not in self._parked}

    async def _discover(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(PORTALS_KEY)
            pipe.smembers(queues.PARKED_PORTALS_KEY)
            members, parked_raw = await pipe.execute()
        for raw in members:
            portal = _s(raw)
            key = events_key(portal)
            if key in self._streams:
                continue
            try:
                await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._streams[key] = portal
        parked = {_s(p) for p in parked_raw}
        now = time.monotonic()
        for portal in parked:
            if portal not in self._parked:
                announced = self._announced.pop(portal, 0.0) > now
                self._parked[portal] = _Parked(now if announced else now + self.recheck_s, self.recheck_s)
        for portal, until in list(self._announced.items()):
            if until <= now:
                del self._announced[portal]
        for portal in list(self._parked):
            if portal not in parked and portal not in self._draining:
                del self._parked[portal]  # another replica unparked it

    async def _claim(self, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self.redis.xautoclaim(
            key, GROUP, self.consumer, min_idle_time=self.visibility_ms, start_id="0-0", count=self.batch_size
        )
        return [e for e in reply[1] if e and e[1]]

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

    async def step(self) -> int:
        """Reads one batch (blocking up to the read block time), coalesces, dispatches it."""
        streams = dict.fromkeys(self._active(), ">")
        reply = await self.redis.xreadgroup(
            GROUP, self.consumer, streams, count=self.batch_size, block=self.block_ms
        )
        if not reply:
            return 0
        if self.coalesce_s > 0:
            # Let events of the same records gather, then take what arrived meanwhile.
            await asyncio.sleep(self.coalesce_s)
            more = await self.redis.xreadgroup(GROUP, self.consumer, streams, count=self.batch_size)
            reply = list(reply) + list(more or [])
        by_key: dict[str, list[ParsedEntry]] = {}
        for key_raw, entries in reply:
            by_key.setdefault(_s(key_raw), []).extend(parse_entry(i, f) for i, f in entries)
        await self._wait_unless_stalled()
        for key, parsed in by_key.items():
            self._dispatch(self._streams[key], Source(key), parsed)
        return sum(len(p) for p in by_key.values())

    async def _wait_unless_stalled(self) -> None:
        """Waits for the batches in flight, but not past the point where they count as stalled.

        Normally one batch is in flight and the next is read and coalesced meanwhile: the next
        read carries every event that arrived (reads are HubSpot quota). A batch still in flight
        after ``stalled_batch_ms`` (a hung read, writer's retries) no longer holds the others back.
        """
        loop = asyncio.get_running_loop()
        fresh = [t for t, h in self._tasks.items() if loop.time() - h.started < self.stall_s]
        if fresh:
            youngest = max(self._tasks[t].started for t in fresh)
            await asyncio.wait(fresh, timeout=max(youngest + self.stall_s - loop.time(), 0.0))

    def _dispatch(self, portal: str, source: Source, entries: list[ParsedEntry]) -> None:
        """Starts a batch for the entries whose records no batch in flight holds, and one that
        waits for those batches for the others."""
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
        for part, after in ((free, set()), (blocked, waits)):
            if part:
                self._launch(portal, source, part, after)

    def _launch(
        self, portal: str, source: Source, entries: list[ParsedEntry], after: set[asyncio.Task[None]]
    ) -> None:
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
        """Re-checks a parked portal as soon as its connection changes (auth announces it)."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(queues.CONNECTION_CHANGES_CHANNEL)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    portal = _s(message.get("data") or b"")
                    state = self._parked.get(portal)
                    if state is not None:
                        state.next_probe = 0.0
                        state.interval = self.recheck_s
                        state.poked = True
                    elif len(self._announced) < 10_000:
                        self._announced[portal] = time.monotonic() + 5.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the periodic re-check still runs; subscribe again soon
                log.warning("connection-change subscription lost", extra={"error": str(exc)[:200]})
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

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

    async def record_lag(self) -> None:
        """``hubsync.stream.lag`` of the event streams (group mapper) and of every feed group;
        ``hubsync.mapper.inbound.depth`` of the parked and dead-letter queues."""
        for key, portal in list(self._streams.items()):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(queues.parked_key(portal))
                pipe.xlen(queues.dead_letter_key(portal))
                parked, dead = await pipe.execute()
            _depth.set(parked, portal, {"queue": "parked"})
            _depth.set(dead, portal, {"queue": "dlq"})
            with contextlib.suppress(ResponseError):
                for g in await self.redis.xinfo_groups(key):
                    if _s(g["name"]) == GROUP:
                        lag = await group_lag(self.redis, key, g)
                        _lag.set(lag, portal, {"stream": "events", "group": GROUP})
            for object_type in ("companies", "contacts", "deals"):
                with contextlib.suppress(ResponseError):
                    fkey = feed_key(portal, object_type)
                    for g in await self.redis.xinfo_groups(fkey):
                        _lag.set(
                            await group_lag(self.redis, fkey, g),
                            portal,
                            {"stream": f"feed:{object_type}", "group": _s(g["name"])},
                        )


def _entries(change: RecordChange, entries: list[ParsedEntry]) -> list[ParsedEntry]:
    ids = set(change.entry_ids)
    return [e for e in entries if e.id in ids]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reraise_if_cancelling() -> None:
    """A cancelled task whose cancellation surfaced as another error (a gRPC call reports
    CANCELLED) must still stop, not retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
