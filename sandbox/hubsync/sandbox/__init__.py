"""hubsync.sandbox: a faithful local HubSpot for tests, benchmarks and the demo.

Public surface:
    SandboxConfig   the configuration (portals, apps, limits, webhooks, faults); ``SandboxConfig.load(path)``.
    create_app      ``create_app(config) -> Starlette`` (``app.state.sandbox`` is the state).
    SandboxServer   async context manager running the app on 127.0.0.1 with ``.base_url`` and ``.state``.
    SandboxState    the live state: stores per portal, tokens, request log, webhooks.
    sign_v1/sign_v3 HubSpot's webhook signatures, as the sandbox computes them.
"""

from .app import create_app
from .config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PRIVATE_TOKEN,
    AppConfig,
    FaultRule,
    PortalConfig,
    PrivateAppConfig,
    SandboxConfig,
    WebhookSubscriptionConfig,
)
from .server import SandboxServer
from .state import SandboxState
from .webhooks import sign_v1, sign_v3

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PRIVATE_TOKEN",
    "AppConfig",
    "FaultRule",
    "PortalConfig",
    "PrivateAppConfig",
    "SandboxConfig",
    "SandboxServer",
    "SandboxState",
    "WebhookSubscriptionConfig",
    "create_app",
    "sign_v1",
    "sign_v3",
]
