"""OpenTelemetry setup, and W3C trace context carried through Redis stream entries.

Spans go to an OTLP exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the SDK reads the
other ``OTEL_*`` variables itself). Tests pass their own exporter to :func:`setup_tracing`.
gRPC and httpx are instrumented by the opentelemetry instrumentations; the Starlette app is
wrapped in the ASGI middleware; Redis streams carry ``traceparent``/``tracestate`` fields that
:func:`inject_fields` writes and :func:`extract_context` reads.

No recorded URL keeps its query string: it can hold secrets (the OAuth callback's ``code`` and
``state``). :func:`scrub_url_attributes` strips it from a span's URL attributes; it runs as a
span processor when spans start and as the request hook of the httpx and ASGI instrumentations
(which set or set again their URL attributes after the start).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

_configured: TracerProvider | None = None

# Attributes that hold a URL or a request target, in the old and the stable HTTP conventions.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")
_QUERY_ATTRIBUTE = "url.query"
REDACTED = "REDACTED"


def strip_query(url: str) -> str:
    """``url`` without its query string and fragment."""
    return url.split("?", 1)[0].split("#", 1)[0]


def redact_query(query: str) -> str:
    """A query string with every value replaced: which parameters came, not what they held."""
    return urlencode([(name, REDACTED) for name, _ in parse_qsl(query, keep_blank_values=True)])


def scrub_url_attributes(span: trace.Span, *_: Any) -> None:
    """Strips the query string from ``span``'s URL attributes (an instrumentation hook)."""
    attributes = getattr(span, "attributes", None)
    if not attributes or not span.is_recording():
        return
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str) and ("?" in value or "#" in value):
            span.set_attribute(name, strip_query(value))
    query = attributes.get(_QUERY_ATTRIBUTE)
    if isinstance(query, str) and query:
        span.set_attribute(_QUERY_ATTRIBUTE, redact_query(query))


async def scrub_url_attributes_async(span: trace.Span, *_: Any) -> None:
    """Async form of :func:`scrub_url_attributes`, for hooks that await."""
    scrub_url_attributes(span)


class UrlScrubber(SpanProcessor):
    """Strips query strings from the URL attributes a span starts with (any instrumentation)."""

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        """Scrubs the span's URL attributes as it starts."""
        scrub_url_attributes(span)


def setup_tracing(service: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Installs the global tracer provider once per process and instruments httpx."""
    global _configured
    if _configured is not None:
        if exporter is not None:
            _configured.add_span_processor(SimpleSpanProcessor(exporter))
        return _configured
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(UrlScrubber())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument(
        request_hook=scrub_url_attributes, async_request_hook=scrub_url_attributes_async
    )
    _configured = provider
    return provider


def _otlp_exporter() -> SpanExporter:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

    return Grpc()


def shutdown_tracing() -> None:
    """Flushes and stops span export (called on graceful shutdown)."""
    if _configured is not None:
        _configured.force_flush()
        _configured.shutdown()


def inject_fields(fields: dict[str, Any] | None = None, context: Context | None = None) -> dict[str, Any]:
    """Adds the W3C trace context of ``context`` (default: current) to stream-entry fields."""
    carrier: dict[str, Any] = {} if fields is None else fields
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(fields: Mapping[Any, Any]) -> Context:
    """Reads the trace context stored with a Redis stream entry (bytes or str keys)."""
    carrier: dict[str, str] = {}
    for key in ("traceparent", "tracestate"):
        value = fields.get(key, fields.get(key.encode()))
        if value is not None:
            carrier[key] = value.decode() if isinstance(value, bytes) else str(value)
    return propagate.extract(carrier)


def trace_id_hex(span: trace.Span | None = None) -> str:
    """The 32-hex trace id of ``span`` (default: current), or ``""`` outside a trace."""
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


_metrics_configured = False


# Bucket bounds of every latency histogram (seconds): from a 1 ms Redis commit to a 60 s HubSpot
# call that waited for the rate limit.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def setup_metrics(service: str, host: str = "127.0.0.1", port: int = 0) -> int:
    """Installs the global meter provider: Prometheus ``/metrics`` on ``port`` (0: none) and OTLP.

    Returns the port ``/metrics`` listens on (0 when not served). Instruments created before this
    call through ``opentelemetry.metrics.get_meter`` are picked up, as the API proxies them.
    """
    global _metrics_configured
    if _metrics_configured:
        return 0
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    readers: list[MetricReader] = []
    served = 0
    if port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        readers.append(PrometheusMetricReader(disable_target_info=True))
        server, _thread = start_http_server(port, addr=host)
        served = int(server.server_port)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpM

            readers.append(PeriodicExportingMetricReader(HttpM()))
        else:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcM

            readers.append(PeriodicExportingMetricReader(GrpcM()))
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    # Every hubsync histogram is in seconds; the SDK's default buckets are for milliseconds.
    seconds = View(
        instrument_type=Histogram,
        instrument_unit="s",
        aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
    )
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers, views=[seconds]))
    _metrics_configured = True
    return served
