"""Durable enqueue with group commit: one Redis round trip for many concurrent requests.

Each caller hands its events to :meth:`EventCommitter.submit` and waits. A single flusher takes
everything queued and runs the round trip through its stages:

1. :func:`~hubsync.ingress._round_trip_spans.open_spans`: the submissions' spans and the shared
   ``ingress.commit`` span, so every entry carries its trace context (:data:`Tracing`);
2. :meth:`EventAppender.append <hubsync.ingress._append.EventAppender.append>`: one call of the
   enqueue script per portal (:mod:`hubsync.ingress._enqueue_script`: dedupe by
   :mod:`hubsync.ingress._dedupe`, echo check, XADD, retention), all in one pipeline;
3. :func:`hubsync.ingress.metrics.record_round_trip`: the outcome counters and accept durations,
   once per round trip;
4. the spans closed, and the waiting callers woken with their outcomes.

While one round trip is in flight the next group gathers, so under load a round trip carries
many requests; alone, a request waits for none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from hubsync.ingress import metrics
from hubsync.ingress._append import ENTRY_FORMATS, EntryFormat, EventAppender, echo_record
from hubsync.ingress._round_trip_spans import COMMIT_SPAN, LISTED_IDS, open_spans, trace_context
from hubsync.ingress._submission import (
    NO_CONTEXT,
    CallerContext,
    CommitOutcome,
    RequestSpan,
    RoundTripSpan,
    Submission,
    Tracing,
)
from hubsync.ingress.events import WebhookEvent

__all__ = [
    "COMMIT_SPAN",
    "ENTRY_FORMATS",
    "LISTED_IDS",
    "NO_CONTEXT",
    "CallerContext",
    "CommitOutcome",
    "EnqueueFailed",
    "EntryFormat",
    "EventAppender",
    "EventCommitter",
    "RequestSpan",
    "RoundTripSpan",
    "Tracing",
    "echo_record",
    "trace_context",
]


class EnqueueFailed(Exception):
    """Redis did not take the events (down, slow, full): the sender should retry later."""


class EventCommitter:
    """Queues events from concurrent requests and commits them to Redis in groups."""

    def __init__(
        self, appender: EventAppender, *, timeout_s: float, window_s: float = 0.0, max_events: int = 2000
    ) -> None:
        """Set up the committer; the flusher starts with the first submission.

        Args:
            appender: Appends a round trip's events to Redis (dedupe, echoes, retention).
            timeout_s: How long a round trip may take before its callers get :class:`EnqueueFailed`.
            window_s: Extra wait for a group to fill (0: one loop turn).
            max_events: Most events in one round trip.

        """
        self._appender = appender
        self.timeout_s = timeout_s
        self.window_s = window_s
        self.max_events = max_events
        self._queue: list[Submission] = []
        self._queued_events = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        # Statistics for benchmarks and tests: round trips and submissions they carried.
        self.round_trips = 0
        self.submissions = 0

    async def submit(
        self,
        events: Sequence[WebhookEvent],
        *,
        origin: str = "webhook",
        tracing: Tracing = NO_CONTEXT,
        started: float = 0.0,
        own_echoes: Sequence[WebhookEvent] = (),
    ) -> list[CommitOutcome]:
        """Commit ``events`` (deduped, echoes dropped); returns one outcome per event.

        Args:
            events: The events to store, of any portals.
            origin: What the entries say brought them: ``webhook``, ``reconcile``, ``replay``.
            tracing: The trace context the entries carry (see :data:`Tracing`); a
                :class:`RequestSpan` is closed before this returns, unless this raises before the
                round trip.
            started: A ``time.perf_counter()``: the time until Redis has the events is recorded
                as ``hubsync.webhook.accept.duration`` (0: not recorded).
            own_echoes: Events of hubsync's own writes, recognised by their source: only
                journaled as echoes; they get no outcome.

        Returns:
            One :class:`CommitOutcome` per event of ``events``, in order.

        Raises:
            EnqueueFailed: Redis could not take the events within the timeout, or the committer
                is closed.

        """
        if self._closed:
            raise EnqueueFailed("ingress is shutting down")
        loop = asyncio.get_running_loop()
        context = tracing if isinstance(tracing, CallerContext) else NO_CONTEXT
        sub = Submission(events, origin, tracing, loop.create_future(), started, own_echoes, context)
        self._queue.append(sub)
        self._queued_events += len(events) + len(own_echoes)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_loop())
        return await sub.future

    async def close(self) -> None:
        """Wait for queued work to be committed (or to fail), then refuses new work."""
        self._closed = True
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher

    async def _flush_loop(self) -> None:
        while self._queue:
            # Let requests that are being parsed in this loop turn join the group.
            await asyncio.sleep(self.window_s)
            batch = self._take()
            spans = open_spans(batch)
            try:
                async with asyncio.timeout(self.timeout_s):
                    results = await self._appender.append(batch)
            except Exception as exc:  # any Redis failure: every waiter answers 503
                reason = f"redis did not take the events: {type(exc).__name__}"
                spans.failed(reason)
                failure = EnqueueFailed(reason)
                for sub in batch:
                    if not sub.future.done():
                        sub.future.set_exception(failure)
                continue
            self.round_trips += 1
            self.submissions += len(batch)
            metrics.record_round_trip(results)
            spans.succeeded(results)
            for sub, outcomes in results.items():
                if not sub.future.done():
                    sub.future.set_result(outcomes)

    def _take(self) -> list[Submission]:
        """Take the next round trip's submissions: all, or as many as ``max_events`` allow.

        Always at least one.
        """
        queue = self._queue
        if self._queued_events <= self.max_events:
            self._queue = []
            self._queued_events = 0
            return queue
        taken = 0
        count = 0
        while taken < len(queue) and (not taken or count + queue[taken].size() <= self.max_events):
            count += queue[taken].size()
            taken += 1
        self._queue = queue[taken:]
        self._queued_events -= count
        return queue[:taken]
