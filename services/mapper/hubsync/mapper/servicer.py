"""MapperService over gRPC: proto in → domain call → proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from hubsync.api.common.v1 import common_pb2
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.errors import InvalidArgument
from hubsync.mapper.feed import ChangeFeed, Subscription
from hubsync.mapper.inbound_queues import DEAD_LETTER, PARKED, InboundEvent, InboundQueues
from hubsync.mapper.mappings import MappingError, parse_mappings
from hubsync.mapper.outbound import PushRecord, RecordPusher
from hubsync.mapper.portal_mappings import PortalMappings
from hubsync.mapper.properties import PropertyCatalog
from hubsync.mapper.registry import MappingRegistry
from hubsync.mapper.suggest import suggest
from hubsync.mapper.transforms import TransformError

__all__ = ["MapperServicer"]

_QUEUES = {mapper_pb2.INBOUND_QUEUE_PARKED: PARKED, mapper_pb2.INBOUND_QUEUE_DEAD_LETTER: DEAD_LETTER}
_QUEUE_ENUMS = {v: k for k, v in _QUEUES.items()}
_OUTCOMES = {
    "WRITTEN": mapper_pb2.PUSH_OUTCOME_WRITTEN,
    "UNCHANGED": mapper_pb2.PUSH_OUTCOME_UNCHANGED,
    "QUEUED": mapper_pb2.PUSH_OUTCOME_QUEUED,
    "FAILED": mapper_pb2.PUSH_OUTCOME_FAILED,
}


def _fields(s: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(s)


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


class MapperServicer(mapper_pb2_grpc.MapperServiceServicer):
    """MapperService: proto in → domain call → proto out."""

    def __init__(
        self,
        registry: MappingRegistry,
        pusher: RecordPusher,
        feed: ChangeFeed,
        catalog: PropertyCatalog,
        queues: InboundQueues,
        portal_mappings: PortalMappings,
    ):
        self.portal_mappings = portal_mappings
        self.registry = registry
        self.pusher = pusher
        self.feed = feed
        self.catalog = catalog
        self.queues = queues

    async def Transform(
        self, request: mapper_pb2.TransformRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.TransformResponse:
        """Transform records one way with a portal's mappings (no side effects)."""
        # portal_id 0: the default mappings; a portal: its own (default + tenant + portal overrides).
        mappings = await self.portal_mappings.for_portal(request.portal_id)
        reply = mapper_pb2.TransformResponse()
        bad: dict[str, str] = {}
        if request.direction == mapper_pb2.DIRECTION_INBOUND:
            for i, r in enumerate(request.hubspot_records):
                m = mappings.get(r.object_type)
                if m is None:
                    bad[f"hubspot_records[{i}].object_type"] = f"no mapping for {r.object_type!r}"
                    continue
                external_id, fields = m.to_external(dict(r.properties))
                reply.external_records.add(
                    object_type=r.object_type, external_id=external_id, fields=_struct(fields)
                )
        elif request.direction == mapper_pb2.DIRECTION_OUTBOUND:
            for i, e in enumerate(request.external_records):
                m = mappings.get(e.object_type)
                if m is None:
                    bad[f"external_records[{i}].object_type"] = f"no mapping for {e.object_type!r}"
                    continue
                try:
                    props = m.to_hubspot(e.external_id, _fields(e.fields), owned_only=False)
                except TransformError as exc:
                    bad[f"external_records[{i}].fields.{exc.field}"] = exc.reason
                    continue
                reply.hubspot_records.append(
                    common_pb2.HubSpotRecord(object_type=e.object_type, properties=props)
                )
        else:
            bad["direction"] = "must be DIRECTION_INBOUND or DIRECTION_OUTBOUND"
        if bad:
            raise InvalidArgument("cannot transform", violations=bad)
        return reply

    async def PushRecords(
        self, request: mapper_pb2.PushRecordsRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.PushRecordsResponse:
        """Push records to HubSpot through the portal's mappings."""
        records = [
            PushRecord(r.object_type, r.external_id, _fields(r.fields), r.deleted) for r in request.records
        ]
        results = await self.pusher.push(request.request_id, request.portal_id, records, wait=request.wait)
        return mapper_pb2.PushRecordsResponse(
            results=[
                mapper_pb2.PushResult(
                    object_type=r.object_type,
                    external_id=r.external_id,
                    outcome=_OUTCOMES[r.outcome],
                    hubspot_id=r.hubspot_id,
                    error=r.error,
                )
                for r in results
            ]
        )

    async def Subscribe(
        self, request: mapper_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[mapper_pb2.SubscribeResponse]:
        """Stream the change feed to a consumer group (redelivering what it has not acked)."""
        visibility = 30_000
        if request.HasField("visibility_timeout"):
            visibility = int(request.visibility_timeout.ToMilliseconds())
        sub = Subscription(
            group=request.consumer_group,
            consumer=request.consumer,
            portal_ids=list(request.portal_ids),
            object_types=list(request.object_types),
            visibility_ms=visibility,
            max_in_flight=request.max_in_flight or 100,
        )
        async for delivery in self.feed.deliveries(sub, gone=lambda: context.cancelled() or context.done()):
            change = mapper_pb2.Change.FromString(delivery.payload)
            change.ack_id = delivery.ack_id
            change.delivery_attempt = delivery.attempt
            yield mapper_pb2.SubscribeResponse(change=change)

    async def Ack(
        self, request: mapper_pb2.AckRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.AckResponse:
        """Acknowledge change-feed entries of a consumer group."""
        count = await self.feed.ack(request.consumer_group, list(request.ack_ids))
        return mapper_pb2.AckResponse(acked_count=count)

    async def ListMappings(
        self, request: mapper_pb2.ListMappingsRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.ListMappingsResponse:
        """Return a summary of each mapping in force."""
        return mapper_pb2.ListMappingsResponse(
            mappings=[
                mapper_pb2.MappingSummary(
                    source=m.source,
                    object_type=m.object_type,
                    external_id_field=m.external_id_field,
                    id_property=m.id_property,
                    field_count=len(m.mapping.fields),
                )
                for m in self.registry.snapshot()
            ]
        )

    async def ValidateMapping(
        self, request: mapper_pb2.ValidateMappingRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.ValidateMappingResponse:
        """Check a mapping document without storing it."""
        from hubsync.mapper.mappings import LoadedMapping

        source = request.source or "<request>"
        try:
            parsed = parse_mappings(request.yaml, source)
        except MappingError as exc:
            return mapper_pb2.ValidateMappingResponse(valid=False, errors=exc.errors)
        errors: list[str] = []
        if request.portal_id:
            errors = await self.catalog.check(request.portal_id, [LoadedMapping(m, source) for m in parsed])
        return mapper_pb2.ValidateMappingResponse(valid=not errors, errors=errors)

    async def SuggestMapping(
        self, request: mapper_pb2.SuggestMappingRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.SuggestMappingResponse:
        """Propose a mapping from an external schema."""
        bad: dict[str, str] = {}
        if request.portal_id <= 0:
            bad["portal_id"] = "must be a positive HubSpot portal id"
        if request.object_type not in ("companies", "contacts", "deals"):
            bad["object_type"] = "must be companies, contacts or deals"
        if not request.external_schema.fields:
            bad["external_schema"] = "at least one field is required"
        if bad:
            raise InvalidArgument("cannot suggest a mapping", violations=bad)
        props = await self.catalog.get(request.portal_id, request.object_type)
        text, unmatched = suggest(request.object_type, _fields(request.external_schema), props)
        return mapper_pb2.SuggestMappingResponse(yaml=text, unmatched_fields=unmatched)

    async def ListParkedPortals(
        self, request: mapper_pb2.ListParkedPortalsRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.ListParkedPortalsResponse:
        """Return the portals whose inbound events are parked."""
        return mapper_pb2.ListParkedPortalsResponse(
            portals=[
                mapper_pb2.ParkedPortal(
                    portal_id=p.portal_id,
                    reason=p.reason,
                    detail=p.detail,
                    since_time=_time(p.since_ms),
                    event_count=p.event_count,
                )
                for p in await self.queues.parked_portals()
            ]
        )

    async def ListInboundEvents(
        self, request: mapper_pb2.ListInboundEventsRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.ListInboundEventsResponse:
        """Return a page of a portal's parked or dead-lettered inbound events."""
        events, token = await self.queues.page(
            request.portal_id, _queue(request.queue), request.page_size, request.page_token
        )
        return mapper_pb2.ListInboundEventsResponse(
            events=[_inbound_event(request.portal_id, e) for e in events], next_page_token=token
        )

    async def GetInboundEvent(
        self, request: mapper_pb2.GetInboundEventRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.GetInboundEventResponse:
        """Return one parked or dead-lettered inbound event."""
        event = await self.queues.get(request.portal_id, _queue(request.queue), request.id)
        return mapper_pb2.GetInboundEventResponse(event=_inbound_event(request.portal_id, event))

    async def ReplayInboundEvents(
        self, request: mapper_pb2.ReplayInboundEventsRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.ReplayInboundEventsResponse:
        """Replay parked or dead-lettered inbound events."""
        count = await self.queues.replay(
            request.portal_id, _queue(request.queue), list(request.ids), request.all
        )
        return mapper_pb2.ReplayInboundEventsResponse(replayed_count=count)

    async def PurgeInboundEvents(
        self, request: mapper_pb2.PurgeInboundEventsRequest, context: grpc.aio.ServicerContext
    ) -> mapper_pb2.PurgeInboundEventsResponse:
        """Delete parked or dead-lettered inbound events."""
        count = await self.queues.purge(
            request.portal_id, _queue(request.queue), list(request.ids), request.all
        )
        return mapper_pb2.PurgeInboundEventsResponse(purged_count=count)


def _queue(value: int) -> str:
    name = _QUEUES.get(value)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument(
            "invalid queue", violations={"queue": "must be INBOUND_QUEUE_PARKED or INBOUND_QUEUE_DEAD_LETTER"}
        )
    return str(name)


def _time(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _inbound_event(portal_id: int, e: InboundEvent) -> mapper_pb2.InboundEvent:
    return mapper_pb2.InboundEvent(
        id=e.id,
        portal_id=portal_id,
        queue=_QUEUE_ENUMS[e.queue],
        reason=e.reason,
        detail=e.detail,
        queued_time=_time(e.queued_ms),
        attempts=e.attempts,
        event_stream_id=e.from_id,
        raw_event=e.raw_event.decode(errors="replace"),
    )
