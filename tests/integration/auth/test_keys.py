"""Key rotation: every connection stays readable before, during and after; old keys can retire."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import pytest

from hubsync.api.auth.v1 import auth_pb2
from hubsync.sandbox import SandboxServer
from tests.helpers.auth import (
    SANDBOX_PORTAL,
    new_keyring,
    register_sandbox_private_app,
    running_auth,
)
from tests.helpers.auth_oauth import connect_oauth
from tests.helpers.auth_sandbox import stub

PRIVATE = {10: "pat-na1-ten", 20: "pat-na1-twenty"}


async def tokens(address: str, caller_tokens: dict[str, str], portals: list[int]) -> dict[int, str]:
    async with stub(address, caller_tokens, "writer") as s:
        replies = await asyncio.gather(
            *(s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=p)) for p in portals)
        )
    return {p: r.access_token for p, r in zip(portals, replies, strict=True)}


async def key_ids(address: str, caller_tokens: dict[str, str]) -> dict[int, str]:
    async with stub(address, caller_tokens, "cli") as s:
        listed = await s.ListConnections(auth_pb2.ListConnectionsRequest())
    return {c.portal_id: c.key_id for c in listed.connections}


async def test_rotation_keeps_every_connection_readable(
    redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    old = new_keyring("k1")
    both = new_keyring("k1", "k2", active="k2")
    both["keys"]["k1"] = old["keys"]["k1"]  # type: ignore[index]
    only_new = {"active": "k2", "keys": {"k2": both["keys"]["k2"]}}  # type: ignore[index]
    portals = [10, 20, SANDBOX_PORTAL]

    def start(keyring: Mapping[str, object]):  # type: ignore[no-untyped-def]
        return running_auth(
            redis_url=redis_url,
            caller_tokens=caller_tokens,
            hubspot_api_base=sandbox.base_url,
            keyring=keyring,
        )

    async with start(old) as auth:
        for portal, token in PRIVATE.items():
            await register_sandbox_private_app(auth, caller_tokens, portal_id=portal, token=token)
        await connect_oauth(auth, caller_tokens)
        before = await tokens(auth, caller_tokens, portals)
        assert set((await key_ids(auth, caller_tokens)).values()) == {"k1"}

    # Step 1: every replica gets the ring with the new active key; old records still open.
    async with start(both) as auth:
        assert await tokens(auth, caller_tokens, portals) == before
        # Step 2: rotate while callers keep reading: nobody sees a failure.
        async with stub(auth, caller_tokens, "cli") as s:
            rotated, *reads = await asyncio.gather(
                s.RotateKeys(auth_pb2.RotateKeysRequest()),
                *(tokens(auth, caller_tokens, portals) for _ in range(20)),
            )
        assert rotated.active_key_id == "k2"
        assert rotated.reencrypted_count == 3
        assert all(r == before for r in reads)
        assert set((await key_ids(auth, caller_tokens)).values()) == {"k2"}
        async with stub(auth, caller_tokens, "cli") as s:
            again = await s.RotateKeys(auth_pb2.RotateKeysRequest())
        assert again.reencrypted_count == 0

    # Step 3: the old key is retired; everything opens with the new one alone...
    async with start(only_new) as auth:
        assert await tokens(auth, caller_tokens, portals) == before
    # ...and really was re-encrypted: the old key alone opens nothing.
    async with start(old) as auth, stub(auth, caller_tokens, "writer") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=10))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "pat-na1" not in (err.value.details() or "")
