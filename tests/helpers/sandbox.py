"""Sandbox configuration shared by the sandbox tests."""

from __future__ import annotations

from hubsync.sandbox import PortalConfig, SandboxConfig


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
