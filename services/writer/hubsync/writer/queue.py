"""The durable outbound queue and SubmitWrites' idempotency.

An asynchronous submission (``wait=false``) is appended to ``hubsync:{<portal>}:writes``
together with its idempotency record in one Lua script, before the RPC returns, and the portal is
then marked in the ``writes`` ready set (:mod:`hubsync.core.ready`). Consumers in group ``writer``
take turns on the portals with work in the shards they lease (at most ``quantum`` entries a turn,
processed concurrently so the batcher coalesces across submissions), acknowledge entries only
once HubSpot has answered, and reclaim entries a dead consumer left pending (XAUTOCLAIM, only for
portals in the pending set). A portal out of quota or behind an open circuit is put aside until
its retry time; idle portals cost nothing. A request id is accepted once; a repeat answers with
the first result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, StatusCode
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import HubsyncError, Unavailable
from hubsync.core.keys import WRITER_PORTALS_KEY, write_request_key, writes_key
from hubsync.core.ready import DEFAULT_SHARDS, WRITES, Blocked, ReadyConsumer, ReadySets, now_ms
from hubsync.core.telemetry import extract_context, inject_fields
from hubsync.core.versions import reserve_lua
from hubsync.writer._ledger import Ledger
from hubsync.writer.ordering import stamp, version_counter_key

__all__ = [
    "GROUP",
    "QUEUE",
    "QueueConsumer",
    "WriteQueue",
]

log = logging.getLogger(__name__)

GROUP = "writer"
_tracer = trace.get_tracer("hubsync.writer")
QUEUE = WRITES
_PENDING = b"pending"
_PENDING_TTL_S = 300

# KEYS: request key, stream, the portal's version counter. ARGV: response, ttl, maxlen, request
# bytes, traceparent, tracestate, accepted_ms, how many versions to reserve. The reserved
# versions (the writes' acceptance order, see ordering.py) are stored with the entry.
_ACCEPT = (
    """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
"""
    + reserve_lua("KEYS[3]", "ARGV[8]")
    + """
