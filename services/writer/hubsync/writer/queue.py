"""The durable outbound queue and SubmitWrites' idempotency.

An asynchronous submission (``wait=false``) is appended to ``hubsync:{<portal>}:writes``
together with its idempotency record in one Lua script, before the RPC returns; consumers in
group ``writer`` process entries concurrently (so the batcher coalesces across submissions),
acknowledge them only once HubSpot has answered, and reclaim entries a dead consumer left
pending (XAUTOCLAIM). A request id is accepted once; a repeat answers with the first result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind, StatusCode
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import HubsyncError, Unavailable
from hubsync.core.keys import WRITER_PORTALS_KEY, write_ledger_key, write_request_key, writes_key
from hubsync.core.outage import loop_error
from hubsync.core.portal_metrics import PortalGauge
from hubsync.core.telemetry import extract_context, inject_fields
from hubsync.core.versions import reserve_lua
from hubsync.writer.ordering import stamp, version_counter_key
from hubsync.writer.submissions import Ledger

log = logging.getLogger(__name__)

GROUP = "writer"
_tracer = trace.get_tracer("hubsync.writer")
_lag = PortalGauge("sum")
metrics.get_meter("hubsync.writer").create_observable_gauge(
    "hubsync.stream.lag",
    callbacks=[_lag.observe],
    description="Entries of the durable write queue not yet processed",
)
PORTALS = WRITER_PORTALS_KEY
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
    def __init__(self, redis: Redis, *, maxlen: int, request_ttl_s: int) -> None:
        self.redis = redis
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
        return queued

    async def _ensure_group(self, portal: int) -> None:
        if portal in self._grouped:
            return
        await self.redis.sadd(PORTALS, str(portal))
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
    """Processes the durable queue of every portal (group ``writer``)."""

    def __init__(
        self,
        redis: Redis,
        process: Callable[[int, writer_pb2.SubmitWritesRequest, list[Link], Ledger], Awaitable[None]],
        *,
        count: int = 50,
        block_ms: int = 500,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.redis = redis
        self.process = process
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._groups: set[int] = set()
        self._last_claim = 0.0
        self._loop_error = loop_error(
            log, "write queue consumer failed; retrying", "write queue consumer: Redis unavailable, retrying"
        )

    async def _ensure_groups(self) -> list[int]:
        portals = sorted(int(p) for p in await self.redis.smembers(PORTALS))
        for portal in portals:
            if portal in self._groups:
                continue
            try:
                await self.redis.xgroup_create(writes_key(portal), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(portal)
        return portals

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # Redis came back without its data: groups made again
                    self._groups.clear()
                # A Redis outage is a rate-limited warning; the loop resumes when Redis is back.
                self._loop_error(exc)
                await asyncio.sleep(1.0)

    async def step(self) -> int:
        """One round: reclaim stale entries now and then, read new ones, process them."""
        portals = await self._ensure_groups()
        if not portals:
            await asyncio.sleep(self.block_ms / 1000)
            return 0
        entries: list[tuple[int, bytes, dict[bytes, bytes]]] = []
        if time.monotonic() - self._last_claim > self.claim_idle_ms / 2000:
            self._last_claim = time.monotonic()
            for portal in portals:
                await self._record_lag(portal)
                _next, claimed, *_ = await self.redis.xautoclaim(
                    writes_key(portal), GROUP, self.consumer, self.claim_idle_ms, "0-0", count=self.count
                )
                entries += [(portal, i, f) for i, f in claimed if f]
        if not entries:
            streams = {writes_key(p): ">" for p in portals}
            reply: Any = await self.redis.xreadgroup(
                GROUP,
                self.consumer,
                streams,  # type: ignore[arg-type]
                count=self.count,
                block=self.block_ms,
            )
            for stream, items in reply or []:
                name = stream.decode() if isinstance(stream, bytes) else stream
                portal = int(name.split("{", 1)[1].split("}", 1)[0])
                entries += [(portal, i, f) for i, f in items]
        if entries:
            await asyncio.gather(*(self._handle(p, i, f) for p, i, f in entries))
        return len(entries)

    async def _record_lag(self, portal: int) -> None:
        depth = int(await self.redis.xlen(writes_key(portal)))
        _lag.set(depth, portal, {"stream": "writes", "group": GROUP})

    async def _handle(self, portal: int, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            request = writer_pb2.SubmitWritesRequest.FromString(fields[b"request"])
        except Exception:
            log.error("unreadable write queue entry dropped", extra={"portal": portal})
            await self.redis.xack(writes_key(portal), GROUP, entry_id)
            return
        # Writes the caller gave no version get the ones reserved when the entry was accepted.
        stamp(request.writes, int(fields.get(b"version_base", b"0")))
        parent = extract_context(fields)
        ctx = trace.get_current_span(parent).get_span_context()
        links = [Link(ctx)] if ctx.is_valid else []
        entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        # What earlier attempts of this entry finished, and whether one was cut off mid-flight.
        ledger = await Ledger(self.redis, write_ledger_key(portal, entry)).begin()
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
            # pending; XAUTOCLAIM retries it later, skipping what this attempt finished.
            span.set_status(StatusCode.ERROR, exc.reason)
            await ledger.stopped_before_sending()
            log.warning("queued write not processed yet", extra={"portal": portal, "reason": exc.reason})
            return
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
