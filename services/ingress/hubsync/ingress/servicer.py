"""The journal's gRPC servicer: proto in → journal/reconciler call → proto out."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from hubsync.api.ingress.v1 import ingress_pb2, ingress_pb2_grpc
from hubsync.ingress.journal import EventJournal, JournalEntry
from hubsync.ingress.reconciler import Reconciler

__all__ = ["IngressServicer", "event_pb"]


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def event_pb(entry: JournalEntry) -> ingress_pb2.WebhookEvent:
    """Return the journal entry as the API's ``WebhookEvent``."""
    event: dict[str, Any] = entry.event or {}
    raw = struct_pb2.Struct()
    # Struct holds numbers as doubles: ids above 2**53 would lose digits, so they go as strings.
    raw.update({k: (str(v) if isinstance(v, int) and abs(v) > 2**53 else v) for k, v in event.items()})
    return ingress_pb2.WebhookEvent(
        offset=entry.id,
        portal_id=_int(event.get("portalId")),
        event_id=_int(event.get("eventId")),
        subscription_type=_str(event.get("subscriptionType")),
        object_id=_int(event.get("objectId")),
        property_name=_str(event.get("propertyName")),
        property_value=_str(event.get("propertyValue")),
        change_source=_str(event.get("changeSource")),
        source_id=_str(event.get("sourceId")),
        occur_time=_ts(_int(event.get("occurredAt"))),
        accept_time=_ts(entry.accepted_ms),
        raw=raw,
        traceparent=entry.traceparent,
    )


class IngressServicer(ingress_pb2_grpc.IngressServiceServicer):
    """``hubsync.api.ingress.v1.IngressService``: the journal and reconciliation."""

    def __init__(self, journal: EventJournal, reconciler: Reconciler) -> None:
        """Serve ``journal`` and ``reconciler``."""
        self._journal = journal
        self._reconciler = reconciler

    async def ReadJournal(
        self, request: ingress_pb2.ReadJournalRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingress_pb2.ReadJournalResponse:
        """Return a page of a portal's journal."""
        start = request.start_time.ToMilliseconds() if request.HasField("start_time") else None
        end = request.end_time.ToMilliseconds() if request.HasField("end_time") else None
        entries, token = await self._journal.read(
            request.portal_id, start, end, request.page_size, request.page_token
        )
        return ingress_pb2.ReadJournalResponse(events=[event_pb(e) for e in entries], next_page_token=token)

    async def ReplayJournal(
        self, request: ingress_pb2.ReplayJournalRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingress_pb2.ReplayJournalResponse:
        """Append a range of the journal again (idempotent with ``request_id``)."""
        count = await self._journal.replay(
            request.portal_id, request.start_offset, request.end_offset, request.request_id
        )
        return ingress_pb2.ReplayJournalResponse(replayed_count=count)

    async def Reconcile(
        self, request: ingress_pb2.ReconcileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingress_pb2.ReconcileResponse:
        """Run one reconciliation pass now."""
        result = await self._reconciler.reconcile(request.portal_id, list(request.object_types))
        return ingress_pb2.ReconcileResponse(
            found_count=result.found, scanned_count=result.scanned, checkpoint_time=_ts(result.checkpoint_ms)
        )
