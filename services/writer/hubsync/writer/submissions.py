"""Stages 2 and 4 of the write path: validating a submission, then planning and feeding it.

:func:`validate` checks a submission before it is accepted. :class:`WriteSubmitter` takes one
accepted submission: validated, ordered by the graph of its associations (_graph.py:
parents before children, associations after both ends, then archives, then GDPR deletes), fed
to the batcher, answered with a result per write.

An association waits for both ends: ends given by unique value are resolved from this
submission's own upserts or read from HubSpot; an end that does not exist (or whose write was
dead-lettered) dead-letters the association with a 404. Its type is the pair's default, a type
id, or a label resolved through the labels API (objecttypes.py). A GDPR delete is sent on its
own and audited (``writer_gdpr_audit_key``): when, which record (HubSpot id and a digest of
the value it was named by, never the value), what HubSpot answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import InvalidArgument
from hubsync.core.keys import writer_gdpr_audit_key, written_key
from hubsync.core.telemetry import trace_id_hex
from hubsync.writer._graph import ARCHIVES, ASSOCIATIONS, GDPR, plan
from hubsync.writer._ledger import Ledger
from hubsync.writer.batches import BatchInput, BatchKey, BatchOp, Coalescer, Outcome, id_key
from hubsync.writer.dlq import DeadLetterQueue, HubSpotFailure
from hubsync.writer.objecttypes import DEFAULT_ASSOCIATION_TYPES, REFERENCES, STANDARD_IDS
from hubsync.writer.ordering import unique_value
from hubsync.writer.reads import RecordReader, check_object_type

__all__ = [
    "ARCHIVE",
    "CREATE",
    "GDPR_AUDIT_MAXLEN",
    "GDPR_DELETE",
    "MAX_WRITES",
    "UPDATE",
    "UPSERT",
    "WriteSubmitter",
    "validate",
]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("hubsync.writer.audit")

UPSERT = writer_pb2.WRITE_OPERATION_UPSERT
CREATE = writer_pb2.WRITE_OPERATION_CREATE
UPDATE = writer_pb2.WRITE_OPERATION_UPDATE
ARCHIVE = writer_pb2.WRITE_OPERATION_ARCHIVE
GDPR_DELETE = writer_pb2.WRITE_OPERATION_GDPR_DELETE

MAX_WRITES = 10_000
# The GDPR audit stream keeps this many entries per portal (approximately).
GDPR_AUDIT_MAXLEN = 1_000_000


def _known_type(t: str) -> bool:
    try:
        check_object_type(t)
    except InvalidArgument:
        return False
    return True


def validate(writes: Sequence[writer_pb2.Write]) -> None:
    """Raise InvalidArgument naming every bad field."""
    v: dict[str, str] = {}
    if len(writes) > MAX_WRITES:
        v["writes"] = f"at most {MAX_WRITES} writes a call"
    for n, w in enumerate(writes):
        p = f"writes[{n}]"
        kind = w.WhichOneof("kind")
        if kind is None:
            v[p] = "set record or association"
        elif kind == "record":
            r = w.record
            if not _known_type(r.object_type):
                v[f"{p}.record.object_type"] = "unknown object type"
            if r.operation == writer_pb2.WRITE_OPERATION_UNSPECIFIED or r.operation not in (
                UPSERT,
                CREATE,
                UPDATE,
                ARCHIVE,
                GDPR_DELETE,
            ):
                v[f"{p}.record.operation"] = "required"
            if r.operation in (UPSERT, UPDATE, ARCHIVE, GDPR_DELETE) and not r.id:
                v[f"{p}.record.id"] = "required for upsert, update, archive and GDPR delete"
            if r.operation == UPSERT and not r.id_property:
                v[f"{p}.record.id_property"] = "required for upsert"
            if r.operation in (UPSERT, CREATE, UPDATE) and not r.properties:
                v[f"{p}.record.properties"] = "at least one property"
            if (
                r.operation in (UPDATE, ARCHIVE, GDPR_DELETE)
                and r.id
                and not r.id_property
                and not r.id.isdigit()
            ):
                v[f"{p}.record.id"] = "must be a HubSpot id (digits) unless id_property is set"
            if r.operation == UPDATE and r.id_property:
                v[f"{p}.record.id_property"] = "not used by update (use upsert)"
            if r.operation == GDPR_DELETE:
                if r.object_type != "contacts":
                    v[f"{p}.record.object_type"] = "GDPR delete exists for contacts only"
                if r.id_property not in ("", "email"):
                    v[f"{p}.record.id_property"] = "GDPR delete takes a HubSpot id or an email"
                if r.properties:
                    v[f"{p}.record.properties"] = "GDPR delete takes no properties"
        else:
            a = w.association
            for end in ("from", "to"):
                if not _known_type(getattr(a, f"{end}_object_type")):
                    v[f"{p}.association.{end}_object_type"] = "unknown object type"
                ident = getattr(a, f"{end}_id")
                if not ident:
                    v[f"{p}.association.{end}_id"] = "required"
                elif not getattr(a, f"{end}_id_property") and not ident.isdigit():
                    v[f"{p}.association.{end}_id"] = "a HubSpot id (digits) unless the id property is set"
            pair = (a.from_object_type, a.to_object_type)
            standard = pair[0] in STANDARD_IDS and pair[1] in STANDARD_IDS
            if (
                a.association_type_id == 0
                and not a.association_label
                and standard
                and pair not in DEFAULT_ASSOCIATION_TYPES
                and _reference(pair) is None
                and not any(k.startswith(f"{p}.association") for k in v)
            ):
                # Custom objects' pairs are looked up in the labels API when sent.
                v[f"{p}.association.association_type_id"] = "required: no default for this pair"
            if _reference(pair) is not None and (a.association_type_id or a.association_label):
                v[f"{p}.association.association_label"] = (
                    f"{pair[0]} and {pair[1]} are linked by a property; no types or labels"
                )
    if v:
        raise InvalidArgument("invalid writes", violations=v)


def _reference(pair: tuple[str, str]) -> tuple[str, str, str] | None:
    """(record type, property, referenced type) when a pair is linked by a property."""
    if pair in REFERENCES:
        return pair[0], REFERENCES[pair], pair[1]
    rev = (pair[1], pair[0])
    if rev in REFERENCES:
        return rev[0], REFERENCES[rev], rev[1]
    return None


@dataclass
class _Run:
    """One submission being written: its writes, the ids its stages learned, the outcomes so far."""

    portal_id: int
    writes: Sequence[writer_pb2.Write]
    links: list[Link]
    trace_id: str
    outcomes: list[Outcome | None]
    # (type, id_property, value) → HubSpot id, learned by earlier stages or read from HubSpot.
    known: dict[tuple[str, str, str], str] = field(default_factory=dict)


class WriteSubmitter:
    """Writes one accepted submission in its graph's order; one outcome per write."""

    def __init__(
        self,
        coalescer: Coalescer,
        reader: RecordReader,
        dlq: DeadLetterQueue,
        redis: Redis,
        *,
        pilot_mode: bool = False,
        skip_unchanged: bool = False,
    ) -> None:
        """Batch through ``coalescer``; read ids through ``reader``; dead-letter to ``dlq``."""
        self.coalescer = coalescer
        self.reader = reader
        self.dlq = dlq
        self.redis = redis
        self.pilot_mode = pilot_mode
        self.skip_unchanged = skip_unchanged

    async def process(
        self,
        portal_id: int,
        writes: Sequence[writer_pb2.Write],
        links: Sequence[Link] = (),
        ledger: Ledger | None = None,
    ) -> list[Outcome]:
        """Write everything in order; returns one outcome per write.

        With a ``ledger`` (a queued request being retried) writes finished by an earlier attempt are
        not sent again, and creates an interrupted attempt may have sent are dead-lettered instead of
        doubled.
        """
        if self.pilot_mode:
            return await self._pilot(portal_id, writes)
        run = _Run(portal_id, writes, list(links) or _current_link(), trace_id_hex(), [None] * len(writes))
        outcomes = run.outcomes
        if ledger is not None:
            for n, outcome in ledger.finished.items():
                if n < len(outcomes):
                    outcomes[n] = outcome
        for stage in plan(writes):
            todo = [n for n in stage.writes if outcomes[n] is None]
            if not todo:
                continue
            if stage.kind == ASSOCIATIONS:
                await self._associate(run, todo)
            elif stage.kind == GDPR:
                for n in todo:
                    outcomes[n] = await self._gdpr_delete(portal_id, writes[n], run.links, run.trace_id)
            else:
                if stage.kind == ARCHIVES:
                    await self._resolve_archives(run, todo)
                await self._write_records(run, todo, ledger)
                continue
            if ledger is not None:
                await ledger.record({n: o for n in todo if (o := outcomes[n]) is not None})
        return [o if o is not None else Outcome(writer_pb2.WRITE_STATUS_UNSPECIFIED) for o in outcomes]

    async def _write_records(self, run: _Run, tier: list[int], ledger: Ledger | None) -> None:
        """One stage of record writes through the batcher (the writes of a stage go together)."""
        portal_id, writes, known, outcomes = run.portal_id, run.writes, run.known, run.outcomes
        span_links, trace_id = run.links, run.trace_id
        futures = []
        unchanged = await self._unchanged(portal_id, writes, tier) if self.skip_unchanged else {}
        for n, outcome in unchanged.items():
            outcomes[n] = outcome
            r = writes[n].record
            known[_named(r.object_type, r.id_property, r.id)] = outcome.hubspot_id
        sent: list[int] = []
        for n in tier:
            if n in unchanged or outcomes[n] is not None:
                continue
            r = writes[n].record
            if ledger is not None and ledger.interrupted and r.operation == CREATE:
                outcomes[n] = await self._hold_ambiguous(portal_id, writes[n], trace_id)
                continue
            archive = r.operation == ARCHIVE
            key = BatchKey(
                portal_id,
                r.object_type,
                BatchOp.of(r.operation),
                r.id_property if r.operation == UPSERT else "",
            )
            dedupe = f"{r.id}" if r.operation != CREATE else f"new:{id(writes[n])}:{n}"
            if r.operation == UPSERT:
                dedupe = unique_value(r.id_property, r.id)
            record_id = (
                known.get(_named(r.object_type, r.id_property, r.id), "")
                if (archive and r.id_property)
                else r.id
            )
            props = dict(r.properties)
            item = BatchInput(
                record_id if archive else dedupe,
                record_id,
                props,
                [writes[n]],
                list(span_links),
                [],
                [trace_id],
                versions=dict.fromkeys(props, r.version),
            )
            futures.append(self.coalescer.submit(key, item))
            sent.append(n)
        # Every batch of the stage is waited for, even when one fails: a batch that went out is
        # recorded as finished before the failure is raised, so a retry of the queued request
        # does not send it (its creates) again.
        results = await asyncio.gather(*futures, return_exceptions=True)
        failure: BaseException | None = None
        for n, result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            outcomes[n] = result
            r = writes[n].record
            if result.hubspot_id and r.operation == UPSERT:
                known[_named(r.object_type, r.id_property, r.id)] = result.hubspot_id
        if ledger is not None:
            await ledger.record({n: o for n in tier if (o := outcomes[n]) is not None})
        if failure is not None:
            raise failure

    async def _resolve_archives(self, run: _Run, indexes: list[int]) -> None:
        """Resolve archives named by unique value to their HubSpot ids.

        One that no record holds is already gone: it succeeds without a call (archiving is
        idempotent).
        """
        portal_id, writes, known, outcomes = run.portal_id, run.writes, run.known, run.outcomes
        ends = [
            (writes[n].record.object_type, writes[n].record.id, writes[n].record.id_property) for n in indexes
        ]
        await self._learn_ids(portal_id, ends, known)
        for n in indexes:
            r = writes[n].record
            if r.id_property and _named(r.object_type, r.id_property, r.id) not in known:
                outcomes[n] = Outcome(writer_pb2.WRITE_STATUS_SUCCEEDED)

    async def _learn_ids(
        self,
        portal_id: int,
        ends: Sequence[tuple[str, str, str]],
        known: dict[tuple[str, str, str], str],
    ) -> None:
        """Read the HubSpot ids of records named by unique value that ``known`` lacks."""
        wanted: dict[tuple[str, str], set[str]] = {}
        for t, i, p in ends:
            if p and _named(t, p, i) not in known:
                wanted.setdefault((t, p), set()).add(i)
        for (t, p), values in wanted.items():
            records, _missing = await self.reader.read(
                portal_id, t, sorted(values), id_property=p, properties=[p]
            )
            for rec in records:
                value = rec.properties.get(p, "")
                if value:
                    known[_named(t, p, value)] = rec.id

    async def _gdpr_delete(
        self, portal_id: int, write: writer_pb2.Write, links: list[Link], trace_id: str
    ) -> Outcome:
        """Permanently deletes one contact (``contacts/gdpr-delete``) and audits it.

        A contact that does not exist is already gone: that succeeds (audited as ``not_found``).
        """
        r = write.record
        body: dict[str, Any] = {"objectId": r.id}
        if r.id_property:
            body["idProperty"] = r.id_property
        response = await self.reader.client.call(
            portal_id,
            "POST",
            "/crm/v3/objects/contacts/gdpr-delete",
            route="/crm/v3/objects/{objectType}/gdpr-delete",
            json=body,
            links=links,
            records=1,
        )
        if response.status in (200, 204):
            outcome = Outcome(writer_pb2.WRITE_STATUS_SUCCEEDED, hubspot_id=r.id if not r.id_property else "")
            result = "deleted"
        elif response.status == 404:
            outcome = Outcome(writer_pb2.WRITE_STATUS_SUCCEEDED)
            result = "not_found"
        else:
            e = response.error()
            failure = HubSpotFailure(response.status, e["message"], e["category"], e["correlation_id"])
            dl = await self.dlq.add(portal_id, write, failure, 1, trace_id)
            outcome = Outcome(writer_pb2.WRITE_STATUS_DEAD_LETTERED, error=failure, dead_letter_id=dl)
            result = "failed"
        await self._audit_gdpr(portal_id, r, result, response.status, trace_id)
        return outcome

    async def _audit_gdpr(
        self, portal_id: int, r: writer_pb2.RecordWrite, result: str, http_status: int, trace_id: str
    ) -> None:
        # The value a contact was named by (an email) is personal data: only its digest is kept.
        digest = hashlib.sha256(unique_value(r.id_property, r.id).encode()).hexdigest()
        entry = {
            "at_ms": str(int(time.time() * 1000)),
            "object_type": r.object_type,
            "id_property": r.id_property or "hs_object_id",
            "hubspot_id": r.id if not r.id_property else "",
            "id_sha256": digest,
            "result": result,
            "http_status": str(http_status),
            "trace_id": trace_id,
        }
        await self.redis.xadd(
            writer_gdpr_audit_key(portal_id),
            entry,  # type: ignore[arg-type]
            maxlen=GDPR_AUDIT_MAXLEN,
            approximate=True,
        )
        audit_log.info("gdpr delete", extra={"portal": portal_id, **entry})

    async def _hold_ambiguous(self, portal_id: int, write: writer_pb2.Write, trace_id: str) -> Outcome:
        """Dead-letter a create whose earlier attempt was cut off after it may have gone out.

        The writer stopped after the create may have reached HubSpot: sending it again could
        make a second record, HubSpot has no idempotency key for creates. It goes to the
        dead-letter queue for a person to check and replay.
        """
        error = HubSpotFailure(
            0,
            "writer stopped while this create may have been in flight; HubSpot may hold the record "
            "already. Check, then replay it (to create) or purge it.",
            category="AMBIGUOUS_CREATE",
        )
        entry = await self.dlq.add(portal_id, write, error, attempts=1, trace_id=trace_id)
        return Outcome(writer_pb2.WRITE_STATUS_DEAD_LETTERED, error=error, dead_letter_id=entry)

    async def _unchanged(
        self, portal_id: int, writes: Sequence[writer_pb2.Write], indexes: list[int]
    ) -> dict[int, Outcome]:
        """Find the upserts whose every property equals what writer last wrote to the record.

        Within the written-values record's life: answered UNCHANGED, not sent. Off by default: a
        change made in HubSpot since our write is not seen here (mapper's fingerprints are the
        primary unchanged check).
        """
        upserts = [n for n in indexes if writes[n].record.operation == UPSERT]
        if not upserts:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in upserts:
                r = writes[n].record
                pipe.get(id_key(portal_id, r.object_type, r.id_property, r.id))
            ids: list[Any] = await pipe.execute()
        known = [(n, i.decode()) for n, i in zip(upserts, ids, strict=True) if i]
        if not known:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for n, hs_id in known:
                pipe.hgetall(written_key(portal_id, writes[n].record.object_type, hs_id))
            values: list[Any] = await pipe.execute()
        out: dict[int, Outcome] = {}
        for (n, hs_id), stored in zip(known, values, strict=True):
            before = {k.decode(): v.decode() for k, v in stored.items()}
            if before and all(before.get(k) == v for k, v in writes[n].record.properties.items()):
                out[n] = Outcome(writer_pb2.WRITE_STATUS_UNCHANGED, hubspot_id=hs_id)
        return out

    async def _associate(self, run: _Run, indexes: list[int]) -> None:
        """One stage of associations, their ends named by id or resolved by unique value."""
        portal_id, writes, known, outcomes = run.portal_id, run.writes, run.known, run.outcomes
        links, trace_id = run.links, run.trace_id
        # Ends named by unique value that this submission did not write: read them from HubSpot.
        ends = []
        for n in indexes:
            a = writes[n].association
            ends.append((a.from_object_type, a.from_id, a.from_id_property))
            ends.append((a.to_object_type, a.to_id, a.to_id_property))
        await self._learn_ids(portal_id, ends, known)
        futures: list[tuple[int, asyncio.Future[Outcome]]] = []
        for n in indexes:
            a = writes[n].association
            from_id = (
                known.get(_named(a.from_object_type, a.from_id_property, a.from_id))
                if a.from_id_property
                else a.from_id
            )
            to_id = (
                known.get(_named(a.to_object_type, a.to_id_property, a.to_id))
                if a.to_id_property
                else a.to_id
            )
            if not from_id or not to_id:
                which = "from" if not from_id else "to"
                failure = HubSpotFailure(
                    404, f"association's {which} record does not exist in HubSpot", "OBJECT_NOT_FOUND"
                )
                outcomes[n] = await self._refuse(portal_id, writes[n], failure, trace_id)
                continue
            pair = (a.from_object_type, a.to_object_type)
            ref = _reference(pair)
            if ref is not None:
                # A property of one end (a line item's hs_product_id): an update of that record.
                record_type, prop, _ = ref
                holder, target = (from_id, to_id) if pair[0] == record_type else (to_id, from_id)
                key = BatchKey(portal_id, record_type, BatchOp.UPDATE)
                item = BatchInput(
                    holder,
                    holder,
                    {prop: "" if a.remove else target},
                    [writes[n]],
                    list(links),
                    [],
                    [trace_id],
                )
                futures.append((n, self.coalescer.submit(key, item)))
                continue
            type_id, category = 0, "HUBSPOT_DEFINED"
            if a.remove and not a.association_type_id and not a.association_label:
                op = BatchOp.DISSOCIATE_ALL
            else:
                op = BatchOp.DISSOCIATE_TYPE if a.remove else BatchOp.ASSOCIATE
                try:
                    t = await self.reader.types.association_type(
                        portal_id, pair[0], pair[1], a.association_type_id, a.association_label
                    )
                except LookupError as exc:
                    failure = HubSpotFailure(400, str(exc), "VALIDATION_ERROR")
                    outcomes[n] = await self._refuse(portal_id, writes[n], failure, trace_id)
                    continue
                type_id, category = t.type_id, t.category
            key = BatchKey(portal_id, f"{pair[0]}/{pair[1]}", op)
            item = BatchInput(
                f"{from_id}:{to_id}:{type_id}",
                from_id,
                {},
                [writes[n]],
                list(links),
                [],
                [trace_id],
                to_id=to_id,
                type_id=type_id,
                category=category,
            )
            futures.append((n, self.coalescer.submit(key, item)))
        results = await asyncio.gather(*(f for _, f in futures))
        for (n, _), outcome in zip(futures, results, strict=True):
            outcomes[n] = outcome

    async def _refuse(
        self, portal_id: int, write: writer_pb2.Write, failure: HubSpotFailure, trace_id: str
    ) -> Outcome:
        dl = await self.dlq.add(portal_id, write, failure, 0, trace_id)
        return Outcome(writer_pb2.WRITE_STATUS_DEAD_LETTERED, error=failure, dead_letter_id=dl)

    async def _pilot(self, portal_id: int, writes: Sequence[writer_pb2.Write]) -> list[Outcome]:
        """Pilot mode: log each write with its diff against what writer last wrote; send nothing."""
        out = []
        for w in writes:
            if w.WhichOneof("kind") == "record":
                r = w.record
                before: Any = {}
                if r.operation == UPDATE:
                    before = await self.redis.hgetall(written_key(portal_id, r.object_type, r.id))
                old = {k.decode(): v.decode() for k, v in before.items()}
                diff = {k: {"from": old.get(k), "to": v} for k, v in r.properties.items() if old.get(k) != v}
                log.info(
                    "pilot mode: write not sent",
                    extra={
                        "portal": portal_id,
                        "object_type": r.object_type,
                        "operation": writer_pb2.WriteOperation.Name(r.operation),
                        "id": r.id,
                        "diff": diff,
                    },
                )
            else:
                a = w.association
                log.info(
                    "pilot mode: association not sent",
                    extra={
                        "portal": portal_id,
                        "from": f"{a.from_object_type}/{a.from_id}",
                        "to": f"{a.to_object_type}/{a.to_id}",
                    },
                )
            out.append(Outcome(writer_pb2.WRITE_STATUS_SKIPPED_PILOT))
        return out


def _current_link() -> list[Link]:
    ctx = trace.get_current_span().get_span_context()
    return [Link(ctx)] if ctx.is_valid else []


def _named(object_type: str, id_property: str, value: str) -> tuple[str, str, str]:
    """How ``known`` names a record: (type, id property, unique value as HubSpot compares it)."""
    return object_type, id_property, unique_value(id_property, value)
