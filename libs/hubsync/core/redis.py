"""The async Redis client every service uses, built from :class:`CoreSettings`."""

from __future__ import annotations

from redis.asyncio import Redis

from hubsync.core.settings import CoreSettings


def create_redis(settings: CoreSettings, *, decode_responses: bool = False) -> Redis:
    """Returns a client for ``settings.redis_url`` (password from ``HUBSYNC_REDIS_PASSWORD``)."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return Redis.from_url(
        settings.redis_url,
        password=password,
        decode_responses=decode_responses,
        health_check_interval=10,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        retry_on_timeout=False,
    )


def portal_key(portal_id: int | str, *parts: str) -> str:
    """``hubsync:{<portal>}:<parts>``: the hash tag keeps a portal's keys in one cluster slot."""
    return ":".join(["hubsync", f"{{{portal_id}}}", *parts])
