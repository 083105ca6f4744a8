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
