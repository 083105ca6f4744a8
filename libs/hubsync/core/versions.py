"""Version stamps for per-record write order (see docs/writer.md, "What order a caller can rely
on"): Redis's clock in microseconds, strictly increasing per counter key, so stamps taken by any
replica of any service on one Redis compare in the order they were taken."""

from __future__ import annotations

import weakref
from typing import Any

from redis.asyncio import Redis


def reserve_lua(counter_key: str, count: str) -> str:
    """Lua that sets ``base`` to the first of ``count`` fresh versions from ``counter_key``: Redis's
    clock (µs), or one past the last reserved when the clock is not ahead of it. Runs inside the
    caller's script, so the stamp is atomic with whatever else the script does."""
    return f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', {counter_key}) or '0')
local base = now
if base <= last then base = last + 1 end
redis.call('SET', {counter_key}, string.format('%d', base + tonumber({count}) - 1))
"""


_RESERVE = reserve_lua("KEYS[1]", "ARGV[1]") + "return base\n"


# The reserve script registered with each client: sent by its SHA (EVALSHA), not its text (an EVAL
# per stamp made Redis hash the script's text every time and cost the caller its packing).
_scripts: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


async def reserve_versions(redis: Redis, counter_key: str, count: int) -> int:
    """Reserves ``count`` consecutive versions; returns the first."""
    script = _scripts.get(redis)
    if script is None:
        script = _scripts[redis] = redis.register_script(_RESERVE)
    return int(await script(keys=[counter_key], args=[max(count, 1)]))
