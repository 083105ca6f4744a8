"""Cached GetAccessToken over gRPC (calls/s and latency percentiles) beside a plain gRPC echo.

Both servers run as their own processes (auth: ``python -m hubsync.auth`` with Redis, caller
authentication, tracing interceptor, AES-GCM open per call; echo: a bare grpc.aio server). The
client runs in this process with ``--concurrency`` calls in flight for ``--seconds`` per phase.

    .venv/bin/python bench/auth/bench_get_access_token.py [--seconds 5] [--concurrency 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.devredis import RedisProcess, free_port
from hubsync.sandbox import SandboxConfig, SandboxServer

HERE = Path(__file__).parent
PORTAL = 12345


async def wait_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            try:
                if (await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(address)


async def measure(call: Callable[[], Awaitable[Any]], seconds: float, concurrency: int) -> dict[str, float]:
    for _ in range(200):  # warm-up
        await call()
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "calls": len(latencies),
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


async def run(seconds: float, concurrencies: list[int]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="auth-bench-"))
    redis = RedisProcess(work / "redis").start()
    tokens = {name: secrets.token_urlsafe(24) for name in ("auth", "writer", "cli")}
    keyring = {"active": "k1", "keys": {"k1": base64.b64encode(secrets.token_bytes(32)).decode()}}
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with SandboxServer(SandboxConfig()) as sandbox:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
            env |= {
                "HUBSYNC_REDIS_URL": redis.url,
                "HUBSYNC_CALLER_NAME": "auth",
                "HUBSYNC_CALLER_TOKENS": json.dumps(tokens),
                "HUBSYNC_HUBSPOT_API_BASE": sandbox.base_url,
                "HUBSYNC_GRPC_PORT": str(port),
                "HUBSYNC_LOG_LEVEL": "WARNING",
                "HUBSYNC_AUTH_KEYRING": json.dumps(keyring),
                "HUBSYNC_AUTH_REFRESHER_INTERVAL_S": "0",
            }
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "hubsync.auth", env=env, stderr=(work / "auth.log").open("wb")
                )
            )
            echo_ports: dict[str, int] = {}
            for mode in ("plain", "hosted"):
                echo = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(HERE / "echo_server.py"),
                    mode,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                )
                procs.append(echo)
                assert echo.stdout is not None
                echo_ports[mode] = int((await echo.stdout.readline()).decode())
            address = f"127.0.0.1:{port}"
            await wait_serving(address)

            async with open_channel(address, tokens["cli"]) as channel:
                await auth_pb2_grpc.AuthServiceStub(channel).CreatePrivateAppConnection(
                    auth_pb2.CreatePrivateAppConnectionRequest(
                        portal_id=PORTAL, tenant="bench", access_token="pat-na1-bench-token"
                    )
                )
            results: dict[str, Any] = {}
            payload = b"x" * 60  # about the size of a token request/response
            plain_ch = grpc.aio.insecure_channel(f"127.0.0.1:{echo_ports['plain']}")
            hosted_ch = open_channel(f"127.0.0.1:{echo_ports['hosted']}", tokens["writer"])
            auth_ch = open_channel(address, tokens["writer"])
            plain_call = plain_ch.unary_unary("/bench.Echo/Echo")
            hosted_call = hosted_ch.unary_unary("/bench.Echo/Echo")
            stub = auth_pb2_grpc.AuthServiceStub(auth_ch)
            request = auth_pb2.GetAccessTokenRequest(portal_id=PORTAL)

            async def call_plain() -> Any:
                return await plain_call(payload)

            async def call_hosted() -> Any:
                return await hosted_call(payload)

            async def call_auth() -> Any:
                return await stub.GetAccessToken(request)

            try:
                for c in concurrencies:
                    results[str(c)] = {
                        "echo (plain grpc)": await measure(call_plain, seconds, c),
                        "echo (hubsync host)": await measure(call_hosted, seconds, c),
                        "GetAccessToken": await measure(call_auth, seconds, c),
                    }
            finally:
                for ch in (plain_ch, hosted_ch, auth_ch):
                    await ch.close()
            return results
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,16", help="comma-separated calls in flight")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results = asyncio.run(run(args.seconds, concurrencies))
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    for c, rows in results.items():
        print(f"concurrency {c}, {args.seconds:.0f} s per phase")
        for name, r in rows.items():
            print(
                f"  {name:20} {r['calls_per_s']:9,.0f} calls/s   p50 {r['p50_ms']:6.2f} ms   "
                f"p99 {r['p99_ms']:6.2f} ms   ({r['calls']:,} calls)"
            )
        ratio = rows["GetAccessToken"]["calls_per_s"] / rows["echo (plain grpc)"]["calls_per_s"]
        print(f"  GetAccessToken / plain echo throughput: {ratio:.2f}")
    print(json.dumps({"seconds": args.seconds, "results": results}))


if __name__ == "__main__":
    main()
