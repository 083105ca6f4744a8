"""What per-portal configuration costs a replica: the lookup on every batch/call, and Redis.

Starts a redis-server, stores a mapping override for one portal, then measures in one process:

- ``for_portal`` for a portal without overrides and for the overridden one, cache warm (what each
  inbound batch, PushRecords and Transform pay), in microseconds per call;
- a cold read of N distinct portals (each cache miss: one pipelined read of the portal's keys),
  with the Redis commands it cost (``INFO commandstats`` before and after);
- an idle replica: Redis commands over a few seconds with the change subscription open and no
  portal being processed.

Usage: .venv/bin/python bench/mapper/portal_config_bench.py [--portals 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from hubsync.api.common.v1 import config_pb2
from hubsync.core.devredis import RedisProcess
from hubsync.core.portal_config import PortalConfigCache, Scope, store_version
from hubsync.mapper.portal_mappings import MAPPINGS, PortalMappings
from hubsync.mapper.registry import MappingRegistry
from hubsync.mapper.settings import PACKAGED_MAPPINGS

OVERRIDE = """\
object_type: contacts
id: {external: external_id, hubspot: external_id}
fields:
  - {hubspot: properties.firstname, external: given_name}
  - {hubspot: properties.email, external: email}
"""


async def _commands(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def _per_call_us(mappings: PortalMappings, portal: int, n: int = 100_000) -> float:
    await mappings.for_portal(portal)
    start = time.perf_counter()
    for _ in range(n):
        await mappings.for_portal(portal)
    return (time.perf_counter() - start) / n * 1e6


async def main(portals: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = RedisProcess(Path(tmp)).start()
        redis = Redis.from_url(proc.url)
        try:
            registry = MappingRegistry(PACKAGED_MAPPINGS)
            await registry.load()
            doc = config_pb2.ConfigDocument(
                mappings=config_pb2.MappingsConfig(
                    files=[config_pb2.MappingFile(name="c.yaml", yaml=OVERRIDE)]
                )
            )
            await store_version(redis, Scope(portal_id=1), MAPPINGS, doc, author="bench")
            cache = PortalConfigCache(redis, (MAPPINGS,), ttl_s=3600)
            mappings = PortalMappings(registry, cache)
            assert (await mappings.for_portal(1)).get("contacts").mapping.fields[0].external == "given_name"  # type: ignore[union-attr]
            plain = await _per_call_us(mappings, 2)
            overridden = await _per_call_us(mappings, 1)

            before = await _commands(redis)
            start = time.perf_counter()
            for p in range(1000, 1000 + portals):
                await mappings.for_portal(p)
            cold_s = time.perf_counter() - start
            cold_cmds = await _commands(redis) - before

            listener = asyncio.create_task(cache.listen())
            await cache.subscribed.wait()
            before = await _commands(redis)
            await asyncio.sleep(5)
            idle_cmds = await _commands(redis) - before
            listener.cancel()
        finally:
            await redis.aclose()
            proc.stop()
    print(f"python {platform.python_version()} on {platform.machine()}, {portals} portals")
    print(f"for_portal, cache warm: no override {plain:.2f} µs/call, override {overridden:.2f} µs/call")
    print(
        f"cold read: {cold_s / portals * 1e6:.0f} µs/portal, "
        f"{cold_cmds / portals:.1f} Redis commands/portal (one pipelined round trip)"
    )
    print(f"idle replica (subscribed, no work): {idle_cmds / 5:.1f} Redis commands/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--portals", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().portals))
