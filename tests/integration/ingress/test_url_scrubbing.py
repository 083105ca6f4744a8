"""No exported span holds a URL's query string: the OAuth callback's code and state stay out of
traces (server spans of the ASGI middleware, httpx client spans, any span started with a URL)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hubsync.core.telemetry import setup_tracing
from tests.helpers.ingress import running_ingress


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    setup_tracing("hubsync-ingress", found)
    yield found
    found.shutdown()


def _texts(span: ReadableSpan) -> list[str]:
    values: list[str] = [span.name]
    for value in (span.attributes or {}).values():
        values.extend(str(v) for v in value) if isinstance(value, tuple | list) else values.append(str(value))
    for event in span.events:
        values.extend(str(v) for v in (event.attributes or {}).values())
    return values


async def test_oauth_code_and_state_never_reach_a_span(  # type: ignore[no-untyped-def]
    redis_url, caller_tokens, exporter: InMemorySpanExporter
) -> None:
    code, state = secrets.token_hex(16), secrets.token_hex(16)
    async with (
        running_ingress(redis_url=redis_url, caller_tokens=caller_tokens) as (base, _),
        httpx.AsyncClient() as browser,
    ):
        # auth is unreachable here: the page is an error, but the server span is recorded.
        await browser.get(f"{base}/oauth/callback", params={"code": code, "state": state})
        await browser.get(f"{base}/oauth/start", params={"ticket": state})
        # An instrumented client call with a secret in its query (httpx client span).
        await browser.get(f"{base}/healthz", params={"code": code})
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == trace.SpanKind.SERVER and "/oauth/callback" in s.name]
    client = [s for s in spans if s.kind == trace.SpanKind.CLIENT]
    assert server and client, [(s.name, s.kind) for s in spans]
    for span in spans:
        for text in _texts(span):
            assert code not in text and state not in text, (span.name, text)
    # The URL is still there, without its query.
    urls = [str((s.attributes or {}).get("http.url", "")) for s in server]
    assert any(url.endswith("/oauth/callback") for url in urls), urls


def test_stable_convention_attributes_are_scrubbed(exporter: InMemorySpanExporter) -> None:
    """``url.full``/``url.query`` (OTEL_SEMCONV_STABILITY_OPT_IN=http) and a target with a query,
    as any instrumentation may start a span with them."""
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span(
        "GET",
        attributes={
            "url.full": "https://hubsync.example.com/oauth/callback?code=c0de&state=s7ate#frag",
            "url.query": "code=c0de&state=s7ate",
            "http.target": "/oauth/callback?code=c0de&state=s7ate",
        },
    ):
        pass
    [span] = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "GET" and s.instrumentation_scope is not None and s.instrumentation_scope.name == "test"
    ]
    attributes = dict(span.attributes or {})
    assert attributes["url.full"] == "https://hubsync.example.com/oauth/callback"
    assert attributes["http.target"] == "/oauth/callback"
    assert attributes["url.query"] == "code=REDACTED&state=REDACTED"
