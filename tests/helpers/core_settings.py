"""The core settings a service under test runs with (each service's helper adds its own)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from hubsync.core.settings import CoreSettings


def service_core(
    name: str, redis_url: str, caller_tokens: Mapping[str, str], hubspot_api_base: str, **values: Any
) -> CoreSettings:
    """Core settings of service ``name`` (its caller name) on this Redis and HubSpot, knowing every
    caller's token; a short shutdown grace (0.5 s) unless ``values``, the other fields, say."""
    return CoreSettings(
        redis_url=redis_url,
        caller_name=name,
        caller_tokens=SecretStr(json.dumps(dict(caller_tokens))),
        hubspot_api_base=hubspot_api_base,
        **({"shutdown_grace_seconds": 0.5} | values),
    )


def process_env(
    name: str, redis_url: str, caller_tokens: Mapping[str, str], port: int, **values: str
) -> dict[str, str]:
    """The core ``HUBSYNC_*`` variables of a ``python -m hubsync.<name>`` process under test: its
    caller name, every caller's token, Redis, gRPC on ``port``, a 1 s shutdown grace; ``values``
    add or override core settings by field name (``ready_poll_s="1"``)."""
    return {
        "HUBSYNC_REDIS_URL": redis_url,
        "HUBSYNC_CALLER_NAME": name,
        "HUBSYNC_CALLER_TOKENS": json.dumps(dict(caller_tokens)),
        "HUBSYNC_GRPC_PORT": str(port),
        "HUBSYNC_SHUTDOWN_GRACE_SECONDS": "1",
    } | {f"HUBSYNC_{field.upper()}": value for field, value in values.items()}
