"""Stages 5 and 6 of the write path: coalescing writes into batches, sending a batch.

:class:`Coalescer` merges writes for the same :class:`BatchKey` (portal, object type,
:class:`BatchOp`, id property) from any number of callers into batches of up to 100 inputs,
sent when full or after ``max_wait``; two writes to the same record in one batch merge (the
later value wins) and both callers get the record's result. It takes the burst-window slot for
each batch from its :class:`SlotSource` (the rate limiter) and hands it to the sender as a
:class:`~hubsync.writer.ratelimit.ReservedSlot`. :class:`BatchSender` claims the inputs'
versions, sends the batch and applies the error table:

====================  ===========================================================================
400                   split the batch in halves until the bad inputs stand alone; dead-letter
                      them with HubSpot's message; the rest is written
403                   dead-letter (missing scope) and count it
404 / other 4xx       dead-letter
409                   look up the record that holds the unique value (HubSpot names it:
                      ``Existing ID: N``) and update it instead; dead-letter when it cannot
502 / 504 / timeout   halve the batch and retry, down to single inputs, then dead-letter
423/429/5xx           retried with backoff by :class:`~hubsync.writer.hubspot_client.HubSpotClient`
====================  ===========================================================================
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

import orjson
from opentelemetry import metrics
from opentelemetry.trace import Link
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import Unavailable
from hubsync.core.keys import writer_ids_key, written_key
from hubsync.writer.dlq import DeadLetterQueue, HubSpotFailure
from hubsync.writer.hubspot_client import HubSpotClient, HubSpotResponse
from hubsync.writer.ordering import RecordRef, RecordVersions, unique_value
from hubsync.writer.ratelimit import ReservedSlot

__all__ = [
    "RATE_TAU_S",
    "STREAM_GAP_S",
    "BatchInput",
    "BatchKey",
    "BatchOp",
    "BatchSender",
    "Coalescer",
    "Outcome",
    "Send",
    "SlotSource",
    "id_key",
]

log = logging.getLogger(__name__)


class BatchOp(StrEnum):
    """What one batch call does: a v3 record endpoint or a v4 association endpoint.

    A record write's :class:`~hubsync.api.writer.v1.writer_pb2.WriteOperation` maps onto the
    first four (:meth:`of`); GDPR deletes are never batched (submissions.py sends them one by one).
    """

    UPSERT = "upsert"
    CREATE = "create"
    UPDATE = "update"
    ARCHIVE = "archive"
    # v4 associations: create (batch/create), remove one type (batch/labels/archive), remove
    # every type of the pair (batch/archive).
    ASSOCIATE = "associate"
    DISSOCIATE_TYPE = "dissociate_type"
    DISSOCIATE_ALL = "dissociate_all"

    @classmethod
    def of(cls, operation: int) -> BatchOp:
        """Return the batch operation of a record write's ``WriteOperation`` (not GDPR delete)."""
        return _RECORD_OPS[operation]

    @property
    def is_association(self) -> bool:
        """Whether batches of this operation go to the v4 associations API."""
        return self in _ASSOCIATION_PATHS

    @property
    def path(self) -> str:
        """The endpoint's last segments (``batch/<path>``)."""
        return _ASSOCIATION_PATHS.get(self, self.value)


_RECORD_OPS: dict[int, BatchOp] = {
    writer_pb2.WRITE_OPERATION_UPSERT: BatchOp.UPSERT,
    writer_pb2.WRITE_OPERATION_CREATE: BatchOp.CREATE,
    writer_pb2.WRITE_OPERATION_UPDATE: BatchOp.UPDATE,
    writer_pb2.WRITE_OPERATION_ARCHIVE: BatchOp.ARCHIVE,
}
_ASSOCIATION_PATHS: dict[BatchOp, str] = {
    BatchOp.ASSOCIATE: "create",
    BatchOp.DISSOCIATE_TYPE: "labels/archive",
    BatchOp.DISSOCIATE_ALL: "archive",
}
_EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")
# The time constant of the coalescer's per-key arrival rate (seconds).
RATE_TAU_S = 1.0
# A key's groups of writes (what arrives within max_wait: one call's worth) are a stream while
# each comes less than this long after the one before (one burst window).
STREAM_GAP_S = 10.0

