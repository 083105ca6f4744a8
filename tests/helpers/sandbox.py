"""Sandbox configuration shared by the sandbox tests."""

from __future__ import annotations

from hubsync.sandbox import PortalConfig, SandboxConfig

# The properties HubSpot returns for a contact when the request names none (reads and searches).
DEFAULT_CONTACT_PROPERTIES = frozenset(
    {"createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"}
)


def fast_config(**overrides: object) -> SandboxConfig:
    """Default portal and app, generous limits, a retry schedule compressed to milliseconds."""
    base: dict[str, object] = {
        "portals": [PortalConfig(burst_per_10s=100_000, search_per_second=1_000)],
        "webhook_retry_scale": 0.00001,  # 24 h of retries in under a second
        "webhook_retry_jitter": 0.0,
        "webhook_batch_window_ms": 2.0,
    }
    base.update(overrides)
    return SandboxConfig.model_validate(base)
