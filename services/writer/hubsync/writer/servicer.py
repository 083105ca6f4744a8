"""Stage 1: WriterService over gRPC: proto in → domain call → proto out.

Writes go to the :class:`WriterGateway`; reads, search and properties to the
:class:`RecordReader`; exports to the :class:`RecordExporter`; dead letters to the
:class:`DeadLetterQueue` (replay through the gateway, which queues them again).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2

from hubsync.api.common.v1 import common_pb2
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.bounds import DERIVED_REQUEST_ID_MAX, check_request_id
from hubsync.core.errors import InvalidArgument
from hubsync.writer.dlq import DeadLetterEntry, DeadLetterQueue
from hubsync.writer.export import RecordExporter
from hubsync.writer.gateway import WriterGateway
from hubsync.writer.objecttypes import READ_ONLY, STANDARD_IDS
from hubsync.writer.reads import Record, RecordReader, SearchQuery, validate_search

__all__ = [
    "WriterServicer",
    "dead_letter_pb",
    "record_pb",
]


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


def _portal(portal_id: int) -> int:
    if portal_id <= 0:
        raise InvalidArgument(
            "portal_id is required", violations={"portal_id": "must be a positive HubSpot account id"}
        )
    return portal_id


def record_pb(record: Record) -> common_pb2.HubSpotRecord:
    """Return a record as the API returns it."""
    pb = common_pb2.HubSpotRecord(
        id=record.id, object_type=record.object_type, properties=record.properties, archived=record.archived
    )
    if record.created_at is not None:
        pb.create_time.FromDatetime(record.created_at)
    if record.updated_at is not None:
        pb.update_time.FromDatetime(record.updated_at)
    return pb


def dead_letter_pb(entry: DeadLetterEntry) -> writer_pb2.DeadLetter:
    """Return a dead letter as the API returns it."""
    created = timestamp_pb2.Timestamp()
    created.FromMilliseconds(entry.created_ms)
    return writer_pb2.DeadLetter(
        id=entry.id,
        portal_id=entry.portal_id,
        write=entry.write,
        error=common_pb2.HubSpotError(
            http_status=entry.error.http_status,
            category=entry.error.category,
            message=entry.error.message,
            correlation_id=entry.error.correlation_id,
        ),
        attempts=entry.attempts,
        trace_id=entry.trace_id,
        create_time=created,
    )


class WriterServicer(writer_pb2_grpc.WriterServiceServicer):
    """The WriterService RPCs; each checks its request and calls the stage that owns it."""

    def __init__(
        self, gateway: WriterGateway, reader: RecordReader, dlq: DeadLetterQueue, exporter: RecordExporter
    ) -> None:
        """Serve writes through ``gateway``, reads through ``reader``."""
        self.gateway = gateway
        self.reader = reader
        self.dlq = dlq
        self.exporter = exporter

    async def SubmitWrites(
        self, request: writer_pb2.SubmitWritesRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.SubmitWritesResponse:
        """Write (``wait``) or queue the submission; answer per write."""
        _portal(request.portal_id)
        # A key part of the idempotency record; mapper's ids carry a "mapper:" prefix.
        check_request_id(request.request_id, required=False, max_length=DERIVED_REQUEST_ID_MAX)
        return await self.gateway.submit(request, _deadline(context))

    async def ReadRecords(
        self, request: writer_pb2.ReadRecordsRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.ReadRecordsResponse:
        """Read records by id or unique value."""
        records, missing = await self.reader.read(
            _portal(request.portal_id),
            request.object_type,
            list(request.ids),
            id_property=request.id_property,
            properties=list(request.properties),
            archived=request.archived,
            deadline=_deadline(context),
        )
        return writer_pb2.ReadRecordsResponse(records=[record_pb(r) for r in records], missing_ids=missing)

    async def SearchRecords(
        self, request: writer_pb2.SearchRecordsRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.SearchRecordsResponse:
        """Answer one validated search page."""
        groups = [
            [
                {
                    k: v
                    for k, v in {
                        "propertyName": f.property_name,
                        "operator": f.operator,
                        "value": f.value or None,
                        "highValue": f.high_value or None,
                        "values": list(f.values) or None,
                    }.items()
                    if v is not None
                }
                for f in g.filters
            ]
            for g in request.filter_groups
        ]
        validate_search(groups, request.page_size)
        query = SearchQuery(
            filter_groups=groups,
            sorts=[
                {"propertyName": s.property_name, "direction": "DESCENDING" if s.descending else "ASCENDING"}
                for s in request.sorts
            ],
            properties=list(request.properties),
            query=request.query,
            limit=request.page_size or 100,
            after=request.page_token,
        )
        page = await self.reader.search(
            _portal(request.portal_id), request.object_type, query, _deadline(context)
        )
        return writer_pb2.SearchRecordsResponse(
            records=[record_pb(r) for r in page.records], total=page.total, next_page_token=page.after
        )

    async def ExportRecords(
        self, request: writer_pb2.ExportRecordsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[writer_pb2.ExportRecordsResponse]:
        """Stream every record of a type, resumably."""
        after = request.modified_after.ToMilliseconds() if request.HasField("modified_after") else None
        before = request.modified_before.ToMilliseconds() if request.HasField("modified_before") else None
        async for page in self.exporter.export(
            _portal(request.portal_id),
            request.object_type,
            list(request.properties),
            modified_after_ms=after,
            modified_before_ms=before,
            checkpoint=request.checkpoint,
            page_size=request.page_size,
        ):
            yield writer_pb2.ExportRecordsResponse(
                records=[record_pb(r) for r in page.records],
                checkpoint=page.checkpoint,
                exported_count=page.exported,
                estimated_total=page.estimated_total,
            )

    async def ListProperties(
        self, request: writer_pb2.ListPropertiesRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.ListPropertiesResponse:
        """List an object type's properties."""
        props = await self.reader.list_properties(_portal(request.portal_id), request.object_type)
        return writer_pb2.ListPropertiesResponse(
            properties=[
                writer_pb2.Property(
                    name=p.name,
                    label=p.label,
                    type=p.type,
                    field_type=p.field_type,
                    has_unique_value=p.has_unique_value,
                    hubspot_defined=p.hubspot_defined,
                    options=p.options,
                    description=p.description,
                )
                for p in props
            ]
        )

    async def ListObjectTypes(
        self, request: writer_pb2.ListObjectTypesRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.ListObjectTypesResponse:
        """List the portal's standard and custom object types."""
        portal = _portal(request.portal_id)
        out = [
            writer_pb2.ObjectType(name=n, object_type_id=tid, writable=n not in READ_ONLY)
            for n, tid in STANDARD_IDS.items()
        ]
        for c in await self.reader.types.custom_types(portal):
            out.append(
                writer_pb2.ObjectType(
                    name=c.object_type_id,
                    object_type_id=c.object_type_id,
                    schema_name=c.name,
                    fully_qualified_name=c.fully_qualified_name,
                    custom=True,
                    writable=True,
                )
            )
        return writer_pb2.ListObjectTypesResponse(object_types=out)

    async def ListDeadLetters(
        self, request: writer_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.ListDeadLettersResponse:
        """List dead letters, oldest first, paged."""
        portal = _portal(request.portal_id)
        entries, token = await self.dlq.page(
            portal, request.http_statuses, request.page_size, request.page_token
        )
        return writer_pb2.ListDeadLettersResponse(
            dead_letters=[dead_letter_pb(e) for e in entries],
            next_page_token=token,
            total=await self.dlq.depth(portal),
        )

    async def GetDeadLetter(
        self, request: writer_pb2.GetDeadLetterRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.GetDeadLetterResponse:
        """Return one dead letter."""
        entry = await self.dlq.get(_portal(request.portal_id), request.id)
        return writer_pb2.GetDeadLetterResponse(dead_letter=dead_letter_pb(entry))

    async def ReplayDeadLetters(
        self, request: writer_pb2.ReplayDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.ReplayDeadLettersResponse:
        """Queue dead letters again; answer how many."""
        n = await self.gateway.replay(
            _portal(request.portal_id), list(request.ids), list(request.http_statuses), request.all
        )
        return writer_pb2.ReplayDeadLettersResponse(replayed_count=n)

    async def PurgeDeadLetters(
        self, request: writer_pb2.PurgeDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.PurgeDeadLettersResponse:
        """Delete dead letters; answer how many."""
        n = await self.dlq.purge(_portal(request.portal_id), list(request.ids), request.all)
        return writer_pb2.PurgeDeadLettersResponse(purged_count=n)

    async def GetQuotaStatus(
        self, request: writer_pb2.GetQuotaStatusRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.GetQuotaStatusResponse:
        """Answer the portal's quota, circuit, queue and DLQ status."""
        status = await self.gateway.quota_status(_portal(request.portal_id))
        return writer_pb2.GetQuotaStatusResponse(**dataclasses.asdict(status))