_meter = metrics.get_meter("hubsync.writer")
_batch_size = _meter.create_histogram(
    "hubsync.writer.batch.size",
    unit="{record}",
    description="Records per batch the coalescer sent, by operation and why it went then "
    "(full; wait: its max wait passed, the window not saturated; quiet: its writes stopped; "
    "cap: held max_hold_saturated; close: shutdown)",
    explicit_bucket_boundaries_advisory=[1, 2, 5, 10, 20, 50, 90, 99, 100],
)


@dataclass
class Outcome:
    """What happened to one write."""

    status: int  # writer_pb2.WriteStatus
    hubspot_id: str = ""
    created: bool = False
    error: HubSpotFailure | None = None
    dead_letter_id: str = ""


class BatchKey(NamedTuple):
    """What writes must share to go in one batch.

    A named tuple rather than a frozen dataclass: the coalescer looks every write's key up in
    several dicts, and a tuple hashes in C (a dataclass's ``__hash__`` is Python code each time).
    """

    portal_id: int
    object_type: str  # for associations: "<from>/<to>"
    operation: BatchOp
    id_property: str = ""


@dataclass
class BatchInput:
    """One input of a batch; several callers' writes to one record share it."""

    key: str
    id: str
    properties: dict[str, str]
    writes: list[writer_pb2.Write]
    links: list[Link] = field(default_factory=list)
    waiters: list[asyncio.Future[Outcome]] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    # For associations: the resolved HubSpot ids, the type and its category.
    to_id: str = ""
    type_id: int = 0
    category: str = "HUBSPOT_DEFINED"
    # Property → version of the write it comes from (0: not ordered), see ordering.py.
    versions: dict[str, int] = field(default_factory=dict)

    def merge(self, other: BatchInput) -> None:
        """Take another write to the same record.

        Per property, the newer version wins (the later one when versions are equal).
        """
        for name, value in other.properties.items():
            version = other.versions.get(name, 0)
            if version >= self.versions.get(name, 0):
                self.properties[name] = value
                self.versions[name] = version
        self.writes.extend(other.writes)
        self.links.extend(other.links)
        self.trace_ids.extend(other.trace_ids)


def id_key(portal_id: int, object_type: str, id_property: str, value: str) -> str:
    """Return the key of a unique value's HubSpot id, learned from our upserts (unchanged check)."""
    return writer_ids_key(portal_id, object_type, id_property, unique_value(id_property, value))


# What a batch wrote, in one call: SET <id key> <HubSpot id> EX ttl for each upsert's learned id
# (KEYS[1..n]), then HSET <written hash> <field> <value> ... and EXPIRE ttl for each record (the
# rest of KEYS). ARGV[1]: ttl; ARGV[2]: a JSON array [the n HubSpot ids, per hash its pairs as
# one flat array]. One command and one reply instead of three per record: redis-py's
# per-command packing and reply parsing was about a tenth of writer's CPU under load
# (bench/tenants/writer.py); and one JSON argument instead of one per field and value, for the
# same reason (bench/writer/script_args.py).
_RECORD_WRITTEN = """
local ttl = ARGV[1]
local data = cjson.decode(ARGV[2])
local ids, hashes = data[1], data[2]
local n = #ids
for i = 1, n do
  redis.call('SET', KEYS[i], ids[i], 'EX', ttl)
end
for j = 1, #hashes do
  local fields = hashes[j]
  local c = 1
  while c <= #fields do
    redis.call('HSET', KEYS[n + j], unpack(fields, c, math.min(c + 511, #fields)))
    c = c + 512
  end
  redis.call('EXPIRE', KEYS[n + j], ttl)
end
return 0
"""


