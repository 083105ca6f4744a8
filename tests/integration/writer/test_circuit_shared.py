"""The circuit breaker is shared by writer replicas through Redis (two breakers, one Redis)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from hubsync.core.errors import Unavailable
from hubsync.writer.circuit import CircuitBreakers, CircuitState

PORTAL = 4242


@pytest.mark.on_cluster
async def test_one_replica_opens_for_all_and_one_probe_closes_for_all(redis: Redis) -> None:
    a = CircuitBreakers(threshold=2, open_s=0.3, redis=redis).get(PORTAL)
    b = CircuitBreakers(threshold=2, open_s=0.3, redis=redis).get(PORTAL)
    assert await a.admit() is False and await b.admit() is False
    await a.record(False, False)
    await a.record(False, False)
    assert a.state == CircuitState.OPEN
    # b never saw a failure, yet fails fast: the outage costs the quota nothing more
    with pytest.raises(Unavailable) as err:
        await b.admit()
    assert err.value.reason == "CIRCUIT_OPEN"
    await asyncio.sleep(0.35)
    # half-open: exactly one of the replicas gets to probe
    outcomes: list[bool | str] = []
    for breaker in (a, b):
        try:
            outcomes.append(await breaker.admit())
        except Unavailable:
            outcomes.append("refused")
    assert sorted(map(str, outcomes)) == ["True", "refused"], outcomes
    prober, other = (a, b) if outcomes[0] is True else (b, a)
    await prober.record(True, True)
    assert prober.state == CircuitState.CLOSED
    assert await other.admit() is False  # the other replica follows the probe's success
    assert other.state == CircuitState.CLOSED


async def test_a_failed_probe_opens_again_for_all(redis: Redis) -> None:
    a = CircuitBreakers(threshold=1, open_s=0.2, redis=redis).get(PORTAL + 1)
    b = CircuitBreakers(threshold=1, open_s=0.2, redis=redis).get(PORTAL + 1)
    await a.record(False, False)
    with pytest.raises(Unavailable):
        await b.admit()
    await asyncio.sleep(0.25)
    assert await a.admit() is True
    await a.record(False, True)  # HubSpot still failing
    with pytest.raises(Unavailable):
        await b.admit()
    with pytest.raises(Unavailable):
        await a.admit()
