"""The ingress service's metrics (OpenTelemetry API; the exporter is wired by core)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from opentelemetry import metrics

from hubsync.ingress._submission import CommitOutcome, Submission

__all__ = [
    "accept_duration",
    "accepted",
    "duplicates",
    "echoes",
    "reconcile_found",
    "record_round_trip",
    "rejected",
]

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

# Metric attributes, built once (the SDK keys its aggregations by them).
_WEBHOOK = {"origin": "webhook"}
_WRITTEN = {"kind": "written"}


def record_round_trip(results: Mapping[Submission, list[CommitOutcome]]) -> None:
    """Record a round trip that Redis took: webhook outcomes and each timed accept duration.

    The outcome counters are added once per round trip, not once per request (each ``add`` costs
    about as much as verifying a signature); the totals are the same, and they are recorded
    before any of the round trip's requests is answered.
    """
    counts = [0, 0, 0]
    now = time.perf_counter()
    for sub, outcomes in results.items():
        if sub.origin == "webhook":
            for outcome in outcomes:
                counts[outcome] += 1
        if sub.started:
            accept_duration.record(now - sub.started)
    if counts[CommitOutcome.ACCEPTED]:
        accepted.add(counts[CommitOutcome.ACCEPTED], _WEBHOOK)
    if counts[CommitOutcome.DUPLICATE]:
        duplicates.add(counts[CommitOutcome.DUPLICATE])
    if counts[CommitOutcome.ECHO]:
        echoes.add(counts[CommitOutcome.ECHO], _WRITTEN)
