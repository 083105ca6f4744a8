"""Fixtures for the sandbox tests: a running sandbox, an authenticated client, a webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, PortalConfig, SandboxConfig, SandboxServer
from hubsync.sandbox.testing import WebhookReceiver


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


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as r:
        yield r


@pytest.fixture
async def sandbox(receiver: WebhookReceiver) -> AsyncIterator[SandboxServer]:
    async with SandboxServer(fast_config()) as sb:
        sb.state.webhooks.subs[1001].target_url = receiver.url
        yield sb


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=sandbox.base_url, headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"}
    ) as c:
        yield c
