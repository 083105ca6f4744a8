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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from opentelemetry import metrics
from redis.asyncio import Redis

from hubsync.core.errors import ResourceExhausted
from hubsync.core.keys import (
    rate_daily_key,
    rate_info_key,
    rate_learned_key,
    rate_probe_key,
    rate_window_key,
)
from hubsync.core.portal_metrics import PortalGauge
from hubsync.core.redis import pipelined

__all__ = [
    "Budget",
    "LimitOverride",
    "Limits",
    "OverrideLookup",
    "Plan",
    "QuotaUse",
    "RateLimiter",
    "ReservedSlot",
    "next_midnight",
]

_meter = metrics.get_meter("hubsync.writer")
# Folded over portals: the least headroom (the portal closest to its limit).
_remaining = PortalGauge("min")
_meter.create_observable_gauge(
    "hubsync.ratelimit.remaining",
    callbacks=[_remaining.observe],
    description="Requests left in the portal's burst window",
)

# The effective limits: what HubSpot's headers said (``learned`` hash), capped by the operator's
# explicit BURST_LIMIT / DAILY_LIMIT; the preset only until HubSpot has said.
_EFFECTIVE = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local daily = tonumber(ARGV[3])
local learned = redis.call('HMGET', KEYS[4], 'max', 'interval_ms', 'daily_max')
local lmax = tonumber(learned[1])
local lint = tonumber(learned[2])
local ldaily = tonumber(learned[3])
if lmax and lmax > 0 then
  if ARGV[6] == '1' and limit < lmax then lmax = limit end
  limit = lmax
end
if lint and lint > 0 then window = lint + tonumber(ARGV[8]) end
if ldaily and ldaily > 0 then
  if not (ARGV[7] == '1' and daily > 0 and daily < ldaily) then daily = ldaily end
end
"""

# KEYS: window zset, daily hash, info hash, learned hash, probe key. ARGV: limit, window_ms (with
# the margin), daily_limit, member, the reset zone's UTC offset in ms (days are counted from
# midnight there), burst is an explicit cap (1|0), daily is an explicit cap (1|0), margin_ms,
# probe TTL in ms (0: no probe). Returns {granted (1|0|-1 daily), wait_ms, used, limit} and, when
# granted, whether the slot is the probe (1|0).
# Until HubSpot's headers have told this portal's limits, one request at a time is let through
# (the probe) so no burst goes out under a preset that may be too high.
_ACQUIRE = (
    _EFFECTIVE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = tonumber(redis.call('HGET', KEYS[3], 'blocked_until') or '0')
if blocked > now then return {-1, blocked - now, 0, limit} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + window - now + 1
  if wait < 1 then wait = 1 end
  return {0, wait, used, limit}
end
local local_now = now + tonumber(ARGV[5])
local day = math.floor(local_now / 86400000)
if daily > 0 then
  local stored = redis.call('HMGET', KEYS[2], 'day', 'count')
  local count = 0
  if tonumber(stored[1]) == day then count = tonumber(stored[2]) or 0 end
  if count >= daily then
    return {-1, (day + 1) * 86400000 - local_now, count, limit}
  end
end
local probe = 0
if tonumber(ARGV[9]) > 0 and not lmax then
  if not redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[9], 'NX') then return {0, 50, used, limit} end
  probe = 1
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
return {1, 0, used + 1, limit, probe}
"""
)

# KEYS: window zset. ARGV: member. Moves a granted stamp to now (the response came back), so the
# stamp is never earlier than HubSpot's arrival time however long the request took to leave.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
"""

# KEYS: window zset, daily hash, info hash, learned hash. ARGV: hubspot_used (-1 unknown), fill_to
# (-1 none), daily_used (-1 unknown), remaining, window_ms, token, the reset zone's UTC offset in
# ms, HubSpot's max, interval_ms and daily max (-1 unknown each; 0 max: probed, HubSpot sent no
# limits). Adds phantom stamps so our window holds at least what HubSpot counted, and keeps the
# limits HubSpot named (LEARNED_TTL_S) for every replica.
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
local names = {'max', 'interval_ms', 'daily_max'}
local learned = false
for i = 1, 3 do
  local v = tonumber(ARGV[7 + i])
  if v and v >= 0 then
    redis.call('HSET', KEYS[4], names[i], ARGV[7 + i])
    learned = true
  end
end
if learned then redis.call('HSET', KEYS[4], 'at', now); redis.call('EXPIRE', KEYS[4], 604800) end
return added
"""

