"""Typed range reads of Redis streams, as the services' clients return them (bytes, not decoded)."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

__all__ = ["StreamEntry", "entry_ms", "stream_range"]

#: An entry: its id and its fields.
StreamEntry = tuple[bytes, dict[bytes, bytes]]


def entry_ms(entry_id: bytes | str) -> int:
    """The milliseconds part of a stream entry id (``<ms>-<seq>``: Redis' clock when it was
    appended, for an id Redis assigned), or 0 for an id that has none."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms = raw.partition("-")[0]
    return int(ms) if ms.isdigit() else 0


async def stream_range(
    redis: Redis, key: str, low: str, high: str, *, count: int | None, newest_first: bool = False
) -> list[StreamEntry]:
    """Return up to ``count`` entries of stream ``key`` between ids ``low`` and ``high``.

    Args:
        redis: A client without ``decode_responses`` (every service's client): ids and fields are
            bytes, which the library's return type (bytes or str, maybe None) does not say.
        key: The stream.
        low: The lowest id (``-``, ``<ms>-<seq>``, or ``(`` + an id to exclude it).
        high: The highest id (``+`` or an id).
        count: Most entries returned (None: all).
        newest_first: ``XREVRANGE`` instead of ``XRANGE``.

    """
    if newest_first:
        raw = await redis.xrevrange(key, high, low, count=count)
    else:
        raw = await redis.xrange(key, low, high, count=count)
    return cast("list[StreamEntry]", raw or [])
