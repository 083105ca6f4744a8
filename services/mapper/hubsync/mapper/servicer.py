"""MapperService over gRPC: proto in → domain call → proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from hubsync.api.common.v1 import common_pb2
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.errors import InvalidArgument
from hubsync.mapper.feed import ChangeFeed, Subscription
from hubsync.mapper.mappings import MappingError, parse_mappings
from hubsync.mapper.outbound import PushRecord, RecordPusher
from hubsync.mapper.properties import PropertyCatalog
from hubsync.mapper.registry import MappingRegistry
from hubsync.mapper.suggest import suggest
from hubsync.mapper.transforms import TransformError

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
    def __init__(
        self, registry: MappingRegistry, pusher: RecordPusher, feed: ChangeFeed, catalog: PropertyCatalog
    ):
        self.registry = registry
        self.pusher = pusher
        self.feed = feed
        self.catalog = catalog

    async def Transform(
        self, request: mapper_pb2.TransformRequest, context: Any
    ) -> mapper_pb2.TransformResponse:
        mappings = self.registry.snapshot()
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
        self, request: mapper_pb2.PushRecordsRequest, context: Any
    ) -> mapper_pb2.PushRecordsResponse:
        records = [PushRecord(r.object_type, r.external_id, _fields(r.fields)) for r in request.records]
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

    async def Ack(self, request: mapper_pb2.AckRequest, context: Any) -> mapper_pb2.AckResponse:
        count = await self.feed.ack(request.consumer_group, list(request.ack_ids))
        return mapper_pb2.AckResponse(acked_count=count)

    async def ListMappings(
        self, request: mapper_pb2.ListMappingsRequest, context: Any
    ) -> mapper_pb2.ListMappingsResponse:
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
        self, request: mapper_pb2.ValidateMappingRequest, context: Any
    ) -> mapper_pb2.ValidateMappingResponse:
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
        self, request: mapper_pb2.SuggestMappingRequest, context: Any
    ) -> mapper_pb2.SuggestMappingResponse:
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