# KEYS: probe key. ARGV: member. Ends the probe this slot held (its response came back).
_END_PROBE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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
    """A portal's use of its budgets now, and HubSpot's last ``Remaining`` header."""

    burst_used: int
    daily_used: int
    hubspot_remaining: int


@dataclass(frozen=True)
class Limits:
    """A portal's limits in force: HubSpot's (learned from its headers) or our configured ones."""

    burst: int
    window_ms: int
    daily: int
    learned: bool


@dataclass(frozen=True)
class LimitOverride:
    """A portal's own limits (per-portal configuration).

    Each set value replaces the configured one and caps what HubSpot's headers allow, like an
    explicit BURST_LIMIT / DAILY_LIMIT.
    """

    burst: int | None = None
    daily: int | None = None


@dataclass(frozen=True)
class Plan:
    """The budget a portal's requests are granted against before HubSpot's learned limits."""

    burst: int
    daily: int
    cap_burst: bool
    cap_daily: bool
    overridden: bool = False


OverrideLookup = Callable[[int], Awaitable[LimitOverride | None]]


class ReservedSlot:
    """A burst-window slot taken ahead of a call (the coalescer takes one per batch).

    Passed down to :meth:`~hubsync.writer.hubspot_client.HubSpotClient.call`: the first call
    that takes it goes on it; a retry, a split half or a conflict's update takes its own.
    """

    def __init__(self, member: str | None) -> None:
        """Hold ``member`` (None: no slot was taken)."""
        self._member = member

    def take(self) -> str | None:
        """Return the slot's member, once; None after that (or when no slot was taken)."""
        member, self._member = self._member, None
        return member


