"""Reconciliation: the safety net under webhooks.

Periodically (and on demand) searches each portal for records whose last-modified date
(``lastmodifieddate`` for contacts, ``hs_lastmodifieddate`` for every other type) is after the
last checkpoint, through writer's SearchRecords (writer owns the quota; search has its own 5/s
limit). Any object type: a standard type by name or ``0-…`` id, a custom object by ``2-…`` id. A
record that no journal event reported since just before its change is fed into the same stream
as a synthetic property change (``changeSource: RECONCILIATION``): ``<singular>.propertyChange``
for the types with a classic subscription, else ``object.propertyChange`` with the
``objectTypeId``; deduped like any webhook, so a second pass finds nothing new.

hubsync's own writes count as reported: their webhook echoes are dropped before the event
stream, but ingress journals them in ``hubsync:{<portal>}:echoes``, which the pass reads along
with the stream. Without that every record hubsync wrote would look like a missed change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import orjson
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.errors import InvalidArgument, Unavailable
from hubsync.core.event_entries import decode_entry
from hubsync.core.keys import PORTALS_KEY, EchoEntry, echoes_key, events_key, reconcile_key
from hubsync.core.outage import loop_error
from hubsync.core.streams import stream_range
from hubsync.ingress import metrics
from hubsync.ingress.committer import CommitOutcome, EnqueueFailed, EventCommitter
from hubsync.ingress.events import (
    OBJECT_TYPE_IDS,
    OBJECT_TYPES,
    WebhookEvent,
    parse_events,
    reconcilable_type,
    synthetic_change,
    type_of_id,
)

__all__ = ["ReconcileResult", "Reconciler", "object_types_to_reconcile"]

log = logging.getLogger(__name__)

# The search's last-modified property: HubSpot's contacts keep theirs in ``lastmodifieddate``.
MODIFIED_PROPERTY = {"contacts": "lastmodifieddate"}
DEFAULT_MODIFIED_PROPERTY = "hs_lastmodifieddate"
SEARCH_CAP = 10_000
# A webhook's occurredAt and the record's last-modified date may differ by a little.
REPORT_TOLERANCE_MS = 2_000
# Search results lag writes by seconds: the window ends this long before now.
SETTLE_MS = 5_000
# The journal is scanned from this long before the checkpoint (webhooks arrive after the change).
JOURNAL_MARGIN_MS = 5 * 60_000


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconciliation pass found."""

    found: int
    scanned: int
    checkpoint_ms: int


def _modified_ms(value: str) -> int | None:
    if not value:
        return None
    if value.isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


