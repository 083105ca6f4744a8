"""Durable enqueue with group commit: one Redis round trip for many concurrent requests.

Each request hands its events to :class:`EventCommitter` and waits. A single flusher takes
everything queued, runs one Lua call per portal (dedupe + echo check + XADD, atomic per portal,
keys under the portal's hash tag so Redis Cluster keeps them in one slot), all in one pipeline,
and wakes the requests with their outcomes. While one round trip is in flight the next group
gathers, so under load a round trip carries many requests; alone, a request waits for none.

Echoes (events of hubsync's own writes) never reach the event stream, but they are journaled
in ``hubsync:{portal}:echoes`` (``r`` = ``<object type>:<object id>:<occurredAt>``): the
reconciler counts them as reported, so a pass does not take hubsync's own writes for changes
webhooks missed. Both kinds go there: those the endpoint recognised by their source (passed as
``own_echoes``) and those the script recognises by the value writer recorded.

Dedupe memory: a 16-byte BLAKE2b digest of the event identity picks a set
``hubsync:{portal}:seen:<occurred hour>:<bucket>`` and a signed 64-bit member. Members are integers,
so each small set is a Redis *intset*: 8 bytes per event plus the key's share of overhead
(``bench/ingress`` measures bytes/event). Sets live ``dedupe_ttl_s`` past their last insert.

Entries: each accepted event is one compact ``JournalEvent`` (``hubsync.core.event_entries``),
or with ``entry_format="fields"`` the fields of 0.1.0. The stream is trimmed by time and bytes on
every append (the script's comment says how).

Tracing: every entry stores a W3C trace context. Submissions that ask for it (``grouped``: the
webhook requests HubSpot sends without one) share one ``ingress.commit`` span per round trip,
the root of their events' traces; a submission with its own span (``traced``) has it opened and
closed around the round trip; others bring their context (``carrier``) or none. A failure to
open spans never keeps events out of Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from hubsync.core.event_entries import encode_event, encode_trace
from hubsync.core.keys import PORTALS_KEY, dedupe_key, echoes_key, events_key, written_key
from hubsync.core.ready import DEFAULT_SHARDS, EVENTS, ReadySets
from hubsync.ingress import metrics
from hubsync.ingress.events import WebhookEvent

log = logging.getLogger(__name__)
COMMIT_SPAN = "ingress.commit"
# The commit span lists the event and object ids of its first events only: tracing backends cap
# an attribute's size (Tempo's default is 2 KiB), and mapper's spans carry each event's ids.
LISTED_IDS = 100
_tracer = trace.get_tracer("hubsync.ingress")
_ROOT = Context()
_WEBHOOK = {"origin": "webhook"}
_WRITTEN = {"kind": "written"}
HOUR_MS = 3_600_000
# A digest's first 8 bytes are the set member (signed), the next 4 pick the bucket.
_MEMBER_AND_BUCKET = struct.Struct(">qI")

# KEYS[1] the stream, KEYS[2] the echo journal, then dedupe sets and written-hashes; ARGV: the
# oldest id to keep (MINID), ttl, the stream's byte cap (0: none), one JSON array of events, each
# [set index (0: an echo known by its source, only journaled), member, written index (0: none),
# property, value, entry length, echo record, and for the fields format: traceparent, tracestate,
# origin], the events' entries back to back (compact: serialized JournalEvents; fields: the
# events' JSON), the format ('e' or 'fields'), accepted_ms. One argument for all events: packing
# thousands of small ones costs the client more than the whole script costs Redis. Returns one
# digit per event (a string: one reply to parse, not one per event): 0 accepted, 1 duplicate,
# 2 echo.
#
# Retention: every XADD trims entries older than the retention (MINID ~: whole nodes only, so
# it costs nothing between nodes). Past the byte cap, the oldest entries go too: MEMORY USAGE
# (sampled: a few nodes, O(1) in the stream's length) says how far over, XTRIM MAXLEN ~ cuts
# that share. Both only on a stream the call appended to.
_ENQUEUE_LUA = """
local minid = ARGV[1]
local ttl = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local batch = cjson.decode(ARGV[4])
local entries = ARGV[5]
local compact = ARGV[6] == 'e'
local accepted = ARGV[7]
local pos = 1
local added = false
local out = {}
local touched = {}
for i, e in ipairs(batch) do
  local entry = string.sub(entries, pos, pos + e[6] - 1)
  pos = pos + e[6]
  local set = KEYS[e[1]]
  if e[1] == 0 then
    redis.call('XADD', KEYS[2], 'MINID', '~', minid, '*', 'r', e[7])
    out[i] = 2
  elseif redis.call('SADD', set, e[2]) == 0 then
    out[i] = 1
  else
    touched[set] = true
    local echo = false
    if e[3] > 0 then
      local written = redis.call('HGET', KEYS[e[3]], e[4])
      echo = written ~= false and written == e[5]
    end
    if echo then
      redis.call('XADD', KEYS[2], 'MINID', '~', minid, '*', 'r', e[7])
      out[i] = 2
    else
      if compact then
        redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', 'e', entry)
      else
        local command = {'XADD', KEYS[1], 'MINID', '~', minid, '*', 'event', entry}
        if e[8] ~= '' then
          table.insert(command, 'traceparent')
          table.insert(command, e[8])
        end
        if e[9] ~= '' then
          table.insert(command, 'tracestate')
          table.insert(command, e[9])
        end
        table.insert(command, 'accepted_ms')
        table.insert(command, accepted)
        table.insert(command, 'origin')
        table.insert(command, e[10])
        redis.call(unpack(command))
      end
      added = true
      out[i] = 0
    end
  end
