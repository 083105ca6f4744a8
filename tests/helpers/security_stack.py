"""The four services in this process on free loopback ports, for the security tests.

    async with running_services(redis_url, caller_tokens, monkeypatch) as addresses:
        addresses["writer"]  # "127.0.0.1:<port>"

Settings are the shipped defaults but for what a test stack needs: loopback addresses (HubSpot is
a closed loopback port: nothing here calls it), a generated key ring, no periodic work.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
from redis.asyncio import Redis

from hubsync.auth.service import build as build_auth_service
from hubsync.auth.settings import AuthSettings
from hubsync.core.service import RunningService, ServiceSpec, SpecFactory, start_service
from hubsync.core.settings import CoreSettings, load_settings
from hubsync.ingress.service import build as build_ingress_service
from hubsync.ingress.settings import IngressSettings
from hubsync.mapper.service import build as build_mapper_service
from hubsync.mapper.settings import MapperSettings
from hubsync.writer.service import build as build_writer
from hubsync.writer.settings import WriterSettings
from tests.helpers.core_settings import service_core

NOWHERE = "127.0.0.1:9"


async def build_auth(core: CoreSettings, redis: Redis) -> ServiceSpec:
    """Auth with its settings read from the environment the test set (as its ``__main__`` does)."""
    return await build_auth_service(core, redis, load_settings(AuthSettings))


async def build_ingress(core: CoreSettings, redis: Redis) -> ServiceSpec:
    """Ingress with its settings read from the environment the test set (as its ``__main__`` does)."""
    return await build_ingress_service(core, redis, load_settings(IngressSettings))


async def build_mapper(core: CoreSettings, redis: Redis) -> ServiceSpec:
    """Mapper with its settings read from the environment the test set (as its ``__main__`` does)."""
    return await build_mapper_service(core, redis, load_settings(MapperSettings))


# In start order: writer asks auth for tokens, mapper and ingress call writer.
FACTORIES: list[tuple[str, SpecFactory]] = [
    ("auth", build_auth),
    # Writer's settings are passed in: read from this stack's environment when it is built.
    ("writer", lambda core, redis: build_writer(core, redis, WriterSettings())),
    ("mapper", build_mapper),
    ("ingress", build_ingress),
]
ENV = {
    "HUBSYNC_AUTH_KEYRING": json.dumps(
        {"active": "k1", "keys": {"k1": base64.b64encode(secrets.token_bytes(32)).decode()}}
    ),
    "HUBSYNC_AUTH_CLIENT_ID": "client-id",
    "HUBSYNC_AUTH_CLIENT_SECRET": "client-secret",
    "HUBSYNC_AUTH_REDIRECT_URI": f"http://{NOWHERE}/oauth/callback",
    "HUBSYNC_AUTH_AUTHORIZE_URL": f"http://{NOWHERE}/oauth/authorize",
    "HUBSYNC_AUTH_REFRESHER_INTERVAL_S": "0",
    "HUBSYNC_MAPPER_VALIDATE_PROPERTIES": "false",
    "HUBSYNC_MAPPER_INBOUND_ENABLED": "false",
    "HUBSYNC_MAPPER_RELOAD_INTERVAL_S": "0",
    "HUBSYNC_INGRESS_HTTP_HOST": "127.0.0.1",
    "HUBSYNC_INGRESS_HTTP_PORT": "0",
    "HUBSYNC_INGRESS_WEBHOOK_SECRETS": json.dumps(["webhook-secret"]),
    "HUBSYNC_INGRESS_RECONCILE_INTERVAL_SECONDS": "0",
    "HUBSYNC_WRITER_CONSUME_QUEUE": "false",
}


def core_settings(
    redis_url: str, caller_tokens: Mapping[str, str], name: str, **values: object
) -> CoreSettings:
    return service_core(name, redis_url, caller_tokens, f"http://{NOWHERE}", **values)


@contextlib.asynccontextmanager
async def running_services(
    redis_url: str,
    caller_tokens: Mapping[str, str],
    monkeypatch: pytest.MonkeyPatch,
    env: Mapping[str, str] | None = None,
    only: Sequence[str] = ("auth", "writer", "mapper", "ingress"),
) -> AsyncIterator[dict[str, str]]:
    """Starts auth, writer, mapper and ingress (or ``only`` those); yields ``{service: address}``;
    stops them."""
    for key, value in (ENV | dict(env or {})).items():
        monkeypatch.setenv(key, value)
    addresses: dict[str, str] = {}
    running: list[RunningService] = []
    try:
        for name, factory in [(n, f) for n, f in FACTORIES if n in only]:
            core = core_settings(
                redis_url,
                caller_tokens,
                name,
                **{f"{other}_address": address for other, address in addresses.items()},
            )
            service = await start_service(name, core, factory, port=0)
            running.append(service)
            addresses[name] = f"127.0.0.1:{service.port}"
        yield addresses
    finally:
        for service in reversed(running):
            await service.stop()
