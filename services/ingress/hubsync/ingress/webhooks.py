"""``POST /webhooks/hubspot``: verify, validate, drop echoes, and hand the events to the committer.

Answers 200 only once Redis holds every new event; 503 (HubSpot retries) when it cannot. Every
refusal enqueues nothing: the body is read in a bounded way, then the signature is checked before
the body is even parsed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import orjson
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response

from hubsync.core.telemetry import inject_fields
from hubsync.ingress import metrics
from hubsync.ingress.committer import EnqueueFailed, EventCommitter, Outcome
from hubsync.ingress.events import PayloadRejected, WebhookEvent, parse_events
from hubsync.ingress.verifier import SignatureRejected, WebhookVerifier

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("hubsync.ingress")
JSON = "application/json"


class BodyTooLarge(Exception):
    pass


def _error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> Response:
    metrics.rejected.add(1, {"reason": reason})
    body = orjson.dumps({"status": "error", "reason": reason, "message": message})
    return Response(body, status_code=status, media_type=JSON, headers=headers)


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, or :class:`BodyTooLarge` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise BodyTooLarge
    return bytes(chunks)


class WebhookEndpoint:
    """The webhook handler; ``public_base_url`` is resolved once the HTTP port is known."""

    def __init__(
        self,
        verifier: WebhookVerifier,
        committer: EventCommitter,
        *,
        max_body_bytes: int,
        app_id: str,
        public_base_url: str = "",
    ) -> None:
        self.verifier = verifier
        self.committer = committer
        self.max_body_bytes = max_body_bytes
        # Several ids may be ours: the public app's and a private app's (comma-separated).
        self.own_source_ids = frozenset(part.strip() for part in app_id.split(",") if part.strip())
        self.public_base_url = public_base_url

    def public_uri(self, request: Request) -> str:
        """The URL HubSpot called: public base + the raw path and query as they arrived."""
        scope = request.scope
        raw_path = scope.get("raw_path") or scope["path"].encode()
        uri = self.public_base_url + raw_path.decode("latin-1")
        query = scope.get("query_string") or b""
        if query:
            uri += "?" + query.decode("latin-1")
        return uri

    def is_own_echo(self, event: WebhookEvent) -> bool:
        return event.change_source == "INTEGRATION" and event.source_id in self.own_source_ids

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await read_bounded(request, self.max_body_bytes)
        except BodyTooLarge:
            return _error(413, "too_large", f"body exceeds {self.max_body_bytes} bytes")
        try:
            self.verifier.verify(request.method, self.public_uri(request), body, request.headers)
        except SignatureRejected as exc:
            return _error(401, exc.reason, str(exc))
        try:
            events = parse_events(body)
        except PayloadRejected as exc:
            return _error(400, "bad_payload", str(exc))
        kept = [e for e in events if not self.is_own_echo(e)]
        own_echoes = len(events) - len(kept)
        if own_echoes:
            metrics.echoes.add(own_echoes, {"kind": "source"})
        outcomes: Sequence[Outcome] = []
        if kept:
            with _tracer.start_as_current_span("ingress.enqueue") as span:
                _annotate(span, kept)
                try:
                    outcomes = await self.committer.submit(kept, inject_fields({}))
                except EnqueueFailed as exc:
                    span.set_status(trace.StatusCode.ERROR, str(exc))
                    log.warning("webhook not enqueued, answering 503: %s", exc)
                    return _error(
                        503, "redis_unavailable", "events not stored; retry later", {"Retry-After": "1"}
                    )
        counts = [0, 0, 0]
        for outcome in outcomes:
            counts[outcome] += 1
        if counts[Outcome.ACCEPTED]:
            metrics.accepted.add(counts[Outcome.ACCEPTED], {"origin": "webhook"})
        if counts[Outcome.DUPLICATE]:
            metrics.duplicates.add(counts[Outcome.DUPLICATE])
        if counts[Outcome.ECHO]:
            metrics.echoes.add(counts[Outcome.ECHO], {"kind": "written"})
        metrics.accept_duration.record(time.perf_counter() - started)
        reply = {
            "accepted": counts[Outcome.ACCEPTED],
            "duplicates": counts[Outcome.DUPLICATE],
            "echoes": counts[Outcome.ECHO] + own_echoes,
        }
        return Response(orjson.dumps(reply), media_type=JSON)


def _annotate(span: trace.Span, events: Sequence[WebhookEvent]) -> None:
    if not span.is_recording():
        return
    first = events[0]
    span.set_attribute("hubsync.portal_id", first.portal_id)
    span.set_attribute("hubsync.event_count", len(events))
    if len(events) == 1:
        span.set_attribute("hubsync.event_id", first.event_id)
        span.set_attribute("hubsync.object_id", first.object_id)
    else:
        span.set_attribute("hubsync.event_id", [e.event_id for e in events])
        span.set_attribute("hubsync.object_id", [e.object_id for e in events])
