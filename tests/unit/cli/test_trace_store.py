"""The local trace store and its waterfall: what OTLP exports become, how a change is found, and
that nothing secret is kept (real SDK spans exported over a real OTLP/gRPC connection to the
collector's receiver)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from hubsync.cli.trace_collector import SpanReceiver
from hubsync.cli.trace_store import StoredSpan, TraceSpans, TraceStore, clean_text
from hubsync.cli.trace_view import render_html, render_text, waterfall


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    opened = TraceStore(tmp_path / "traces.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def receiver(store: TraceStore) -> Iterator[str]:
    """The collector's OTLP receiver on a loopback port, writing to ``store``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(SpanReceiver(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop(None)


def tracer_for(endpoint: str, service: str) -> tuple[trace.Tracer, TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    return provider.get_tracer("test"), provider


def test_exported_spans_are_stored_cleaned_and_found_by_the_ids_they_carry(
    store: TraceStore, receiver: str, tmp_path: Path
) -> None:
    tracer, provider = tracer_for(receiver, "hubsync-ingress")
    with tracer.start_as_current_span(
        "ingress.commit",
        kind=SpanKind.PRODUCER,
        attributes={
            "hubsync.event_id": [71, 72],
            "hubsync.object_id": [51, 52],
            # what no exporter should send, and the store must not keep if one does
            "url.full": "https://hs.example/oauth/callback?code=CODE-SECRET&state=STATE-SECRET",
            "url.query": "code=CODE-SECRET",
            "http.request.header.authorization": "Bearer TOKEN-SECRET",
            "hubsync.note": "see http://127.0.0.1/x?hapikey=KEY-SECRET#frag",
        },
    ) as root:
        root.record_exception(RuntimeError("GET http://h/p?access_token=EXC-SECRET failed"))
        root.set_status(StatusCode.ERROR, "Bearer STATUS-SECRET refused")
    provider.shutdown()
    trace_id = format(root.get_span_context().trace_id, "032x")

    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in (
        b"CODE-SECRET",
        b"STATE-SECRET",
        b"TOKEN-SECRET",
        b"KEY-SECRET",
        b"EXC-SECRET",
        b"STATUS-SECRET",
    ):
        assert secret not in raw, secret
    assert (tmp_path / "traces.sqlite3").stat().st_mode & 0o777 == 0o600

    for ident in (trace_id, trace_id[:8], "71", "52"):
        assert [s.trace_id for s in store.find(ident)] == [trace_id], ident
    assert store.find("53") == []
    (span,) = store.trace(trace_id).spans
    assert span.attributes["url.full"] == "https://hs.example/oauth/callback"
    assert span.attributes["url.query"] == "code=REDACTED"
    assert "http.request.header.authorization" not in span.attributes
    assert span.failed and span.status_message == "Bearer REDACTED refused"


def test_clean_text_strips_every_query_and_bearer() -> None:
    assert clean_text("POST https://api.hubapi.com/a?x=1 then http://b/c#f") == (
        "POST https://api.hubapi.com/a then http://b/c"
    )
    assert clean_text("authorization: Bearer abc.def") == "authorization: Bearer REDACTED"


def span(
    trace_id: str,
    span_id: str,
    parent: str,
    service: str,
    name: str,
    start: int,
    end: int,
    kind: int = 1,
    **kw: Any,
) -> StoredSpan:
    """A stored span; ``start``/``end`` in ms."""
    return StoredSpan(
        trace_id, span_id, parent, service, name, kind, start * 1_000_000, end * 1_000_000, **kw
    )


def test_a_batched_call_of_another_trace_hangs_under_the_span_it_carries(store: TraceStore) -> None:
    """Writer's HubSpot call for a queued write sits in its own trace and links to the record's:
    the record's waterfall shows it (and its HTTP child) under the linked span; a hop through a
    Redis stream is marked; an error is shown."""
    a, b = "a" * 32, "b" * 32
    store.add(
        [
            span(
                a,
                "01" * 8,
                "",
                "hubsync-mapper",
                "/hubsync.api.mapper.v1.MapperService/PushRecords",
                0,
                30,
                kind=2,
            ),
            span(
                a,
                "02" * 8,
                "01" * 8,
                "hubsync-mapper",
                "mapper.outbound",
                1,
                29,
                kind=1,
                attributes={"hubsync.external_id": ["ext-1"]},
            ),
            span(
                a,
                "03" * 8,
                "02" * 8,
                "hubsync-writer",
                "/hubsync.api.writer.v1.WriterService/SubmitWrites",
                2,
                10,
                kind=2,
            ),
            span(
                b,
                "04" * 8,
                "",
                "hubsync-writer",
                "HubSpot POST /crm/v3/objects/{objectType}/batch/upsert",
                40,
                90,
                kind=3,
                links=(("a" * 32, "03" * 8),),
                status_code=2,
                status_message="502",
            ),
            span(
                b,
                "05" * 8,
                "04" * 8,
                "hubsync-writer",
                "POST",
                41,
                89,
                kind=3,
                attributes={"http.status_code": 502},
            ),
        ]
    )
    (found,) = store.find("ext-1")
    view = waterfall(store.trace(found.trace_id))
    assert [(r.depth, r.service, r.span.name.rsplit("/", 1)[-1], r.via) for r in view.rows] == [
        (0, "mapper", "PushRecords", ""),
        (1, "mapper", "mapper.outbound", ""),
        (2, "writer", "SubmitWrites", ""),
        (3, "writer", "upsert", "link"),
        (4, "writer", "POST", ""),
    ]
    text = "\n".join(render_text(view))
    assert "└─ WriterService/SubmitWrites (server)" in text
    assert "HubSpot POST /crm/v3/objects/{objectType}/batch/upsert (client) ⇢link" in text
    assert f"trace={b}" in text and "✗ ERROR 502" in text and "status=502" in text
    assert "5 spans" not in text and "3 spans + 2 linked" in text
    page = render_html(view)
    assert page.count("<tr data-span=") == 5 and 'data-via="link"' in page and "ERROR 502" in page


def test_a_child_after_a_redis_stream_is_marked() -> None:
    """Under a producer span, as a consumer span, or starting after its parent ended: the change
    waited in a stream there. A child inside its parent's time is not marked."""
    c = "c" * 32
    spans = [
        span(c, "01" * 8, "", "hubsync-ingress", "ingress.commit", 0, 2, kind=4),
        span(c, "02" * 8, "01" * 8, "hubsync-mapper", "mapper.inbound", 5, 20),
        span(c, "03" * 8, "02" * 8, "hubsync-writer", "SubmitWrites", 6, 8, kind=2),
        span(c, "04" * 8, "03" * 8, "hubsync-writer", "writer.queued", 7, 19, kind=5),
        span(c, "05" * 8, "04" * 8, "hubsync-writer", "HubSpot call", 9, 18, kind=3),
    ]
    view = waterfall(TraceSpans(c, spans))
    assert [(r.span.name, r.via) for r in view.rows] == [
        ("ingress.commit", ""),
        ("mapper.inbound", "redis"),
        ("SubmitWrites", ""),
        ("writer.queued", "redis"),
        ("HubSpot call", ""),
    ]
    assert view.duration_ns == 20_000_000


def test_find_lists_every_trace_of_an_object_oldest_first(store: TraceStore) -> None:
    now = time.time_ns() // 1_000_000
    store.add(
        [
            span(
                "d" * 32,
                "01" * 8,
                "",
                "hubsync-ingress",
                "ingress.commit",
                now + 5,
                now + 6,
                attributes={"hubsync.object_id": [7]},
            ),
            span(
                "e" * 32,
                "01" * 8,
                "",
                "hubsync-mapper",
                "mapper.outbound",
                now,
                now + 1,
                attributes={"hubsync.object_id": ["7"]},
            ),
        ]
    )
    assert [s.trace_id for s in store.find("7")] == ["e" * 32, "d" * 32]
    assert [s.trace_id for s in store.recent()] == ["e" * 32, "d" * 32]
    assert store.prune(3600) == 0
