"""Reusable fixtures: a running mapper in this event loop.

async with running_mapper(redis_url, caller_tokens, writer_address=addr) as mapper:
    channel = open_channel(mapper.address, caller_tokens["client"])
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from opentelemetry import trace
from redis.asyncio import Redis

from hubsync.core.devredis import free_port
from hubsync.core.redis import portal_key
from hubsync.core.service import RunningService, start_service
from hubsync.core.settings import CoreSettings
from hubsync.core.telemetry import inject_fields
from hubsync.mapper.service import build
from hubsync.sandbox.testing import ReceivedRequest, ReceiverBehaviour, WebhookReceiver


@dataclass
class RunningMapper:
    service: RunningService
    address: str

    @property
    def port(self) -> int:
        return self.service.port


@asynccontextmanager
async def running_mapper(
    redis_url: str,
    caller_tokens: Mapping[str, str],
    *,
    writer_address: str = "127.0.0.1:1",
    hubspot_api_base: str = "http://127.0.0.1:1",
    mappings_dir: Path | None = None,
    consumer_name: str = "mapper-test",
    coalesce_window_ms: int = 20,
    visibility_timeout_ms: int = 2_000,
    inbound_enabled: bool = True,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[RunningMapper]:
    """Starts the mapper on a free loopback port with the given settings; stops it on exit.

    Settings are passed through ``HUBSYNC_MAPPER_*`` variables, set only while the service is
    being built (the mapper reads them once, at build).
    """
    env = {
        "HUBSYNC_MAPPER_CONSUMER_NAME": consumer_name,
        "HUBSYNC_MAPPER_COALESCE_WINDOW_MS": str(coalesce_window_ms),
        "HUBSYNC_MAPPER_VISIBILITY_TIMEOUT_MS": str(visibility_timeout_ms),
        "HUBSYNC_MAPPER_INBOUND_ENABLED": "true" if inbound_enabled else "false",
        "HUBSYNC_MAPPER_READ_BLOCK_MS": "50",
        **(extra_env or {}),
    }
    if mappings_dir is not None:
        env["HUBSYNC_MAPPER_MAPPINGS_DIR"] = str(mappings_dir)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        core = CoreSettings(
            redis_url=redis_url,
            caller_name="mapper",
            caller_tokens=json.dumps(dict(caller_tokens)),  # type: ignore[arg-type]
            hubspot_api_base=hubspot_api_base,
            writer_address=writer_address,
            shutdown_grace_seconds=1.0,
        )
        service = await start_service("mapper", core, build, port=0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield RunningMapper(service, f"127.0.0.1:{service.port}")
    finally:
        await service.stop()


@asynccontextmanager
async def mapper_process(
    redis_url: str,
    caller_tokens: Mapping[str, str],
    *,
    writer_address: str,
    log_dir: Path,
    consumer_name: str = "mapper-proc",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real ``python -m hubsync.mapper`` process (stderr to ``log_dir/<consumer>.log``)."""
    from tests.integration.auth.processes import wait_serving

    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    full |= {
        "HUBSYNC_REDIS_URL": redis_url,
        "HUBSYNC_CALLER_NAME": "mapper",
        "HUBSYNC_CALLER_TOKENS": json.dumps(dict(caller_tokens)),
        "HUBSYNC_WRITER_ADDRESS": writer_address,
        "HUBSYNC_GRPC_PORT": str(port),
        "HUBSYNC_SHUTDOWN_GRACE_SECONDS": "1",
        "HUBSYNC_MAPPER_CONSUMER_NAME": consumer_name,
        **(env or {}),
    }
    log = (log_dir / f"{consumer_name}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubsync.mapper", env=full, stdout=log, stderr=log
    )
    try:
        await wait_serving(f"127.0.0.1:{port}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


@asynccontextmanager
async def ingress_standin(
    redis_url: str, behaviour: ReceiverBehaviour | None = None
) -> AsyncIterator[WebhookReceiver]:
    """A webhook target that appends each received event to ``hubsync:{<portal>}:events`` the way
    ingress does (fields ``event``, ``traceparent``/``tracestate`` of an ``ingress.webhook`` span,
    ``accepted_ms``, ``origin``; portal added to ``hubsync:portals``). It verifies nothing and
    dedupes nothing: every delivery, duplicates included, reaches the stream."""
    redis = Redis.from_url(redis_url)
    tracer = trace.get_tracer("tests.ingress-standin")
    receiver = WebhookReceiver(behaviour=behaviour)

    async def on_request(request: ReceivedRequest) -> None:
        for event in request.json():
            portal = event["portalId"]
            with tracer.start_as_current_span("ingress.webhook"):
                fields = inject_fields(
                    {
                        "event": orjson.dumps(event),
                        "accepted_ms": int(time.time() * 1000),
                        "origin": "webhook",
                    }
                )
                await redis.xadd(portal_key(portal, "events"), fields)  # type: ignore[arg-type]
            await redis.sadd("hubsync:portals", str(portal))  # type: ignore[misc]

    receiver.on_request = on_request
    try:
        async with receiver:
            yield receiver
    finally:
        await redis.aclose()
