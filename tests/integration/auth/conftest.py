"""Fixtures of the auth tests: a sandbox with short OAuth token lives, and helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hubsync.sandbox import SandboxServer
from tests.helpers.auth_sandbox import sandbox_config


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(sandbox_config()) as sb:
        yield sb
