"""Fixtures of the auth tests: a sandbox with short OAuth token lives, an auth service on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hubsync.sandbox import SandboxServer
from tests.helpers.auth import running_auth
from tests.helpers.auth_sandbox import sandbox_config


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(sandbox_config()) as sb:
        yield sb


@pytest.fixture
async def auth(redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer) -> AsyncIterator[str]:
    """An in-process auth service on the sandbox: its address."""
    async with running_auth(
        redis_url=redis_url, caller_tokens=caller_tokens, hubspot_api_base=sandbox.base_url
    ) as address:
        yield address
