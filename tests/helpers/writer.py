"""Reusable fixtures: a running writer (in this event loop, or as a process).

    async with running_auth(...) as auth_addr:
        await register_sandbox_private_app(auth_addr, caller_tokens)
        async with running_writer(
            redis_url=redis_url, caller_tokens=caller_tokens,
            hubspot_api_base=sb.base_url, auth_address=auth_addr,
        ) as writer_addr:
            stub = WriterServiceStub(open_channel(writer_addr, caller_tokens["mapper"]))

Plain async context managers (no pytest dependency), so any service's tests can compose them.
The sandbox's default portal (12345) is the one ``register_sandbox_private_app`` connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import typing
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from hubsync.core.devredis import free_port
from hubsync.core.service import RunningService, start_service
from hubsync.core.settings import CoreSettings
from hubsync.writer.service import build
from hubsync.writer.settings import WriterSettings
from tests.helpers.core_settings import process_env, service_core

ROOT = Path(__file__).resolve().parents[3]

# Fast defaults for tests: short batch wait, short backoffs, quick reclaim; the rest as shipped.
TEST_ENV = {
    "HUBSYNC_WRITER_RATE_LIMIT_PRESET": "public_app",
    "HUBSYNC_WRITER_BACKOFF_BASE_S": "0.01",
    "HUBSYNC_WRITER_BACKOFF_MAX_S": "0.2",
    "HUBSYNC_WRITER_BATCH_MAX_WAIT_MS": "20",
    "HUBSYNC_WRITER_EXPORT_LOOKBACK_S": "0.2",
    # Partial batches wait to fill only when the window is truly full (tests want low latency).
    "HUBSYNC_WRITER_BATCH_FILL_ABOVE": "1.0",
}


def writer_env(**overrides: object) -> dict[str, str]:
    """``HUBSYNC_WRITER_*`` for tests; keyword overrides are setting names (``burst_limit=50``)."""
    return TEST_ENV | {f"HUBSYNC_WRITER_{k.upper()}": str(v) for k, v in overrides.items()}


_PREFIX = "HUBSYNC_WRITER_"


def writer_settings(env: Mapping[str, str] | None = None) -> WriterSettings:
    """Writer settings from ``TEST_ENV`` plus ``env`` (``HUBSYNC_WRITER_*`` names, other names
    ignored), validated as the service validates its environment; ``os.environ`` is not read."""
    values = {
        k.removeprefix(_PREFIX).lower(): v
        for k, v in (TEST_ENV | dict(env or {})).items()
        if k.startswith(_PREFIX)
    }
    return WriterSettings.model_validate(values)


def core_settings(
    redis_url: str, caller_tokens: Mapping[str, str], hubspot_api_base: str, auth_address: str
) -> CoreSettings:
    return service_core(
        "writer",
        redis_url,
        caller_tokens,
        hubspot_api_base,
        auth_address=auth_address,
        # A killed writer's ready shards move to another within a few seconds.
        ready_lease_ttl_ms=3000,
        ready_poll_s=1.0,
    )


class WriterOptions(typing.TypedDict, total=False):
    """What :func:`running_writer_service` and :func:`running_writer` take.

    The writer's settings: ``settings``, else :func:`writer_settings` of ``env``.
    """

    redis_url: typing.Required[str]
    caller_tokens: typing.Required[Mapping[str, str]]
    hubspot_api_base: typing.Required[str]
    auth_address: typing.Required[str]
    env: Mapping[str, str] | None
    settings: WriterSettings | None


@contextlib.asynccontextmanager
async def running_writer_service(**options: typing.Unpack[WriterOptions]) -> AsyncIterator[RunningService]:
    """An in-process writer on a free loopback port; yields the RunningService."""
    core = core_settings(
        options["redis_url"], options["caller_tokens"], options["hubspot_api_base"], options["auth_address"]
    )
    settings = options.get("settings") or writer_settings(options.get("env"))
    service = await start_service("writer", core, functools.partial(build, settings=settings), port=0)
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def running_writer(**options: typing.Unpack[WriterOptions]) -> AsyncIterator[str]:
    """An in-process writer; yields its address ``127.0.0.1:<port>``."""
    async with running_writer_service(**options) as service:
        yield f"127.0.0.1:{service.port}"


class WriterProcess:
    """``python -m hubsync.writer`` as a child process (kill tests, replicas, benchmarks)."""

    def __init__(self, proc: asyncio.subprocess.Process, address: str) -> None:
        self.proc = proc
        self.address = address

    def kill(self) -> None:
        self.proc.kill()


@contextlib.asynccontextmanager
async def writer_process(
    *,
    redis_url: str,
    caller_tokens: Mapping[str, str],
    hubspot_api_base: str,
    auth_address: str,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 20.0,
) -> AsyncIterator[WriterProcess]:
    """A writer process on a free port; yields once its gRPC health answers SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from hubsync.core.channels import open_channel

    port = free_port()
    full = dict(os.environ) | TEST_ENV | dict(env or {})
    full |= process_env(
        "writer",
        redis_url,
        caller_tokens,
        port,
        hubspot_api_base=hubspot_api_base,
        auth_address=auth_address,
        shutdown_grace_seconds="0.5",
        ready_lease_ttl_ms="3000",
        ready_poll_s="1",
        log_level=full.get("HUBSYNC_LOG_LEVEL", "WARNING"),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubsync.writer", env=full, cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL
    )
    address = f"127.0.0.1:{port}"
    try:
        loop = asyncio.get_running_loop()
        until = loop.time() + ready_timeout
        async with open_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"writer process exited with {proc.returncode}")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except Exception:
                    pass
                if loop.time() > until:
                    raise TimeoutError("writer process did not become ready")
                await asyncio.sleep(0.1)
        yield WriterProcess(proc, address)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
