"""One batch of a portal's inbound entries → feed changes: coalesce, hydrate, sort, publish.

A batch's entries are coalesced into per-record changes (:mod:`hubsync.mapper.inbound_events`),
the records read back through writer (:mod:`hubsync.mapper.hydrate`), and each change's read
sorted by what its failure means: none (published), transient (its entries are retried),
permanent (dead-lettered now) or counted (dead-lettered after ``max_attempts``). The changes, the
dead letters and the ack of the input are one transaction (:mod:`hubsync.mapper.publish`). A
portal whose connection is unusable, or whose daily HubSpot quota is spent, has the whole batch
parked instead (``park``; no retry here, no warning per batch).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from redis.asyncio import Redis

from hubsync.core.keys import INBOUND_DLQ_PORTALS_KEY
from hubsync.mapper import inbound_queues as queues
from hubsync.mapper.hydrate import COUNTED, PERMANENT, TRANSIENT, Hydrator, PortalBlocked, PortalUnusable
from hubsync.mapper.inbound_events import ParsedEntry, RecordChange, coalesce
from hubsync.mapper.publish import DeadLetter, Publisher, Source
from hubsync.mapper.transforms import MappingSet

__all__ = ["BatchOutcome", "BatchProcessor", "BatchResult", "Park"]

log = logging.getLogger("hubsync.mapper.inbound")
tracer = trace.get_tracer("hubsync.mapper")
_meter = metrics.get_meter("hubsync.mapper")
_dead_events = _meter.create_counter(
    "hubsync.mapper.inbound.dead_letters", description="Inbound events dead-lettered"
)

# Parks a batch of a portal whose connection is unusable or whose daily quota is spent
# (portal, source, entries, why: a PortalBlocked says until when).
Park = Callable[[str, Source, list[ParsedEntry], PortalUnusable], Awaitable[None]]


class BatchOutcome(enum.Enum):
    """What became of a batch."""

    DONE = "done"
    PARKED = "parked"
    # Some entries stay (a transient failure): retried later.
    PARTIAL = "partial"


@dataclass(frozen=True)
class BatchResult:
    """A batch's outcome, and the entries left to retry (``PARTIAL`` only)."""

    outcome: BatchOutcome
    left: list[ParsedEntry] = field(default_factory=list)
    # PARKED because the portal's daily quota is spent: when it may be read again (Unix ms).
    until_ms: int | None = None


class BatchProcessor:
    """Turns one portal's entries into feed changes and finishes them, atomically."""

    def __init__(
        self,
        redis: Redis,
        mappings: Callable[[str], Awaitable[MappingSet]],
        hydrator: Hydrator,
        publisher: Publisher,
        *,
        max_attempts: int,
        park: Park,
    ) -> None:
        """Set up the processor.

        Args:
            redis: The client (failure counts, the dead-letter portal set).
            mappings: A portal's mappings (default and overrides), one snapshot per batch.
            hydrator: Reads the changed records back through writer.
            publisher: Publishes changes, dead letters and the ack in one transaction.
            max_attempts: Counted failures of an entry before it is dead-lettered.
            park: Parks a batch of a portal whose connection is unusable.
        """
        self.redis = redis
        self.mappings = mappings
        self.hydrator = hydrator
        self.publisher = publisher
        self.max_attempts = max_attempts
        self.park = park
        self.batches = 0

    async def process(self, portal: str, source: Source, entries: list[ParsedEntry]) -> BatchResult:
        """Process one batch; parks it when the portal's connection is unusable.

        Returns:
            ``DONE``, ``PARKED`` or ``PARTIAL`` with the entries left (a transient failure:
            retry them).
        """
        self.batches += 1
        # The portal's mappings (default + overrides), one snapshot for the whole batch.
        mappings = await self.mappings(portal)
        batch = coalesce(entries, mappings)
        spans = {c.key: _start_span(portal, c) for c in batch.changes}
        try:
            try:
                hydration = await self.hydrator.hydrate(portal, batch.changes, mappings, spans)
            except PortalUnusable as exc:
                await self.park(portal, source, entries, exc)
                until = exc.until_ms if isinstance(exc, PortalBlocked) else None
                return BatchResult(BatchOutcome.PARKED, until_ms=until)
            ok: list[RecordChange] = []
            retry: list[RecordChange] = []
            counted: list[RecordChange] = []
            dead = [DeadLetter(e, e.reason, e.detail, 1) for e in batch.dead]
            for c in batch.changes:
                failure = hydration.failure_of(c)
                if failure is None:
                    ok.append(c)
                elif failure.kind == TRANSIENT:
                    retry.append(c)
                elif failure.kind == PERMANENT:
                    dead += [DeadLetter(e, failure.reason, failure.detail, 1) for e in _entries(c, entries)]
                else:
                    assert failure.kind == COUNTED
                    counted.append(c)
            if counted:
                ids = [i for c in counted for i in c.entry_ids]
                counts = dict(zip(ids, await queues.count_failures(self.redis, portal, ids), strict=True))
                for c in counted:
                    failure = hydration.failure_of(c)
                    assert failure is not None
                    if max(counts[i] for i in c.entry_ids) >= self.max_attempts:
                        dead += [
                            DeadLetter(e, failure.reason, failure.detail, counts[e.id])
                            for e in _entries(c, entries)
                        ]
                    else:
                        retry.append(c)
            await self.publisher.publish(
                portal, source, ok, hydration, mappings, finished=batch.done, dead=dead
            )
            if dead:  # the depth gauge looks at portals with dead letters only
                await self.redis.sadd(INBOUND_DLQ_PORTALS_KEY, portal)
            for d in dead:
                _dead_events.add(1, {"reason": d.reason})
                log.warning(
                    "inbound event dead-lettered",
                    extra={"portal": portal, "reason": d.reason, "detail": d.detail[:200]},
                )
            left = [e for c in retry for e in _entries(c, entries)]
            return BatchResult(BatchOutcome.PARTIAL, left) if left else BatchResult(BatchOutcome.DONE)
        finally:
            for span in spans.values():
                span.end()


def _start_span(portal: str, change: RecordChange) -> trace.Span:
    """The ``mapper.inbound`` span of one change: child of its first event's context, linked to
    the others' (coalesced events)."""
    parent = change.contexts[0] if change.contexts else None
    links = []
    for ctx in change.contexts[1:]:
        sc = trace.get_current_span(ctx).get_span_context()
        if sc.is_valid:
            links.append(trace.Link(sc))
    return tracer.start_span(
        "mapper.inbound",
        context=parent,
        links=links,
        attributes={
            "hubsync.portal_id": portal,
            "hubsync.object_type": change.object_type,
            "hubsync.object_id": change.object_id,
            "hubsync.coalesced_events": max(len(change.contexts), 1),
        },
    )


def _entries(change: RecordChange, entries: list[ParsedEntry]) -> list[ParsedEntry]:
    ids = set(change.entry_ids)
    return [e for e in entries if e.id in ids]
