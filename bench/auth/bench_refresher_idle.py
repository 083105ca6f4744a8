"""Cost of one idle background-refresher pass by number of connected portals (issue 13, part A).

Stores N OAuth connections (written as the previous release left them: record and listing, no
registry) whose tokens live six more hours (nothing due), runs one warm-up pass
(after an upgrade it fills the refresh-due registry), then times ``passes`` idle passes of
``TokenVault.refresh_due`` in this process against a real redis-server and counts the Redis
commands they cost (``INFO commandstats``). Run it on a checkout of the code to compare.

    .venv/bin/python bench/auth/bench_refresher_idle.py --portals 1000,10000,100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from hubsync.auth.keyring import KeyRing
from hubsync.auth.oauth_client import HubSpotOAuthClient
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import KIND_OAUTH, STATE_ACTIVE, Connection, ConnectionStore
from hubsync.auth.vault import TokenVault
from hubsync.core.devredis import RedisProcess
from hubsync.core.keys import AUTH_CONNECTIONS_KEY, auth_connection_key


async def _connect(redis: Redis, vault: TokenVault, portals: int) -> None:
    now = int(time.time() * 1000)
    sealed = vault.records.seal(1, "access", "refresh")  # the same size as any portal's
    for first in range(1, portals + 1, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for portal in range(first, min(first + 1000, portals + 1)):
                conn = Connection(
                    portal_id=portal,
                    tenant="bench",
                    kind=KIND_OAUTH,
                    state=STATE_ACTIVE,
                    expires_ms=now + 6 * 3600 * 1000,
                    created_ms=now,
                    updated_ms=now,
                    key_id=vault.keyring.active,
                    version=1,
                    generation=1,
                    sealed=sealed,
                )
                pipe.hset(auth_connection_key(portal), mapping=conn.fields())  # type: ignore[arg-type]
                pipe.zadd(AUTH_CONNECTIONS_KEY, {str(portal): portal})
            await pipe.execute()


async def _commands(redis: Redis) -> int:
    stats: dict[str, Any] = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


async def measure(url: str, portals: int, passes: int) -> dict[str, float]:
    redis = Redis.from_url(url)
    await redis.flushall()
    oauth = HubSpotOAuthClient("http://127.0.0.1:9", "bench", "bench")
    vault = TokenVault(
        ConnectionStore(redis),
        KeyRing.generate(),
        oauth,
        AuthSettings(client_id="bench", refresher_interval_s=0.001),
    )
    await _connect(redis, vault, portals)
    started = time.perf_counter()
    await vault.refresh_due()  # warm-up; with the registry: the one-off backfill
    first_s = time.perf_counter() - started
    await redis.config_resetstat()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(passes):
        await asyncio.sleep(0.002)  # past the pass lock's life (0.9 ms here)
        await vault.refresh_due()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    commands = await _commands(redis)
    await oauth.aclose()
    await redis.aclose()
    return {
        "portals": portals,
        "first_pass_s": round(first_s, 3),
        "commands_per_pass": round(commands / passes, 1),
        "cpu_ms_per_pass": round(cpu * 1000 / passes, 2),
        "wall_ms_per_pass": round((wall - passes * 0.002) * 1000 / passes, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--portals", default="1000,10000,100000")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    proc = RedisProcess(Path(tempfile.mkdtemp()), appendonly=False).start()
    try:
        rows = [await measure(proc.url, int(n), args.passes) for n in args.portals.split(",")]
    finally:
        proc.stop()
    for row in rows:
        print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
