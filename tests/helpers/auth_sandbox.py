"""Small helpers of the auth integration tests: stubs, sandbox config and request logs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import grpc
from google.rpc import error_details_pb2, status_pb2

from hubsync.api.auth.v1 import auth_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.sandbox import PortalConfig, SandboxConfig


@asynccontextmanager
async def stub(
    address: str, caller_tokens: Mapping[str, str], caller: str
) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    async with open_channel(address, caller_tokens[caller]) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


def violations(err: grpc.aio.AioRpcError) -> set[str]:
    """The fields named by the BadRequest detail of a failed call."""
    fields: set[str] = set()
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:  # type: ignore[arg-type]
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields |= {v.field for v in bad.field_violations}
    return fields


async def sandbox_requests(base_url: str) -> dict[str, object]:
    import httpx

    async with httpx.AsyncClient(base_url=base_url) as client:
        return (await client.get("/_sandbox/requests", params={"limit": 1000})).json()


def token_calls(log: Mapping[str, object]) -> int:
    """How many times the token endpoint answered (any version, any status)."""
    counts = log["counts"]["byEndpoint"]  # type: ignore[index]
    return sum(n for ep, n in counts.items() if ep.startswith("POST /oauth/") and ep.endswith("/token"))


def sandbox_config(**overrides: object) -> SandboxConfig:
    """A sandbox with a generous burst limit, for auth tests."""
    base: dict[str, object] = {"portals": [PortalConfig(burst_per_10s=100_000)]}
    base.update(overrides)
    return SandboxConfig.model_validate(base)
