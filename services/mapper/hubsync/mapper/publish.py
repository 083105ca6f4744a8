"""Publishing a hydrated batch: feed entries, dead letters and the input's ack in one transaction.

A change is not published when subscribers would learn nothing from it:

- it is identical (kind, fields, related ids) to the last change published for the record — a
  duplicate webhook or a redelivered entry (``hubsync:{<portal>}:feedlast:<type>:<id>``);
- it is a creation or an update and every mapped property has the value hubsync last saw or
  wrote (the fingerprints, :mod:`hubsync.mapper.fingerprints`) or the value writer last wrote to
  the record (writer's written-values record, ``hubsync:{<portal>}:written:<type>:<id>``, which
  also covers pushes answered ``QUEUED``) — the echo of hubsync's own write, or a reconciliation
  of a record hubsync wrote (a resend of values HubSpot already held moves the record's
  modification time without a webhook). A property hubsync never saw counts as empty.

So an UPDATED change always names the mapped fields that differ from what hubsync knew
(``changed_fields``), never none.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from opentelemetry import trace
from redis.asyncio import Redis

from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.core.keys import FeedEntry, feed_key, feed_last_key, fingerprint_key, written_key
from hubsync.core.telemetry import trace_id_hex
from hubsync.mapper import metrics as sync_metrics
from hubsync.mapper._publish_script import PUBLISH_SCRIPT, Writes
from hubsync.mapper.feed_ready import FeedMarks
from hubsync.mapper.fingerprints import digest, digest_properties
from hubsync.mapper.hydrate import Hydration
from hubsync.mapper.inbound_events import ParsedEntry, RecordChange
from hubsync.mapper.inbound_queues import queue_dead_letter
from hubsync.mapper.transforms import CompiledMapping, MappingSet

__all__ = ["EVENTS_GROUP", "DeadLetter", "Publisher", "Source"]

# The consumer group mapper reads ingress's event streams in.
EVENTS_GROUP = "mapper"
_LAST_TTL_S = 7 * 86_400
_EMPTY = digest("")
_COMPARED = (mapper_pb2.CHANGE_KIND_UPDATED, mapper_pb2.CHANGE_KIND_CREATED)


@dataclass(frozen=True)
class Source:
    """Where a batch's entries came from: the portal's event stream (finished by XACK in group
    ``mapper``) or its parked stream (finished by XDEL)."""

    key: str
    parked: bool = False

    def finish(self, pipe: Any, ids: list[bytes]) -> None:
        """Queue the finishing of ``ids`` on ``pipe``: XACK on the event stream, XDEL when parked."""
        if not ids:
            return
        if self.parked:
            pipe.xdel(self.key, *ids)
        else:
            pipe.xack(self.key, EVENTS_GROUP, *ids)


@dataclass
class _Built:
    change: RecordChange
    proto: mapper_pb2.Change
    digest: bytes
    props: dict[str, str]
    mapping: CompiledMapping


@dataclass(frozen=True)
class DeadLetter:
    """An entry to dead-letter: why, and after how many attempts."""

    entry: ParsedEntry
    reason: str
    detail: str
    attempts: int


def _build(portal: str, c: RecordChange, hydration: Hydration, mapping: CompiledMapping) -> _Built:
    change = mapper_pb2.Change(
        portal_id=int(portal),
        object_type=c.object_type,
        hubspot_id=c.object_id,
        kind=c.kind,
        related_ids=c.related,
        trace_id=_trace_id(c),
    )
    if c.occurred_ms:
        change.occur_time.CopyFrom(
            timestamp_pb2.Timestamp(seconds=c.occurred_ms // 1000, nanos=(c.occurred_ms % 1000) * 1_000_000)
        )
    props: dict[str, str] = {}
    if c.kind == mapper_pb2.CHANGE_KIND_DELETED:
        props = hydration.archived.get(c.key, {})
        change.external_id = props.get(mapping.id_property, "")
    else:
        found = hydration.found.get(c.key)
        if found is None:
            # HubSpot no longer has it (deleted since the event, or merged away).
            change.kind = mapper_pb2.CHANGE_KIND_DELETED
        else:
            props = found
            external_id, record = mapping.to_external(found)
            change.external_id = external_id
            change.fields.CopyFrom(_struct(record))
    changed: dict[str, None] = {}
    for p in sorted(c.properties):
        for f in mapping.fields_of_property.get(p, ()):
            changed[f] = None
    change.changed_fields.extend(changed)
    # The digest ignores the trace, time and event-only details: same state → same digest. A
    # creation and an update that leave the record the same are one state too (HubSpot sends a
    # creation and then property changes for one new record; split over two batches they must not
    # reach subscribers twice).
    kind = mapper_pb2.CHANGE_KIND_UPDATED if change.kind == mapper_pb2.CHANGE_KIND_CREATED else change.kind
    ident = mapper_pb2.Change(
        kind=kind, fields=change.fields, related_ids=change.related_ids, external_id=change.external_id
    )
    state = hashlib.blake2b(ident.SerializeToString(deterministic=True), digest_size=12).digest()
    return _Built(c, change, state, props, mapping)


def _differing(built: _Built, known: list[bytes | None], written: list[bytes | None]) -> list[str] | None:
    """The mapped fields whose property differs both from what hubsync last saw or wrote (its
    fingerprint) and from what writer last wrote to the record, or None when the change is not
    compared (not a creation/update, or no external id)."""
    if built.proto.kind not in _COMPARED or not built.proto.external_id:
        return None
    mapping = built.mapping
    fields: dict[str, None] = {}
    for p, old, ours in zip(mapping.read_properties, known, written, strict=True):
        value = built.props.get(p) or ""
        if digest(value) == (old or _EMPTY) or (ours is not None and ours.decode() == value):
            continue
        for f in mapping.fields_of_property.get(p, ()):
            fields[f] = None
    return list(fields)


class Publisher:
    """Writes a batch's outcome to Redis atomically (the publish script, see the module doc),
    then marks the feed streams it appended to ready for every subscriber group. The marks live in
    the groups' cluster slots, not the portal's, so they follow the script (a subscriber that
    looks in between finds the mark only after the changes are there); the publication is
    recorded first, so marks a dead replica never made are made by the next subscriber
    (:mod:`hubsync.mapper.feed_ready`)."""

    def __init__(
        self, redis: Redis, *, feed_max_len: int, marks: FeedMarks | None = None, forget_later: bool = False
    ) -> None:
        """Set up the publisher.

        Args:
            redis: The client.
            feed_max_len: Approximate entries kept per feed stream.
            marks: The feed's ready sets (default: its own).
            forget_later: Forget a publication's record in the next publication's first round
                trip (or at ``marks.forget()``, which the owner then calls every second or so),
                not in one of its own.
        """
        self.redis = redis
        self.feed_max_len = feed_max_len
        self.marks = marks or FeedMarks(redis)
        self.forget_later = forget_later

    async def publish(
        self,
        portal: str,
        source: Source,
        changes: list[RecordChange],
        hydration: Hydration,
        mappings: MappingSet,
        *,
        finished: list[bytes],
        dead: list[DeadLetter],
    ) -> None:
        """Publishes ``changes``, dead-letters ``dead``, finishes their entries and ``finished``."""
        built = []
        for c in changes:
            mapping = mappings.get(c.object_type)
            assert mapping is not None
            built.append(_build(portal, c, hydration, mapping))
        last_keys = [feed_last_key(portal, b.change.object_type, b.change.object_id) for b in built]
        fkeys = [_fkey(portal, b) for b in built]
        ids = [*finished, *(i for b in built for i in b.change.entry_ids), *(d.entry.id for d in dead)]
        outcomes: list[tuple[RecordChange, str]] = []
        publication = self.marks.token(portal, {b.change.object_type for b in built}) if built else None
        begin = publication
        # Compare-and-publish: the state is read (in one round trip with the publication's record,
        # the first time), the outcome decided here, and the publish script applies it only if
        # what it was decided on is still what Redis holds (the last published digests and the
        # fingerprints, compared value by value inside the script): two replicas holding the
        # same change (a duplicated webhook, a reclaimed entry) cannot both see "not published
        # yet", and an outbound write racing with the comparison makes it run again. (It was
        # WATCH, the reads and MULTI/EXEC: three round trips, now two.)
        while True:
            last, known, written = await self._read_state(portal, built, last_keys, fkeys, begin)
            begin = None
            writes = Writes()
            for lkey, prev in zip(last_keys, last, strict=True):
                writes.expect(lkey, (), [prev])
            for b, fkey, fps in zip(built, fkeys, known, strict=True):
                if fkey:
                    writes.expect(fkey, b.mapping.read_properties, fps)
            outcomes = self._queue(writes, portal, built, last_keys, last, known, written)
            for d in dead:
                queue_dead_letter(writes, portal, d.entry.id, d.entry.fields, d.reason, d.detail, d.attempts)
            source.finish(writes, ids)
            if await PUBLISH_SCRIPT.run(self.redis, writes):
                break
        if publication is not None:
            types = {c.object_type for c, outcome in outcomes if outcome == "published"}
            await self.marks.published(portal, types, publication, later=self.forget_later)
        now_ms = time.time() * 1000
        for c, outcome in outcomes:
            sync_metrics.sync.add(
                1, {"object_type": c.object_type, "direction": "inbound", "outcome": outcome}
            )
            if outcome == "published" and c.occurred_ms:
                sync_metrics.sync_duration.record(
                    max(now_ms - c.occurred_ms, 0) / 1000,
                    {"object_type": c.object_type, "direction": "inbound"},
                )

    async def _read_state(
        self, portal: str, built: list[_Built], last_keys: list[str], fkeys: list[str], begin: str | None
    ) -> tuple[list[Any], list[list[bytes | None]], list[list[bytes | None]]]:
        """The last published digests, and the fingerprints and writer's last written values of
        the compared records (and, with ``begin``, the publication recorded, in the same round
        trip: before the publish script, as the repair needs)."""
        if not built:
            return [], [], []
        prefix: list[list[Any]] = [self.marks.begin_command(begin)] if begin else []
        prefix += self.marks.forget_commands()  # earlier publications, marked since
        commands = list(prefix)
        # MGET as a raw command: the Redis Cluster client refuses pipe.mget() whatever the keys,
        # and these are all one portal's keys (one slot), which MGET accepts on a cluster.
        commands.append(["MGET", *last_keys])
        for b, fkey in zip(built, fkeys, strict=True):
            if fkey:
                commands.append(["HMGET", fkey, *b.mapping.read_properties])
                ours = written_key(portal, b.change.object_type, b.change.object_id)
                commands.append(["HMGET", ours, *b.mapping.read_properties])
        replies = await self.marks.run_with_begin(commands)
        pairs = iter(replies[len(prefix) :])
        last = list(next(pairs))
        known: list[list[bytes | None]] = []
        written: list[list[bytes | None]] = []
        for b, fkey in zip(built, fkeys, strict=True):
            none: list[bytes | None] = [None] * len(b.mapping.read_properties)
            known.append(list(next(pairs)) if fkey else none)
            written.append(list(next(pairs)) if fkey else none)
        return last, known, written

    def _queue(
        self,
        pipe: Any,
        portal: str,
        built: list[_Built],
        last_keys: list[str],
        last: list[Any],
        known: list[list[bytes | None]],
        written: list[list[bytes | None]],
    ) -> list[tuple[RecordChange, str]]:
        outcomes: list[tuple[RecordChange, str]] = []
        for b, lkey, prev, fps, ours in zip(built, last_keys, last, known, written, strict=True):
            c, change = b.change, b.proto
            if prev == b.digest:
                outcomes.append((c, "duplicate"))
                continue
            differing = _differing(b, fps, ours)
            if differing is not None:
                if not differing:
                    outcomes.append((c, "unchanged"))  # hubsync's own write, or nothing mapped changed
                    continue
                del change.changed_fields[:]
                change.changed_fields.extend(differing)
            outcomes.append((c, "published"))
            pipe.xadd(
                feed_key(portal, c.object_type),
                {FeedEntry.CHANGE: change.SerializeToString(), FeedEntry.HUBSPOT_ID: c.object_id},
                maxlen=self.feed_max_len,
                approximate=True,
            )
            pipe.set(lkey, b.digest, ex=_LAST_TTL_S)
            if change.external_id:
                fkey = fingerprint_key(portal, c.object_type, change.external_id)
                if change.kind == mapper_pb2.CHANGE_KIND_DELETED:
                    pipe.delete(fkey)
                else:
                    seen = {p: b.props.get(p) or "" for p in b.mapping.read_properties}
                    pipe.hset(fkey, mapping=digest_properties(seen))
        return outcomes


def _fkey(portal: str, b: _Built) -> str:
    if b.proto.kind not in _COMPARED or not b.proto.external_id:
        return ""
    return fingerprint_key(portal, b.change.object_type, b.proto.external_id)


def _trace_id(change: RecordChange) -> str:
    if not change.contexts:
        return ""
    return trace_id_hex(trace.get_current_span(change.contexts[0]))


def _struct(record: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(record)
    return s
