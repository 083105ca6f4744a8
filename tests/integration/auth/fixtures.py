"""Reusable fixtures for tests that need a running auth service (any service's tests may import).

    async with running_auth(redis_url=..., caller_tokens=..., hubspot_api_base=sb.base_url) as addr:
        await register_sandbox_private_app(addr, caller_tokens)   # portal 12345's private-app token
        ...  # writer tests: HUBSYNC_AUTH_ADDRESS=addr, caller "writer" may call GetAccessToken

Plain async context managers (no pytest dependency), so other engineers can compose them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping

from pydantic import SecretStr

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.auth.service import build
from hubsync.core.channels import open_channel
from hubsync.core.service import RunningService, start_service
from hubsync.core.settings import CoreSettings, Environment

SANDBOX_PORTAL = 12345
SANDBOX_PRIVATE_TOKEN = "pat-na1-00000000-0000-4000-8000-000000012345"
SANDBOX_CLIENT_ID = "hubsync-sandbox-client-id"
SANDBOX_CLIENT_SECRET = "hubsync-sandbox-client-secret"
# Where a test pretends ingress's callback is; the sandbox redirects there (nothing listens).
TEST_REDIRECT_URI = "http://127.0.0.1:9/oauth/callback"


def new_keyring(*kids: str, active: str | None = None) -> dict[str, object]:
    """A key ring dict ``{"active": ..., "keys": {...}}`` with fresh random keys."""
    kids = kids or ("k1",)
    keys = {kid: base64.b64encode(secrets.token_bytes(32)).decode() for kid in kids}
    return {"active": active or kids[-1], "keys": keys}


def auth_env(
    hubspot_api_base: str,
    *,
    keyring: Mapping[str, object] | None = None,
    refresher_interval_s: float = 0,
    **overrides: object,
) -> dict[str, str]:
    """The ``HUBSYNC_AUTH_*`` environment for the sandbox's public app (OAuth ready)."""
    env = {
        "HUBSYNC_AUTH_CLIENT_ID": SANDBOX_CLIENT_ID,
        "HUBSYNC_AUTH_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
        "HUBSYNC_AUTH_AUTHORIZE_URL": f"{hubspot_api_base}/oauth/authorize",
        "HUBSYNC_AUTH_REDIRECT_URI": TEST_REDIRECT_URI,
        "HUBSYNC_AUTH_KEYRING": json.dumps(keyring or new_keyring()),
        "HUBSYNC_AUTH_REFRESHER_INTERVAL_S": str(refresher_interval_s),
        "HUBSYNC_AUTH_REFRESH_BACKOFF_S": "0.01",
    }
    env |= {f"HUBSYNC_AUTH_{k.upper()}": str(v) for k, v in overrides.items()}
    return env


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def core_settings(
    redis_url: str, caller_tokens: Mapping[str, str], hubspot_api_base: str, environment: str = "development"
) -> CoreSettings:
    return CoreSettings(
        redis_url=redis_url,
        caller_name="auth",
        caller_tokens=SecretStr(json.dumps(dict(caller_tokens))),
        hubspot_api_base=hubspot_api_base,
        shutdown_grace_seconds=0.5,
        environment=Environment(environment),
    )


@contextlib.asynccontextmanager
async def running_auth_service(
    *,
    redis_url: str,
    caller_tokens: Mapping[str, str],
    hubspot_api_base: str,
    env: Mapping[str, str] | None = None,
    keyring: Mapping[str, object] | None = None,
    environment: str = "development",
) -> AsyncIterator[RunningService]:
    """An in-process auth service on a free loopback port; yields the RunningService."""
    full_env = auth_env(hubspot_api_base, keyring=keyring) | dict(env or {})
    core = core_settings(redis_url, caller_tokens, hubspot_api_base, environment)
    # Settings are read once, while the service is built: the environment is restored after.
    with _environ(full_env):
        service = await start_service("auth", core, build, port=0)
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def running_auth(
    *,
    redis_url: str,
    caller_tokens: Mapping[str, str],
    hubspot_api_base: str,
    env: Mapping[str, str] | None = None,
    keyring: Mapping[str, object] | None = None,
    environment: str = "development",
) -> AsyncIterator[str]:
    """An in-process auth service; yields its address ``127.0.0.1:<port>``."""
    async with running_auth_service(
        redis_url=redis_url,
        caller_tokens=caller_tokens,
        hubspot_api_base=hubspot_api_base,
        env=env,
        keyring=keyring,
        environment=environment,
    ) as service:
        yield f"127.0.0.1:{service.port}"


async def register_sandbox_private_app(
    address: str,
    caller_tokens: Mapping[str, str],
    *,
    portal_id: int = SANDBOX_PORTAL,
    token: str = SANDBOX_PRIVATE_TOKEN,
    tenant: str = "test",
) -> auth_pb2.Connection:
    """Stores the sandbox's private-app token as ``portal_id``'s connection (as caller ``cli``)."""
    async with open_channel(address, caller_tokens["cli"]) as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).CreatePrivateAppConnection(
            auth_pb2.CreatePrivateAppConnectionRequest(
                portal_id=portal_id, tenant=tenant, access_token=token
            ),
            timeout=10,
        )
    return reply.connection