class RateLimiter:
    """Grants request slots per portal; every replica shares the counts through Redis.

    The limits are HubSpot's own once a response has carried its ``X-HubSpot-RateLimit-Max`` /
    ``-Interval-Milliseconds`` / ``-Daily`` headers (kept per portal in
    ``hubsync:{<portal>}:rl:learned``, shared by every replica, refreshed by every response);
    before that, the configured budget, with one request at a time (the probe, ``probe_ttl_ms``
    > 0) so a preset higher than the portal's real limit never sends a burst past it. Limits set
    explicitly (``cap_burst``, ``cap_daily``) cap what HubSpot allows; a preset does not.
    """

    def __init__(
        self,
        redis: Redis,
        api: Budget,
        search: Budget,
        margin_ms: int = 0,
        reset_zone: tzinfo = UTC,
        *,
        cap_burst: bool = False,
        cap_daily: bool = False,
        probe_ttl_ms: int = 0,
        overrides: OverrideLookup | None = None,
    ) -> None:
        """Grant ``api`` and ``search`` budgets' slots in ``redis``; see the class docstring."""
        self.overrides = overrides
        self.redis = redis
        self.api = api
        self.search = search
        self.margin_ms = margin_ms
        # Where the daily budget's day starts at midnight (HubSpot: the account's time zone).
        self.reset_zone = reset_zone
        self.cap_burst = cap_burst
        self.cap_daily = cap_daily
        self.probe_ttl_ms = probe_ttl_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._correct = redis.register_script(_CORRECT)
        self._settle = redis.register_script(_SETTLE)
        self._end_probe = redis.register_script(_END_PROBE)
        # The slots this replica was granted as a portal's probe: only those have one to end.
        self._probes: set[str] = set()

    async def plan(self, portal_id: int) -> Plan:
        """Return the portal's budget: the configured one, or its per-portal override (which caps)."""
        plan = Plan(self.api.limit, self.api.daily, self.cap_burst, self.cap_daily)
        override = await self.overrides(portal_id) if self.overrides is not None else None
        if override is None or (override.burst is None and override.daily is None):
            return plan
        return Plan(
            override.burst if override.burst is not None else plan.burst,
            override.daily if override.daily is not None else plan.daily,
            plan.cap_burst or override.burst is not None,
            plan.cap_daily or override.daily is not None,
            overridden=True,
        )

    def _keys(self, portal_id: int, budget: Budget) -> list[str]:
        return [
            rate_window_key(portal_id, budget.name),
            rate_daily_key(portal_id),
            rate_info_key(portal_id),
            rate_learned_key(portal_id),
            rate_probe_key(portal_id),
        ]

    async def acquire(self, portal_id: int, *, search: bool = False, deadline: float | None = None) -> str:
        """Wait for a slot and return its id (for :meth:`settle`).

        Raises ResourceExhausted when none comes before ``deadline`` (``time.monotonic()``
        seconds).
        """
        member, _waited = await self.acquire_slot(portal_id, search=search, deadline=deadline)
        return member

    async def acquire_slot(
        self,
        portal_id: int,
        *,
        search: bool = False,
        deadline: float | None = None,
        busy_at: float = 1.0,
        demand_per_s: float = 0.0,
    ) -> tuple[str, bool]:
        """Wait for a slot like :meth:`acquire`; also say whether the window is busy.

        Busy: the slot had to be waited for, or more than ``busy_at`` of the window's budget is
        used, or would be by ``demand_per_s`` calls per second (what the caller sees coming).
        """
        budget = self.search if search else self.api
        keys = self._keys(portal_id, budget)
        if search:
            keys[2] = rate_info_key(portal_id, search=True)
            keys[3] = rate_learned_key(portal_id, search=True)  # never written: search
        window = budget.window_ms + (0 if search else self.margin_ms)
        plan = await self.plan(portal_id) if not search else None
        # The budget asked for (the script answers with the limit in force, learned or this).
        asked = plan.burst if plan is not None else budget.limit
        daily = plan.daily if plan is not None else 0
        caps = (plan.cap_burst, plan.cap_daily) if plan is not None else (False, False)
        waited = False
        while True:
            member = uuid.uuid4().hex
            granted, wait_ms, used, limit, *probe = await self._acquire(
                keys=keys,
                args=[
                    asked,
                    window,
                    daily,
                    member,
                    self._offset_ms(),
                    int(caps[0]),
                    int(caps[1]),
                    0 if search else self.margin_ms,
                    0 if search else self.probe_ttl_ms,
                ],
            )
            if int(granted) == 1:
                if probe and int(probe[0]) == 1:
                    self._probes.add(member)
                if not search:
                    _remaining.set(int(limit) - int(used), portal_id, {"source": "writer"})
                coming = demand_per_s * window / 1000
                return member, waited or max(int(used), coming) > int(limit) * busy_at
            wait = int(wait_ms) / 1000
            if int(granted) == -1:
                raise ResourceExhausted(
                    f"portal {portal_id} used its daily budget",
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
        """Give an unused slot back (a batch chose to wait for more writes)."""
        await self.redis.zrem(rate_window_key(portal_id, self.api.name), member)
        await self.end_probe(portal_id, member)

    async def end_probe(self, portal_id: int, member: str) -> None:
        """End the slot's probe: its request is over (answered, or never sent); another may probe."""
        if member in self._probes:
            self._probes.discard(member)
            await self._end_probe(keys=[rate_probe_key(portal_id)], args=[member])

    async def settle(
        self, portal_id: int, member: str, headers: Mapping[str, str], *, search: bool = False
    ) -> None:
        """Re-stamp the slot at the response time, then correct the counts from the headers.

        Called after the response; also learns the limits. A request can leave late (a busy
        event loop, a full connection pool); HubSpot counts it on arrival, so the stamp must not
        be earlier.
        """
        budget = self.search if search else self.api
        commands: list[list[Any]] = [
            ["EVALSHA", self._settle.sha, 1, rate_window_key(portal_id, budget.name), member]
        ]
        if (
            not search
            and headers
            and (correct := await self._correct_command(portal_id, headers, probed=True))
        ):
            commands.append(correct)
        # One round trip for both (keys of the portal's slot; the re-stamp runs first).
        await pipelined(self.redis, commands, scripts=(_SETTLE, _CORRECT))
        if not search:
            await self.end_probe(portal_id, member)

    async def correct(self, portal_id: int, headers: Mapping[str, str], *, probed: bool = False) -> None:
        """Bring our counts up to what HubSpot's headers say it counted; keep the limits named.

        ``probed``: an answer of ours (one without limit headers means HubSpot gives none: the
        configured budget applies, no more probes).
        """
        if command := await self._correct_command(portal_id, headers, probed=probed):
            await pipelined(self.redis, [command], scripts=(_CORRECT,))

    async def _correct_command(
        self, portal_id: int, headers: Mapping[str, str], *, probed: bool
    ) -> list[Any] | None:
        """The ``EVALSHA`` of :meth:`correct` (None: the headers say nothing to correct)."""
        lower = {k.lower(): v for k, v in headers.items()}
        remaining = _int(lower.get("x-hubspot-ratelimit-remaining"))
        maximum = _int(lower.get("x-hubspot-ratelimit-max"))
        interval = _int(lower.get("x-hubspot-ratelimit-interval-milliseconds"))
        daily = _int(lower.get("x-hubspot-ratelimit-daily"))
        daily_remaining = _int(lower.get("x-hubspot-ratelimit-daily-remaining"))
        if remaining is None and maximum is None and not probed:
            return None
        hubspot_used = -1
        if remaining is not None:
            # What HubSpot leaves us of the limit in force: only `remaining` more may go.
            plan = await self.plan(portal_id)
            limit = plan.burst if maximum is None else maximum
            if maximum is not None and plan.cap_burst:
                limit = min(limit, plan.burst)
            hubspot_used = max(limit - remaining, 0)
            _remaining.set(remaining, portal_id, {"source": "hubspot"})
        daily_used = daily - daily_remaining if daily is not None and daily_remaining is not None else -1
        learned_max = maximum if maximum is not None and maximum > 0 else (0 if probed else -1)
        keys = self._keys(portal_id, self.api)[:4]
        return [
            "EVALSHA",
            self._correct.sha,
            len(keys),
            *keys,
            hubspot_used,
            -1,
            daily_used,
            remaining if remaining is not None else -1,
            self.api.window_ms + self.margin_ms,
            uuid.uuid4().hex,
            self._offset_ms(),
            learned_max,
            interval if interval is not None and interval > 0 else -1,
            daily if daily is not None and daily > 0 else -1,
        ]

    async def limits(self, portal_id: int) -> Limits:
        """Return the limits in force for the portal (learned from HubSpot, else configured)."""
        raw: Any = await self.redis.hmget(rate_learned_key(portal_id), ["max", "interval_ms", "daily_max"])
        learned_max, interval, daily_max = (int(v) if v is not None else 0 for v in raw)
        plan = await self.plan(portal_id)
        burst = plan.burst
        if learned_max > 0:
            burst = min(burst, learned_max) if plan.cap_burst else learned_max
        daily = plan.daily
        if daily_max > 0 and not (plan.cap_daily and 0 < daily < daily_max):
            daily = daily_max
        return Limits(burst, interval or self.api.window_ms, daily, learned_max > 0)

    def _offset_ms(self) -> int:
        """Return the reset zone's offset from UTC now, in ms (DST included)."""
        offset = datetime.now(self.reset_zone).utcoffset()
        return int(offset.total_seconds() * 1000) if offset is not None else 0

    def next_reset(self) -> float:
        """Return the next midnight in the reset zone (epoch seconds)."""
        return next_midnight(self.reset_zone, time.time())

    async def block_until_daily_reset(self, portal_id: int) -> float:
        """Stop every replica sending to this portal until the daily reset (after a DAILY 429).

        That is the next midnight in the reset zone (set it to the account's time zone, or this
        lifts early or late). Returns the seconds until then.
        """
        reset = self.next_reset()
        until = int(reset * 1000)
        info = self._keys(portal_id, self.api)[2]
        await self.redis.hset(info, "blocked_until", until)
        await self.redis.pexpireat(info, until + 86_400_000)
        return reset - time.time()

    async def fill_window(self, portal_id: int) -> None:
        """After a TEN_SECONDLY_ROLLING 429: marks the window full so every replica waits."""
        limits = await self.limits(portal_id)
        await self._correct(
            keys=self._keys(portal_id, self.api)[:4],
            args=[
                -1,
                limits.burst,
                -1,
                -1,
                limits.window_ms + self.margin_ms,
                uuid.uuid4().hex,
                self._offset_ms(),
                -1,
                -1,
                -1,
            ],
        )

    async def usage(self, portal_id: int) -> QuotaUse:
        """Return the portal's use of its budgets now."""
        window_key, daily_key, info_key = self._keys(portal_id, self.api)[:3]
        limits = await self.limits(portal_id)
        now_s, now_us = await self.redis.time()
        now = int(now_s) * 1000 + int(now_us) // 1000
        burst = await self.redis.zcount(window_key, now - limits.window_ms - self.margin_ms, "+inf")
        stored: Any = await self.redis.hmget(daily_key, ["day", "count"])
        day, count = stored
        today = (now + self._offset_ms()) // 86_400_000
        daily_used = int(count) if day is not None and int(day) == today else 0
        remaining: Any = await self.redis.hget(info_key, "remaining")
        left = limits.burst - int(burst)
        _remaining.set(left, portal_id, {"source": "writer"})
        return QuotaUse(int(burst), daily_used, int(remaining) if remaining is not None else -1)


def next_midnight(zone: tzinfo, now: float) -> float:
    """Return the epoch seconds of the first midnight in ``zone`` after ``now`` (DST-aware)."""
    local = datetime.fromtimestamp(now, zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone) + timedelta(days=1)
    return midnight.timestamp()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
