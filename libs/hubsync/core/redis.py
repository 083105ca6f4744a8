"""The async Redis client every service uses, built from :class:`CoreSettings`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel

from hubsync.core.settings import CoreSettings
from hubsync.core.tls import redis_tls_options

# Connections per client; past it a command waits up to POOL_TIMEOUT_S for one to come back.
POOL_MAX_CONNECTIONS = 100
POOL_TIMEOUT_S = 10.0


def create_redis(settings: CoreSettings, *, decode_responses: bool = False) -> Redis:
    """Returns a client for ``settings.redis_url`` (password from ``HUBSYNC_REDIS_PASSWORD``), or,
    with ``HUBSYNC_REDIS_SENTINELS``, for the master the sentinels name (re-asked after a failover).
    """
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    options: dict[str, Any] = {
        "password": password,
        "decode_responses": decode_responses,
        "health_check_interval": 10,
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "retry_on_timeout": False,
        **redis_tls_options(settings),
    }
    sentinels = settings.sentinel_addresses()
    if sentinels:
        db = int(urlsplit(settings.redis_url).path.lstrip("/") or 0)
        sentinel = Sentinel(sentinels, socket_connect_timeout=2.0, socket_timeout=2.0)
        if "ssl_cert_reqs" in options:
            options["ssl"] = True
        return sentinel.master_for(settings.redis_sentinel_master, redis_class=Redis, db=db, **options)
    # A full pool makes a command wait for a connection (up to POOL_TIMEOUT_S) instead of failing
    # with MaxConnectionsError under a burst of concurrent work.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=POOL_MAX_CONNECTIONS, timeout=POOL_TIMEOUT_S, **options
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the pool


def portal_key(portal_id: int | str, *parts: str) -> str:
    """``hubsync:{<portal>}:<parts>``: the hash tag keeps a portal's keys in one cluster slot."""
    return ":".join(["hubsync", f"{{{portal_id}}}", *parts])


# Auth publishes a portal's id here whenever its connection changes (connected, re-authorized,
# refreshed, revoked); mapper re-checks a portal whose inbound events are parked at once.
CONNECTION_CHANGES_CHANNEL = "hubsync:auth:connection-changes"


# Beyond this many undelivered entries, Redis < 7 lag is reported as this number (a floor).
LAG_COUNT_CAP = 10_000
# Counts the entries after an id inside Redis: only a number crosses the network.
_COUNT_AFTER_LUA = "return #redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])"


async def group_lag(redis: Redis, key: str, group: dict[Any, Any]) -> int:
    """Entries of stream ``key`` that consumer group ``group`` (an ``XINFO GROUPS`` row) has not
    been delivered yet. Redis 7 reports it (``lag``); on Redis 6.2 it is counted from the group's
    last-delivered id, up to :data:`LAG_COUNT_CAP`."""
    lag = group.get("lag", group.get(b"lag"))
    if lag is not None:
        return int(lag)
    last = group.get("last-delivered-id", group.get(b"last-delivered-id", b"0-0"))
    last_id = last.decode() if isinstance(last, bytes) else str(last)
    count = await redis.eval(_COUNT_AFTER_LUA, 1, key, f"({last_id}", LAG_COUNT_CAP)  # type: ignore[misc]
    return int(count)