class BatchSender:
    """Sends one batch and applies the error table; returns an outcome per input."""

    def __init__(
        self,
        client: HubSpotClient,
        redis: Redis,
        dlq: DeadLetterQueue,
        *,
        source_tag: str = "hubsync",
        source_property: str = "",
        written_ttl_s: int = 3600,
        versions: RecordVersions | None = None,
        learn_ids: bool = True,
    ) -> None:
        """Send through ``client``; dead-letter to ``dlq``; claim ``versions`` when given.

        ``learn_ids``: keep each upsert's unique value → HubSpot id (only the unchanged check,
        ``skip_unchanged``, reads them; without it they are a command per record for nothing).
        """
        self.learn_ids = learn_ids
        self.client = client
        self.redis = redis
        self.dlq = dlq
        self.source_tag = source_tag
        self.source_property = source_property
        self.written_ttl_s = written_ttl_s
        self.versions = versions
        self._record_written_script = redis.register_script(_RECORD_WRITTEN)

    async def run(
        self,
        key: BatchKey,
        inputs: Sequence[BatchInput],
        slot: ReservedSlot | None = None,
        *,
        attempt: int = 1,
    ) -> list[Outcome]:
        """Send ``inputs`` (the first call on ``slot`` when given); one outcome per input."""
        slot = slot or ReservedSlot(None)
        if key.operation.is_association:
            return await self._run_associations(key, inputs, slot, attempt)
        if self.versions is None or key.operation == BatchOp.ARCHIVE:
            return await self._run(key, inputs, slot, attempt)
        # Claimed right before sending (and again before each resend of a split batch): what a
        # newer version of the record already wrote is not sent.
        claimed = await self._claim(key, inputs)
        live = [i for i in claimed if i is not None]
        done = iter(await self._run(key, live, slot, attempt) if live else [])
        return [next(done) if i is not None else Outcome(writer_pb2.WRITE_STATUS_SUPERSEDED) for i in claimed]

    async def _claim(self, key: BatchKey, inputs: Sequence[BatchInput]) -> list[BatchInput | None]:
        assert self.versions is not None
        refs = [_record_ref(key, i) for i in inputs]
        stale = await self.versions.claim(
            key.portal_id,
            key.object_type,
            [
                (ref, {p: v for p, v in i.versions.items() if ref is None or p != ref.id_property})
                for ref, i in zip(refs, inputs, strict=True)
            ],
        )
        out: list[BatchInput | None] = []
        for ref, item, old in zip(refs, inputs, stale, strict=True):
            if not old:
                out.append(item)
                continue
            props = {p: v for p, v in item.properties.items() if p not in old}
            if ref is not None and not (props.keys() - {ref.id_property}):
                out.append(None)  # a newer version wrote every property: nothing to send
                continue
            versions = {p: v for p, v in item.versions.items() if p not in old}
            out.append(dataclasses.replace(item, properties=props, versions=versions))
        return out

    async def _run(
        self, key: BatchKey, inputs: Sequence[BatchInput], slot: ReservedSlot, attempt: int
    ) -> list[Outcome]:
        response = await self._send(key, inputs, slot)
        status = response.status
        if status in (200, 201, 204, 207):
            return await self._map_results(key, inputs, response, slot)
        if status in (400, 502, 504) and len(inputs) > 1:
            return await self._halves(key, inputs, slot, attempt)
        if status == 409:
            if len(inputs) > 1:
                return await self._halves(key, inputs, slot, attempt)
            return [await self._resolve_conflict(key, inputs[0], response, slot, attempt)]
        # 400/502/504 on a single input, 403, 404, anything else: HubSpot refuses it for good.
        failure = _failure(response)
        if status == 403:
            log.warning("HubSpot refused a write: missing scope", extra={"portal": key.portal_id})
        return [await self._dead_letter(key, i, failure, attempt) for i in inputs]

    async def _halves(
        self, key: BatchKey, inputs: Sequence[BatchInput], slot: ReservedSlot, attempt: int
    ) -> list[Outcome]:
        mid = len(inputs) // 2
        first, second = await asyncio.gather(
            self.run(key, inputs[:mid], slot, attempt=attempt + 1),
            self.run(key, inputs[mid:], slot, attempt=attempt + 1),
        )
        return [*first, *second]

    async def _send(self, key: BatchKey, inputs: Sequence[BatchInput], slot: ReservedSlot) -> HubSpotResponse:
        op = key.operation.path
        trace_prefix = f"{self.source_tag}:{uuid.uuid4().hex[:8]}"
        body_inputs: list[dict[str, Any]] = []
        for n, item in enumerate(inputs):
            props = dict(item.properties)
            if self.source_property and key.operation != BatchOp.ARCHIVE:
                props[self.source_property] = self.source_tag
            entry: dict[str, Any] = {}
            if key.operation == BatchOp.ARCHIVE:
                entry = {"id": item.id}
            else:
                entry = {"properties": props, "objectWriteTraceId": f"{trace_prefix}:{n}"}
                if key.operation == BatchOp.UPSERT:
                    entry |= {"id": item.id, "idProperty": key.id_property}
                elif key.operation == BatchOp.UPDATE:
                    entry["id"] = item.id
            body_inputs.append(entry)
        route = f"/crm/v3/objects/{{objectType}}/batch/{op}"
        return await self.client.call(
            key.portal_id,
            "POST",
            f"/crm/v3/objects/{key.object_type}/batch/{op}",
            route=route,
            json={"inputs": body_inputs},
            links=[link for item in inputs for link in item.links][:128],
            records=len(inputs),
            reserved=slot,
        )

    async def _map_results(
        self, key: BatchKey, inputs: Sequence[BatchInput], response: HubSpotResponse, slot: ReservedSlot
    ) -> list[Outcome]:
        body = response.body if isinstance(response.body, dict) else {}
        if key.operation == BatchOp.ARCHIVE:
            return [Outcome(writer_pb2.WRITE_STATUS_SUCCEEDED, hubspot_id=i.id) for i in inputs]
        by_index: dict[int, dict[str, Any]] = {}
        by_id: dict[str, int] = {}
        for i, item in enumerate(inputs):
            by_id[_norm(key, item.id)] = i
        for result in body.get("results") or []:
            trace = str(result.get("objectWriteTraceId") or "")
            n: int | None = _trace_index(trace)
            if n is None:
                props = result.get("properties") or {}
                ref = result.get("id") if key.operation == BatchOp.UPDATE else props.get(key.id_property)
                n = by_id.get(_norm(key, str(ref or "")))
            if n is not None and 0 <= n < len(inputs):
                by_index[n] = result
        failed: dict[int, dict[str, Any]] = {}
        for error in body.get("errors") or []:
            ctx = error.get("context") or {}
            for trace in ctx.get("objectWriteTraceId") or []:
                t = _trace_index(str(trace))
                if t is not None:
                    failed[t] = error
            for ref in ctx.get("ids") or []:
                r = by_id.get(_norm(key, str(ref)))
                if r is not None:
                    failed[r] = error
        outcomes: list[Outcome] = []
        written: list[tuple[str, dict[str, str]]] = []
        learned: list[tuple[str, str]] = []
        for n, item in enumerate(inputs):
            result = by_index.get(n)
            if result is not None:
                hs_id = str(result.get("id", ""))
                outcomes.append(
                    Outcome(
                        writer_pb2.WRITE_STATUS_SUCCEEDED, hubspot_id=hs_id, created=bool(result.get("new"))
                    )
                )
                values = dict(item.properties)
                if self.source_property:
                    values[self.source_property] = self.source_tag
                if key.operation == BatchOp.UPSERT:
                    values[key.id_property] = item.id
                    learned.append((item.id, hs_id))
                written.append((hs_id, values))
                continue
            error = failed.get(n)
            category = str((error or {}).get("category", ""))
            http = 404 if category == "OBJECT_NOT_FOUND" else 409 if "Existing ID" in str(error) else 400
            failure = HubSpotFailure(
                http,
                str((error or {}).get("message") or "HubSpot returned no result for this input"),
                category,
                response.error()["correlation_id"],
            )
            if http == 409:
                conflict = HubSpotResponse(409, error or {})
                outcomes.append(await self._resolve_conflict(key, item, conflict, slot, 1))
            else:
                outcomes.append(await self._dead_letter(key, item, failure, 1))
        await self._record_written(key, written, learned)
        return outcomes

    async def _record_written(
        self,
        key: BatchKey,
        written: list[tuple[str, dict[str, str]]],
        learned: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Return what ingress compares webhook values with to drop our own echoes."""
        ids = [(value, hs_id) for value, hs_id in learned if hs_id] if self.learn_ids else []
        hashes = [(hs_id, values) for hs_id, values in written if hs_id and values]
        if not ids and not hashes:
            return
        keys = [id_key(key.portal_id, key.object_type, key.id_property, value) for value, _ in ids]
        keys += [written_key(key.portal_id, key.object_type, hs_id) for hs_id, _ in hashes]
        data = [
            [hs_id for _, hs_id in ids],
            [[x for pair in values.items() for x in pair] for _, values in hashes],
        ]
        await self._record_written_script(keys=keys, args=[self.written_ttl_s, orjson.dumps(data)])

    async def _resolve_conflict(
        self, key: BatchKey, item: BatchInput, response: HubSpotResponse, slot: ReservedSlot, attempt: int
    ) -> Outcome:
        """409: another record holds a unique value; update that record instead."""
        message = _failure(response).message
        match = _EXISTING_ID.search(message)
        if match is None or key.operation == BatchOp.ARCHIVE:
            return await self._dead_letter(key, item, _failure(response), attempt)
        existing = match.group(1)
        log.info(
            "resolving a unique-value conflict by updating the existing record",
            extra={"portal": key.portal_id, "object_type": key.object_type, "hubspot_id": existing},
        )
        update_key = BatchKey(key.portal_id, key.object_type, BatchOp.UPDATE)
        props = dict(item.properties)
        if key.operation == BatchOp.UPSERT:
            props.setdefault(key.id_property, item.id)
        update = BatchInput(existing, existing, props, item.writes, item.links)
        response = await self._send(update_key, [update], slot)
        if response.status in (200, 207):
            [outcome] = await self._map_results(update_key, [update], response, slot)
            return outcome
        return await self._dead_letter(key, item, _failure(response), attempt + 1)

    async def _dead_letter(
        self, key: BatchKey, item: BatchInput, failure: HubSpotFailure, attempts: int
    ) -> Outcome:
        ids = []
        for n, write in enumerate(item.writes):
            trace_id = item.trace_ids[n] if n < len(item.trace_ids) else ""
            ids.append(await self.dlq.add(key.portal_id, write, failure, attempts, trace_id))
        log.warning(
            "write dead-lettered",
            extra={
                "portal": key.portal_id,
                "object_type": key.object_type,
                "http_status": failure.http_status,
                "hubspot_message": failure.message[:500],
            },
        )
        return Outcome(writer_pb2.WRITE_STATUS_DEAD_LETTERED, error=failure, dead_letter_id=",".join(ids))

    async def _run_associations(
        self, key: BatchKey, inputs: Sequence[BatchInput], slot: ReservedSlot, attempt: int
    ) -> list[Outcome]:
        from_type, to_type = key.object_type.split("/", 1)
        op = key.operation.path
        body: dict[str, Any]
        if key.operation == BatchOp.DISSOCIATE_ALL:
            body = {"inputs": [{"from": {"id": i.id}, "to": [{"id": i.to_id}]} for i in inputs]}
        else:
            body = {
                "inputs": [
                    {
                        "from": {"id": i.id},
                        "to": {"id": i.to_id},
                        "types": [{"associationCategory": i.category, "associationTypeId": i.type_id}],
                    }
                    for i in inputs
                ]
            }
        response = await self.client.call(
            key.portal_id,
            "POST",
            f"/crm/v4/associations/{from_type}/{to_type}/batch/{op}",
            route=f"/crm/v4/associations/{{fromObjectType}}/{{toObjectType}}/batch/{op}",
            json=body,
            links=[link for item in inputs for link in item.links][:128],
            records=len(inputs),
            reserved=slot,
        )
        has_errors = isinstance(response.body, dict) and bool(response.body.get("errors"))
        if response.status in (200, 201, 204) or (response.status == 207 and not has_errors):
            return [Outcome(writer_pb2.WRITE_STATUS_SUCCEEDED, hubspot_id=i.id) for i in inputs]
        # Creating (or removing) an association twice changes nothing, so a batch can be split
        # and re-sent.
        if response.status in (207, 400, 409, 502, 504) and len(inputs) > 1:
            mid = len(inputs) // 2
            first, second = await asyncio.gather(
                self._run_associations(key, inputs[:mid], slot, attempt + 1),
                self._run_associations(key, inputs[mid:], slot, attempt + 1),
            )
            return [*first, *second]
        failure = _failure(response)
        if response.status == 207 and has_errors:
            first_error = response.body["errors"][0]
            failure = HubSpotFailure(
                400, str(first_error.get("message", "")), str(first_error.get("category", ""))
            )
        return [await self._dead_letter(key, i, failure, attempt) for i in inputs]


class SlotSource(Protocol):
    """Where the coalescer takes each batch's burst-window slot (the rate limiter)."""

    async def acquire_slot(self, portal_id: int, *, busy_at: float, demand_per_s: float) -> tuple[str, bool]:
        """Wait for a slot; returns its member and whether the window is saturated.

        Saturated also when ``demand_per_s`` (the calls per second the writes arriving now need
        in full batches) would use more than ``busy_at`` of the window's budget.
        """
        ...

    async def release(self, portal_id: int, member: str) -> None:
        """Give an unused slot back."""
        ...


# The next stage: sends one batch (its first call on the slot) and answers per input.
Send = Callable[[BatchKey, Sequence[BatchInput], ReservedSlot], Awaitable[list[Outcome]]]


class Coalescer:
    """Coalesces writes into batches of up to ``max_size``.

    One sender task per key takes rate-limit slots from ``slots`` one at a time and gives each
    to the oldest full batch, or, when none is waiting, to the open batch once ``max_wait_s``
    passed. The open batch keeps taking writes while the sender waits, so under a saturated
    quota nearly every call carries a full batch, and a partial one never jumps ahead of a full
    one. Without ``slots`` (unit tests) batches go without one (the client takes its own).

    Under a saturated window the open batch fills while its key's writes keep arriving (each
    less than ``max_wait_saturated_s`` after the one before), for up to ``max_hold_saturated_s``
    since it opened; it goes ``max_wait_saturated_s`` after the last write when they stop.

    The window also counts as saturated when the writes arriving for the key (a decaying
    rate, :data:`RATE_TAU_S`) would, in full batches, take more than ``fill_above`` of it: a
    bulk load starting on a free window then fills its first batches too, instead of spending
    the window's first slots on partial ones that full batches need a moment later. A portal
    whose writes trickle in (or that has quota to spare) is not held: its writes go after
    ``max_wait_s`` as before.
    """

    def __init__(
        self,
        send: Send,
        max_size: int = 100,
        max_wait_s: float = 0.05,
        slots: SlotSource | None = None,
        *,
        fill_above: float = 1.0,
        max_wait_saturated_s: float = 0.0,
        max_hold_saturated_s: float = 0.0,
    ) -> None:
        """Batch for ``send``; ``slots`` gives each batch its rate-limit slot (none: unlimited)."""
        self._send_batch = send
        self._slots = slots
        self.fill_above = fill_above
        self.max_wait_saturated_s = max_wait_saturated_s
        self.max_hold_saturated_s = max_hold_saturated_s
        self._opened: dict[BatchKey, float] = {}
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._pending: dict[BatchKey, dict[str, BatchInput]] = {}
        self._full: dict[BatchKey, deque[dict[str, BatchInput]]] = {}
        self._due: set[BatchKey] = set()
        self._timers: dict[BatchKey, asyncio.TimerHandle] = {}
        self._senders: dict[BatchKey, asyncio.Task[None]] = {}
        # The last batch sent with each record (by key), until it has its answer.
        self._out: dict[tuple[BatchKey, str], asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Per key: (time of the last arrival, arrivals per second decayed to that time, start of
        # the last group of arrivals, seconds between groups while a stream (0: not one), the
        # mean deviation of those gaps from that interval).
        self._rates: dict[BatchKey, tuple[float, float, float, float, float]] = {}
        self._arrivals = 0
        self._closing = False
        # Set when a key's open batch becomes full (its sender may be holding a partial one).
        self._filled: dict[BatchKey, asyncio.Event] = {}

    async def _until_full(self, key: BatchKey, timeout: float) -> None:
        """Wait until the key's open batch is full, or ``timeout`` seconds."""
        filled = self._filled[key] = asyncio.Event()
        try:
            await asyncio.wait_for(filled.wait(), timeout=max(timeout, 0.001))
        except TimeoutError:
            pass
        finally:
            if self._filled.get(key) is filled:
                del self._filled[key]

    def _arrived(self, key: BatchKey, now: float) -> None:
        last, rate, group, interval, spread = self._rates.get(key, (now, 0.0, -math.inf, 0.0, 0.0))
        gap = now - group
        if gap > self.max_wait_s:
            # A new group: writes arriving within max_wait of each other go in one call anyway.
            if gap > STREAM_GAP_S:
                interval = spread = 0.0  # the first group of a (possible) stream
            elif interval == 0.0:
                interval, spread = gap, gap / 2
            else:
                # How far gaps stray from the interval (as TCP's RTTVAR): with many portals'
                # submissions in one connection, a portal's next one may come well after its
                # usual interval without its writes having stopped.
                spread += (abs(gap - interval) - spread) / 4
                interval += (gap - interval) / 2
            group = now
        rate = rate * math.exp((last - now) / RATE_TAU_S) + 1 / RATE_TAU_S
        self._rates[key] = (now, rate, group, interval, spread)
        self._arrivals += 1
        if self._arrivals % 4096 == 0:  # forget keys quiet for a while (their rate is ~0)
            stale = now - max(20 * RATE_TAU_S, STREAM_GAP_S)
            for k in [k for k, r in self._rates.items() if r[0] < stale]:
                del self._rates[k]

    def _interval(self, key: BatchKey, now: float) -> float:
        """Seconds between the key's groups of writes while they come as a stream, else 0."""
        r = self._rates.get(key)
        if r is None or now - r[2] > STREAM_GAP_S:
            return 0.0
        return r[3]

    def demand(self, key: BatchKey) -> float:
        """Return the calls per second the key's recent writes need.

        In full batches, or, while its writes come as a stream of groups (submissions one after
        another, not a lone one), one call per group: what sending each group after
        ``max_wait`` would make, so a bulk load of small submissions makes the window busy
        before it has spent calls on partial batches.
        """
        now = asyncio.get_running_loop().time()
        last, rate, _, _, _ = self._rates.get(key, (now, 0.0, now, 0.0, 0.0))
        full = rate * math.exp((last - now) / RATE_TAU_S) / self.max_size
        interval = self._interval(key, now)
        if interval <= 0.0:
            return full
        return max(full, 1 / max(interval, self.max_wait_s, 1e-3))

    def submit(self, key: BatchKey, item: BatchInput) -> asyncio.Future[Outcome]:
        """Add one write; the future resolves with its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._arrived(key, loop.time())
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = {}
            self._opened[key] = loop.time()
        existing = pending.get(item.key)
        if existing is not None:
            existing.merge(item)
            existing.waiters.append(future)
            return future
        item.waiters.append(future)
        pending[item.key] = item
        if len(pending) >= self.max_size:
            self._take_open(key)
            self._full.setdefault(key, deque()).append(pending)
            filled = self._filled.get(key)
            if filled is not None:
                filled.set()
            self._wake(key)
        elif key not in self._timers and key not in self._due:
            self._timers[key] = loop.call_later(self.max_wait_s, self._on_due, key)
        return future

    def _on_due(self, key: BatchKey) -> None:
        self._timers.pop(key, None)
        if self._pending.get(key):
            self._due.add(key)
            self._wake(key)

    def _take_open(self, key: BatchKey) -> dict[str, BatchInput] | None:
        batch = self._pending.pop(key, None)
        self._due.discard(key)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        return batch

    def _next(self, key: BatchKey) -> tuple[dict[str, BatchInput] | None, bool]:
        """The batch to send next, and whether it is a full one."""
        full = self._full.get(key)
        if full:
            return full.popleft(), True
        if key in self._due:
            return self._take_open(key), False
        return None, False

    def _hold_for(self, key: BatchKey, now: float) -> tuple[float, str]:
        """How long a saturated key's partial open batch should keep filling (0: send it now).

        While the key's writes keep arriving (the last one less than ``max_wait_saturated_s``
        ago) it fills, up to ``max_hold_saturated_s`` since it opened: a partial batch sent
        while more of its writes are on the way costs a call a full one would not. Once they
        stop, it goes ``max_wait_saturated_s`` after the last one. Also says what ends the
        hold: "quiet" (its writes stopped) or "cap".
        """
        pending = self._pending.get(key)
        if not pending or len(pending) >= self.max_size:
            return 0.0, "quiet"
        last = self._rates[key][0] if key in self._rates else 0.0
        opened = self._opened.get(key, now)
        # Writes coming as a stream: the next group is due about one interval after the last,
        # give or take four times the gaps' spread (as TCP's retransmission timeout).
        interval = self._interval(key, now)
        spread = self._rates[key][4] if interval > 0 else 0.0
        quiet = max(self.max_wait_saturated_s, 2 * interval, interval + 4 * spread)
        quiet_left = quiet - (now - last)
        cap_left = max(self.max_hold_saturated_s, self.max_wait_saturated_s) - (now - opened)
        return max(0.0, min(quiet_left, cap_left)), "cap" if cap_left <= quiet_left else "quiet"

    def _has_work(self, key: BatchKey) -> bool:
        return bool(self._full.get(key)) or key in self._due

    def _wake(self, key: BatchKey) -> None:
        if key not in self._senders:
            task = asyncio.create_task(self._sender(key))
            self._senders[key] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _sender(self, key: BatchKey) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._has_work(key):
                slot: str | None = None
                saturated = False
                try:
                    if self._slots is not None:
                        slot, saturated = await self._slots.acquire_slot(
                            key.portal_id, busy_at=self.fill_above, demand_per_s=self.demand(key)
                        )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # No slot (daily budget spent): fail the batch that was next, go on.
                    batch, _ = self._next(key)
                    if batch:
                        self._fail(list(batch.values()), exc)
                    continue
                hold, why = 0.0, "close" if self._closing else "wait"
                if saturated and not self._full.get(key):
                    hold, why = self._hold_for(key, loop.time())
                if hold > 0 and slot is not None and self._slots is not None:
                    # The quota, not latency, is the bottleneck: a slot is worth a full batch.
                    # Give it back (another replica may have one full) and let this one fill:
                    # until it is full, or its writes stop arriving, one wake-up (not a poll of
                    # the limiter every few ms for every held key).
                    await self._slots.release(key.portal_id, slot)
                    await self._until_full(key, hold)
                    continue
                batch, full = self._next(key)
                if batch:
                    inputs = list(batch.values())
                    why = "full" if full else why
                    _batch_size.record(len(inputs), {"operation": key.operation.value, "why": why})
                    task = asyncio.create_task(self._send_with(key, inputs, slot, self._follow(key, inputs)))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif slot is not None and self._slots is not None:
                    await self._slots.release(key.portal_id, slot)
        except asyncio.CancelledError:
            self._senders.pop(key, None)
            raise
        self._senders.pop(key, None)
        if self._has_work(key):  # work that arrived as the loop ended
            self._wake(key)

    def _follow(
        self, key: BatchKey, inputs: list[BatchInput]
    ) -> tuple[asyncio.Future[None], set[asyncio.Future[None]]]:
        """Register a batch about to go; return its done-future and those it must wait for.

        Those are the batches still out that carry one of its records. It is sent only after
        them, so two calls with the same record are never out at once from this process (HubSpot
        would apply them in whatever order they arrive, an older value possibly last).
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before: set[asyncio.Future[None]] = set()
        for item in inputs:
            previous = self._out.get((key, item.key))
            if previous is not None and not previous.done():
                before.add(previous)
            self._out[(key, item.key)] = done
        return done, before

    async def _send_with(
        self,
        key: BatchKey,
        inputs: list[BatchInput],
        slot: str | None,
        order: tuple[asyncio.Future[None], set[asyncio.Future[None]]],
    ) -> None:
        done, before = order
        try:
            if before:
                try:
                    await asyncio.wait(before)
                except BaseException as exc:  # cancelled while waiting: its callers hear of it
                    self._fail(inputs, exc)
                    raise
            await self._send(key, inputs, ReservedSlot(slot))
        finally:
            done.set_result(None)
            for item in inputs:
                if self._out.get((key, item.key)) is done:
                    del self._out[(key, item.key)]

    @staticmethod
    def _fail(inputs: list[BatchInput], exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            # The send was cancelled (the writer is stopping), not the callers' calls: they hear
            # a truthful UNAVAILABLE (the batch may have been written; a retry upserts it again),
            # never a bare CancelledError that gRPC would answer as CANCELLED.
            log.warning("batch interrupted before its answer", extra={"inputs": len(inputs)})
            exc = Unavailable(
                "writer stopped while this write's batch was out; it may have been written, retry",
                reason="WRITER_INTERRUPTED",
                retry_after=1.0,
            )
        for item in inputs:
            for waiter in item.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)

    async def _send(self, key: BatchKey, inputs: list[BatchInput], slot: ReservedSlot) -> None:
        try:
            outcomes = await self._send_batch(key, inputs, slot)
        except BaseException as exc:
            self._fail(inputs, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for item, outcome in zip(inputs, outcomes, strict=True):
            for waiter in item.waiters:
                if not waiter.done():
                    waiter.set_result(outcome)

    async def close(self) -> None:
        """Send what is pending and wait for every batch in flight."""
        self._closing = True
        for key in list(self._pending):
            self._on_due(key)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _record_ref(key: BatchKey, item: BatchInput) -> RecordRef | None:
    """Return the record a write names, for ordering (None: a create with nothing unique).

    By the upsert's unique value, the update's HubSpot id, or a contact create's email.
    """
    if key.operation == BatchOp.UPSERT:
        return RecordRef(key.object_type, key.id_property, _norm(key, item.id))
    if key.operation == BatchOp.UPDATE:
        return RecordRef(key.object_type, "hs_object_id", item.id)
    email = item.properties.get("email", "")
    if key.operation == BatchOp.CREATE and key.object_type == "contacts" and email:
        return RecordRef(key.object_type, "email", unique_value("email", email))
    return None


def _trace_index(trace: str) -> int | None:
    tail = trace.rsplit(":", 1)[-1] if trace else ""
    return int(tail) if tail.isdigit() else None


def _norm(key: BatchKey, value: str) -> str:
    # HubSpot lowercases emails; match results to inputs the same way.
    return unique_value(key.id_property, value)


def _failure(response: HubSpotResponse) -> HubSpotFailure:
    e = response.error()
    return HubSpotFailure(response.status, e["message"], e["category"], e["correlation_id"])
