"""The distributed rate limiter: one portal's HubSpot quota shared by every writer replica.

Three budgets per portal, each atomic in Redis (Lua, Redis's own clock):

- the rolling burst window (a sorted set of request stamps: at most ``burst`` in any window),
- the daily budget (a counter reset at midnight in ``reset_zone``: HubSpot resets it at midnight
  in the account's time zone, which ``HUBSYNC_WRITER_DAILY_RESET_TIMEZONE`` names; UTC by default),
- search's requests per second, counted apart from the rest (search is not in the burst count).

A request waits for a slot, bounded by its deadline, rather than being sent to fail. HubSpot's
``X-HubSpot-RateLimit-*`` headers correct our count upwards when HubSpot saw more requests
than we did (another app on the same account, a restart that lost nothing but timing).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from opentelemetry import metrics
from redis.asyncio import Redis

from hubsync.core.errors import ResourceExhausted
from hubsync.core.redis import portal_key

_meter = metrics.get_meter("hubsync.writer")
_remaining = _meter.create_gauge(
    "hubsync.ratelimit.remaining", description="Requests left in the portal's burst window"
)

# KEYS: window zset, daily hash, info hash. ARGV: limit, window_ms, daily_limit, member, the reset
# zone's UTC offset in ms (days are counted from midnight there). Returns {granted (1|0|-1 daily),
# wait_ms, used}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = tonumber(redis.call('HGET', KEYS[3], 'blocked_until') or '0')
if blocked > now then return {-1, blocked - now, 0} end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local daily = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + window - now + 1
  if wait < 1 then wait = 1 end
  return {0, wait, used}
end
local local_now = now + tonumber(ARGV[5])
local day = math.floor(local_now / 86400000)
if daily > 0 then
  local stored = redis.call('HMGET', KEYS[2], 'day', 'count')
  local count = 0
  if tonumber(stored[1]) == day then count = tonumber(stored[2]) or 0 end
  if count >= daily then
    return {-1, (day + 1) * 86400000 - local_now, count}
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window * 2)
local stored = redis.call('HMGET', KEYS[2], 'day', 'count')
if tonumber(stored[1]) ~= day then
  redis.call('HSET', KEYS[2], 'day', day, 'count', 1)
else
  redis.call('HINCRBY', KEYS[2], 'count', 1)
end
redis.call('PEXPIRE', KEYS[2], 2 * 86400000)
return {1, 0, used + 1}
"""

# KEYS: window zset. ARGV: member. Moves a granted stamp to now (the response came back), so the
# stamp is never earlier than HubSpot's arrival time however long the request took to leave.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
"""

# KEYS: window zset, daily hash, info hash. ARGV: hubspot_used (-1 unknown), fill_to (-1 none),
# daily_used (-1 unknown), remaining, window_ms, token, the reset zone's UTC offset in ms.
# Adds phantom stamps so our window holds at least what HubSpot counted.
_CORRECT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
local want = tonumber(ARGV[1])
local fill = tonumber(ARGV[2])
if fill > want then want = fill end
local added = 0
while used + added < want do
  redis.call('ZADD', KEYS[1], now, ARGV[6] .. ':' .. added)
  added = added + 1
end
if added > 0 then redis.call('PEXPIRE', KEYS[1], window * 2) end
local daily_used = tonumber(ARGV[3])
if daily_used >= 0 then
  local day = math.floor((now + tonumber(ARGV[7])) / 86400000)
  local stored = redis.call('HMGET', KEYS[2], 'day', 'count')
  if tonumber(stored[1]) ~= day or (tonumber(stored[2]) or 0) < daily_used then
    redis.call('HSET', KEYS[2], 'day', day, 'count', daily_used)
    redis.call('PEXPIRE', KEYS[2], 2 * 86400000)
  end
end
if tonumber(ARGV[4]) >= 0 then
  redis.call('HSET', KEYS[3], 'remaining', ARGV[4], 'at', now)
end
return added
"""


@dataclass(frozen=True)
class Budget:
    """One budget: at most ``limit`` requests per ``window_ms`` (and ``daily`` a day; 0 = none)."""

    name: str
    limit: int
    window_ms: int
    daily: int = 0


@dataclass
class QuotaUse:
    burst_used: int
    daily_used: int
    hubspot_remaining: int


