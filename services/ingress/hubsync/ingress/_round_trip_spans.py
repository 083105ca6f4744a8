"""The spans of one round trip: the shared ``ingress.commit`` span and the submissions' own spans.

:func:`open_spans` runs right before the round trip: it opens each :class:`RequestSpan`, and one
``ingress.commit`` PRODUCER span (the root of its events' traces) if any submission joins it
(:class:`RoundTripSpan`), and sets the context each submission's entries carry. The returned
:class:`RoundTripSpans` closes them all once Redis answered, or failed. A failure to open spans
never keeps events out of Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from hubsync.ingress._submission import CallerContext, CommitOutcome, RoundTripSpan

if TYPE_CHECKING:
    from hubsync.ingress._submission import RequestSpan, Submission

__all__ = ["COMMIT_SPAN", "LISTED_IDS", "RoundTripSpans", "open_spans", "trace_context"]

log = logging.getLogger(__name__)
COMMIT_SPAN = "ingress.commit"
# The commit span lists the event and object ids of its first events only: tracing backends cap
# an attribute's size (Tempo's default is 2 KiB), and mapper's spans carry each event's ids.
LISTED_IDS = 100
_tracer = trace.get_tracer("hubsync.ingress")
_ROOT = Context()


def trace_context(span: trace.Span) -> CallerContext:
    """Return the W3C trace context of ``span`` (empty when it has none).

    Formatted as the ``TraceContextTextMapPropagator`` would, without its generic machinery.
    """
    context = span.get_span_context()
    if not context.is_valid:
        return CallerContext()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    return CallerContext(traceparent, context.trace_state.to_header() if context.trace_state else "")


class RoundTripSpans:
    """The spans :func:`open_spans` opened for one round trip.

    Closed by :meth:`succeeded` or :meth:`failed`.
    """

    __slots__ = ("commit", "grouped", "own")

    def __init__(
        self, commit: trace.Span | None, grouped: Sequence[Submission], own: Sequence[RequestSpan]
    ) -> None:
        self.commit = commit
        self.grouped = grouped
        self.own = own

    def succeeded(self, results: Mapping[Submission, list[CommitOutcome]]) -> None:
        """End every span: the events are in Redis; the commit span gets its outcome counts."""
        commit = self.commit
        if commit is not None:
            counts = [0, 0, 0]
            for sub in self.grouped:
                for outcome in results[sub]:
                    counts[outcome] += 1
            commit.set_attributes(
                {
                    "hubsync.accepted": counts[CommitOutcome.ACCEPTED],
                    "hubsync.duplicates": counts[CommitOutcome.DUPLICATE],
                    "hubsync.echoes": counts[CommitOutcome.ECHO],
                }
            )
            commit.end()
        for span in self.own:
            span.close(None)

    def failed(self, reason: str) -> None:
        """End every span as an error: Redis did not take the events (``reason`` says why)."""
        if self.commit is not None:
            self.commit.set_status(StatusCode.ERROR, reason)
            self.commit.end()
        for span in self.own:
            span.close(reason)


def open_spans(batch: Sequence[Submission]) -> RoundTripSpans:
    """Open the round trip's spans and sets the context each submission's entries carry.

    Args:
        batch: The round trip's submissions, in order.

    Returns:
        The spans to close once Redis answered. When opening one fails, the submissions not
        traced yet carry no context (tracing must not keep events out of Redis), and every
        request span is still closed.

    """
    grouped: list[Submission] = []
    # The earliest grouped request's arrival starts the commit span.
    received: list[int] = []
    own: list[tuple[Submission, RequestSpan]] = []
    for sub in batch:
        tracing = sub.tracing
        if isinstance(tracing, RoundTripSpan):
            grouped.append(sub)
            if tracing.received_ns:
                received.append(tracing.received_ns)
        elif not isinstance(tracing, CallerContext):
            own.append((sub, tracing))
    commit: trace.Span | None = None
    try:
        for sub, span in own:
            sub.context = span.open()
        if grouped:
            commit = _start_commit_span(grouped, min(received) if received else None)
            context = trace_context(commit)
            for sub in grouped:
                sub.context = context
    except Exception:
        log.exception("could not open the round trip's spans; committing without them")
    return RoundTripSpans(commit, grouped if commit is not None else (), [span for _sub, span in own])


def _start_commit_span(grouped: Sequence[Submission], start_ns: int | None) -> trace.Span:
    events = [event for sub in grouped for event in sub.events]
    portals = sorted({event.portal_id for event in events})
    attributes: dict[str, AttributeValue] = {
        "hubsync.request_count": len(grouped),
        "hubsync.event_count": len(events),
        "hubsync.portal_id": portals[0] if len(portals) == 1 else portals,
        "hubsync.event_id": [event.event_id for event in events[:LISTED_IDS]],
        "hubsync.object_id": [event.object_id for event in events[:LISTED_IDS]],
    }
    return _tracer.start_span(
        COMMIT_SPAN,
        context=_ROOT,
        kind=SpanKind.PRODUCER,
        attributes=attributes,
        start_time=start_ns,
    )
