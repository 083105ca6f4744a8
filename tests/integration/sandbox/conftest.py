"""Fixtures for the sandbox tests: a running sandbox, an authenticated client, a webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, SandboxServer
from hubsync.sandbox.testing import WebhookReceiver
from tests.helpers.sandbox import fast_config


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