class RateLimiter:
    """Grants request slots per portal; every replica shares the counts through Redis."""

    def __init__(
        self, redis: Redis, api: Budget, search: Budget, margin_ms: int = 0, reset_zone: tzinfo = UTC
    ) -> None:
        self.redis = redis
        self.api = api
        self.search = search
        self.margin_ms = margin_ms
        # Where the daily budget's day starts at midnight (HubSpot: the account's time zone).
        self.reset_zone = reset_zone
        self._acquire = redis.register_script(_ACQUIRE)
        self._correct = redis.register_script(_CORRECT)
        self._settle = redis.register_script(_SETTLE)

    def _keys(self, portal_id: int, budget: Budget) -> list[str]:
        return [
            portal_key(portal_id, "rl", budget.name),
            portal_key(portal_id, "rl", "daily"),
            portal_key(portal_id, "rl", "info"),
        ]

    async def acquire(self, portal_id: int, *, search: bool = False, deadline: float | None = None) -> str:
        """Waits for a slot and returns its id (for :meth:`settle`); raises ResourceExhausted
        when none comes before ``deadline`` (``time.monotonic()`` seconds)."""
        member, _waited = await self.acquire_slot(portal_id, search=search, deadline=deadline)
        return member

    async def acquire_slot(
        self, portal_id: int, *, search: bool = False, deadline: float | None = None, busy_at: float = 1.0
    ) -> tuple[str, bool]:
        """Like :meth:`acquire`; also says whether the window is busy: the slot had to be waited
        for, or more than ``busy_at`` of the window's budget is used."""
        budget = self.search if search else self.api
        keys = self._keys(portal_id, budget)
        if search:
            keys[2] = portal_key(portal_id, "rl", "info", "search")
        window = budget.window_ms + (0 if search else self.margin_ms)
        daily = 0 if search else budget.daily
        waited = False
        while True:
            member = uuid.uuid4().hex
            granted, wait_ms, used = await self._acquire(
                keys=keys, args=[budget.limit, window, daily, member, self._offset_ms()]
            )
            if int(granted) == 1:
                if not search:
                    _remaining.set(budget.limit - int(used), {"portal": str(portal_id), "source": "writer"})
                return member, waited or int(used) > budget.limit * busy_at
            wait = int(wait_ms) / 1000
            if int(granted) == -1:
                raise ResourceExhausted(
                    f"portal {portal_id} used its daily budget of {daily} requests",
                    reason="DAILY_LIMIT",
                    retry_after=wait,
                )
            if deadline is not None and time.monotonic() + wait > deadline:
                raise ResourceExhausted(
                    f"portal {portal_id}: no {budget.name} slot before the deadline",
                    reason="RATE_LIMITED",
                    retry_after=wait,
                )
            waited = True
            await asyncio.sleep(wait)

    async def release(self, portal_id: int, member: str) -> None:
        """Gives an unused slot back (a batch chose to wait for more writes)."""
        await self.redis.zrem(portal_key(portal_id, "rl", self.api.name), member)

    async def settle(
        self, portal_id: int, member: str, headers: Mapping[str, str], *, search: bool = False
    ) -> None:
        """After the response: re-stamps the slot at the response time, then corrects the
        counts from HubSpot's headers. A request can leave late (a busy event loop, a full
        connection pool); HubSpot counts it on arrival, so the stamp must not be earlier."""
        budget = self.search if search else self.api
        await self._settle(keys=[portal_key(portal_id, "rl", budget.name)], args=[member])
        if not search and headers:
            await self.correct(portal_id, headers)

    async def correct(self, portal_id: int, headers: Mapping[str, str]) -> None:
        """Brings our counts up to what HubSpot's response headers say it counted."""
        lower = {k.lower(): v for k, v in headers.items()}
        remaining = _int(lower.get("x-hubspot-ratelimit-remaining"))
        maximum = _int(lower.get("x-hubspot-ratelimit-max"))
        daily = _int(lower.get("x-hubspot-ratelimit-daily"))
        daily_remaining = _int(lower.get("x-hubspot-ratelimit-daily-remaining"))
        if remaining is None:
            return
        hubspot_used = -1
        if maximum is not None:
            limit = self.api.limit
            # HubSpot's limit may be lower than ours (a wrong preset): then only `remaining` is left.
            hubspot_used = min(limit, maximum - remaining) if maximum >= limit else limit - remaining
            hubspot_used = max(hubspot_used, 0)
        daily_used = daily - daily_remaining if daily is not None and daily_remaining is not None else -1
        _remaining.set(remaining, {"portal": str(portal_id), "source": "hubspot"})
        await self._correct(
            keys=self._keys(portal_id, self.api),
            args=[
                hubspot_used,
                -1,
                daily_used,
                remaining,
                self.api.window_ms + self.margin_ms,
                uuid.uuid4().hex,
                self._offset_ms(),
            ],
        )

    def _offset_ms(self) -> int:
        """The reset zone's offset from UTC now, in ms (DST included)."""
        offset = datetime.now(self.reset_zone).utcoffset()
        return int(offset.total_seconds() * 1000) if offset is not None else 0

    def next_reset(self) -> float:
        """The next midnight in the reset zone (epoch seconds)."""
        return next_midnight(self.reset_zone, time.time())

    async def block_until_daily_reset(self, portal_id: int) -> float:
        """After a DAILY 429: no replica sends to this portal before the next midnight in the
        reset zone (set it to the account's time zone, or this lifts early or late). Returns the
        seconds until then."""
        reset = self.next_reset()
        until = int(reset * 1000)
        info = self._keys(portal_id, self.api)[2]
        await self.redis.hset(info, "blocked_until", until)
        await self.redis.pexpireat(info, until + 86_400_000)
        return reset - time.time()

    async def fill_window(self, portal_id: int) -> None:
        """After a TEN_SECONDLY_ROLLING 429: marks the window full so every replica waits."""
        await self._correct(
            keys=self._keys(portal_id, self.api),
            args=[-1, self.api.limit, -1, -1, self.api.window_ms + self.margin_ms, uuid.uuid4().hex],
        )

    async def usage(self, portal_id: int) -> QuotaUse:
        window_key, daily_key, info_key = self._keys(portal_id, self.api)
        now_s, now_us = await self.redis.time()
        now = int(now_s) * 1000 + int(now_us) // 1000
        burst = await self.redis.zcount(window_key, now - self.api.window_ms - self.margin_ms, "+inf")
        stored: Any = await self.redis.hmget(daily_key, ["day", "count"])
        day, count = stored
        today = (now + self._offset_ms()) // 86_400_000
        daily_used = int(count) if day is not None and int(day) == today else 0
        remaining: Any = await self.redis.hget(info_key, "remaining")
        left = self.api.limit - int(burst)
        _remaining.set(left, {"portal": str(portal_id), "source": "writer"})
        return QuotaUse(int(burst), daily_used, int(remaining) if remaining is not None else -1)


def next_midnight(zone: tzinfo, now: float) -> float:
    """The epoch seconds of the first midnight in ``zone`` after ``now`` (DST-aware)."""
    local = datetime.fromtimestamp(now, zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone) + timedelta(days=1)
    return midnight.timestamp()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