class Reconciler:
    """Finds changes HubSpot never delivered and enqueues them."""

    def __init__(
        self,
        redis: Redis,
        committer: EventCommitter,
        writer_channel: grpc.aio.Channel,
        *,
        object_types: Sequence[str],
        lookback_s: int,
        interval_s: float,
        settle_ms: int = SETTLE_MS,
    ) -> None:
        """Set up the reconciler (``interval_s`` 0: passes only on demand)."""
        self._redis = redis
        self._committer = committer
        self._writer = writer_pb2_grpc.WriterServiceStub(writer_channel)
        self.object_types = object_types_to_reconcile(object_types, field="reconcile_object_types")
        self.lookback_s = lookback_s
        self.interval_s = interval_s
        self.settle_ms = settle_ms
        self._locks: dict[int, asyncio.Lock] = {}

    async def run(self) -> None:
        """Background loop: one pass per known portal every ``interval_s`` (0: never)."""
        if self.interval_s <= 0:
            return
        report = loop_error(log, "reconciliation pass failed", "reconciler: Redis unavailable, retrying")
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                portals = await self._redis.smembers(PORTALS_KEY)
            except Exception as exc:  # Redis down: the next pass tries again (the loop must live on)
                report(exc)
                continue
            for raw in sorted(p.decode() if isinstance(p, bytes) else p for p in portals):
                try:
                    await self.reconcile(int(raw), [])
                except Exception as exc:
                    log.warning("reconciliation of portal %s failed: %s", raw, type(exc).__name__)

    async def reconcile(self, portal_id: int, object_types: Sequence[str]) -> ReconcileResult:
        """Run one pass for a portal now; returns what it found and the checkpoint it stored."""
        if portal_id <= 0:
            raise InvalidArgument("portal_id must be positive", violations={"portal_id": "must be > 0"})
        object_types = object_types_to_reconcile(object_types, field="object_types")
        lock = self._locks.setdefault(portal_id, asyncio.Lock())
        async with lock:
            now = int(time.time() * 1000)
            windows = [
                (object_type, *await self._window(portal_id, object_type, now))
                for object_type in object_types or self.object_types
            ]
            # One journal scan serves every type: what webhooks reported since the earliest window.
            earliest = min(since for _t, since, _u in windows)
            reported = await self._reported(portal_id, earliest - JOURNAL_MARGIN_MS)
            found = scanned = 0
            checkpoint = 0
            for object_type, since, until in windows:
                f, s, checkpoint = await self._reconcile_type(portal_id, object_type, since, until, reported)
                found += f
                scanned += s
            return ReconcileResult(found, scanned, checkpoint)

    async def _window(self, portal_id: int, object_type: str, now: int) -> tuple[int, int]:
        """[checkpoint, now - settle) for one type; the first pass looks ``lookback_s`` back."""
        stored = await self._redis.get(reconcile_key(portal_id, object_type))
        since = int(stored) if stored and stored.isdigit() else now - self.lookback_s * 1000
        return since, now - self.settle_ms

    async def _reconcile_type(
        self,
        portal_id: int,
        object_type: str,
        since: int,
        until: int,
        reported: dict[tuple[str, int], int],
    ) -> tuple[int, int, int]:
        key = reconcile_key(portal_id, object_type)
        if until <= since:
            return 0, 0, since
        records, checkpoint = await self._search(portal_id, object_type, since, until)
        missing: list[WebhookEvent] = []
        for record_id, modified in records:
            if reported.get((object_type, record_id), -1) >= modified - REPORT_TOLERANCE_MS:
                continue
            event = {
                "portalId": portal_id,
                "eventId": 0,
                "objectId": record_id,
                "occurredAt": modified,
                **synthetic_change(object_type),
                "changeSource": "RECONCILIATION",
                "attemptNumber": 0,
            }
            missing.extend(parse_events(orjson.dumps([event])))
        found = 0
        # In chunks, so one Lua call never holds Redis for long.
        for start in range(0, len(missing), 500):
            try:
                outcomes = await self._committer.submit(missing[start : start + 500], origin="reconcile")
            except EnqueueFailed as exc:
                raise Unavailable("redis did not take the reconciled events", retry_after=1.0) from exc
            found += sum(1 for o in outcomes if o == CommitOutcome.ACCEPTED)
        if found:
            metrics.reconcile_found.add(found, {"object_type": object_type})
            metrics.accepted.add(found, {"origin": "reconcile"})
        await self._redis.set(key, str(checkpoint).encode())
        return found, len(records), checkpoint

    async def _search(
        self, portal_id: int, object_type: str, since: int, until: int
    ) -> tuple[list[tuple[int, int]], int]:
        """Record modified in ``[since, until)`` and the checkpoint to store (capped windows stop early)."""
        records: list[tuple[int, int]] = []
        token = ""
        modified_property = MODIFIED_PROPERTY.get(object_type, DEFAULT_MODIFIED_PROPERTY)
        request = writer_pb2.SearchRecordsRequest(
            portal_id=portal_id,
            object_type=object_type,
            filter_groups=[
                writer_pb2.FilterGroup(
                    filters=[
                        writer_pb2.Filter(property_name=modified_property, operator="GTE", value=str(since)),
                        writer_pb2.Filter(property_name=modified_property, operator="LT", value=str(until)),
                    ]
                )
            ],
            sorts=[writer_pb2.Sort(property_name=modified_property)],
            properties=[modified_property],
            page_size=200,
        )
        while True:
            request.page_token = token
            try:
                reply = await self._writer.SearchRecords(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                raise Unavailable(
                    f"writer's SearchRecords failed: {exc.code().name}", retry_after=5.0
                ) from None
            for record in reply.records:
                modified = _modified_ms(record.properties.get(modified_property, ""))
                if modified is None and record.HasField("update_time"):
                    modified = record.update_time.ToMilliseconds()
                if record.id.isdigit() and modified is not None:
                    records.append((int(record.id), modified))
            token = reply.next_page_token
            if not token:
                return records, until
            if len(records) >= SEARCH_CAP - 200:
                # Past 10,000 results HubSpot answers 400: the next pass goes on from here.
                return records, max(m for _, m in records)

    async def _reported(self, portal_id: int, from_ms: int) -> dict[tuple[str, int], int]:
        """Latest occurredAt per (object type, record) in the journal since ``from_ms``."""
        stream = events_key(portal_id)
        seen: dict[tuple[str, int], int] = {}
        low = f"{max(from_ms, 0)}-0"
        while True:
            page = await stream_range(self._redis, stream, low, "+", count=1000)
            for entry_id, fields in page:
                event = decode_entry(entry_id, fields).event
                if event is None:
                    continue  # journal entries were validated on the way in
                object_type = _object_type(event)
                object_id = event.get("objectId")
                occurred = event.get("occurredAt")
                if object_type is None or not isinstance(object_id, int) or not isinstance(occurred, int):
                    continue
                key = (object_type, object_id)
                if occurred > seen.get(key, -1):
                    seen[key] = occurred
            if len(page) < 1000:
                break
            low = "(" + page[-1][0].decode()
        await self._echoed(portal_id, from_ms, seen)
        return seen

    async def _echoed(self, portal_id: int, from_ms: int, seen: dict[tuple[str, int], int]) -> None:
        """Add the echoes of hubsync's own writes journaled since ``from_ms`` to ``seen``."""
        stream = echoes_key(portal_id)
        low = f"{max(from_ms, 0)}-0"
        while True:
            page = await stream_range(self._redis, stream, low, "+", count=1000)
            for _entry_id, fields in page:
                object_type, _, rest = fields.get(EchoEntry.RECORD.encode(), b"").decode().partition(":")
                object_id, _, occurred = rest.partition(":")
                if not object_id.isdigit() or not occurred.isdigit():
                    continue
                key = (object_type, int(object_id))
                if int(occurred) > seen.get(key, -1):
                    seen[key] = int(occurred)
            if len(page) < 1000:
                return
            low = "(" + page[-1][0].decode()


def object_types_to_reconcile(raw: Sequence[str], *, field: str) -> list[str]:
    """The object types ``raw`` names (standard names, ``0-…`` or ``2-…`` ids), in order, once each.

    Raises InvalidArgument naming ``field`` for anything else.
    """
    types: list[str] = []
    unknown: list[str] = []
    for name in raw:
        object_type = reconcilable_type(name)
        if object_type is None:
            unknown.append(name)
        elif object_type not in types:
            types.append(object_type)
    if unknown:
        raise InvalidArgument(
            f"unknown object type in {field}",
            violations={
                field: f"{unknown}: not a standard type ({', '.join(OBJECT_TYPE_IDS.values())}, or its "
                "0-… id) nor a custom object's 2-… id (custom objects' names are not resolved here)"
            },
        )
    return types


def _object_type(event: dict[str, Any]) -> str | None:
    prefix = str(event.get("subscriptionType", "")).partition(".")[0]
    if prefix == "object":
        return type_of_id(str(event.get("objectTypeId", "")))
    return OBJECT_TYPES.get(prefix)
