"""``POST /webhooks/hubspot``: verify, validate, drop echoes, and hand the events to the committer.

Answers 200 only once Redis holds every new event; 503 (HubSpot retries) when it cannot. Every
refusal enqueues nothing: the body is read in a bounded way, then the signature is checked before
the body is even parsed.

The endpoint is a plain ASGI callable (:class:`WebhookEndpoint`), mounted in front of Starlette
by :func:`hubsync.ingress.http_server.build_app`: it is the hot path, and a Request/Response
object pair, the middleware stack and the generic OpenTelemetry ASGI middleware together cost
several times the work the endpoint itself does. What it traces is set by ``WEBHOOK_SPANS`` (see
:class:`WebhookEndpoint`): by default HubSpot's accepted requests share their round trip's
``ingress.commit`` span, and a request that brings a ``traceparent`` (extracted with the global
propagator) or is refused gets a server span of its own. The stream entries carry the context of
the span their request belongs to, so mapper's spans are its children.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import Receive, Scope, Send

from hubsync.ingress import metrics
from hubsync.ingress.committer import (
    NO_CONTEXT,
    CallerContext,
    CommitOutcome,
    EnqueueFailed,
    EventCommitter,
    RoundTripSpan,
    Tracing,
    trace_context,
)
from hubsync.ingress.events import PayloadRejected, WebhookEvent, parse_events
from hubsync.ingress.verifier import SignatureRejected, WebhookVerifier

__all__ = ["PATH", "SPAN_NAME", "BodyTooLarge", "SpanMode", "WebhookEndpoint", "read_bounded"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("hubsync.ingress")
_ROOT = Context()
PATH = "/webhooks/hubspot"
SPAN_NAME = "POST /webhooks/hubspot"
RawHeaders = list[tuple[bytes, bytes]]
_JSON_HEADERS: RawHeaders = [(b"content-type", b"application/json")]
_RETRY_HEADERS: RawHeaders = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
# Metric attributes, built once (the SDK keys its aggregations by them).
_SOURCE = {"kind": "source"}
SpanMode = Literal["round_trip", "request", "off"]
_REASONS: dict[str, dict[str, str]] = {}


class BodyTooLarge(Exception):
    """The body passed ``MAX_BODY_BYTES`` (declared, or counted while reading)."""


class _Disconnected(Exception):
    """The client went away before the body was read."""


class _Reply:
    """What the endpoint answers: status, JSON body, extra headers; ``reason`` for refusals."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, body: bytes, headers: RawHeaders, reason: str = "") -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.reason = reason


def _error(status: int, reason: str, message: str, headers: RawHeaders = _JSON_HEADERS) -> _Reply:
    attributes = _REASONS.get(reason)
    if attributes is None:
        attributes = _REASONS[reason] = {"reason": reason}
    metrics.rejected.add(1, attributes)
    body = orjson.dumps({"status": "error", "reason": reason, "message": message})
    return _Reply(status, body, headers, reason)


