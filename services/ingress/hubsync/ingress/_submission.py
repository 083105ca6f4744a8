"""What a caller hands the committer (events, their origin, how they are traced) and gets back.

Every stream entry stores a W3C trace context. Which one is the submission's :data:`Tracing`,
one of three modes:

- :class:`CallerContext`: the entries carry the context given (a replay tool's, a caller's
  ``traceparent``), or none; no span is opened.
- :class:`RoundTripSpan`: the submission joins its round trip's ``ingress.commit`` span, shared by
  every such submission of the round trip (HubSpot's webhook requests, which bring no context).
- :class:`RequestSpan`: the submission has a span of its own (a request's server span), which the
  flusher opens right before the round trip and closes right after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from hubsync.ingress.events import WebhookEvent

__all__ = [
    "NO_CONTEXT",
    "CallerContext",
    "CommitOutcome",
    "RequestSpan",
    "RoundTripSpan",
    "Submission",
    "Tracing",
]


class CommitOutcome(IntEnum):
    """What became of one submitted event (the enqueue script answers its digit)."""

    ACCEPTED = 0
    DUPLICATE = 1
    ECHO = 2


@dataclass(slots=True, frozen=True)
class CallerContext:
    """A W3C trace context the entries carry as they are; empty strings: none."""

    traceparent: str = ""
    tracestate: str = ""

    @classmethod
    def of(cls, carrier: Mapping[str, str]) -> CallerContext:
        """Return the context in a carrier's ``traceparent`` and ``tracestate`` (either may be absent)."""
        return cls(carrier.get("traceparent", ""), carrier.get("tracestate", ""))


#: Entries that carry no trace context.
NO_CONTEXT = CallerContext()


class RoundTripSpan:
    """Join the round trip's ``ingress.commit`` span.

    The span starts when the earliest joined request arrived (``received_ns``, epoch ns; 0:
    unknown).
    """

    __slots__ = ("received_ns",)

    def __init__(self, received_ns: int = 0) -> None:
        self.received_ns = received_ns


class RequestSpan(Protocol):
    """A submission's own span, opened and closed by the flusher for a whole round trip in one loop.

    Opening the spans right before the round trip and closing them right after, one submission
    after another, keeps the tracing code hot in the CPU caches: interleaved with the HTTP and
    Redis work of each request, the same spans cost several times as much (``bench/ingress``).
    """

    def open(self) -> CallerContext:
        """Start the span; returns the W3C trace context the submission's entries carry."""
        ...

    def close(self, error: str | None) -> None:
        """End the span: the events are in Redis (``error`` None) or not (``error`` says why)."""
        ...


#: How a submission's entries are traced: exactly one of the three modes.
Tracing = CallerContext | RoundTripSpan | RequestSpan


@dataclass(slots=True, eq=False)
class Submission:
    """One caller's events waiting for (or in) a round trip."""

    events: Sequence[WebhookEvent]
    # ``webhook`` | ``reconcile`` | ``replay``: stored with each entry, and only webhooks are
    # counted in the webhook outcome metrics.
    origin: str
    tracing: Tracing
    future: asyncio.Future[list[CommitOutcome]]
    # ``time.perf_counter()`` when the request arrived (0: not timed): its accept duration is
    # recorded once Redis has the events.
    started: float
    # Echoes the endpoint recognised by their source: journaled as echoes, never enqueued.
    own_echoes: Sequence[WebhookEvent]
    # The context the entries carry: the caller's, or set when the round trip's spans open.
    context: CallerContext = NO_CONTEXT

    def size(self) -> int:
        """How many events the submission adds to a round trip (echoes included)."""
        return len(self.events) + len(self.own_echoes)
