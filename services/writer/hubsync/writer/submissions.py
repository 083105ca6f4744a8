"""One caller's submission: validated, ordered (companies → contacts → deals → associations),
fed to the batcher, answered with a result per write.

An association waits for both ends: ends given by unique value are resolved from this
submission's own upserts or read from HubSpot; an end that does not exist (or whose write was
dead-lettered) dead-letters the association with a 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import InvalidArgument
from hubsync.core.keys import written_key
from hubsync.core.telemetry import trace_id_hex
from hubsync.writer.batches import (
    ARCHIVE,
    ASSOCIATE,
    CREATE,
    UPDATE,
    UPSERT,
    BatchInput,
    BatchKey,
    Outcome,
    WriteBatcher,
    id_key,
)
from hubsync.writer.dlq import DeadLetterQueue, HubSpotFailure
from hubsync.writer.reads import OBJECT_TYPES, RecordReader
from hubsync.writer.results import outcome_from_pb, result_pb

log = logging.getLogger(__name__)

ORDER = {"companies": 0, "contacts": 1, "deals": 2}
# Default association type ids (HUBSPOT_DEFINED), reference §4.
DEFAULT_ASSOCIATION_TYPES = {
    ("contacts", "companies"): 279,
    ("companies", "contacts"): 280,
    ("deals", "contacts"): 3,
    ("contacts", "deals"): 4,
    ("deals", "companies"): 341,
    ("companies", "deals"): 342,
}
MAX_WRITES = 10_000


def validate(writes: Sequence[writer_pb2.Write]) -> None:
    """Raises InvalidArgument naming every bad field."""
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
            if r.object_type not in OBJECT_TYPES:
                v[f"{p}.record.object_type"] = f"must be one of {', '.join(OBJECT_TYPES)}"
            if r.operation == writer_pb2.WRITE_OPERATION_UNSPECIFIED or r.operation not in (
                UPSERT,
                CREATE,
                UPDATE,
                ARCHIVE,
            ):
                v[f"{p}.record.operation"] = "required"
            if r.operation in (UPSERT, UPDATE, ARCHIVE) and not r.id:
                v[f"{p}.record.id"] = "required for upsert, update and archive"
            if r.operation == UPSERT and not r.id_property:
                v[f"{p}.record.id_property"] = "required for upsert"
            if r.operation in (UPSERT, CREATE, UPDATE) and not r.properties:
                v[f"{p}.record.properties"] = "at least one property"
            if r.operation in (UPDATE, ARCHIVE) and r.id and not r.id.isdigit():
                v[f"{p}.record.id"] = "must be a HubSpot id (digits)"
        else:
            a = w.association
            for end in ("from", "to"):
                if getattr(a, f"{end}_object_type") not in OBJECT_TYPES:
                    v[f"{p}.association.{end}_object_type"] = f"must be one of {', '.join(OBJECT_TYPES)}"
                ident = getattr(a, f"{end}_id")
                if not ident:
                    v[f"{p}.association.{end}_id"] = "required"
                elif not getattr(a, f"{end}_id_property") and not ident.isdigit():
                    v[f"{p}.association.{end}_id"] = "a HubSpot id (digits) unless the id property is set"
            pair = (a.from_object_type, a.to_object_type)
            if (
                a.association_type_id == 0
                and pair not in DEFAULT_ASSOCIATION_TYPES
                and not any(k.startswith(f"{p}.association") for k in v)
            ):
                v[f"{p}.association.association_type_id"] = "required: no default for this pair"
    if v:
        raise InvalidArgument("invalid writes", violations=v)


class Ledger:
    """What earlier attempts of one queued request finished (``hubsync:{p}:writes:ledger:<entry>``):
    each write's outcome once its tier is done, and whether an attempt was cut off mid-flight
    (started, neither finished nor stopped cleanly before sending)."""

    TTL_S = 7 * 86_400

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key
        self.finished: dict[int, Outcome] = {}
        self.interrupted = False

    async def begin(self) -> Ledger:
        stored: Any = await self.redis.hgetall(self.key)  # type: ignore[misc]
        self.interrupted = stored.get(b"inflight") == b"1"
        for field_name, raw in stored.items():
            if field_name.startswith(b"w:"):
                self.finished[int(field_name[2:])] = outcome_from_pb(writer_pb2.WriteResult.FromString(raw))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, "inflight", "1")
            pipe.expire(self.key, self.TTL_S)
            await pipe.execute()
        return self

    async def record(self, outcomes: dict[int, Outcome]) -> None:
        if outcomes:
            await self.redis.hset(  # type: ignore[misc]
                self.key, mapping={f"w:{n}": result_pb(o).SerializeToString() for n, o in outcomes.items()}
            )

    async def stopped_before_sending(self) -> None:
        """The attempt gave up on a refusal raised before its calls went out (circuit open, no
        quota): nothing of it is in flight."""
        await self.redis.hset(self.key, "inflight", "0")  # type: ignore[misc]

    async def close(self) -> None:
        await self.redis.delete(self.key)


class WriteSubmitter:
    def __init__(
        self,
        batcher: WriteBatcher,
        reader: RecordReader,
        dlq: DeadLetterQueue,
        redis: Redis,
        *,
        pilot_mode: bool = False,
        skip_unchanged: bool = False,
    ) -> None:
        self.batcher = batcher
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
        """Writes everything in order; returns one outcome per write. With a ``ledger`` (a queued
        request being retried) writes finished by an earlier attempt are not sent again, and
        creates an interrupted attempt may have sent are dead-lettered instead of doubled."""
        if self.pilot_mode:
            return await self._pilot(portal_id, writes)
        span_links = list(links) or _current_link()
        trace_id = trace_id_hex()
        outcomes: list[Outcome | None] = [None] * len(writes)
        if ledger is not None:
            for n, outcome in ledger.finished.items():
                if n < len(outcomes):
                    outcomes[n] = outcome
        known: dict[tuple[str, str, str], str] = {}  # (type, id_property, value) → HubSpot id
        tiers: dict[int, list[int]] = {}
        assoc: list[int] = []
        for n, w in enumerate(writes):
            if w.WhichOneof("kind") == "record":
                tiers.setdefault(ORDER.get(w.record.object_type, 3), []).append(n)
            else:
                assoc.append(n)
        for tier in sorted(tiers):
            futures = []
            unchanged = await self._unchanged(portal_id, writes, tiers[tier]) if self.skip_unchanged else {}
            for n, outcome in unchanged.items():
                outcomes[n] = outcome
                r = writes[n].record
                known[(r.object_type, r.id_property, _norm(r.id_property, r.id))] = outcome.hubspot_id
            for n in tiers[tier]:
                if n in unchanged or outcomes[n] is not None:
                    continue
                r = writes[n].record
                if ledger is not None and ledger.interrupted and r.operation == CREATE:
                    outcomes[n] = await self._hold_ambiguous(portal_id, writes[n], trace_id)
                    continue
                key = BatchKey(
                    portal_id, r.object_type, r.operation, r.id_property if r.operation == UPSERT else ""
                )
                dedupe = f"{r.id}" if r.operation != CREATE else f"new:{id(writes[n])}:{n}"
                if r.operation == UPSERT and r.id_property == "email":
                    dedupe = r.id.lower()
                item = BatchInput(
                    dedupe,
                    r.id,
                    dict(r.properties),
                    [writes[n]],
                    list(span_links),
                    [],
                    [trace_id],
                    versions=dict.fromkeys(r.properties, r.version),
                )
                futures.append(self.batcher.submit(key, item))
            # Every batch of the tier is waited for, even when one fails: a batch that went out
            # is recorded as finished before the failure is raised, so a retry of the queued
            # request does not send it (its creates) again.
            results = await asyncio.gather(*futures, return_exceptions=True)
            sent = [n for n in tiers[tier] if n not in unchanged and outcomes[n] is None]
            failure: BaseException | None = None
            for n, result in zip(sent, results, strict=True):
                if isinstance(result, BaseException):
                    failure = failure or result
                    continue
                outcomes[n] = result
                r = writes[n].record
                if result.hubspot_id and r.operation == UPSERT:
                    known[(r.object_type, r.id_property, _norm(r.id_property, r.id))] = result.hubspot_id
            if ledger is not None:
                await ledger.record({n: o for n in tiers[tier] if (o := outcomes[n]) is not None})
            if failure is not None:
                raise failure
        if assoc:
            await self._associate(portal_id, writes, assoc, known, outcomes, span_links, trace_id)
        return [o if o is not None else Outcome(writer_pb2.WRITE_STATUS_UNSPECIFIED) for o in outcomes]

    async def _hold_ambiguous(self, portal_id: int, write: writer_pb2.Write, trace_id: str) -> Outcome:
        """A create whose earlier attempt was cut off (the writer stopped) after it may have
        reached HubSpot: sending it again could make a second record, HubSpot has no idempotency
        key for creates. It goes to the dead-letter queue for a person to check and replay."""
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
        """Upserts whose every property equals what writer last wrote to that record (within
        the written-values record's life): answered UNCHANGED, not sent. Off by default: a
        change made in HubSpot since our write is not seen here (mapper's fingerprints are the
        primary unchanged check)."""
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

    async def _associate(
        self,
        portal_id: int,
        writes: Sequence[writer_pb2.Write],
        indexes: list[int],
        known: dict[tuple[str, str, str], str],
        outcomes: list[Outcome | None],
        links: list[Link],
        trace_id: str,
    ) -> None:
        # Ends named by unique value that this submission did not write: read them from HubSpot.
        wanted: dict[tuple[str, str], set[str]] = {}
        for n in indexes:
            a = writes[n].association
            for t, i, p in (
                (a.from_object_type, a.from_id, a.from_id_property),
                (a.to_object_type, a.to_id, a.to_id_property),
            ):
                if p and (t, p, _norm(p, i)) not in known:
                    wanted.setdefault((t, p), set()).add(i)
        for (t, p), values in wanted.items():
            records, _missing = await self.reader.read(
                portal_id, t, sorted(values), id_property=p, properties=[p]
            )
            for rec in records:
                value = rec.properties.get(p, "")
                if value:
                    known[(t, p, _norm(p, value))] = rec.id
        futures: list[tuple[int, asyncio.Future[Outcome]]] = []
        for n in indexes:
            a = writes[n].association
            from_id = (
                known.get((a.from_object_type, a.from_id_property, _norm(a.from_id_property, a.from_id)))
                if a.from_id_property
                else a.from_id
            )
            to_id = (
                known.get((a.to_object_type, a.to_id_property, _norm(a.to_id_property, a.to_id)))
                if a.to_id_property
                else a.to_id
            )
            if not from_id or not to_id:
                which = "from" if not from_id else "to"
                failure = HubSpotFailure(
                    404, f"association's {which} record does not exist in HubSpot", "OBJECT_NOT_FOUND"
                )
                dl = await self.dlq.add(portal_id, writes[n], failure, 0, trace_id)
                outcomes[n] = Outcome(writer_pb2.WRITE_STATUS_DEAD_LETTERED, error=failure, dead_letter_id=dl)
                continue
            type_id = (
                a.association_type_id or DEFAULT_ASSOCIATION_TYPES[(a.from_object_type, a.to_object_type)]
            )
            key = BatchKey(portal_id, f"{a.from_object_type}/{a.to_object_type}", ASSOCIATE)
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
            )
            futures.append((n, self.batcher.submit(key, item)))
        results = await asyncio.gather(*(f for _, f in futures))
        for (n, _), outcome in zip(futures, results, strict=True):
            outcomes[n] = outcome

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


def _norm(id_property: str, value: str) -> str:
    return value.lower() if id_property == "email" else value


def _current_link() -> list[Link]:
    ctx = trace.get_current_span().get_span_context()
    return [Link(ctx)] if ctx.is_valid else []