local fields = {'request', ARGV[4], 'accepted_ms', ARGV[7], 'version_base', string.format('%d', base)}
if ARGV[5] ~= '' then table.insert(fields, 'traceparent'); table.insert(fields, ARGV[5]) end
if ARGV[6] ~= '' then table.insert(fields, 'tracestate'); table.insert(fields, ARGV[6]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
return false
"""
)


class WriteQueue:
    """The durable write queue: one stream per portal, a ledger per entry, ready marks for the consumer."""

    def __init__(
        self, redis: Redis, *, maxlen: int, request_ttl_s: int, shards: int = DEFAULT_SHARDS
    ) -> None:
        self.redis = redis
        self.ready = ReadySets(redis, QUEUE, shards)
        self.maxlen = maxlen
        self.request_ttl_s = request_ttl_s
        self._accept = redis.register_script(_ACCEPT)
        self._grouped: set[int] = set()

    async def enqueue(self, request: writer_pb2.SubmitWritesRequest) -> writer_pb2.SubmitWritesResponse:
        """Makes the submission durable; answers QUEUED for each write (or the first answer)."""
        portal = request.portal_id
        request_id = request.request_id or f"auto:{uuid.uuid4().hex}"
        queued = writer_pb2.SubmitWritesResponse(
            results=[writer_pb2.WriteResult(status=writer_pb2.WRITE_STATUS_QUEUED) for _ in request.writes]
        )
        stored = writer_pb2.SubmitWritesRequest()
        stored.CopyFrom(request)
        stored.request_id = request_id
        carrier = inject_fields({})
        await self._ensure_group(portal)
        existing = await self._accept(
            keys=[write_request_key(portal, request_id), writes_key(portal), version_counter_key(portal)],
            args=[
                queued.SerializeToString(),
                self.request_ttl_s,
                self.maxlen,
                stored.SerializeToString(),
                carrier.get("traceparent", ""),
                carrier.get("tracestate", ""),
                int(time.time() * 1000),
                max(len(request.writes), 1),
            ],
        )
        if existing:
            return _previous(existing, len(request.writes))
        # After the append (a crash in between is repaired by the sweeper): consumers see it.
        await self.ready.mark([portal])
        return queued

    async def _ensure_group(self, portal: int) -> None:
        if portal in self._grouped:
            return
        await self.redis.sadd(WRITER_PORTALS_KEY, str(portal))
        try:
            await self.redis.xgroup_create(writes_key(portal), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(portal)

    async def begin(
        self, request: writer_pb2.SubmitWritesRequest, deadline: float | None
    ) -> writer_pb2.SubmitWritesResponse | None:
        """For wait=true: claims the request id, or returns the first call's answer."""
        if not request.request_id:
            return None
        key = write_request_key(request.portal_id, request.request_id)
        while True:
            # Short-lived: if this writer dies mid-call, a retry may claim the id again soon
            # (a second run of the same writes is harmless: upserts by unique value).
            if await self.redis.set(key, _PENDING, nx=True, ex=_PENDING_TTL_S):
                return None
            value: Any = await self.redis.get(key)
            if value is None:
                continue
            if value != _PENDING:
                return _previous(value, len(request.writes))
            if deadline is not None and time.monotonic() + 0.1 > deadline:
                raise Unavailable("the same request_id is still being processed", retry_after=1.0)
            await asyncio.sleep(0.1)

    async def finish(
        self, request: writer_pb2.SubmitWritesRequest, response: writer_pb2.SubmitWritesResponse | None
    ) -> None:
        """Record a request's answer under its request id (idempotent retries get it), or forget the
        request when there is none (it failed before an answer)."""
        if not request.request_id:
            return
        key = write_request_key(request.portal_id, request.request_id)
        if response is None:
            await self.redis.delete(key)
        else:
            await self.redis.set(key, response.SerializeToString(), ex=self.request_ttl_s)

    async def depth(self, portal_id: int) -> int:
        """Submissions not yet processed (processed entries are deleted from the stream)."""
        return int(await self.redis.xlen(writes_key(portal_id)))


def _previous(value: bytes, n: int) -> writer_pb2.SubmitWritesResponse:
    reply = writer_pb2.SubmitWritesResponse.FromString(value)
    if len(reply.results) != n:
        # A different submission under the same request id: answer with what was accepted.
        log.warning("request_id reused for a different submission")
    return reply


class QueueConsumer:
    """Processes the durable queues of the portals with work, in the ready shards it leases."""

    def __init__(
        self,
        redis: Redis,
        process: Callable[[int, writer_pb2.SubmitWritesRequest, list[Link], Ledger], Awaitable[None]],
        *,
        count: int = 100,
        claim_idle_ms: int = 30_000,
        shards: int = DEFAULT_SHARDS,
        poll_s: float = 5.0,
        lease_ttl_ms: int = 30_000,
        max_turns: int = 16,
        sweep_interval_s: float = 3600.0,
        sweep_rate: float = 20.0,
    ) -> None:
        self.redis = redis
        self.process = process
        self.claim_idle_ms = claim_idle_ms
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.ready = ReadyConsumer(
            redis,
            QUEUE,
            name="write queue consumer",
            stream=writes_key,
            group=GROUP,
            consumer=self.consumer,
            handle=self._turn,
            shards=shards,
            quantum=count,
            max_turns=max_turns,
            visibility_ms=claim_idle_ms,
            poll_s=poll_s,
            lease_ttl_ms=lease_ttl_ms,
            lag=self._lag,
        )
        self.sweeper = self.ready.sweeper(
            WRITER_PORTALS_KEY, self._probe, interval_s=sweep_interval_s, rate=sweep_rate
        )

    async def run(self) -> None:
        """Run the consumer until cancelled: take ready portals' turns of queued writes."""
        sweeper = asyncio.create_task(self.sweeper.run(), name="writer-queue-sweeper")
        try:
            await self.ready.run()
        finally:
            sweeper.cancel()
            with contextlib.suppress(BaseException):
                await sweeper

    async def _turn(self, portal_id: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> Blocked | None:
        portal = int(portal_id)
        waits = await asyncio.gather(*(self._handle(portal, i, f) for i, f in entries))
        retry = [w for w in waits if w is not None]
        if not retry:
            return None
        # HubSpot is out of quota or down for this portal: nothing more of it is read until then.
        return Blocked(now_ms() + int(max(retry) * 1000))

    async def _lag(self, portals: list[str]) -> int:
        if not portals:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for portal in portals:
                pipe.xlen(writes_key(portal))
            return sum(int(n) for n in await pipe.execute())

    async def _probe(self, portals: list[str]) -> list[tuple[bool, bool]]:
        """The sweeper's look at a page of portals: processed entries leave the stream, so any
        entry is work (undelivered, or pending for a consumer that may be dead)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for portal in portals:
                pipe.xlen(writes_key(portal))
            lengths = await pipe.execute()
        return [(int(n) > 0, int(n) > 0) for n in lengths]

    async def _handle(self, portal: int, entry_id: bytes, fields: dict[bytes, bytes]) -> float | None:
        """Processes one entry; returns seconds to wait when HubSpot refused before the call."""
        try:
            request = writer_pb2.SubmitWritesRequest.FromString(fields[b"request"])
        except Exception:
            log.error("unreadable write queue entry dropped", extra={"portal": portal})
            await self.redis.xack(writes_key(portal), GROUP, entry_id)
            return None
        # Writes the caller gave no version get the ones reserved when the entry was accepted.
        stamp(request.writes, int(fields.get(b"version_base", b"0")))
        parent = extract_context(fields)
        ctx = trace.get_current_span(parent).get_span_context()
        links = [Link(ctx)] if ctx.is_valid else []
        entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        # What earlier attempts of this entry finished, and whether one was cut off mid-flight.
        ledger = await Ledger.of_entry(self.redis, portal, entry).begin()
        # The hop through the stream is a consumer span under the request that queued the entry.
        span = _tracer.start_span(
            "writer.queued",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"hubsync.portal_id": portal, "hubsync.write_count": len(request.writes)},
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.process(portal, request, links, ledger)
        except HubsyncError as exc:
            # HubSpot is down or out of quota (refused before the call went out): leave it
            # pending; it is claimed again after the retry time, skipping what this attempt finished.
            span.set_status(StatusCode.ERROR, exc.reason)
            await ledger.stopped_before_sending()
            log.warning("queued write not processed yet", extra={"portal": portal, "reason": exc.reason})
            return exc.retry_after if exc.retry_after is not None else self.claim_idle_ms / 1000
        finally:
            otel_context.detach(token)
            span.end()
        # Processed entries leave the stream: it holds only what is still to do (its length is the
        # queue depth), and Redis memory does not grow with history.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(writes_key(portal), GROUP, entry_id)
            pipe.xdel(writes_key(portal), entry_id)
            pipe.delete(ledger.key)
            await pipe.execute()
        return None