end
for set, _ in pairs(touched) do
  redis.call('EXPIRE', set, ttl)
end
if added and max_bytes > 0 then
  local used = redis.call('MEMORY', 'USAGE', KEYS[1])
  if used and used > max_bytes then
    local length = redis.call('XLEN', KEYS[1])
    redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', math.floor(length * max_bytes / used))
  end
end
return table.concat(out)
"""
_ENQUEUE_SHA = hashlib.sha1(_ENQUEUE_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts so


ENTRY_FORMATS = ("compact", "fields")


class Outcome(IntEnum):
    ACCEPTED = 0
    DUPLICATE = 1
    ECHO = 2


_OUTCOMES = (Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.ECHO)


class EnqueueFailed(Exception):
    """Redis did not take the events (down, slow, full): the sender should retry later."""


class Traced(Protocol):
    """A submission's span, opened and closed by the flusher for a whole round trip in one loop.

    Opening the spans right before the round trip and closing them right after, one submission
    after another, keeps the tracing code hot in the CPU caches: interleaved with the HTTP and
    Redis work of each request, the same spans cost several times as much (``bench/ingress``).
    """

    def open(self) -> dict[str, str]:
        """Starts the span; returns the W3C trace context the submission's entries carry."""
        ...

    def close(self, error: str | None) -> None:
        """Ends the span: the events are in Redis (``error`` None) or not (``error`` says why)."""
        ...


@dataclass(slots=True, eq=False)
class _Submission:
    events: Sequence[WebhookEvent]
    traceparent: str
    tracestate: str
    origin: str
    future: asyncio.Future[list[Outcome]]
    traced: Traced | None = None
    # The entries carry the context of the round trip's ``ingress.commit`` span.
    grouped: bool = False
    # When the request arrived (epoch ns): the earliest one starts the round trip's span.
    received_ns: int = 0
    # ``time.perf_counter()`` then: its accept duration is recorded once Redis has the events.
    started: float = 0.0
    # Echoes the endpoint recognised by their source: journaled as echoes, never enqueued.
    own_echoes: Sequence[WebhookEvent] = ()


@dataclass
class _PortalCall:
    keys: list[str]
    index: dict[str, int]
    args: list[Any]
    slots: list[tuple[_Submission, int]] = field(default_factory=list)

    def key(self, name: str) -> int:
        found = self.index.get(name)
        if found is None:
            self.keys.append(name)
            found = self.index[name] = len(self.keys)
        return found


