"""Auth replicas as real processes (``python -m hubsync.auth``), the way a deployment runs them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubsync.core.devredis import free_port
from tests.helpers.core_settings import process_env


async def wait_serving(address: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"auth at {address} did not become SERVING")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def auth_processes(
    count: int,
    *,
    redis_url: str,
    caller_tokens: Mapping[str, str],
    hubspot_api_base: str,
    auth_env: Mapping[str, str],
    log_dir: Path,
    metrics_ports: list[int] | None = None,
) -> AsyncIterator[list[str]]:
    """Starts ``count`` auth processes on free loopback ports; yields their addresses.

    Each process's stderr (its JSON log) goes to ``log_dir/auth-<i>.log``; with ``metrics_ports``
    (one per process) each serves Prometheus ``/metrics`` there.
    """
    procs: list[asyncio.subprocess.Process] = []
    addresses: list[str] = []
    files = []
    try:
        for i in range(count):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
            env |= process_env(
                "auth",
                redis_url,
                caller_tokens,
                port,
                hubspot_api_base=hubspot_api_base,
                metrics_port=str(metrics_ports[i] if metrics_ports else 0),
            )
            env |= auth_env
            log = (log_dir / f"auth-{i}.log").open("wb")
            files.append(log)
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "hubsync.auth", env=env, stdout=log, stderr=log
                )
            )
            addresses.append(f"127.0.0.1:{port}")
        await asyncio.gather(*(wait_serving(a) for a in addresses))
        yield addresses
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for f in files:
            f.close()
