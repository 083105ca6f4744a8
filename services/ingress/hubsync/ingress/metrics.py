"""The ingress service's metrics (OpenTelemetry API; the exporter is wired by core)."""

from __future__ import annotations

from opentelemetry import metrics

_meter = metrics.get_meter("hubsync.ingress")

# Events appended to a portal's stream; attr origin (webhook|reconcile|replay).
accepted = _meter.create_counter("hubsync.webhook.accepted", unit="{event}", description="events enqueued")
# Requests refused; attr reason (bad_signature, stale_timestamp, too_large, bad_payload, ...).
rejected = _meter.create_counter("hubsync.webhook.rejected", unit="{request}", description="requests refused")
duplicates = _meter.create_counter(
    "hubsync.webhook.duplicates", unit="{event}", description="events already accepted before"
)
echoes = _meter.create_counter(
    "hubsync.webhook.echoes", unit="{event}", description="echoes of hubsync's own writes, dropped"
)
accept_duration = _meter.create_histogram(
    "hubsync.webhook.accept.duration", unit="s", description="from request body read to Redis commit"
)
reconcile_found = _meter.create_counter(
    "hubsync.reconcile.found",
    unit="{record}",
    description="changes reconciliation found that no webhook reported",
)
