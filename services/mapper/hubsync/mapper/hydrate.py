"""Reading changed records back from HubSpot through writer, and what a failed read means.

A failed ``ReadRecords`` is one of:

- the portal's connection is unusable (UNAUTHENTICATED: none, or it needs re-authorization;
  PERMISSION_DENIED: a scope is missing; FAILED_PRECONDITION from auth): nothing of this portal
  can succeed until someone fixes the connection → :class:`PortalUnusable`, the batch is parked;
- the portal's daily HubSpot quota is spent (RESOURCE_EXHAUSTED with reason ``DAILY_LIMIT``,
  writer's own daily budget, or ``HUBSPOT_DAILY_LIMIT``, HubSpot's DAILY 429): no read of it can
  succeed before the reset writer names in the status's ``RetryInfo`` (the next UTC midnight
  if it names none) → :class:`PortalBlocked`, the batch is parked until then;
- transient (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED): retried
  after the visibility timeout, as often as it takes;
- refused for some records (INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE): the chunk is halved until
  the refused records are alone; those are dead-lettered, the rest go on;
- anything else (INTERNAL, a HubSpot refusal such as 409/423): retried, counted, dead-lettered
  after the most attempts.

Each call's deadline (``deadline_s``) is longer than writer's HubSpot timeout plus one retry, so
writer's own timeout, split and retry happen inside it (deadlines nest).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
from opentelemetry import metrics, trace

from hubsync.api.common.v1 import common_pb2
from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.errors import error_info, retry_delay
from hubsync.core.outage import reraise_if_cancelling
from hubsync.mapper.inbound_events import RecordChange
from hubsync.mapper.transforms import CompiledMapping, MappingSet

__all__ = [
    "BLOCKED",
    "COUNTED",
    "PERMANENT",
    "TRANSIENT",
    "UNUSABLE",
    "Hydration",
    "Hydrator",
    "PortalBlocked",
    "PortalUnusable",
    "ReadFailure",
    "classify_error",
]

_meter = metrics.get_meter("hubsync.mapper")
_reads = _meter.create_counter("hubsync.mapper.hydrate.calls", description="ReadRecords calls made")

_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
_REFUSED = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}
)
_UNUSABLE = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# RESOURCE_EXHAUSTED reasons that mean the portal's daily quota is spent (writer's daily budget,
# HubSpot's DAILY 429): nothing of the portal can be read before the reset.
_DAILY = frozenset({"DAILY_LIMIT", "HUBSPOT_DAILY_LIMIT"})
_DAY_MS = 86_400_000
# FAILED_PRECONDITION reasons that are HubSpot refusing one call, not the connection.
_NOT_CONNECTION = frozenset({"HUBSPOT_REFUSED"})

TRANSIENT = "transient"
PERMANENT = "permanent"  # dead-letter now
COUNTED = "counted"  # dead-letter after the most attempts
UNUSABLE = "unusable"  # the connection: park the portal (never a record's failure)
BLOCKED = "blocked"  # the daily quota: park the portal until ``until_ms`` (never a record's)


class PortalUnusable(Exception):
    """The portal's connection cannot serve any read until it is fixed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class PortalBlocked(PortalUnusable):
    """The portal's daily HubSpot quota is spent: no read can succeed before ``until_ms``.

    Parked as an unusable portal is, but re-checked at ``until_ms`` (Unix ms), not before.
    """

    def __init__(self, reason: str, detail: str, until_ms: int) -> None:
        super().__init__(reason, detail)
        self.until_ms = until_ms


@dataclass(frozen=True)
class ReadFailure:
    """Why a record's read failed, and what that means for its events (``kind``)."""

    kind: str  # TRANSIENT, PERMANENT or COUNTED (UNUSABLE, BLOCKED only from classify_error)
    reason: str
    detail: str
    # BLOCKED: when the portal may be read again (Unix ms).
    until_ms: int | None = None


@dataclass
class Hydration:
    """The records a batch read: found, archived (deleted records), and the failed reads."""

    found: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    archived: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    failures: dict[tuple[str, str, bool], ReadFailure] = field(default_factory=dict)

    def failure_of(self, change: RecordChange) -> ReadFailure | None:
        """Return the failed read of a change's record, or None when it was read."""
        archived = change.kind == mapper_pb2.CHANGE_KIND_DELETED
        return self.failures.get((change.object_type, change.object_id, archived))


@dataclass(frozen=True)
class ChunkRead:
    """One ReadRecords chunk's outcome: the records read, the ids that failed, which kind."""

    records: list[common_pb2.HubSpotRecord]
    failures: dict[tuple[str, str, bool], ReadFailure]
    archived: bool