async def read_bounded(receive: Receive, declared: str | None, limit: int) -> bytes:
    """Return the request body; raise :class:`BodyTooLarge` as soon as it passes ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    message = await receive()
    if message["type"] != "http.request":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks = bytearray(body)
    while True:
        if len(chunks) > limit:
            raise BodyTooLarge
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunks += message.get("body", b"")
        if not message.get("more_body", False):
            break
    if len(chunks) > limit:
        raise BodyTooLarge
    return bytes(chunks)


class WebhookEndpoint:
    """The webhook handler (an ASGI app); ``public_base_url`` is resolved once the port is known.

    ``spans`` (``WEBHOOK_SPANS``), what traces a request's events belong to:

    - ``round_trip``: requests that bring no trace context (HubSpot's) and are answered 200 share
      one ``ingress.commit`` span per Redis round trip, the root of their events' traces. A request
      that brings a ``traceparent``, and every request answered otherwise, gets its own server span.
    - ``request``: every request gets its own server span, and its events are that span's children.
    - ``off``: no span; the entries carry the caller's trace context if the request had one.
    """

    def __init__(
        self,
        verifier: WebhookVerifier,
        committer: EventCommitter,
        *,
        max_body_bytes: int,
        app_id: str,
        public_base_url: str = "",
        spans: SpanMode = "round_trip",
    ) -> None:
        """Set up the endpoint; ``spans`` is ``WEBHOOK_SPANS``."""
        self.verifier = verifier
        self.committer = committer
        self.max_body_bytes = max_body_bytes
        # Several ids may be ours: the public app's and a private app's (comma-separated).
        self.own_source_ids = frozenset(part.strip() for part in app_id.split(",") if part.strip())
        self.public_base_url = public_base_url
        self.spans = spans
        propagator = propagate.get_global_textmap()
        # Header names the propagator reads (traceparent, tracestate, baggage by default).
        self.trace_headers = frozenset(propagator.fields) | {"traceparent", "tracestate"}
        self._wanted_headers = frozenset(
            name.encode("latin-1")
            for name in (*self.trace_headers, *WebhookVerifier.HEADERS, "content-length")
        )

    def public_uri(self, scope: Scope) -> str:
        """Return the URL HubSpot called: public base + the raw path and query as they arrived."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        uri = self.public_base_url + raw_path.decode("latin-1")
        query: bytes = scope.get("query_string") or b""
        if query:
            uri += "?" + query.decode("latin-1")
        return uri

    def is_own_echo(self, event: WebhookEvent) -> bool:
        """Whether ``event`` is an echo of hubsync's own write, known by its source."""
        return event.change_source == "INTEGRATION" and event.source_id in self.own_source_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ``POST /webhooks/hubspot``."""
        started = time.perf_counter()
        start_ns = time.time_ns()
        # Only the headers the endpoint reads, decoded once. ASGI header names are lower case;
        # the first of a repeated header wins (as with Starlette's Headers).
        headers: dict[str, str] = {}
        wanted = self._wanted_headers
        for name, value in scope["headers"]:
            if name in wanted:
                key = name.decode("latin-1")
                if key not in headers:
                    headers[key] = value.decode("latin-1")
        request = _RequestSpan(self, scope, headers, start_ns, started)
        try:
            reply = await self._handle(receive, request)
        except _Disconnected:
            return
        if not request.closed:
            # Refused, or not committed with its own span: one is opened and closed here if due.
            if request.span is None and self.spans != "off" and (request.own_span or reply.status != 200):
                request.open()
            request.finish(reply.status, reply.reason)
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [*reply.headers, (b"content-length", str(len(reply.body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})

    async def _handle(self, receive: Receive, request: _RequestSpan) -> _Reply:
        scope, headers = request.scope, request.headers
        try:
            body = await read_bounded(receive, headers.get("content-length"), self.max_body_bytes)
        except BodyTooLarge:
            return _error(413, "too_large", f"body exceeds {self.max_body_bytes} bytes")
        try:
            self.verifier.verify("POST", self.public_uri(scope), body, headers)
        except SignatureRejected as exc:
            return _error(401, exc.reason, str(exc))
        try:
            events = parse_events(body)
        except PayloadRejected as exc:
            return _error(400, "bad_payload", str(exc))
        request.events = events
        kept: list[WebhookEvent] = []
        echoed: list[WebhookEvent] = []
        for e in events:
            (echoed if self.is_own_echo(e) else kept).append(e)
        own_echoes = len(echoed)
        if own_echoes:
            metrics.echoes.add(own_echoes, _SOURCE)
        outcomes: Sequence[CommitOutcome] = ()
        if events:
            # The committer records the accept duration, and opens the request's own span (if
            # any) right before the round trip and closes it right after (see ``RequestSpan``).
            tracing: Tracing
            if request.own_span:
                tracing = request
            elif self.spans == "round_trip":
                tracing = RoundTripSpan(request.start_ns)
            else:
                tracing = request.caller_context()
            try:
                # Echoes are not enqueued, but journaled as echoes so reconciliation knows them.
                outcomes = await self.committer.submit(
                    kept, tracing=tracing, started=request.started, own_echoes=echoed
                )
            except EnqueueFailed as exc:
                if request.span is None and self.spans != "off":
                    request.open()  # a 503 gets a span of its own (ended in ``__call__``)
                span = request.span
                in_span = trace.use_span(span, end_on_exit=False) if span else contextlib.nullcontext()
                with in_span:
                    log.warning("webhook not enqueued, answering 503: %s", exc)
                return _error(503, "redis_unavailable", "events not stored; retry later", _RETRY_HEADERS)
        else:
            metrics.accept_duration.record(time.perf_counter() - request.started)
        # The committer counts them in the metrics, once per round trip.
        accepted = duplicates = echoes = 0
        for outcome in outcomes:
            if outcome is CommitOutcome.ACCEPTED:
                accepted += 1
            elif outcome is CommitOutcome.DUPLICATE:
                duplicates += 1
            else:
                echoes += 1
        body = b'{"accepted":%d,"duplicates":%d,"echoes":%d}' % (accepted, duplicates, echoes + own_echoes)
        return _Reply(200, body, _JSON_HEADERS)


class _RequestSpan:
    """One webhook request's server span (a :class:`~hubsync.ingress.committer.RequestSpan`).

    Opened and closed by the committer around the round trip that stores the request's events, or
    by the endpoint for a request that is refused or commits nothing.
    """

    __slots__ = (
        "closed",
        "endpoint",
        "events",
        "headers",
        "own_span",
        "scope",
        "span",
        "start_ns",
        "started",
    )

    def __init__(
        self, endpoint: WebhookEndpoint, scope: Scope, headers: dict[str, str], start_ns: int, started: float
    ) -> None:
        self.endpoint = endpoint
        self.scope = scope
        self.headers = headers
        self.start_ns = start_ns
        self.started = started
        self.events: Sequence[WebhookEvent] | None = None
        self.span: trace.Span | None = None
        self.closed = False
        # Whether the request gets a server span of its own whatever its answer.
        mode = endpoint.spans
        self.own_span = mode == "request" or (mode == "round_trip" and "traceparent" in headers)

    def caller_context(self) -> CallerContext:
        """Return the caller's W3C trace context, as the entries carry it when no span is recorded."""
        headers = self.headers
        if "traceparent" not in headers and "tracestate" not in headers:
            return NO_CONTEXT
        return CallerContext.of(headers)

    def open(self) -> CallerContext:
        """Start the server span (child of the caller's context, if any); returns its context."""
        trace_headers = self.endpoint.trace_headers
        carrier = {k: v for k, v in self.headers.items() if k in trace_headers}
        # The parent is the caller's context or none (never whatever this task happens to hold).
        context = propagate.extract(carrier, context=_ROOT) if carrier else _ROOT
        attributes: dict[str, Any] = {"http.request.method": "POST", "url.path": self.scope["path"]}
        if self.events:
            _annotate(attributes, self.events)
        self.span = _tracer.start_span(
            SPAN_NAME, context=context, kind=SpanKind.SERVER, attributes=attributes, start_time=self.start_ns
        )
        return trace_context(self.span)

    def close(self, error: str | None) -> None:
        """End the span after the round trip: 200, or 503 with ``error``."""
        if error is None:
            self.finish(200, "")
        else:
            self.finish(503, error)

    def finish(self, status: int, reason: str) -> None:
        """End the span (if one was opened) with the answer's status."""
        self.closed = True
        span = self.span
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(StatusCode.ERROR, reason)
        span.end()


def _annotate(attributes: dict[str, Any], events: Sequence[WebhookEvent]) -> None:
    first = events[0]
    attributes["hubsync.portal_id"] = first.portal_id
    attributes["hubsync.event_count"] = len(events)
    if len(events) == 1:
        attributes["hubsync.event_id"] = first.event_id
        attributes["hubsync.object_id"] = first.object_id
    else:
        attributes["hubsync.event_id"] = [e.event_id for e in events]
        attributes["hubsync.object_id"] = [e.object_id for e in events]
