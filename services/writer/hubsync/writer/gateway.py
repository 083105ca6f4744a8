"""Stage 2 of the write path: admission of a submission, and the other write-side commands.

:meth:`WriterGateway.submit` canonicalizes object types, validates, refuses writes to a portal
in read-only pilot, then either queues the submission (``wait=false``, :class:`WriteQueue`) or
claims its request id, stamps versions and hands it to the :class:`WriteSubmitter`. The queue's
consumer comes back through :meth:`WriterGateway.process_queued`. DLQ replay and the quota
status are here too: both read or feed the same queue.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from opentelemetry.trace import Link

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import FailedPrecondition
from hubsync.writer._ledger import Ledger
from hubsync.writer._results import result_list
from hubsync.writer.circuit import CircuitBreakers
from hubsync.writer.dlq import DeadLetterQueue
from hubsync.writer.objecttypes import ObjectTypes
from hubsync.writer.ordering import RecordVersions
from hubsync.writer.queue import WriteQueue
from hubsync.writer.ratelimit import RateLimiter
from hubsync.writer.submissions import WriteSubmitter, validate

__all__ = [
    "PilotLookup",
    "QuotaStatus",
    "WriterGateway",
]

log = logging.getLogger(__name__)

# A portal's read-only pilot in force: (reason, where it is set: "portal:<id>" or "tenant:<name>").
PilotLookup = Callable[[int], Awaitable[tuple[str, str] | None]]


async def _no_pilot(portal_id: int) -> None:
    return None


@dataclass(frozen=True)
class QuotaStatus:
    """A portal's quota, circuit and queues, as ``GetQuotaStatus`` answers them."""

    burst_limit: int
    burst_used: int
    burst_window_ms: int
    daily_limit: int
    daily_used: int
    hubspot_remaining: int
    circuit_state: int
    queued_writes: int
    dead_letters: int
    pilot_mode: bool


class WriterGateway:
    """Admits submissions (waited or queued), replays dead letters, reports quota status."""

    def __init__(
        self,
        submitter: WriteSubmitter,
        queue: WriteQueue,
        types: ObjectTypes,
        versions: RecordVersions,
        dlq: DeadLetterQueue,
        limiter: RateLimiter,
        breakers: CircuitBreakers,
        *,
        pilot_mode: bool = False,
        pilot_of: PilotLookup = _no_pilot,
    ) -> None:
        """Admit into ``submitter`` or ``queue``; the rest serves replay and quota status."""
        self.pilot_of = pilot_of
        self.submitter = submitter
        self.queue = queue
        self.types = types
        self.versions = versions
        self.dlq = dlq
        self.limiter = limiter
        self.breakers = breakers
        self.pilot_mode = pilot_mode

    async def submit(
        self, request: writer_pb2.SubmitWritesRequest, deadline: float | None
    ) -> writer_pb2.SubmitWritesResponse:
        """Queues the submission (``wait=false``) or writes it and answers per write."""
        # Object type names become canonical (custom objects by their 2-… id) before anything
        # is queued or keyed by them.
        await self.types.canonicalize(request.portal_id, request.writes)
        validate(request.writes)
        await self.refuse_in_pilot(request.portal_id)
        if not request.wait:
            return await self.queue.enqueue(request)
        previous = await self.queue.begin(request, deadline)
        if previous is not None:
            return previous
        # Accepted now: writes without a version take their place in the record's order here.
        await self.versions.stamp_now(request.portal_id, request.writes)
        try:
            outcomes = await self.submitter.process(request.portal_id, request.writes)
        except BaseException as exc:
            # Answered with the error's status by the servicer's host; said here too, so a
            # waited submission that was not written never goes unlogged.
            cancelled = isinstance(exc, asyncio.CancelledError)
            log.log(
                logging.INFO if cancelled else logging.WARNING,
                "waited submission ended by its caller" if cancelled else "waited submission failed",
                extra={
                    "portal": request.portal_id,
                    "writes": len(request.writes),
                    "error": type(exc).__name__,
                    "reason": getattr(exc, "reason", ""),
                },
            )
            await self.queue.finish(request, None)
            raise
        response = writer_pb2.SubmitWritesResponse(results=result_list(outcomes))
        await self.queue.finish(request, response)
        return response

    async def process_queued(
        self,
        portal_id: int,
        request: writer_pb2.SubmitWritesRequest,
        links: Sequence[Link],
        ledger: Ledger | None = None,
    ) -> None:
        """Write one entry of the durable queue (the consumer acks it when this returns)."""
        # Accepted before the pilot began: held (pending) until it ends, not sent, not lost.
        await self.refuse_in_pilot(portal_id)
        outcomes = await self.submitter.process(portal_id, request.writes, links, ledger)
        if request.request_id:
            response = writer_pb2.SubmitWritesResponse(results=result_list(outcomes))
            await self.queue.finish(request, response)

    async def refuse_in_pilot(self, portal_id: int) -> None:
        """Raise FAILED_PRECONDITION naming the pilot when the portal is read-only."""
        pilot = await self.pilot_of(portal_id)
        if pilot is None:
            return
        reason, layer = pilot
        why = f": {reason}" if reason else ""
        where, _, name = layer.partition(":")
        raise FailedPrecondition(
            f"portal {portal_id} is in read-only pilot (set on {layer}{why}); writes are refused, "
            f"reads still work; end it with `hubsync config set --{where} {name} pilot off`",
            reason="PORTAL_PILOT",
            metadata={"portal_id": str(portal_id), "pilot": layer},
        )

    async def replay(self, portal_id: int, ids: list[str], statuses: list[int], all_: bool) -> int:
        """Queues the selected dead letters again and removes them; returns how many."""
        entries = await self.dlq.select(portal_id, ids, statuses, all_)
        for entry in entries:
            request = writer_pb2.SubmitWritesRequest(
                request_id=f"replay:{entry.id}:{uuid.uuid4().hex[:8]}",
                portal_id=portal_id,
                writes=[entry.write],
            )
            await self.queue.enqueue(request)
            await self.dlq.remove(portal_id, [entry.id])
        return len(entries)

    async def quota_status(self, portal_id: int) -> QuotaStatus:
        """Return the portal's limits in force and their use, circuit state, queue and DLQ depth."""
        use = await self.limiter.usage(portal_id)
        limits = await self.limiter.limits(portal_id)
        return QuotaStatus(
            burst_limit=limits.burst,
            burst_used=use.burst_used,
            burst_window_ms=limits.window_ms,
            daily_limit=limits.daily,
            daily_used=use.daily_used,
            hubspot_remaining=use.hubspot_remaining,
            circuit_state=int(self.breakers.get(portal_id).state),
            queued_writes=await self.queue.depth(portal_id),
            dead_letters=await self.dlq.depth(portal_id),
            pilot_mode=self.pilot_mode or await self.pilot_of(portal_id) is not None,
        )
