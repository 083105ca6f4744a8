"""The append: one round trip's submissions into each portal's stream, in one Redis pipeline.

:meth:`EventAppender.append` builds one call of the enqueue script per portal
(:mod:`hubsync.ingress._enqueue_script`: dedupe, echo check, XADD, retention), sends them all in one
pipeline with the portals' registration (``hubsync:portals``), loads the script again when Redis
lost it (``NOSCRIPT`` after a restart), and maps each call's reply back to the submissions'
events.

Echoes (events of hubsync's own writes) never reach the event stream, but they are journaled in
``hubsync:{portal}:echoes`` (``r`` = ``<object type>:<object id>:<occurredAt>``): the reconciler
counts them as reported, so a pass does not take hubsync's own writes for changes webhooks
missed. Both kinds go there: those the endpoint recognised by their source (a submission's
``own_echoes``) and those the script recognises by the value writer recorded.

Entries: each accepted event is one compact ``JournalEvent`` (``hubsync.core.event_entries``),
or with ``entry_format="fields"`` the fields of 0.1.0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import orjson
from redis.asyncio import Redis

from hubsync.core.event_entries import encode_event, encode_trace
from hubsync.core.keys import PORTALS_KEY, echoes_key, events_key, written_key
from hubsync.core.ready import DEFAULT_SHARDS, EVENTS, ReadySets
from hubsync.core.redis import pipelined
from hubsync.ingress._dedupe import dedupe_slot
from hubsync.ingress._enqueue_script import ENQUEUE_LUA, ENQUEUE_SHA
from hubsync.ingress._submission import CommitOutcome, Submission
from hubsync.ingress.events import WebhookEvent

__all__ = ["ENTRY_FORMATS", "EntryFormat", "EventAppender", "echo_record"]

EntryFormat = Literal["compact", "fields"]
ENTRY_FORMATS: tuple[EntryFormat, ...] = ("compact", "fields")
_OUTCOMES = (CommitOutcome.ACCEPTED, CommitOutcome.DUPLICATE, CommitOutcome.ECHO)
# One event's arguments to the script (see its comment): set index, member, written index,
# property, value, entry length, echo record, then traceparent, tracestate, origin (fields format).
_EventArgs = tuple[int, str, int, str, str, int, str, str, str, str]
_NO_TRACE_ARGS = ("", "", "")


def echo_record(event: WebhookEvent) -> str:
    """Return what the echo journal keeps of an echo: ``<object type>:<object id>:<occurredAt>``."""
    return f"{event.object_type or ''}:{event.object_id}:{event.occurred_at}"


@dataclass
class _PortalCall:
    """One portal's script call.

    Its keys (1-based indexes in the events' arguments), the events' arguments and entries, and
    where each event's answer goes (position -1: an echo known by its source, no outcome).
    """

    keys: list[str]
    index: dict[str, int]
    args: list[_EventArgs] = field(default_factory=list)
    entries: list[bytes] = field(default_factory=list)
    slots: list[tuple[Submission, int]] = field(default_factory=list)

    def key(self, name: str) -> int:
        found = self.index.get(name)
        if found is None:
            self.keys.append(name)
            found = self.index[name] = len(self.keys)
        return found


class EventAppender:
    """Appends submissions' events to their portals' streams, deduped, echoes journaled apart."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention_ms: int,
        dedupe_ttl_s: int,
        dedupe_buckets: int,
        max_bytes: int = 0,
        entry_format: EntryFormat = "compact",
        ready_shards: int = DEFAULT_SHARDS,
    ) -> None:
        """Set up the appender.

        Args:
            redis: The client (a cluster client too: each call stays in its portal's slot).
            retention_ms: Entries older than this are trimmed from the stream (and the echo
                journal) on append.
            dedupe_ttl_s: How long a dedupe set lives past its last insert.
            dedupe_buckets: Sets per portal-hour (``DEDUPE_BUCKETS``).
            max_bytes: A portal's stream past this many bytes loses its oldest entries (0: no cap).
            entry_format: ``compact`` (one field ``e``) or ``fields`` (0.1.0's format, which mapper
                replicas of 0.1.0 read: for a rolling upgrade, see UPGRADING.md).
            ready_shards: Shards of mapper's ``events`` ready set (``HUBSYNC_READY_SHARDS``): a
                portal is marked ready after its entries are appended.

        """
        if entry_format not in ENTRY_FORMATS:
            raise ValueError(f"entry_format must be one of {ENTRY_FORMATS}")
        self._redis = redis
        self.retention_ms = retention_ms
        self.dedupe_ttl_s = dedupe_ttl_s
        self.dedupe_buckets = dedupe_buckets
        self.max_bytes = max_bytes
        self.compact = entry_format == "compact"
        self._ready = ReadySets(redis, EVENTS, ready_shards)

    async def append(self, batch: Sequence[Submission]) -> dict[Submission, list[CommitOutcome]]:
        """Append every submission's events in one round trip; returns each one's outcomes.

        Raises whatever the client raises when Redis does not answer (the committer answers every
        waiter :class:`~hubsync.ingress.committer.EnqueueFailed`).
        """
        now_ms = int(time.time() * 1000)
        calls = self._calls(batch)
        ordered = list(calls.items())
        minid = max(now_ms - self.retention_ms, 0)
        fmt = "e" if self.compact else "fields"
        commands = [
            [
                "EVALSHA",
                ENQUEUE_SHA,
                len(call.keys),
                *call.keys,
                minid,
                self.dedupe_ttl_s,
                self.max_bytes,
                orjson.dumps(call.args),
                b"".join(call.entries),
                fmt,
                now_ms,
            ]
            for _portal, call in ordered
        ]
        portals = sorted({str(portal) for portal in calls})
        # Redis restarted (or flushed its scripts): the script is loaded and the pipeline sent again.
        replies = await pipelined(
            self._redis, [*commands, ["SADD", PORTALS_KEY, *portals]], scripts=(ENQUEUE_LUA,)
        )
        # Marked after the append (one more round trip, only ZADD NX per portal): the mapper
        # replica leasing the portal's shard is nudged when it became newly ready. A portal whose
        # events were all duplicates is marked too: a commit that failed after its append and is
        # retried by HubSpot finds its events duplicates, and they must still be consumed.
        # The pipeline's last reply is the SADD of known portals.
        scripts = zip(ordered, replies[: len(ordered)], strict=True)
        answered = [(portal, call, _codes(reply)) for (portal, call), reply in scripts]
        await self._ready.mark(sorted({str(portal) for portal, _call, codes in answered if _queued(codes)}))
        outcomes = {sub: [CommitOutcome.ACCEPTED] * len(sub.events) for sub in batch}
        for _portal, call, codes in answered:
            for (sub, position), code in zip(call.slots, codes, strict=True):
                if position >= 0:
                    outcomes[sub][position] = _OUTCOMES[code - 48]
        return outcomes

    def _calls(self, batch: Sequence[Submission]) -> dict[int, _PortalCall]:
        """Each portal's script call for the submissions' events (and their own echoes)."""
        calls: dict[int, _PortalCall] = {}

        def call_of(event: WebhookEvent) -> _PortalCall:
            call = calls.get(event.portal_id)
            if call is None:
                stream = events_key(event.portal_id)
                echoes = echoes_key(event.portal_id)
                call = calls[event.portal_id] = _PortalCall([stream, echoes], {stream: 1, echoes: 2})
            return call

        for sub in batch:
            for event in sub.own_echoes:
                call = call_of(event)
                call.args.append((0, "0", 0, "", "", 0, echo_record(event), "", "", ""))
                call.slots.append((sub, -1))
            context = sub.context
            # Serialized messages concatenated are one message: the trace context is encoded once
            # per submission and appended to each of its events.
            trace_part = encode_trace(context.traceparent, context.tracestate) if self.compact else b""
            # The fields format carries them as arguments of their own.
            trace_args = (
                _NO_TRACE_ARGS if self.compact else (context.traceparent, context.tracestate, sub.origin)
            )
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
                call.entries.append(entry)
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
        return calls


def _codes(reply: object) -> bytes:
    """A script's reply: one ASCII digit per argument row (see :data:`_OUTCOMES`)."""
    return reply if isinstance(reply, bytes) else str(reply).encode()


def _queued(codes: bytes) -> bool:
    """Tell whether a script's codes say an event of the portal is (or was already) on its stream."""
    return b"0" in codes or b"1" in codes
