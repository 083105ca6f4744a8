"""Reusable fixtures: a running mapper in this event loop.

async with running_mapper(redis_url, caller_tokens, writer_address=addr) as mapper:
    channel = open_channel(mapper.address, caller_tokens["client"])
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from hubsync.core.service import RunningService, start_service
from hubsync.core.settings import CoreSettings
from hubsync.mapper.service import build


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
