"""How fast the local trace collector stores spans, and how fast ``hubsync trace`` finds one.

Starts ``python -m hubsync.cli.trace_collector`` as its own process (as ``hubsync run`` does),
exports TRACES traces of 6 spans each over real OTLP/gRPC with the SDK's exporter in batches of
512 (BatchSpanProcessor's default), then opens the store read-only and times LOOKUPS lookups by
object id (find + the trace with its linked spans + the terminal rendering).

    .venv/bin/python bench/traces/bench_store.py [--traces 10000] [--lookups 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from hubsync.cli.trace_store import TraceStore
from hubsync.cli.trace_view import render_text, waterfall
from hubsync.core.devredis import free_port


class Collecting(SpanExporter):
    """Keeps finished spans in memory, so the export itself is timed apart."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[arg-type]
        return SpanExportResult.SUCCESS


def make_spans(traces: int) -> list[ReadableSpan]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "hubsync-mapper"}))
    sink = Collecting()
    provider.add_span_processor(SimpleSpanProcessor(sink))
    tracer = provider.get_tracer("bench")
    for n in range(traces):
        chain: list[tuple[str, dict[str, Any]]] = [
            ("ingress.commit", {"hubsync.event_id": [n], "hubsync.object_id": [n]}),
            ("mapper.inbound", {"hubsync.object_id": str(n)}),
            ("/hubsync.api.writer.v1.WriterService/ReadRecords", {}),
            ("/hubsync.api.writer.v1.WriterService/ReadRecords", {}),
            ("HubSpot POST /crm/v3/objects/{objectType}/batch/read", {"hubsync.records": 1}),
            ("POST", {"url.full": "http://127.0.0.1/crm/v3/objects/contacts/batch/read"}),
        ]
        with contextlib.ExitStack() as stack:
            for name, attributes in chain:
                stack.enter_context(tracer.start_as_current_span(name, attributes=attributes))
    return sink.spans


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    spans = make_spans(args.traces)
    with tempfile.TemporaryDirectory() as tmp:
        db, port = Path(tmp) / "traces.sqlite3", free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hubsync.cli.trace_collector", "--db", str(db), "--port", str(port)],
            stderr=subprocess.DEVNULL,
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = trace_service_pb2_grpc.TraceServiceStub(channel)
                for _ in range(300):
                    try:
                        stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=1)
                        break
                    except grpc.RpcError:
                        time.sleep(0.1)
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True)
            started = time.perf_counter()
            for at in range(0, len(spans), 512):
                assert exporter.export(spans[at : at + 512]) == SpanExportResult.SUCCESS
            stored_s = time.perf_counter() - started
            exporter.shutdown()
            store = TraceStore(db, readonly=True)
            step = max(args.traces // args.lookups, 1)
            started = time.perf_counter()
            for n in range(0, args.traces, step)[: args.lookups]:
                (found,) = store.find(str(n))
                render_text(waterfall(store.trace(found.trace_id)))
            lookup_s = (time.perf_counter() - started) / min(args.lookups, len(range(0, args.traces, step)))
            store.close()
            size = sum(p.stat().st_size for p in Path(tmp).glob("traces.sqlite3*"))
        finally:
            proc.terminate()
            proc.wait(10)
    print(
        json.dumps(
            {
                "spans": len(spans),
                "export_seconds": round(stored_s, 2),
                "spans_per_second": round(len(spans) / stored_s),
                "store_bytes_per_span": round(size / len(spans)),
                "lookup_ms": round(lookup_s * 1000, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
