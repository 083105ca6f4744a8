"""The auth service's instruments, created once where the service is built and passed in."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation

from hubsync.core.portal_metrics import PortalCounter


class AuthMetrics:
    """Token refreshes by outcome and the number of connections that need a person.

    With the SDK, an instrument name is registered once per meter: in a process that builds the
    service twice (tests), the gauge reports the first instance's count.
    """

    def __init__(self, meter: Meter) -> None:
        """Create the instruments on ``meter``."""
        self._refreshes = PortalCounter(
            meter.create_counter("hubsync.token.refresh", description="Token refreshes at HubSpot by outcome")
        )
        # Set by each background refresher pass from the needs-reauth registry.
        self.needing_reauth = 0
        meter.create_observable_gauge(
            "hubsync.connections.needing_reauth",
            callbacks=[self._observe_needing_reauth],
            description="Connections a person must authorize again",
        )

    @classmethod
    def disabled(cls) -> AuthMetrics:
        """Instruments that record nothing (tools and tests that build a vault by hand)."""
        return cls(NoOpMeter("hubsync.auth"))

    def refreshed(self, portal_id: int, outcome: str) -> None:
        """Count one refresh attempt of ``portal_id`` with its ``outcome``."""
        self._refreshes.add(1, portal_id, {"outcome": outcome})

    def _observe_needing_reauth(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.needing_reauth)]