def trace_carrier(span: trace.Span) -> dict[str, str]:
    """The W3C trace context of ``span`` (empty when it has none), formatted as the
    ``TraceContextTextMapPropagator`` would, without its generic machinery."""
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    carrier = {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"}
    if context.trace_state:
        carrier["tracestate"] = context.trace_state.to_header()
    return carrier


def dedupe_slot(event: WebhookEvent, buckets: int) -> tuple[str, int]:
    """The dedupe set key and the signed 64-bit member of an event."""
    member, bucket = _MEMBER_AND_BUCKET.unpack_from(event.digest())
    return dedupe_key(event.portal_id, event.occurred_at // HOUR_MS, bucket % buckets), member


def echo_record(event: WebhookEvent) -> str:
    """What the echo journal keeps of an echo: ``<object type>:<object id>:<occurredAt>``."""
    return f"{event.object_type or ''}:{event.object_id}:{event.occurred_at}"


def _size(sub: _Submission) -> int:
    return len(sub.events) + len(sub.own_echoes)


class EventCommitter:
    """Queues events from concurrent requests and commits them to Redis in groups."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention_ms: int,
        dedupe_ttl_s: int,
        dedupe_buckets: int,
        timeout_s: float,
        window_s: float = 0.0,
        max_events: int = 2000,
        max_bytes: int = 0,
        entry_format: str = "compact",
        ready_shards: int = DEFAULT_SHARDS,
    ) -> None:
        self._redis = redis
        # Mapper's ``events`` ready set: a portal is marked after its entries are appended.
        self._ready = ReadySets(redis, EVENTS, ready_shards)
        # Entries older than this are trimmed from the stream (and the echo journal) on append.
        self.retention_ms = retention_ms
        # A portal's stream past this many bytes loses its oldest entries (0: no cap).
        self.max_bytes = max_bytes
        # "compact" (one field ``e``) or "fields" (0.1.0's format, which mapper replicas of
        # 0.1.0 read: for a rolling upgrade, see UPGRADING.md).
        if entry_format not in ENTRY_FORMATS:
            raise ValueError(f"entry_format must be one of {ENTRY_FORMATS}")
        self.compact = entry_format == "compact"
        self.dedupe_ttl_s = dedupe_ttl_s
        self.dedupe_buckets = dedupe_buckets
        self.timeout_s = timeout_s
        self.window_s = window_s
        self.max_events = max_events
        self._queue: list[_Submission] = []
        self._queued_events = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        # Statistics for benchmarks and tests: round trips and submissions they carried.
        self.round_trips = 0
        self.submissions = 0

    async def submit(
        self,
        events: Sequence[WebhookEvent],
        carrier: dict[str, str] | None = None,
        origin: str = "webhook",
        traced: Traced | None = None,
        *,
        grouped: bool = False,
        received_ns: int = 0,
        started: float = 0.0,
        own_echoes: Sequence[WebhookEvent] = (),
    ) -> list[Outcome]:
        """Commits ``events`` (deduped, echoes dropped); returns one outcome per event.

        The entries carry the trace context in ``carrier``; or the one ``traced`` opens (its span
        is closed before this returns, unless this raises before the round trip); or, when
        ``grouped``, the context of one ``ingress.commit`` span shared by every grouped
        submission of the round trip (started at the earliest ``received_ns``). With ``started``
        (a ``time.perf_counter()``), the time until Redis has the events is recorded as
        ``hubsync.webhook.accept.duration``. ``own_echoes`` (events of hubsync's own writes,
        recognised by their source) are only journaled as echoes; they get no outcome. Raises
        :class:`EnqueueFailed` when Redis could not take the events within the timeout.
        """
        if self._closed:
            raise EnqueueFailed("ingress is shutting down")
        loop = asyncio.get_running_loop()
        carrier = carrier or {}
        sub = _Submission(
            events,
            carrier.get("traceparent", ""),
            carrier.get("tracestate", ""),
            origin,
            loop.create_future(),
            traced,
            grouped,
            received_ns,
            started,
            own_echoes,
        )
        self._queue.append(sub)
        self._queued_events += len(events) + len(own_echoes)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_loop())
        return await sub.future

    async def close(self) -> None:
        """Waits for queued work to be committed (or to fail), then refuses new work."""
        self._closed = True
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher

    async def _flush_loop(self) -> None:
        while self._queue:
            # Let requests that are being parsed in this loop turn join the group.
            await asyncio.sleep(self.window_s)
            batch = self._take()
            try:
                span = self._open_spans(batch)
            except Exception:  # tracing must not keep events out of Redis
                log.exception("could not open the round trip's spans; committing without them")
                span = None
            try:
                async with asyncio.timeout(self.timeout_s):
                    results = await self._commit(batch)
            except Exception as exc:  # any Redis failure: every waiter answers 503
                reason = f"redis did not take the events: {type(exc).__name__}"
                failure = EnqueueFailed(reason)
                if span is not None:
                    span.set_status(StatusCode.ERROR, reason)
                    span.end()
                for sub in batch:
                    if sub.traced is not None:
                        sub.traced.close(reason)
                    if not sub.future.done():
                        sub.future.set_exception(failure)
                continue
            self._count(results)
            if span is not None:
                counts = [0, 0, 0]
                for sub, outcomes in results.items():
                    if sub.grouped:
                        for outcome in outcomes:
                            counts[outcome] += 1
                span.set_attributes(
                    {
                        "hubsync.accepted": counts[Outcome.ACCEPTED],
                        "hubsync.duplicates": counts[Outcome.DUPLICATE],
                        "hubsync.echoes": counts[Outcome.ECHO],
                    }
                )
                span.end()
            now = time.perf_counter()
            for sub, outcomes in results.items():
                if sub.started:
                    metrics.accept_duration.record(now - sub.started)
                if sub.traced is not None:
                    sub.traced.close(None)
                if not sub.future.done():
                    sub.future.set_result(outcomes)

    @staticmethod
    def _open_spans(batch: list[_Submission]) -> trace.Span | None:
        """Opens each ``traced`` submission's span, and the round trip's ``ingress.commit`` span
        if any submission is ``grouped``; sets the trace context each submission's entries carry.
        """
        grouped: list[_Submission] = []
        for sub in batch:
            if sub.traced is not None:
                carrier = sub.traced.open()
                sub.traceparent = carrier.get("traceparent", "")
                sub.tracestate = carrier.get("tracestate", "")
            elif sub.grouped:
                grouped.append(sub)
        if not grouped:
            return None
        events = [event for sub in grouped for event in sub.events]
        portals = sorted({event.portal_id for event in events})
        attributes: dict[str, Any] = {
            "hubsync.request_count": len(grouped),
            "hubsync.event_count": len(events),
            "hubsync.portal_id": portals[0] if len(portals) == 1 else portals,
            "hubsync.event_id": [event.event_id for event in events[:LISTED_IDS]],
            "hubsync.object_id": [event.object_id for event in events[:LISTED_IDS]],
        }
        started = [sub.received_ns for sub in grouped if sub.received_ns]
        span = _tracer.start_span(
            COMMIT_SPAN,
            context=_ROOT,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            start_time=min(started) if started else None,
        )
        carrier = trace_carrier(span)
        traceparent = carrier.get("traceparent", "")
        tracestate = carrier.get("tracestate", "")
        for sub in grouped:
            sub.traceparent = traceparent
            sub.tracestate = tracestate
        return span

    @staticmethod
    def _count(results: dict[_Submission, list[Outcome]]) -> None:
        """Webhook outcomes go to the counters once per round trip, not once per request (each
        ``add`` costs about as much as verifying a signature); the totals are the same, and they
        are recorded before any of the round trip's requests is answered."""
        counts = [0, 0, 0]
        for sub, outcomes in results.items():
            if sub.origin == "webhook":
                for outcome in outcomes:
                    counts[outcome] += 1
        if counts[Outcome.ACCEPTED]:
            metrics.accepted.add(counts[Outcome.ACCEPTED], _WEBHOOK)
        if counts[Outcome.DUPLICATE]:
            metrics.duplicates.add(counts[Outcome.DUPLICATE])
        if counts[Outcome.ECHO]:
            metrics.echoes.add(counts[Outcome.ECHO], _WRITTEN)

    async def _execute(self, commands: list[list[Any]], portals: list[str]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        pipe.sadd(PORTALS_KEY, *portals)
        try:
            replies: list[Any] = await pipe.execute()
        except ResponseError as exc:
            if "NOSCRIPT" in str(exc):
                raise NoScriptError(str(exc)) from None
            raise
        return replies

    def _take(self) -> list[_Submission]:
        queue = self._queue
        if self._queued_events <= self.max_events:
            self._queue = []
            self._queued_events = 0
            return queue
        taken = 0
        count = 0
        while taken < len(queue) and (not taken or count + _size(queue[taken]) <= self.max_events):
            count += _size(queue[taken])
            taken += 1
        self._queue = queue[taken:]
        self._queued_events -= count
        return queue[:taken]

    async def _commit(self, batch: list[_Submission]) -> dict[_Submission, list[Outcome]]:
        now_ms = int(time.time() * 1000)
        calls: dict[int, _PortalCall] = {}
        entries: dict[int, list[bytes]] = {}

        def call_of(event: WebhookEvent) -> _PortalCall:
            call = calls.get(event.portal_id)
            if call is None:
                stream = events_key(event.portal_id)
                echoes = echoes_key(event.portal_id)
                call = calls[event.portal_id] = _PortalCall([stream, echoes], {stream: 1, echoes: 2}, [])
                entries[event.portal_id] = []
            return call

        for sub in batch:
            for event in sub.own_echoes:
                call = call_of(event)
                call.args.append((0, "0", 0, "", "", 0, echo_record(event), "", "", ""))
                call.slots.append((sub, -1))
            # Serialized messages concatenated are one message: the trace context is encoded once
            # per submission and appended to each of its events.
            trace_part = encode_trace(sub.traceparent, sub.tracestate) if self.compact else b""
            # The fields format carries them as arguments of their own.
            trace_args = ("", "", "") if self.compact else (sub.traceparent, sub.tracestate, sub.origin)
            for position, event in enumerate(sub.events):
                call = call_of(event)
                set_key, member = dedupe_slot(event, self.dedupe_buckets)
                set_index = call.key(set_key)
                written_index = 0
                object_type = event.object_type
                if event.property_name is not None and event.property_value is not None and object_type:
                    written_index = call.key(written_key(event.portal_id, object_type, str(event.object_id)))
                if self.compact:
                    data = event.data if event.data is not None else orjson.loads(event.raw)
                    entry = encode_event(data, sub.origin) + trace_part
                else:
                    entry = event.raw
                entries[event.portal_id].append(entry)
                call.args.append(
                    (
                        set_index,
                        str(member),
                        written_index,
                        event.property_name or "",
                        event.property_value or "",
                        len(entry),
                        echo_record(event),
                        *trace_args,
                    )
                )
                call.slots.append((sub, position))
        ordered = list(calls.items())
        commands = []
        minid = max(now_ms - self.retention_ms, 0)
        fmt = "e" if self.compact else "fields"
        for portal, call in ordered:
            args = [
                minid,
                self.dedupe_ttl_s,
                self.max_bytes,
                orjson.dumps(call.args),
                b"".join(entries[portal]),
                fmt,
                now_ms,
            ]
            commands.append(["EVALSHA", _ENQUEUE_SHA, len(call.keys), *call.keys, *args])
        portals = sorted({str(portal) for portal in calls})
        try:
            replies = await self._execute(commands, portals)
        except NoScriptError:
            # Redis restarted (or flushed its scripts): load the script once and go again.
            await self._redis.script_load(_ENQUEUE_LUA)
            replies = await self._execute(commands, portals)
        # Marked after the append (one more round trip, only ZADD NX per portal): the mapper
        # replica leasing the portal's shard is nudged when it became newly ready. A portal whose
        # events were all duplicates is marked too: a commit that failed after its append and is
        # retried by HubSpot finds its events duplicates, and they must still be consumed.
        marked = sorted(
            {str(portal) for (portal, _c), reply in zip(ordered, replies, strict=False) if _queued(reply)}
        )
        await self._ready.mark(marked)
        self.round_trips += 1
        self.submissions += len(batch)
        outcomes = {sub: [Outcome.ACCEPTED] * len(sub.events) for sub in batch}
        for (_key, call), reply in zip(ordered, replies, strict=False):
            codes = reply if isinstance(reply, bytes) else str(reply).encode()
            for (sub, position), code in zip(call.slots, codes, strict=True):
                if position >= 0:
                    outcomes[sub][position] = _OUTCOMES[code - 48]
        return outcomes


def _queued(reply: Any) -> bool:
    """Whether a script's reply says an event of the portal is (or was already) on its stream."""
    codes = reply if isinstance(reply, bytes) else str(reply).encode()
    return b"0" in codes or b"1" in codes
