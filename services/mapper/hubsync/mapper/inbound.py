"""The inbound pipeline: ingress's event streams → hydrate through writer → transform → feed.

Every replica reads each portal's ``hubsync:{<portal>}:events`` stream in the consumer group
``mapper`` (portals are discovered from the set ``hubsync:portals``). Entries a dead replica read
but never acknowledged are claimed after the visibility timeout (XAUTOCLAIM). Events of one
record read within the coalesce window become one change; the records are read back from
HubSpot through writer (``batch/read``, only mapped properties, ≤ 100 ids a call) so the feed
carries each record as it is now, which also makes duplicates and redeliveries harmless.

A change is skipped when it is identical (kind, fields, related ids) to the last change published
for the record — a duplicate webhook or a redelivered entry changes nothing. Feed entries, the
last-published digests, the outbound fingerprints of what was seen, and the XACK of the input
entries go to Redis in one MULTI/EXEC: the input is acked only once the feed holds the result,
and a crash in between leaves the input pending for another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from google.protobuf import struct_pb2, timestamp_pb2
from opentelemetry import metrics, trace
from redis.asyncio import Redis
from redis.exceptions import ResponseError, WatchError

from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.outage import loop_error, redis_outage
from hubsync.core.redis import group_lag, portal_key
from hubsync.core.telemetry import extract_context, trace_id_hex
from hubsync.mapper import metrics as sync_metrics
from hubsync.mapper.feed import DISCOVER_INTERVAL_S, PORTALS_KEY, feed_key
from hubsync.mapper.fingerprints import digest_properties, fingerprint_key
from hubsync.mapper.transforms import CompiledMapping, MappingSet

log = logging.getLogger(__name__)
tracer = trace.get_tracer("hubsync.mapper")
_meter = metrics.get_meter("hubsync.mapper")
_reads = _meter.create_counter("hubsync.mapper.hydrate.calls", description="ReadRecords calls made")
_lag = _meter.create_gauge("hubsync.stream.lag", description="Entries a consumer group has not read yet")

GROUP = "mapper"
_TYPES = {"contact": "contacts", "company": "companies", "deal": "deals"}
_TYPE_IDS = {"0-1": "contacts", "0-2": "companies", "0-3": "deals"}
_KIND_RANK = {  # the strongest kind of a coalesced group wins
    "propertyChange": (1, mapper_pb2.CHANGE_KIND_UPDATED),
    "associationChange": (0, mapper_pb2.CHANGE_KIND_ASSOCIATION_CHANGED),
    "creation": (2, mapper_pb2.CHANGE_KIND_CREATED),
    "restore": (3, mapper_pb2.CHANGE_KIND_RESTORED),
    "merge": (4, mapper_pb2.CHANGE_KIND_MERGED),
    "deletion": (5, mapper_pb2.CHANGE_KIND_DELETED),
    "privacyDeletion": (5, mapper_pb2.CHANGE_KIND_DELETED),
}
_LAST_TTL_S = 7 * 86_400


def events_key(portal: str) -> str:
    return portal_key(portal, "events")


@dataclass
class RecordChange:
    """Events of one record within one batch, coalesced."""

    object_type: str
    object_id: str
    rank: int = -1
    kind: Any = mapper_pb2.CHANGE_KIND_UNSPECIFIED
    properties: set[str] = field(default_factory=set)
    related: list[str] = field(default_factory=list)
    occurred_ms: int = 0
    contexts: list[Any] = field(default_factory=list)

    def add(self, suffix: str, event: dict[str, Any], fields: dict[bytes, bytes]) -> None:
        rank, kind = _KIND_RANK.get(suffix, (1, mapper_pb2.CHANGE_KIND_UPDATED))
        if rank > self.rank:
            self.rank, self.kind = rank, kind
        if event.get("propertyName"):
            self.properties.add(str(event["propertyName"]))
        if suffix == "merge":
            for merged in event.get("mergedObjectIds") or []:
                if str(merged) not in self.related:
                    self.related.append(str(merged))
        if suffix == "associationChange":
            other = event.get("toObjectId")
            if other is not None and str(other) not in self.related:
                self.related.append(str(other))
        self.occurred_ms = max(self.occurred_ms, int(event.get("occurredAt") or 0))
        if b"traceparent" in fields or "traceparent" in fields:
            self.contexts.append(extract_context(fields))


def classify(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(object type, record id, event kind) of a webhook event, or None for types not synced."""
    sub = str(event.get("subscriptionType") or "")
    prefix, _, suffix = sub.partition(".")
    object_type = _TYPES.get(prefix) or _TYPE_IDS.get(str(event.get("objectTypeId") or ""))
    if object_type is None or not suffix:
        return None
    object_id = event.get("objectId")
    if suffix == "merge":
        object_id = event.get("primaryObjectId") or event.get("newObjectId") or object_id
    if suffix == "associationChange":
        object_id = event.get("fromObjectId") or object_id
    if object_id is None:
        return None
    return object_type, str(object_id), suffix