def classify_error(exc: grpc.aio.AioRpcError) -> ReadFailure:
    """Return what a failed read means; kind ``UNUSABLE`` for a connection problem, ``BLOCKED``
    (with ``until_ms``) for a spent daily quota."""
    info = error_info(exc)
    code = exc.code()
    reason = info.reason if info is not None and info.reason else code.name
    detail = f"{code.name}: {(exc.details() or '')[:300]}"
    if code in _UNUSABLE or (code == grpc.StatusCode.FAILED_PRECONDITION and reason not in _NOT_CONNECTION):
        return ReadFailure(UNUSABLE, reason, detail)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason in _DAILY:
        return ReadFailure(BLOCKED, reason, detail, _blocked_until(retry_delay(exc)))
    if code in _TRANSIENT:
        return ReadFailure(TRANSIENT, reason, detail)
    if code in _REFUSED:
        return ReadFailure(PERMANENT, reason, detail)
    return ReadFailure(COUNTED, reason, detail)


class Hydrator:
    """Reads the records of a batch's changes (≤ ``batch_size`` ids a call, concurrently)."""

    def __init__(self, writer: writer_pb2_grpc.WriterServiceStub, *, batch_size: int, deadline_s: float):
        self.writer = writer
        self.batch_size = batch_size
        self.deadline_s = deadline_s

    async def hydrate(
        self,
        portal: str,
        changes: list[RecordChange],
        mappings: MappingSet,
        spans: dict[tuple[str, str], trace.Span],
    ) -> Hydration:
        """Raises :class:`PortalUnusable` when the connection is; other failures are per record."""
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
                for i in range(0, len(id_list), self.batch_size):
                    chunk = id_list[i : i + self.batch_size]
                    # One read serves many changes: it joins the trace of its first record's change
                    # (the others' traces reach it through their mapper.inbound span's links).
                    span = spans[(object_type, chunk[0])]
                    calls.append(self._read_chunk(portal, mapping, chunk, archived, span))
        result = Hydration()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        for read in outcomes:
            assert isinstance(read, ChunkRead)
            into = result.archived if read.archived else result.found
            for r in read.records:
                into[(r.object_type, r.id)] = dict(r.properties)
            result.failures.update(read.failures)
        return result

    async def _read_chunk(
        self, portal: str, mapping: CompiledMapping, ids: list[str], archived: bool, span: trace.Span
    ) -> ChunkRead:
        try:
            return ChunkRead(await self._read(portal, mapping, ids, archived, span), {}, archived)
        except grpc.aio.AioRpcError as exc:
            reraise_if_cancelling()
            failure = classify_error(exc)
        if failure.kind == UNUSABLE:
            raise PortalUnusable(failure.reason, failure.detail)
        if failure.kind == BLOCKED:
            assert failure.until_ms is not None
            raise PortalBlocked(failure.reason, failure.detail, failure.until_ms)
        if failure.kind == PERMANENT and len(ids) > 1:
            # Some records are refused: halve until they are alone, so the others go on.
            half = len(ids) // 2
            left, right = await asyncio.gather(
                self._read_chunk(portal, mapping, ids[:half], archived, span),
                self._read_chunk(portal, mapping, ids[half:], archived, span),
            )
            return ChunkRead(left.records + right.records, left.failures | right.failures, archived)
        return ChunkRead([], {(mapping.object_type, i, archived): failure for i in ids}, archived)

    async def _read(
        self, portal: str, mapping: CompiledMapping, ids: list[str], archived: bool, span: trace.Span
    ) -> list[common_pb2.HubSpotRecord]:
        _reads.add(1, {"object_type": mapping.object_type})
        request = writer_pb2.ReadRecordsRequest(
            portal_id=int(portal),
            object_type=mapping.object_type,
            ids=ids,
            properties=list(mapping.read_properties),
            archived=archived,
        )
        with trace.use_span(span, end_on_exit=False):
            reply = await self.writer.ReadRecords(request, timeout=self.deadline_s)
        for r in reply.records:
            if not r.object_type:
                r.object_type = mapping.object_type
        return list(reply.records)


def _blocked_until(delay_s: float | None) -> int:
    """When a portal whose daily quota is spent may be read again (Unix ms): after the delay
    writer named, else at the next UTC midnight (HubSpot's default reset)."""
    now = int(time.time() * 1000)
    if delay_s is not None and delay_s > 0:
        return now + int(delay_s * 1000)
    return (now // _DAY_MS + 1) * _DAY_MS
