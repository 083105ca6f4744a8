"""Fixtures of the auth tests: a sandbox with short OAuth token lives, and helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hubsync.sandbox import PortalConfig, SandboxConfig, SandboxServer


def sandbox_config(**overrides: object) -> SandboxConfig:
    base: dict[str, object] = {"portals": [PortalConfig(burst_per_10s=100_000)]}
    base.update(overrides)
    return SandboxConfig.model_validate(base)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(sandbox_config()) as sb:
        yield sb
