"""The outbound pipeline: records in the company's shape → HubSpot, through writer.

For each pushed record: transform with the mapping, keep only the fields the company owns
(``owner: external|both``), compare each property's fingerprint with the last state hubsync saw
or wrote, and send only what differs. Records with nothing new are answered UNCHANGED without
any call. Writes are upserts by the mapping's unique id property, submitted in one writer call in
dependency order (companies, contacts, deals, then associations). A request_id's answer is kept,
so a retried push does nothing new.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from opentelemetry import trace
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.bounds import external_id_problem, request_id_problem
from hubsync.core.errors import FailedPrecondition, InvalidArgument, Unavailable, error_info
from hubsync.core.keys import fingerprint_key, push_done_key, push_lock_key, push_version_key
from hubsync.core.versions import reserve_versions
from hubsync.mapper import metrics as sync_metrics
from hubsync.mapper.fingerprints import FINGERPRINT_TTL_S, digest
from hubsync.mapper.mappings import STANDARD_TYPES, WRITE_ORDER
from hubsync.mapper.objecttypes import CUSTOM_TYPES
from hubsync.mapper.transforms import MappingSet, TransformError

__all__ = ["PushRecord", "PushResultData", "RecordPusher"]

log = logging.getLogger(__name__)

WRITTEN, UNCHANGED, QUEUED, FAILED = "WRITTEN", "UNCHANGED", "QUEUED", "FAILED"
_MAX_RECORDS = 1000
_LISTED_IDS = 100  # ids listed on a push's span (a push carries up to _MAX_RECORDS)
tracer = trace.get_tracer("hubsync.mapper")


@dataclass
class PushRecord:
    """One record of a PushRecords request: its external id and fields, or a deletion."""

    object_type: str
    external_id: str
    fields: dict[str, Any]
    deleted: bool = False


# Fingerprint-hash field saying hubsync's push created the record (HubSpot property names start
# with a letter, so it never collides with one): what a mapping's `deletes: owned` checks.
CREATED_FIELD = "_created"


@dataclass
class PushResultData:
    """What became of one pushed record (written, unchanged, queued or failed)."""

    object_type: str
    external_id: str
    outcome: str
    hubspot_id: str = ""
    error: str = ""


@dataclass
class _Planned:
    index: int
    record: PushRecord
    changed: dict[str, str]
    associations: list[tuple[str, str, str, int, str]] = field(
        default_factory=list
    )  # (to type, to id, to prop, type, label)
    assoc_digests: dict[str, bytes] = field(default_factory=dict)
    delete: bool = False


class RecordPusher:
    """Runs PushRecords."""

    def __init__(
        self,
        redis: Redis,
        writer: writer_pb2_grpc.WriterServiceStub,
        mappings: Callable[[int], Awaitable[MappingSet]],
        *,
        idempotency_ttl_s: int = 86_400,
    ):
        self.redis = redis
        self.writer = writer
        self.mappings = mappings
        self.idempotency_ttl_s = idempotency_ttl_s

    def _validate(
        self, request_id: str, portal_id: int, records: Sequence[PushRecord], mappings: MappingSet
    ) -> None:
        bad: dict[str, str] = {}
        if problem := request_id_problem(request_id):
            bad["request_id"] = problem
        if portal_id <= 0:
            bad["portal_id"] = "must be a positive HubSpot portal id"
        if not records:
            bad["records"] = "at least one record is required"
        if len(records) > _MAX_RECORDS:
            bad["records"] = f"at most {_MAX_RECORDS} records per call"
        for i, r in enumerate(records):
            mapping = mappings.get(r.object_type)
            if mapping is None:
                bad[f"records[{i}].object_type"] = f"no mapping for {r.object_type!r}"
            elif r.deleted and mapping.mapping.deletes == "never":
                bad[f"records[{i}].deleted"] = (
                    f"the mapping of {mapping.object_type} does not allow deletes (deletes: never)"
                )
            if problem := external_id_problem(r.external_id):
                bad[f"records[{i}].external_id"] = problem
        if bad:
            raise InvalidArgument("invalid push", violations=bad)

    async def push(
        self, request_id: str, portal_id: int, records: Sequence[PushRecord], *, wait: bool
    ) -> list[PushResultData]:
        """Push records to HubSpot through writer; return each record's outcome."""
        mappings = await self.mappings(portal_id)  # the portal's own (default + overrides)
        self._validate(request_id, portal_id, records, mappings)
        custom = {r.object_type for r in records if r.object_type not in STANDARD_TYPES}
        if custom:
            # HubSpot's events about custom objects name them by id: learn the ids now.
            await CUSTOM_TYPES.ensure(self.writer, portal_id, custom)
        request_digest = hashlib.sha256(request_id.encode()).hexdigest()[:32]
        done_key = push_done_key(portal_id, request_digest)
        cached = await self.redis.get(done_key)
        if cached:
            return [PushResultData(**r) for r in orjson.loads(cached)]
        # One run per request_id at a time: a concurrent retry waits for the first one's answer.
        lock_key = push_lock_key(portal_id, request_digest)
        if not await self.redis.set(lock_key, b"1", nx=True, ex=180):
            for _ in range(300):
                await asyncio.sleep(0.1)
                cached = await self.redis.get(done_key)
                if cached:
                    return [PushResultData(**r) for r in orjson.loads(cached)]
            raise Unavailable("a push with this request_id is still running", retry_after=1.0)
        started = time.perf_counter()
        try:
            # The push's place in each record's order (writer never writes a property with an
            # older version after a newer one): accepted now, records in the order given.
            version = await reserve_versions(self.redis, push_version_key(portal_id), len(records))
            with tracer.start_as_current_span(
                "mapper.outbound", attributes=_push_attributes(portal_id, records)
            ) as span:
                results = await self._push(done_key, request_id, portal_id, records, wait, mappings, version)
                hubspot_ids = [r.hubspot_id for r in results[:_LISTED_IDS] if r.hubspot_id]
                span.set_attribute("hubsync.outcome", [r.outcome for r in results[:_LISTED_IDS]])
                if hubspot_ids:
                    span.set_attribute("hubsync.object_id", hubspot_ids)
            for object_type in {r.object_type for r in results}:
                sync_metrics.sync_duration.record(
                    time.perf_counter() - started, {"object_type": object_type, "direction": "outbound"}
                )
            return results
        finally:
            await self.redis.delete(lock_key)

    async def _push(
        self,
        done_key: str,
        request_id: str,
        portal_id: int,
        records: Sequence[PushRecord],
        wait: bool,
        mappings: MappingSet,
        version: int,
    ) -> list[PushResultData]:

        planned: list[_Planned] = []
        bad: dict[str, str] = {}
        for i, r in enumerate(records):
            mapping = mappings.get(r.object_type)
            assert mapping is not None
            if r.deleted:
                planned.append(_Planned(i, r, {}, delete=True))
                continue
            try:
                props = mapping.to_hubspot(r.external_id, r.fields, owned_only=True)
            except TransformError as exc:
                bad[f"records[{i}].fields.{exc.field}"] = exc.reason
                continue
            plan = _Planned(i, r, props)
            for a in mapping.mapping.associations:
                value = _get_path(r.fields, a.external)
                other = mappings.get(a.to)
                if value in (None, "") or other is None:
                    continue
                to_id = str(value)
                plan.associations.append((a.to, to_id, other.id_property, a.association_type_id, a.label))
                kind = f"{a.association_type_id}" + (f":{a.label}" if a.label else "")
                plan.assoc_digests[f"assoc:{a.to}:{kind}"] = digest(to_id)
            planned.append(plan)
        if bad:
            raise InvalidArgument("records do not fit their mapping", violations=bad)

        # Keep only what differs from the last state seen or written.
        compared = [p for p in planned if not p.delete]  # a deletion is always sent
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in compared:
                names = [*p.changed, *p.assoc_digests]
                pipe.hmget(fingerprint_key(portal_id, p.record.object_type, p.record.external_id), names)
            known = await pipe.execute()
        for p, prev in zip(compared, known, strict=True):
            names = list(p.changed)
            p.changed = {
                n: v for n, v, old in zip(names, p.changed.values(), prev, strict=False) if digest(v) != old
            }
            olds = prev[len(names) :]
            keep = []
            for (key, d), old, assoc in zip(list(p.assoc_digests.items()), olds, p.associations, strict=True):
                if d != old:
                    keep.append(assoc)
                else:
                    p.assoc_digests.pop(key, None)
            p.associations = keep

        results = [PushResultData(r.object_type, r.external_id, UNCHANGED) for r in records]
        await self._check_owned(portal_id, planned, results, mappings)
        to_send = [p for p in planned if p.changed or p.associations or p.delete]
        if to_send:
            await self._write(request_id, portal_id, to_send, results, wait, mappings, version)
        for res in results:
            sync_metrics.sync.add(
                1, {"object_type": res.object_type, "direction": "outbound", "outcome": res.outcome.lower()}
            )
        await self.redis.set(done_key, orjson.dumps([r.__dict__ for r in results]), ex=self.idempotency_ttl_s)
        return results

    async def _check_owned(
        self, portal_id: int, planned: list[_Planned], results: list[PushResultData], mappings: MappingSet
    ) -> None:
        """Deletions under `deletes: owned` go ahead only for records a push of hubsync created."""
        owned = [
            p
            for p in planned
            if p.delete
            and (m := mappings.get(p.record.object_type)) is not None
            and m.mapping.deletes == "owned"
        ]
        if not owned:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in owned:
                pipe.hget(
                    fingerprint_key(portal_id, p.record.object_type, p.record.external_id), CREATED_FIELD
                )
            created = await pipe.execute()
        for p, flag in zip(owned, created, strict=True):
            if not flag:
                p.delete = False
                out = results[p.index]
                out.outcome = FAILED
                out.error = (
                    "not deleted: the mapping allows deleting only records hubsync created (deletes: owned), "
                    "and hubsync did not create this one"
                )

    async def _write(
        self,
        request_id: str,
        portal_id: int,
        to_send: list[_Planned],
        results: list[PushResultData],
        wait: bool,
        mappings: MappingSet,
        version: int,
    ) -> None:
        to_send.sort(key=lambda p: (WRITE_ORDER.get(p.record.object_type, 9), p.index))
        writes: list[writer_pb2.Write] = []
        owners: list[tuple[_Planned, str]] = []  # which plan each write belongs to, and what it is
        for p in to_send:
            mapping = mappings.get(p.record.object_type)
            assert mapping is not None
            if p.delete:
                writes.append(
                    writer_pb2.Write(
                        record=writer_pb2.RecordWrite(
                            operation=writer_pb2.WRITE_OPERATION_ARCHIVE,
                            object_type=p.record.object_type,
                            id=p.record.external_id,
                            id_property=mapping.id_property,
                        )
                    )
                )
                owners.append((p, "delete"))
            elif p.changed:
                props = dict(p.changed)
                props.pop(mapping.id_property, None)
                writes.append(
                    writer_pb2.Write(
                        record=writer_pb2.RecordWrite(
                            operation=writer_pb2.WRITE_OPERATION_UPSERT,
                            object_type=p.record.object_type,
                            id=p.record.external_id,
                            id_property=mapping.id_property,
                            properties=props,
                            version=version + p.index,
                        )
                    )
                )
                owners.append((p, "record"))
        for p in to_send:
            mapping = mappings.get(p.record.object_type)
            assert mapping is not None
            for to_type, to_id, to_prop, type_id, label in p.associations:
                writes.append(
                    writer_pb2.Write(
                        association=writer_pb2.AssociationWrite(
                            from_object_type=p.record.object_type,
                            from_id=p.record.external_id,
                            from_id_property=mapping.id_property,
                            to_object_type=to_type,
                            to_id=to_id,
                            to_id_property=to_prop,
                            association_type_id=type_id,
                            association_label=label,
                        )
                    )
                )
                owners.append((p, "assoc"))
        try:
            reply = await self.writer.SubmitWrites(
                writer_pb2.SubmitWritesRequest(
                    request_id=f"mapper:{request_id}", portal_id=portal_id, writes=writes, wait=wait
                ),
                timeout=120,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"writer refused the writes: {exc.details()}") from None
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # The portal's read-only pilot (or another refusal someone must lift): say so.
                info = error_info(exc)
                raise FailedPrecondition(
                    exc.details() or "writer refused the writes",
                    reason=info.reason if info is not None else None,
                    metadata=dict(info.metadata) if info is not None else None,
                ) from None
            raise Unavailable(f"writer unavailable: {exc.code().name}", retry_after=1.0) from None
        succeeded: dict[int, bool] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for (p, what), res in zip(owners, reply.results, strict=False):
                out = results[p.index]
                status = res.status
                # SUPERSEDED: a newer push of the record already wrote these properties.
                superseded = status == writer_pb2.WRITE_STATUS_SUPERSEDED
                ok = superseded or status in (
                    writer_pb2.WRITE_STATUS_SUCCEEDED,
                    writer_pb2.WRITE_STATUS_UNCHANGED,
                )
                if what == "delete":
                    if status == writer_pb2.WRITE_STATUS_SUCCEEDED:
                        out.outcome = WRITTEN
                        # Gone: a later push of the same id creates the record anew.
                        pipe.delete(fingerprint_key(portal_id, p.record.object_type, p.record.external_id))
                    elif status in (writer_pb2.WRITE_STATUS_QUEUED, writer_pb2.WRITE_STATUS_SKIPPED_PILOT):
                        out.outcome = QUEUED
                    else:
                        out.outcome = FAILED
                        out.error = res.error.message or "dead-lettered"
                    continue
                if what == "record":
                    if res.hubspot_id:
                        out.hubspot_id = res.hubspot_id
                    if status == writer_pb2.WRITE_STATUS_SUCCEEDED:
                        out.outcome = WRITTEN
                    elif status == writer_pb2.WRITE_STATUS_UNCHANGED or superseded:
                        out.outcome = UNCHANGED
                    elif status in (writer_pb2.WRITE_STATUS_QUEUED, writer_pb2.WRITE_STATUS_SKIPPED_PILOT):
                        out.outcome = QUEUED
                    else:
                        out.outcome = FAILED
                        out.error = res.error.message or "dead-lettered"
                    succeeded[p.index] = ok
                    if ok and not superseded:  # the newer push keeps its own fingerprints
                        fkey = fingerprint_key(portal_id, p.record.object_type, p.record.external_id)
                        pipe.hset(fkey, mapping={n: digest(v) for n, v in p.changed.items()})
                        if res.created:
                            pipe.hset(fkey, CREATED_FIELD, b"1")
                        pipe.expire(fkey, FINGERPRINT_TTL_S)
                else:
                    if ok and succeeded.get(p.index, True):
                        if out.outcome == UNCHANGED and status == writer_pb2.WRITE_STATUS_SUCCEEDED:
                            out.outcome = WRITTEN
                        fkey = fingerprint_key(portal_id, p.record.object_type, p.record.external_id)
                        pipe.hset(fkey, mapping=dict(p.assoc_digests.items()))
                    elif status == writer_pb2.WRITE_STATUS_QUEUED and out.outcome == UNCHANGED:
                        out.outcome = QUEUED
                    elif not ok and status != writer_pb2.WRITE_STATUS_QUEUED:
                        out.outcome = FAILED
                        out.error = out.error or res.error.message or "association dead-lettered"
            await pipe.execute()


def _push_attributes(portal_id: int, records: Sequence[PushRecord]) -> dict[str, Any]:
    """What a push's span is searched by: the portal, the types and the records' external ids."""
    listed = records[:_LISTED_IDS]
    return {
        "hubsync.portal_id": str(portal_id),
        "hubsync.object_type": sorted({r.object_type for r in records}),
        "hubsync.record_count": len(records),
        "hubsync.external_id": [r.external_id for r in listed],
    }


def _get_path(fields: dict[str, Any], path: str) -> Any:
    value: Any = fields
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
