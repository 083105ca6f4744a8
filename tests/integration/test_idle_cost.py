"""Idle portals cost nothing but their keys: with writer's queue consumer and mapper's inbound
worker running and no work at all, the Redis commands they issue over a window do not grow with
the number of known portals (a count from ``INFO commandstats``, not a timing)."""

from __future__ import annotations

import asyncio
import functools
import json

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from hubsync.core.keys import PORTALS_KEY, WRITER_PORTALS_KEY, events_key, ready_swept_key, writes_key
from hubsync.core.ready import EVENTS, WRITES
from hubsync.core.service import RunningService, start_service
from hubsync.core.settings import CoreSettings, load_settings
from hubsync.mapper.service import build as build_mapper
from hubsync.mapper.settings import MapperSettings
from hubsync.writer.service import build as build_writer
from hubsync.writer.settings import WriterSettings

WINDOW_S = 10.0
pytestmark = pytest.mark.timeout(300)


async def known_portals(redis: Redis, first: int, last: int) -> None:
    """Portals ``first..last`` as they are after each sent one event that was processed: known to
    ingress and writer, their event consumed and acknowledged, their write queue empty."""
    for start in range(first, last + 1, 500):
        async with redis.pipeline(transaction=False) as pipe:
            for p in range(start, min(last, start + 499) + 1):
                pipe.sadd(PORTALS_KEY, p)
                pipe.xadd(events_key(p), {"event": "{}"})
                pipe.xgroup_create(events_key(p), "mapper", id="$")
                pipe.sadd(WRITER_PORTALS_KEY, p)
                pipe.xgroup_create(writes_key(p), "writer", id="$", mkstream=True)
            await pipe.execute()


async def commands(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def idle_commands(redis: Redis, services: list[RunningService]) -> int:
    """Commands over one window, once the services settled (their sweeps done)."""
    for _ in range(600):
        if await redis.exists(ready_swept_key(EVENTS), ready_swept_key(WRITES)) == 2:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)
    before = await commands(redis)
    await asyncio.sleep(WINDOW_S)
    return await commands(redis) - before


async def start_both(redis_url: str, caller_tokens: dict[str, str]) -> list[RunningService]:
    def core(name: str, writer_address: str = "127.0.0.1:9") -> CoreSettings:
        return CoreSettings(
            redis_url=redis_url,
            caller_name=name,
            caller_tokens=SecretStr(json.dumps(caller_tokens)),
            hubspot_api_base="http://127.0.0.1:9",
            auth_address="127.0.0.1:9",
            writer_address=writer_address,
            shutdown_grace_seconds=0.5,
        )

    writer = await start_service(
        "writer",
        core("writer"),
        functools.partial(build_writer, settings=load_settings(WriterSettings)),
        port=0,
    )
    settings = MapperSettings.model_validate({"validate_properties": False})
    factory = functools.partial(build_mapper, settings=settings)
    mapper = await start_service("mapper", core("mapper", f"127.0.0.1:{writer.port}"), factory, port=0)
    return [writer, mapper]


async def test_idle_commands_do_not_grow_with_known_portals(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    counts = {}
    known = 0
    for n in (10, 2000):
        await redis.delete(ready_swept_key(EVENTS), ready_swept_key(WRITES))
        await known_portals(redis, known + 1, n)
        known = n
        services = await start_both(redis_url, caller_tokens)
        try:
            counts[n] = await idle_commands(redis, services)
        finally:
            for service in reversed(services):
                await service.stop()
    # The same few timers whatever the number of portals: 1,990 more idle portals add no
    # command per portal (before the ready sets, each pass touched every portal: > 10,000).
    assert counts[2000] - counts[10] < 500, counts
    assert counts[2000] < 2000, counts
