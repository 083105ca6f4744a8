"""A circuit breaker per portal, so an outage at HubSpot does not burn the quota.

Closed: requests flow. After ``threshold`` consecutive failures (5xx, timeouts) it opens: calls
fail fast with UNAVAILABLE for ``open_s``; then it is half-open and lets one probe through;
the probe's success closes it, its failure opens it again.

With Redis the breaker is shared by every writer replica: the replica that opens it stores
``hubsync:{<portal>}:circuit:open`` (expiring when the probe is due), the others see it before
their next call and fail fast too; when it expires one replica wins ``...:circuit:probe`` (SET NX)
and sends the single probe; its success deletes both keys. An outage thus costs the portal's
quota ``threshold`` failed calls plus one probe per ``open_s``, not that much per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from enum import IntEnum

from opentelemetry import metrics
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hubsync.core.errors import Unavailable
from hubsync.core.keys import circuit_closed_key, circuit_open_key, circuit_probe_key
from hubsync.core.portal_metrics import PortalGauge

__all__ = [
    "CircuitBreaker",
    "CircuitBreakers",
    "CircuitState",
]

# Folded over portals: the highest state (any circuit not closed shows).
_state_gauge = PortalGauge("max")
metrics.get_meter("hubsync.writer").create_observable_gauge(
    "hubsync.circuit.state",
    callbacks=[_state_gauge.observe],
    description="Circuit breaker per portal: 1 closed, 2 open, 3 half-open",
)


class CircuitState(IntEnum):
    """A breaker's state; the values match the proto's ``CircuitState``."""

    # Values match the proto's CircuitState.
    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3


class CircuitBreaker:
    """One portal's breaker."""

    def __init__(self, portal_id: int, threshold: int, open_s: float, redis: Redis | None = None) -> None:
        """Open after ``threshold`` consecutive failures, for ``open_s``; shared through ``redis``."""
        self.portal_id = portal_id
        self.threshold = threshold
        self.open_s = open_s
        self.redis = redis
        self.failures = 0
        self.opened_at = 0.0
        self._state = CircuitState.CLOSED
        self._probe = asyncio.Lock()
        self._open_key = circuit_open_key(portal_id)
        self._probe_key = circuit_probe_key(portal_id)
        self._closed_key = circuit_closed_key(portal_id)

    @property
    def state(self) -> CircuitState:
        """Return the state now (an open breaker whose time is up is half-open)."""
        if self._state == CircuitState.OPEN and time.monotonic() - self.opened_at >= self.open_s:
            return CircuitState.HALF_OPEN
        return self._state

    async def admit(self, deadline: float | None = None) -> bool:
        """Return whether a call may go now (True when it is the half-open probe).

        While the circuit is open, fail fast with UNAVAILABLE and the time until the next probe,
        so queued writes stay queued and waiting callers retry later instead of burning quota.
        """
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):  # without Redis: this replica's view
                await self._follow_shared(self.redis)
        state = self.state
        if state == CircuitState.CLOSED:
            return False
        if state == CircuitState.HALF_OPEN and not self._probe.locked():
            await self._probe.acquire()
            if self.state != CircuitState.CLOSED and await self._win_probe():
                return True
            self._probe.release()
            if self.state == CircuitState.CLOSED:
                return False
        wait = max(self.opened_at + self.open_s - time.monotonic(), 0.1)
        raise Unavailable(
            f"HubSpot is failing for portal {self.portal_id}: circuit open",
            reason="CIRCUIT_OPEN",
            retry_after=wait,
        )

    async def _follow_shared(self, redis: Redis) -> None:
        """Adopt another replica's decision.

        Open while the shared key lives; closed once a probe succeeded somewhere (the key is
        gone and no probe is running).
        """
        left_ms, probing = await self._shared_state(redis)
        if left_ms > 0 and self._state != CircuitState.OPEN:
            self.opened_at = time.monotonic() - self.open_s + left_ms / 1000
            self._set(CircuitState.OPEN)
        elif left_ms > 0 and self.state == CircuitState.HALF_OPEN:
            # another replica opened it again after a failed probe
            self.opened_at = time.monotonic() - self.open_s + left_ms / 1000
        elif (
            left_ms <= 0
            and not probing
            and self._state == CircuitState.OPEN
            and not self._probe.locked()
            and await redis.exists(self._closed_key)
        ):
            self.failures = 0
            self._set(CircuitState.CLOSED)

    async def _shared_state(self, redis: Redis) -> tuple[int, bool]:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.pttl(self._open_key)
            pipe.exists(self._probe_key)
            left, probing = await pipe.execute()
        return int(left), bool(probing)

    async def _win_probe(self) -> bool:
        """One probe for all replicas: the one that sets the probe key sends it."""
        if self.redis is None:
            return True
        ttl_ms = int(max(self.open_s, 1.0) * 1000)
        with contextlib.suppress(RedisError, OSError):  # without Redis: this replica probes
            return bool(await self.redis.set(self._probe_key, b"1", nx=True, px=ttl_ms))
        return True

    async def record(self, ok: bool, probe: bool) -> None:
        """Record a call's result (``ok``: not a HubSpot failure); ``probe``: it was the probe."""
        was = self._state
        if ok:
            self.failures = 0
            self._set(CircuitState.CLOSED)
        else:
            self.failures += 1
            if probe or self.failures >= self.threshold:
                self.opened_at = time.monotonic()
                self._set(CircuitState.OPEN)
        if self.redis is not None:
            # the local breaker still works without Redis; health reports Redis being down
            with contextlib.suppress(RedisError, OSError):
                await self._share(self.redis, ok, probe, was)
        if probe and self._probe.locked():
            self._probe.release()

    async def _share(self, redis: Redis, ok: bool, probe: bool, was: CircuitState) -> None:
        open_ms = int(self.open_s * 1000)
        if self._state == CircuitState.OPEN and (probe or was != CircuitState.OPEN):
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set(self._open_key, b"1", px=max(open_ms, 1))
                pipe.delete(self._probe_key, self._closed_key)
                await pipe.execute()
        elif ok and probe:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._open_key, self._probe_key)
                # tells replicas still holding an old "open" that a probe closed it
                pipe.set(self._closed_key, b"1", px=max(open_ms * 4, 1000))
                await pipe.execute()

    def _set(self, state: CircuitState) -> None:
        self._state = state
        _state_gauge.set(int(state), self.portal_id)


class CircuitBreakers:
    """One :class:`CircuitBreaker` per portal, made on first use."""

    def __init__(self, threshold: int, open_s: float, redis: Redis | None = None) -> None:
        """Give every portal's breaker these settings (and ``redis`` to share it)."""
        self.threshold = threshold
        self.open_s = open_s
        self.redis = redis
        self._by_portal: dict[int, CircuitBreaker] = {}

    def portals(self) -> list[int]:
        """Portals this process has talked to."""
        return sorted(self._by_portal)

    def get(self, portal_id: int) -> CircuitBreaker:
        """Return the portal's breaker."""
        breaker = self._by_portal.get(portal_id)
        if breaker is None:
            breaker = self._by_portal[portal_id] = CircuitBreaker(
                portal_id, self.threshold, self.open_s, self.redis
            )
        return breaker