class InboundWorker:
    """One replica's share of the inbound pipeline."""

    def __init__(
        self,
        redis: Redis,
        writer: writer_pb2_grpc.WriterServiceStub,
        mappings: Callable[[], MappingSet],
        *,
        consumer: str,
        coalesce_window_ms: int = 50,
        visibility_timeout_ms: int = 30_000,
        read_batch_size: int = 500,
        read_block_ms: int = 200,
        hydrate_batch_size: int = 100,
        feed_max_len: int = 1_000_000,
    ):
        self.redis: Any = redis
        self.writer = writer
        self.mappings = mappings
        self.consumer = consumer
        self.coalesce_s = coalesce_window_ms / 1000
        self.visibility_ms = visibility_timeout_ms
        self.batch_size = read_batch_size
        self.block_ms = read_block_ms
        self.hydrate_batch_size = hydrate_batch_size
        self.feed_max_len = feed_max_len
        self._streams: dict[str, str] = {}  # stream key → portal
        self.batches = 0
        # The batch being hydrated and published while the next one is read and coalesced.
        self._processing: asyncio.Task[None] | None = None
        self._loop_error = loop_error(
            log, "inbound batch failed unexpectedly", "inbound worker: Redis unavailable, retrying"
        )

    async def run(self) -> None:
        """Consumes until cancelled; a failing batch is retried by the visibility timeout. (A
        cancellation lost inside a client library is repeated by the service's stop.)"""
        try:
            await self._run()
        finally:
            task, self._processing = self._processing, None
            if task is not None:
                task.cancel()
                # its entries stay pending: another consumer (or this one, restarted) reclaims them
                with contextlib.suppress(BaseException):
                    await task

    async def _drain(self) -> None:
        """Waits for the batch in flight; its failure surfaces here."""
        task, self._processing = self._processing, None
        if task is not None:
            await task

    async def _run(self) -> None:
        next_discover = 0.0
        next_claim = 0.0
        next_lag = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_discover:
                    await self._discover()
                    next_discover = now + DISCOVER_INTERVAL_S
                if now >= next_lag:
                    next_lag = now + 5.0
                    await self.record_lag()
                if now >= next_claim:
                    next_claim = now + max(self.visibility_ms / 4000, 0.05)
                    for key, portal in list(self._streams.items()):
                        claimed = await self._claim(key)
                        if claimed:
                            await self._drain()
                            await self.process(portal, key, claimed)
                if not self._streams:
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
                    log.warning("inbound batch failed", extra={"error": str(exc)[:300]})
                await asyncio.sleep(0.5)
            except Exception as exc:
                _reraise_if_cancelling()
                # A bug must not stop the pipeline for every portal: log, leave entries pending.
                # (A Redis outage is a rate-limited warning: the loop resumes when Redis is back.)
                self._loop_error(exc)
                await asyncio.sleep(1.0)

    async def _discover(self) -> None:
        members = await self.redis.smembers(PORTALS_KEY)  # type: ignore[misc]
        for raw in members:
            portal = raw.decode() if isinstance(raw, bytes) else str(raw)
            key = events_key(portal)
            if key in self._streams:
                continue
            try:
                await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._streams[key] = portal

    async def _claim(self, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self.redis.xautoclaim(
            key, GROUP, self.consumer, min_idle_time=self.visibility_ms, start_id="0-0", count=self.batch_size
        )
        return [e for e in reply[1] if e and e[1]]

    async def step(self) -> int:
        """Reads one batch (blocking up to the read block time), coalesces, processes it."""
        streams = dict.fromkeys(self._streams, ">")
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
        by_key: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        for key_raw, entries in reply:
            key = key_raw.decode() if isinstance(key_raw, bytes) else key_raw
            by_key.setdefault(key, []).extend(entries)
        # One batch in flight at a time, so a record's changes are published in order; the next
        # batch is read and coalesced while this one is hydrated (its window costs no latency).
        try:
            await self._drain()  # a failure of the previous batch is reported to the loop...
        finally:  # ...and this batch still goes ahead (the failed one's entries stay pending)
            self._processing = asyncio.create_task(self._process_all(by_key), name="mapper-inbound-batch")
        return sum(len(entries) for entries in by_key.values())

    async def _process_all(self, by_key: dict[str, list[tuple[bytes, dict[bytes, bytes]]]]) -> None:
        for key, entries in by_key.items():
            await self.process(self._streams[key], key, entries)

    async def process(self, portal: str, key: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Turns one portal's entries into feed changes and acks them, atomically."""
        self.batches += 1
        mappings = self.mappings()  # one snapshot for the whole batch, even across a reload
        groups: dict[tuple[str, str, str], RecordChange] = {}
        ids = [e[0] for e in entries]
        for _, fields in entries:
            try:
                event = orjson.loads(fields.get(b"event") or b"{}")
            except orjson.JSONDecodeError:
                log.warning("unreadable event entry skipped", extra={"portal": portal})
                continue
            if not isinstance(event, dict):
                continue
            what = classify(event)
            if what is None or mappings.get(what[0]) is None:
                continue
            object_type, object_id, suffix = what
            # Association changes stay apart from property changes of the same record.
            slot = "assoc" if suffix == "associationChange" else "record"
            group = groups.setdefault((object_type, object_id, slot), RecordChange(object_type, object_id))
            group.add(suffix, event, fields)
        changes = list(groups.values())
        spans = [self._start_span(portal, c) for c in changes]
        try:
            by_record = {(c.object_type, c.object_id): s for c, s in zip(changes, spans, strict=True)}
            hydrated, archived = await self._hydrate(portal, changes, mappings, by_record)
            await self._publish(portal, key, ids, changes, hydrated, archived, mappings)
        finally:
            for span in spans:
                span.end()

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

    async def _hydrate(
        self,
        portal: str,
        changes: list[RecordChange],
        mappings: MappingSet,
        spans: dict[tuple[str, str], trace.Span],
    ) -> tuple[dict[tuple[str, str], dict[str, str]], dict[tuple[str, str], dict[str, str]]]:
        live: dict[str, set[str]] = {}
        gone: dict[str, set[str]] = {}
        for c in changes:
            target = gone if c.kind == mapper_pb2.CHANGE_KIND_DELETED else live
            target.setdefault(c.object_type, set()).add(c.object_id)
        calls = []
        for target, archived in ((live, False), (gone, True)):
            for object_type, id_set in target.items():
                mapping = mappings.get(object_type)
                assert mapping is not None
                id_list = sorted(id_set)
                for i in range(0, len(id_list), self.hydrate_batch_size):
                    chunk = id_list[i : i + self.hydrate_batch_size]
                    # One read serves many changes: it joins the trace of its first record's change
                    # (the others' traces reach it through their mapper.inbound span's links).
                    calls.append(self._read(portal, mapping, chunk, archived, spans[(object_type, chunk[0])]))
        found: dict[tuple[str, str], dict[str, str]] = {}
        found_archived: dict[tuple[str, str], dict[str, str]] = {}
        for archived, records in await asyncio.gather(*calls):
            for r in records:
                (found_archived if archived else found)[(r.object_type, r.id)] = dict(r.properties)
        return found, found_archived

    async def _read(
        self,
        portal: str,
        mapping: CompiledMapping,
        ids: list[str],
        archived: bool,
        span: trace.Span,
    ) -> tuple[bool, list[Any]]:
        _reads.add(1, {"object_type": mapping.object_type})
        request = writer_pb2.ReadRecordsRequest(
            portal_id=int(portal),
            object_type=mapping.object_type,
            ids=ids,
            properties=list(mapping.read_properties),
            archived=archived,
        )
        with trace.use_span(span, end_on_exit=False):
            reply = await self.writer.ReadRecords(request, timeout=30)
        for r in reply.records:
            if not r.object_type:
                r.object_type = mapping.object_type
        return archived, list(reply.records)

    async def _publish(
        self,
        portal: str,
        key: str,
        ids: list[bytes],
        changes: list[RecordChange],
        hydrated: dict[tuple[str, str], dict[str, str]],
        archived: dict[tuple[str, str], dict[str, str]],
        mappings: MappingSet,
    ) -> None:
        built: list[tuple[RecordChange, mapper_pb2.Change, bytes, str, dict[str, str]]] = []
        for c in changes:
            mapping = mappings.get(c.object_type)
            assert mapping is not None
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
                    timestamp_pb2.Timestamp(
                        seconds=c.occurred_ms // 1000, nanos=(c.occurred_ms % 1000) * 1_000_000
                    )
                )
            props: dict[str, str] = {}
            if c.kind == mapper_pb2.CHANGE_KIND_DELETED:
                props = archived.get((c.object_type, c.object_id), {})
                change.external_id = props.get(mapping.id_property, "")
            else:
                found = hydrated.get((c.object_type, c.object_id))
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
            # The digest ignores the trace, time and event-only details: same state → same digest.
            # A creation and an update that leave the record the same are one state too (HubSpot
            # sends a creation and then property changes for one new record; split over two
            # batches they must not reach subscribers twice).
            kind = (
                mapper_pb2.CHANGE_KIND_UPDATED
                if change.kind == mapper_pb2.CHANGE_KIND_CREATED
                else change.kind
            )
            ident = mapper_pb2.Change(
                kind=kind,
                fields=change.fields,
                related_ids=change.related_ids,
                external_id=change.external_id,
            )
            digest = hashlib.blake2b(ident.SerializeToString(deterministic=True), digest_size=12).digest()
            built.append((c, change, digest, change.external_id, props))
        last_keys = [portal_key(portal, "feedlast", c.object_type, c.object_id) for c, *_ in built]
        outcomes: list[tuple[RecordChange, str]] = []
        # Compare-and-publish under WATCH: two replicas holding the same change (a duplicated
        # webhook, a reclaimed entry) cannot both see "not published yet"; the one whose EXEC
        # fails looks again and finds it published.
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if last_keys:
                        await pipe.watch(*last_keys)
                        last = await pipe.mget(last_keys)
                    else:
                        last = []
                    pipe.multi()
                    outcomes = self._queue_publish(pipe, portal, built, last_keys, last, mappings)
                    if ids:
                        pipe.xack(key, GROUP, *ids)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
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

    def _queue_publish(
        self,
        pipe: Any,
        portal: str,
        built: list[tuple[RecordChange, mapper_pb2.Change, bytes, str, dict[str, str]]],
        last_keys: list[str],
        last: list[Any],
        mappings: MappingSet,
    ) -> list[tuple[RecordChange, str]]:
        outcomes: list[tuple[RecordChange, str]] = []
        for (c, change, digest, external_id, props), lkey, prev in zip(built, last_keys, last, strict=True):
            mapping = mappings.get(c.object_type)
            assert mapping is not None
            outcomes.append((c, "duplicate" if prev == digest else "published"))
            if prev == digest:
                continue
            pipe.xadd(
                feed_key(portal, c.object_type),
                {"change": change.SerializeToString(), "hs": c.object_id},
                maxlen=self.feed_max_len,
                approximate=True,
            )
            pipe.set(lkey, digest, ex=_LAST_TTL_S)
            if external_id:
                fkey = fingerprint_key(portal, c.object_type, external_id)
                if change.kind == mapper_pb2.CHANGE_KIND_DELETED:
                    pipe.delete(fkey)
                else:
                    seen = {p: props.get(p) or "" for p in mapping.read_properties}
                    pipe.hset(fkey, mapping=digest_properties(seen))
        return outcomes

    async def record_lag(self) -> None:
        """``hubsync.stream.lag`` of the event streams (group mapper) and of every feed group."""
        for key, portal in list(self._streams.items()):
            with contextlib.suppress(ResponseError):
                for g in await self.redis.xinfo_groups(key):
                    name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
                    if name == GROUP:
                        lag = await group_lag(self.redis, key, g)
                        _lag.set(lag, {"stream": "events", "group": GROUP, "portal": portal})
            for object_type in ("companies", "contacts", "deals"):
                with contextlib.suppress(ResponseError):
                    fkey = feed_key(portal, object_type)
                    for g in await self.redis.xinfo_groups(fkey):
                        name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
                        _lag.set(
                            await group_lag(self.redis, fkey, g),
                            {"stream": f"feed:{object_type}", "group": name, "portal": portal},
                        )


def _reraise_if_cancelling() -> None:
    """A cancelled task whose cancellation surfaced as another error (a gRPC call reports
    CANCELLED) must still stop, not retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _trace_id(change: RecordChange) -> str:
    if not change.contexts:
        return ""
    return trace_id_hex(trace.get_current_span(change.contexts[0]))


def _struct(record: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(record)
    return s
