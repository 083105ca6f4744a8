"""Wires the auth service: key ring, HubSpot OAuth client, vault, servicer, policy.

Settings are loaded at the edge (``__main__``) and passed in: :func:`service_factory` turns them
into the :data:`~hubsync.core.service.SpecFactory` that ``hubsync.core.service`` starts.
"""

from __future__ import annotations

import logging

from opentelemetry import metrics
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.auth._metrics import AuthMetrics
from hubsync.auth.keyring import KeyRing, KeyRingError
from hubsync.auth.oauth_client import HubSpotOAuthClient
from hubsync.auth.servicer import AuthServicer
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import ConnectionStore
from hubsync.auth.vault import TokenVault
from hubsync.core.service import ServiceSpec, SpecFactory
from hubsync.core.settings import CoreSettings, Environment, invalid_configuration

__all__ = [
    "DEFAULT_PORT",
    "SERVICE",
    "build",
    "caller_policy",
    "check_settings",
    "load_keyring",
    "service_factory",
]

log = logging.getLogger(__name__)

SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
DEFAULT_PORT = 50051


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _exit(variable: str, message: str) -> SystemExit:
    """Report one bad auth setting the way every service does; the caller raises the result."""
    return invalid_configuration(AuthSettings.__name__, [(variable, message)])


def load_keyring(settings: AuthSettings, environment: Environment) -> KeyRing:
    """Load the configured key ring; in development a generated one (with a loud warning)."""
    if settings.keyring_file is not None:
        try:
            raw = settings.keyring_file.read_text()
        except OSError as exc:
            raise _exit("HUBSYNC_AUTH_KEYRING_FILE", f"cannot be read ({exc.strerror})") from None
        variable = "HUBSYNC_AUTH_KEYRING_FILE"
    elif settings.keyring is not None:
        raw = settings.keyring.get_secret_value()
        variable = "HUBSYNC_AUTH_KEYRING"
    else:
        if environment == Environment.PRODUCTION:
            raise _exit("HUBSYNC_AUTH_KEYRING_FILE", "a key ring is required in production")
        log.warning(
            "NO KEY RING CONFIGURED (HUBSYNC_AUTH_KEYRING_FILE / HUBSYNC_AUTH_KEYRING): generated a "
            "throw-away key; stored tokens will NOT be readable after a restart or by other replicas"
        )
        return KeyRing.generate()
    try:
        return KeyRing.from_json(raw)
    except KeyRingError as exc:
        raise _exit(variable, str(exc)) from None


def check_settings(settings: AuthSettings, environment: Environment) -> None:
    """Exit 2 naming the variable if a setting is unsafe for ``environment``."""
    if environment == Environment.PRODUCTION:
        if settings.redirect_uri and not settings.redirect_uri.startswith("https://"):
            raise _exit("HUBSYNC_AUTH_REDIRECT_URI", "must be an https URL in production")
        if any(not uri.startswith("https://") for uri in settings.extra_redirect_uris):
            raise _exit("HUBSYNC_AUTH_EXTRA_REDIRECT_URIS", "must all be https URLs in production")
        if not settings.authorize_url.startswith("https://"):
            raise _exit("HUBSYNC_AUTH_AUTHORIZE_URL", "must be an https URL in production")


def caller_policy(settings: AuthSettings) -> dict[str, list[str]]:
    """Who may call each AuthService method: every method is listed (deny by default)."""
    readers, admins, oauth = settings.token_readers, settings.admin_callers, settings.oauth_callers
    return {
        # Only the writer calls HubSpot, so only it reads tokens.
        _method("GetAccessToken"): readers,
        _method("InvalidateAccessToken"): readers,
        # People, through the CLI (`hubsync connect`, `hubsync keys rotate`).
        _method("CreatePrivateAppConnection"): admins,
        _method("GetConnection"): admins,
        _method("ListConnections"): admins,
        _method("RevokeConnection"): admins,
        _method("RotateKeys"): admins,
        # `hubsync connect --tenant` begins; ingress serves the redirect that completes.
        _method("BeginAuthorization"): oauth,
        # ingress's /oauth/start redeems the start link and binds the state to the browser.
        _method("StartAuthorization"): oauth,
        _method("CompleteAuthorization"): oauth,
    }


def service_factory(settings: AuthSettings) -> SpecFactory:
    """Return the :data:`~hubsync.core.service.SpecFactory` of an auth service with ``settings``."""

    async def factory(core: CoreSettings, redis: Redis) -> ServiceSpec:
        return await build(core, redis, settings)

    return factory


async def build(core: CoreSettings, redis: Redis, settings: AuthSettings) -> ServiceSpec:
    """Build the auth service's :class:`ServiceSpec` from the core and the auth settings."""
    check_settings(settings, core.environment)
    keyring = load_keyring(settings, core.environment)
    oauth = HubSpotOAuthClient(
        core.hubspot_api_base,
        settings.client_id,
        settings.client_secret.get_secret_value() if settings.client_secret else "",
        token_path=settings.token_path,
        revoke_path=settings.revoke_path,
        introspect_path=settings.introspect_path,
        timeout_s=settings.http_timeout_s,
        attempts=settings.refresh_attempts,
        backoff_s=settings.refresh_backoff_s,
    )
    vault = TokenVault(
        ConnectionStore(redis),
        keyring,
        oauth,
        settings,
        development=core.environment == Environment.DEVELOPMENT,
        metrics=AuthMetrics(metrics.get_meter("hubsync.auth")),
    )
    servicer = AuthServicer(vault)
    return ServiceSpec(
        service_names=[SERVICE],
        register=lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server),
        port=DEFAULT_PORT,
        policy=caller_policy(settings),
        background=[vault.run_refresher],
        on_stop=[oauth.aclose],
    )
