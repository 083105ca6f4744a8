"""The Redis rate limiter: limits hold across concurrent acquirers; headers correct our count."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis

from hubsync.core.errors import ResourceExhausted
from hubsync.writer.ratelimit import Budget, RateLimiter, next_midnight


def limiter(
    redis: Redis, limit: int = 10, window_ms: int = 400, daily: int = 0, zone: tzinfo = UTC
) -> RateLimiter:
    return RateLimiter(
        redis, Budget("burst", limit, window_ms, daily), Budget("search", 3, 1000), reset_zone=zone
    )


async def test_no_window_holds_more_than_the_limit(redis: Redis) -> None:
    # Two limiters on one Redis stand for two replicas.
    a, b = limiter(redis), limiter(redis)
    stamps: list[float] = []

    async def take(lim: RateLimiter) -> None:
        await lim.acquire(7)
        stamps.append(time.monotonic())

    await asyncio.gather(*(take(a if n % 2 else b) for n in range(30)))
    stamps.sort()
    assert len(stamps) == 30
    # Any 11 consecutive grants span at least the window (less a little clock slack).
    assert min(stamps[i + 10] - stamps[i] for i in range(len(stamps) - 10)) >= 0.38


async def test_a_request_that_cannot_get_a_slot_before_its_deadline_fails(redis: Redis) -> None:
    lim = limiter(redis, limit=1, window_ms=5000)
    await lim.acquire(7)
    with pytest.raises(ResourceExhausted) as err:
        await lim.acquire(7, deadline=time.monotonic() + 0.2)
    assert err.value.retry_after is not None and err.value.retry_after > 4


async def test_daily_budget(redis: Redis) -> None:
    lim = limiter(redis, limit=100, daily=2)
    await lim.acquire(7)
    await lim.acquire(7)
    with pytest.raises(ResourceExhausted) as err:
        await lim.acquire(7)
    assert err.value.reason == "DAILY_LIMIT"
    assert (await lim.usage(7)).daily_used == 2


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "America/New_York"])
async def test_the_daily_budget_restarts_at_midnight_in_the_accounts_zone(redis: Redis, zone: str) -> None:
    # Kiritimati is UTC+14 and Pago Pago UTC-11: their days start 14 h before and 11 h after UTC's.
    lim = limiter(redis, limit=100, daily=1, zone=ZoneInfo(zone))
    await lim.acquire(8)
    with pytest.raises(ResourceExhausted) as err:
        await lim.acquire(8)
    expected = next_midnight(ZoneInfo(zone), time.time()) - time.time()
    assert err.value.retry_after is not None and abs(err.value.retry_after - expected) < 5
    assert (await lim.usage(8)).daily_used == 1
    # After a DAILY 429 the portal is blocked until that same midnight.
    await lim.block_until_daily_reset(8)
    blocked_until = int(await redis.hget("hubsync:{8}:rl:info", "blocked_until") or 0)
    assert abs(blocked_until / 1000 - lim.next_reset()) < 5


def test_next_midnight_follows_daylight_saving_time() -> None:
    new_york = ZoneInfo("America/New_York")
    # 2026-03-08 is the spring-forward day there: that day has 23 hours, the next midnight is EDT.
    noon = datetime(2026, 3, 8, 12, 0, tzinfo=new_york).timestamp()
    assert next_midnight(new_york, noon) == datetime(2026, 3, 9, 4, 0, tzinfo=UTC).timestamp()
    # In winter midnight in New York is 05:00 UTC; just before it, the next one is that one.
    assert (
        next_midnight(new_york, datetime(2026, 1, 15, 4, 59, tzinfo=UTC).timestamp())
        == datetime(2026, 1, 15, 5, 0, tzinfo=UTC).timestamp()
    )
    assert (
        next_midnight(UTC, datetime(2026, 1, 15, 23, 0, tzinfo=UTC).timestamp())
        == datetime(2026, 1, 16, tzinfo=UTC).timestamp()
    )


async def test_hubspot_headers_raise_our_count(redis: Redis) -> None:
    lim = limiter(redis, limit=10, window_ms=10_000)
    await lim.acquire(7)
    await lim.correct(7, {"X-HubSpot-RateLimit-Max": "10", "X-HubSpot-RateLimit-Remaining": "3"})
    use = await lim.usage(7)
    assert use.burst_used == 7 and use.hubspot_remaining == 3
    # A lower count from HubSpot never lowers ours.
    await lim.correct(7, {"X-HubSpot-RateLimit-Max": "10", "X-HubSpot-RateLimit-Remaining": "9"})
    assert (await lim.usage(7)).burst_used == 7
    await lim.fill_window(7)
    assert (await lim.usage(7)).burst_used == 10


async def test_search_is_counted_apart(redis: Redis) -> None:
    lim = limiter(redis, limit=1, window_ms=10_000)
    await lim.acquire(7)
    for _ in range(3):
        await lim.acquire(7, search=True)
    with pytest.raises(ResourceExhausted):
        await lim.acquire(7, search=True, deadline=time.monotonic() + 0.05)
    assert (await lim.usage(7)).burst_used == 1


async def test_hubspots_limit_headers_replace_the_preset_for_every_replica(redis: Redis) -> None:
    a, b = limiter(redis, limit=100, window_ms=10_000), limiter(redis, limit=100, window_ms=10_000)
    await a.correct(7, {"X-HubSpot-RateLimit-Max": "3", "X-HubSpot-RateLimit-Remaining": "3"})
    limits = await b.limits(7)
    assert (limits.burst, limits.learned) == (3, True)
    for _ in range(3):
        await b.acquire(7)
    with pytest.raises(ResourceExhausted):
        await a.acquire(7, deadline=time.monotonic() + 0.2)
    # An explicit limit caps what HubSpot allows; a preset does not.
    capped = RateLimiter(redis, Budget("burst", 2, 10_000), Budget("search", 3, 1000), cap_burst=True)
    assert (await capped.limits(7)).burst == 2
    await a.correct(7, {"X-HubSpot-RateLimit-Max": "50", "X-HubSpot-RateLimit-Remaining": "47"})
    assert (await b.limits(7)).burst == 50 and (await capped.limits(7)).burst == 2


async def test_until_the_limits_are_known_one_request_probes_at_a_time(redis: Redis) -> None:
    lim = RateLimiter(redis, Budget("burst", 100, 10_000), Budget("search", 3, 1000), probe_ttl_ms=5000)
    first = await lim.acquire(7)
    with pytest.raises(ResourceExhausted):
        await lim.acquire(7, deadline=time.monotonic() + 0.2)
    await lim.settle(7, first, {"X-HubSpot-RateLimit-Max": "10", "X-HubSpot-RateLimit-Remaining": "9"})
    for _ in range(9):
        await lim.acquire(7, deadline=time.monotonic() + 1)


async def test_a_window_is_busy_when_the_demand_coming_would_fill_it(redis: Redis) -> None:
    # A free window of 20 per 10 s: one call a second coming (10 per window) is more than a
    # quarter of it; one call every 10 s is not.
    lim = limiter(redis, limit=20, window_ms=10_000)
    _, busy = await lim.acquire_slot(7, busy_at=0.25, demand_per_s=1.0)
    assert busy
    _, busy = await lim.acquire_slot(8, busy_at=0.25, demand_per_s=0.1)
    assert not busy
