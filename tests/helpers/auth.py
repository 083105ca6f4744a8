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
import secrets
import typing
from collections.abc import AsyncIterator, Mapping

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.auth.service import service_factory
from hubsync.auth.settings import AuthSettings
from hubsync.core.channels import open_channel
from hubsync.core.service import RunningService, start_service
from hubsync.core.settings import CoreSettings, Environment
from tests.helpers.core_settings import service_core

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


def _sandbox_app(
    hubspot_api_base: str, keyring: Mapping[str, object] | None, refresher_interval_s: float
) -> dict[str, object]:
    """Auth settings values for the sandbox's public app (OAuth ready), no periodic work."""
    return {
        "client_id": SANDBOX_CLIENT_ID,
        "client_secret": SANDBOX_CLIENT_SECRET,
        "authorize_url": f"{hubspot_api_base}/oauth/authorize",
        "redirect_uri": TEST_REDIRECT_URI,
        "keyring": json.dumps(keyring or new_keyring()),
        "refresher_interval_s": refresher_interval_s,
        "refresh_backoff_s": 0.01,
    }


def auth_settings(
    hubspot_api_base: str,
    *,
    keyring: Mapping[str, object] | None = None,
    refresher_interval_s: float = 0,
    **overrides: object,
) -> AuthSettings:
    """Auth settings for the sandbox's public app; ``overrides`` by field name.

    Built from values only: the process environment plays no part.
    """
    return AuthSettings.model_validate(
        _sandbox_app(hubspot_api_base, keyring, refresher_interval_s) | overrides
    )


def auth_env(
    hubspot_api_base: str,
    *,
    keyring: Mapping[str, object] | None = None,
    refresher_interval_s: float = 0,
    **overrides: object,
) -> dict[str, str]:
    """The same as :func:`auth_settings`, as ``HUBSYNC_AUTH_*`` variables (for a real process)."""
    values = _sandbox_app(hubspot_api_base, keyring, refresher_interval_s) | overrides
    return {
        f"HUBSYNC_AUTH_{k.upper()}": json.dumps(v) if isinstance(v, list) else str(v)
        for k, v in values.items()
    }


def settings_values_of(env: Mapping[str, str]) -> dict[str, object]:
    """``HUBSYNC_AUTH_*`` variables as settings values by field name (JSON lists decoded)."""
    values: dict[str, object] = {}
    for variable, raw in env.items():
        name = variable.removeprefix("HUBSYNC_AUTH_").lower()
        if name not in AuthSettings.model_fields:
            raise ValueError(f"{variable} is not an auth setting")
        is_list = typing.get_origin(AuthSettings.model_fields[name].annotation) is list
        values[name] = json.loads(raw) if is_list else raw
    return values


def core_settings(
    redis_url: str, caller_tokens: Mapping[str, str], hubspot_api_base: str, environment: str = "development"
) -> CoreSettings:
    return service_core(
        "auth", redis_url, caller_tokens, hubspot_api_base, environment=Environment(environment)
    )


class AuthOptions(typing.TypedDict, total=False):
    """What :func:`running_auth_service` and :func:`running_auth` take.

    ``settings`` override :func:`auth_settings` by field name; ``env`` does the same with
    ``HUBSYNC_AUTH_*`` names (for callers that have them as variables).
    """

    redis_url: typing.Required[str]
    caller_tokens: typing.Required[Mapping[str, str]]
    hubspot_api_base: typing.Required[str]
    env: Mapping[str, str] | None
    keyring: Mapping[str, object] | None
    environment: str
    settings: Mapping[str, object] | None


@contextlib.asynccontextmanager
async def running_auth_service(**options: typing.Unpack[AuthOptions]) -> AsyncIterator[RunningService]:
    """An in-process auth service on a free loopback port; yields the RunningService."""
    base = options["hubspot_api_base"]
    overrides = settings_values_of(options.get("env") or {}) | dict(options.get("settings") or {})
    auth = AuthSettings.model_validate(_sandbox_app(base, options.get("keyring"), 0) | overrides)
    environment = options.get("environment", "development")
    core = core_settings(options["redis_url"], options["caller_tokens"], base, environment)
    service = await start_service("auth", core, service_factory(auth), port=0)
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def running_auth(**options: typing.Unpack[AuthOptions]) -> AsyncIterator[str]:
    """An in-process auth service; yields its address ``127.0.0.1:<port>``."""
    async with running_auth_service(**options) as service:
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
