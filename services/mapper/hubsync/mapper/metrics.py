"""The mapper's sync instruments, shared by the inbound and outbound pipelines."""

from __future__ import annotations

from opentelemetry import metrics

__all__ = ["meter", "sync", "sync_duration"]

meter = metrics.get_meter("hubsync.mapper")
sync = meter.create_counter(
    "hubsync.sync", description="Records synced, by object type, direction and outcome"
)
sync_duration = meter.create_histogram(
    "hubsync.sync.duration",
    unit="s",
    description="End to end: outbound, a push until HubSpot has it (or it is queued); "
    "inbound, HubSpot's change until the change feed holds it",
)
