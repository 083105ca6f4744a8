"""Small helpers of the auth integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from hubsync.api.auth.v1 import auth_pb2_grpc
from hubsync.core.channels import open_channel


@asynccontextmanager
async def stub(
    address: str, caller_tokens: Mapping[str, str], caller: str
) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    async with open_channel(address, caller_tokens[caller]) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


async def sandbox_requests(base_url: str) -> dict[str, object]:
    import httpx

    async with httpx.AsyncClient(base_url=base_url) as client:
        return (await client.get("/_sandbox/requests", params={"limit": 1000})).json()


def token_calls(log: Mapping[str, object]) -> int:
    """How many times the token endpoint answered (any version, any status)."""
    counts = log["counts"]["byEndpoint"]  # type: ignore[index]
    return sum(n for ep, n in counts.items() if ep.startswith("POST /oauth/") and ep.endswith("/token"))
