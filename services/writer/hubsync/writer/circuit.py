"""A circuit breaker per portal, so an outage at HubSpot does not burn the quota.

Closed: requests flow. After ``threshold`` consecutive failures (5xx, timeouts) it opens: calls
fail fast with UNAVAILABLE for ``open_s``; then it is half-open and lets one probe through;
the probe's success closes it, its failure opens it again. Each replica keeps its own breaker
(a replica that sees HubSpot failing stops on its own; the quota is shared anyway).
"""

from __future__ import annotations

import asyncio
import time
from enum import IntEnum

from opentelemetry import metrics

from hubsync.core.errors import Unavailable

_state_gauge = metrics.get_meter("hubsync.writer").create_gauge(
    "hubsync.circuit.state", description="Circuit breaker per portal: 1 closed, 2 open, 3 half-open"
)


class CircuitState(IntEnum):
    # Values match the proto's CircuitState.
    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3


class CircuitBreaker:
    """One portal's breaker."""

    def __init__(self, portal_id: int, threshold: int, open_s: float) -> None:
        self.portal_id = portal_id
        self.threshold = threshold
        self.open_s = open_s
        self.failures = 0
        self.opened_at = 0.0
        self._state = CircuitState.CLOSED
        self._probe = asyncio.Lock()

    @property
    def state(self) -> CircuitState:
        if self._state == CircuitState.OPEN and time.monotonic() - self.opened_at >= self.open_s:
            return CircuitState.HALF_OPEN
        return self._state

    async def admit(self, deadline: float | None = None) -> bool:
        """Returns whether a call may go now (True when it is the half-open probe); while the
        circuit is open, fails fast with UNAVAILABLE and the time until the next probe, so
        queued writes stay queued and waiting callers retry later instead of burning quota."""
        state = self.state
        if state == CircuitState.CLOSED:
            return False
        if state == CircuitState.HALF_OPEN and not self._probe.locked():
            await self._probe.acquire()
            if self.state != CircuitState.CLOSED:
                return True
            self._probe.release()
            return False
        wait = max(self.opened_at + self.open_s - time.monotonic(), 0.1)
        raise Unavailable(
            f"HubSpot is failing for portal {self.portal_id}: circuit open",
            reason="CIRCUIT_OPEN",
            retry_after=wait,
        )

    def record(self, ok: bool, probe: bool) -> None:
        if ok:
            self.failures = 0
            self._set(CircuitState.CLOSED)
        else:
            self.failures += 1
            if probe or self.failures >= self.threshold:
                self.opened_at = time.monotonic()
                self._set(CircuitState.OPEN)
        if probe and self._probe.locked():
            self._probe.release()

    def _set(self, state: CircuitState) -> None:
        self._state = state
        _state_gauge.set(int(state), {"portal": str(self.portal_id)})


class CircuitBreakers:
    def __init__(self, threshold: int, open_s: float) -> None:
        self.threshold = threshold
        self.open_s = open_s
        self._by_portal: dict[int, CircuitBreaker] = {}

    def portals(self) -> list[int]:
        """Portals this process has talked to."""
        return sorted(self._by_portal)

    def get(self, portal_id: int) -> CircuitBreaker:
        breaker = self._by_portal.get(portal_id)
        if breaker is None:
            breaker = self._by_portal[portal_id] = CircuitBreaker(portal_id, self.threshold, self.open_s)
        return breaker
