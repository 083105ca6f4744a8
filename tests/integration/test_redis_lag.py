"""Consumer-group lag on a real Redis, with and without the server's own ``lag`` field."""

from __future__ import annotations

from redis.asyncio import Redis

from hubsync.core.redis import group_lag


async def test_lag_counts_undelivered_entries(redis: Redis) -> None:
    key = "hubsync:{1}:lagtest"
    await redis.xgroup_create(key, "g", id="0", mkstream=True)
    for i in range(5):
        await redis.xadd(key, {"n": str(i)})
    await redis.xreadgroup("g", "c1", {key: ">"}, count=2)
    (row,) = await redis.xinfo_groups(key)
    # Redis 6.2 has no "lag" field: counted from last-delivered-id; Redis 7 reports it.
    without_server_lag = {k: v for k, v in row.items() if k not in ("lag", b"lag")}
    assert await group_lag(redis, key, without_server_lag) == 3
    assert await group_lag(redis, key, row) == 3
    await redis.xreadgroup("g", "c1", {key: ">"})
    (row,) = await redis.xinfo_groups(key)
    assert await group_lag(redis, key, {k: v for k, v in row.items() if k not in ("lag", b"lag")}) == 0
