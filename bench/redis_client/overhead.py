"""Client-side cost per Redis command: hubsync's client for one Redis, redis-py's cluster client,
and hubsync's cluster client (redis-py's with the connection-permit wrapper), same commands,
same run.

    .venv/bin/python bench/redis_client/overhead.py [--ops 500] [--rounds 7]

Starts one redis-server and a local three-master Redis Cluster (same binary, ``devredis``). Each
client runs the same operations, one call at a time, of the kinds mapper sends per change (see
``OPS``: single commands, EVALSHA, pipelines on one slot and on four, WATCH + MULTI/EXEC on one
portal's keys). The clients take turns, round after round, so a busy machine weighs on each
alike; the figure is the median over rounds of the client process's CPU time
(``time.process_time``: the servers are other processes) and of the wall time, per command.
Writes ``overhead.json`` and ``overhead.md`` next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis as redis_py
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from hubsync.core.devredis import RedisCluster as LocalCluster
from hubsync.core.devredis import RedisProcess
from hubsync.core.keys import events_key, portal_key
from hubsync.core.redis import connection_options, create_redis
from hubsync.core.settings import CoreSettings, cluster_seeds

HERE = Path(__file__).parent
PORTAL = 12345
SCRIPT = "return redis.call('HGET', KEYS[1], ARGV[1])"


KEY, HKEY, STREAM = portal_key(PORTAL, "bench"), portal_key(PORTAL, "bench-h"), events_key(PORTAL)
# Keys of four portals (four slots, on several nodes of the cluster).
SPREAD = [portal_key(p, "bench-h") for p in (PORTAL, 2, 3, 4)]


async def _watch_multi(redis: Redis, _script: Any, n: int) -> None:
    # As mapper's publish: WATCH, read, then MULTI with four writes on one portal's keys.
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(HKEY)
        await redis.hget(HKEY, "f")
        pipe.multi()
        for field in ("f", "g", "h", "i"):
            pipe.hset(HKEY, field, n)
        await pipe.execute()


async def _pipeline(redis: Redis, keys: list[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "f")
        await pipe.execute()


# name -> (what one call sends, commands it counts as)
OPS: dict[str, tuple[Callable[[Redis, Any, int], Awaitable[Any]], int]] = {
    "SET": (lambda r, _s, n: r.set(KEY, n), 1),
    "GET": (lambda r, _s, n: r.get(KEY), 1),
    "HGET": (lambda r, _s, n: r.hget(HKEY, "f"), 1),
    "XADD": (lambda r, _s, n: r.xadd(STREAM, {"e": b"x" * 64}, maxlen=1000, approximate=True), 1),
    "EVALSHA": (lambda r, s, n: s(keys=[HKEY], args=["f"]), 1),
    "pipeline, 4 HGET, one slot": (lambda r, _s, n: _pipeline(r, [HKEY] * 4), 4),
    "pipeline, 4 HGET, four slots": (lambda r, _s, n: _pipeline(r, SPREAD), 4),
    "WATCH + HGET + MULTI/EXEC of 4 HSET": (_watch_multi, 7),
}


def plain_cluster(url: str) -> Redis:
    """redis-py's cluster client with the options hubsync gives its own (no permit wrapper)."""
    nodes = [ClusterNode(host, port) for host, port in cluster_seeds(url)]
    client = RedisCluster(startup_nodes=nodes, max_connections=120, **connection_options())
    return client  # type: ignore[return-value]  # same commands as Redis


async def measure(redis: Redis, op: str, ops: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per command for ``ops`` calls of ``op``."""
    call, commands = OPS[op]
    script = redis.register_script(SCRIPT)
    await call(redis, script, 0)  # connections, slot map and script loaded outside the timing
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(ops):
        await call(redis, script, n)
    count = ops * commands
    return (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6


async def run(ops: int, rounds: int) -> dict[str, Any]:
    """Starts the servers, runs the rounds, returns the results."""
    with tempfile.TemporaryDirectory(prefix="hubsync-bench-client-") as tmp:
        single = RedisProcess(Path(tmp) / "single", appendonly=False).start()
        cluster = LocalCluster(Path(tmp) / "cluster", appendonly=False).start()
        try:
            clients: dict[str, Callable[[], Redis]] = {
                "single Redis (create_redis)": lambda: create_redis(CoreSettings(redis_url=single.url)),
                "cluster, redis-py RedisCluster": lambda: plain_cluster(cluster.url),
                "cluster, hubsync (create_redis)": lambda: create_redis(CoreSettings(redis_url=cluster.url)),
            }
            made = {name: make() for name, make in clients.items()}
            samples: dict[tuple[str, str], list[tuple[float, float]]] = {
                (name, op): [] for name in made for op in OPS
            }
            try:
                for _ in range(rounds):
                    for op in OPS:
                        for name, client in made.items():
                            samples[name, op].append(await measure(client, op, ops))
            finally:
                await asyncio.gather(*(c.aclose() for c in made.values()))
        finally:
            cluster.stop()
            single.stop()
    results: dict[str, dict[str, Any]] = {}
    for (name, op), rows in samples.items():
        results.setdefault(op, {})[name] = {
            "cpu_us_per_command": round(statistics.median(s[0] for s in rows), 1),
            "wall_us_per_command": round(statistics.median(s[1] for s in rows), 1),
            "cpu_us_rounds": [round(s[0], 1) for s in rows],
        }
    return {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "redis_py": redis_py.__version__,
        "calls_per_round": ops,
        "rounds": rounds,
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a table: CPU µs per command (and the ratio to one Redis's client)."""
    names = list(next(iter(report["results"].values())))
    lines = [
        "# Client-side cost per Redis command",
        "",
        f"`{report['command']}` on {report['machine']}, redis-py {report['redis_py']};",
        f"{report['rounds']} rounds x {report['calls_per_round']} calls per operation and client,",
        "clients taking turns; median over rounds of the client's CPU µs per command (wall µs).",
        "",
        "| operation | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for op, row in report["results"].items():
        base = row[names[0]]["cpu_us_per_command"]
        cells = [
            f"{row[n]['cpu_us_per_command']} ({row[n]['cpu_us_per_command'] / base:.2f}x; "
            f"{row[n]['wall_us_per_command']})"
            for n in names
        ]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Runs the benchmark and writes the results next to this file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=500, help="calls of each operation per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="overhead", help="file name (no extension) next to this file")
    args = parser.parse_args()
    report = asyncio.run(run(args.ops, args.rounds))
    (HERE / f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    (HERE / f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
