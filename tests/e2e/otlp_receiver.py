"""A small OTLP/gRPC trace receiver, run as its own process like a collector would be.

``python tests/e2e/otlp_receiver.py --port-file F --out spans.jsonl`` listens on a free loopback
port (written to F), and appends every received span to ``spans.jsonl`` as one JSON object a line
(and the metric names each service exports to ``metrics.jsonl`` beside it).
Built on opentelemetry-proto, so the suite's exporters talk to it exactly as to a collector.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    links: tuple[str, ...]


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in v.array_value.values]
    return getattr(v, which) if which else None


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out: Path) -> None:
        self.out = out

    async def Export(self, request, context):  # type: ignore[no-untyped-def]
        lines = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    lines.append(
                        json.dumps(
                            {
                                "service": str(attrs.get("service.name", "")),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "links": [link.trace_id.hex() for link in span.links],
                            }
                        )
                    )
        with self.out.open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Keeps which metric names each service exported, one JSON object a line."""

    def __init__(self, out: Path) -> None:
        self.out = out

    async def Export(self, request, context):  # type: ignore[no-untyped-def]
        lines = []
        for resource_metrics in request.resource_metrics:
            attrs = {a.key: _value(a.value) for a in resource_metrics.resource.attributes}
            names = sorted({m.name for scope in resource_metrics.scope_metrics for m in scope.metrics})
            lines.append(json.dumps({"service": str(attrs.get("service.name", "")), "metrics": names}))
        with self.out.open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))
        return metrics_service_pb2.ExportMetricsServiceResponse()


def read_metric_names(path: Path) -> dict[str, set[str]]:
    """Service name → every metric name it exported so far."""
    found: dict[str, set[str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            raw = json.loads(line)
            found.setdefault(raw["service"], set()).update(raw["metrics"])
    return found


def read_spans(path: Path) -> list[ReceivedSpan]:
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        raw = json.loads(line)
        raw["links"] = tuple(raw["links"])
        spans.append(ReceivedSpan(**raw))
    return spans


async def _serve(port_file: Path, out: Path) -> None:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Receiver(out), server)
    metrics_out = out.with_name("metrics.jsonl")
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsReceiver(metrics_out), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port_file, args.out))
