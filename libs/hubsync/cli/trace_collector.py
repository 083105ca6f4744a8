"""The local trace collector ``hubsync run`` starts: an OTLP/gRPC receiver writing to SQLite.

    python -m hubsync.cli.trace_collector --db .hubsync/traces.sqlite3 --port 4317

The services export their spans to it exactly as to an OpenTelemetry collector
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); it answers every export once the spans are in the
store (:mod:`hubsync.cli.trace_store`), so a span the exporter saw acknowledged is findable.
Listens on loopback only. Spans older than ``--keep-hours`` are deleted when it starts.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from hubsync.cli.trace_store import TraceStore, spans_from_otlp

log = logging.getLogger("hubsync.trace_collector")


class SpanReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP's TraceService: stores what it receives."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        """Stores the spans of one OTLP export."""
        spans = spans_from_otlp(request)
        with self._lock:
            self.store.add(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def serve(db: Path, host: str, port: int, keep_hours: float) -> None:
    """Receives OTLP spans on ``host:port`` into the store ``db`` until interrupted."""
    store = TraceStore(db)
    pruned = store.prune(keep_hours * 3600)
    # One worker: the store has one connection, and exports are small and rare.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(SpanReceiver(store), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    log.warning("trace collector on %s:%d, store %s (%d old spans pruned)", host, bound, db, pruned)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    # Let exports in flight finish (the services flush theirs when they stop, before this one).
    server.stop(grace=3).wait()
    store.close()


def main(argv: list[str] | None = None) -> None:
    """Command line of the trace collector process (``python -m hubsync.cli.trace_collector``)."""
    parser = argparse.ArgumentParser(prog="python -m hubsync.cli.trace_collector")
    parser.add_argument("--db", type=Path, required=True, help="the SQLite file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keep-hours", type=float, default=24.0, help="delete older spans at start")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s")
    serve(args.db, args.host, args.port, args.keep_hours)


if __name__ == "__main__":
    main()
