"""Refresh behaviour: transient failures, HubSpot down, responses without a refresh token,
the background refresher, and a private-app token HubSpot rejects."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2

from hubsync.api.auth.v1 import auth_pb2
from hubsync.core.errors import error_info
from hubsync.sandbox import SandboxServer
from tests.helpers.auth import (
    SANDBOX_PORTAL,
    SANDBOX_PRIVATE_TOKEN,
    register_sandbox_private_app,
    running_auth,
)
from tests.helpers.auth_oauth import connect_oauth, sandbox_tokens
from tests.helpers.auth_proxy import auth_behind_proxy
from tests.helpers.auth_sandbox import sandbox_config, sandbox_requests, stub, token_calls

AN_HOUR = duration_pb2.Duration(seconds=3600)
FORCE = auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL, min_ttl=AN_HOUR)


async def add_fault(base_url: str, **rule: object) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        resp = await client.post("/_sandbox/faults", json=rule)
        assert resp.status_code < 300, resp.text


async def test_transient_failures_are_retried(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    first = await connect_oauth(auth, caller_tokens)
    await add_fault(sandbox.base_url, endpoint="POST /oauth/v3/token", status=503, remaining=2)
    async with stub(auth, caller_tokens, "writer") as s:
        reply = await s.GetAccessToken(FORCE)
    assert reply.expire_time.seconds >= first.access_token_expire_time.seconds
    statuses = (await sandbox_requests(sandbox.base_url))["counts"]["byEndpointAndStatus"]  # type: ignore[index]
    assert statuses["POST /oauth/v3/token"] == {"200": 2, "503": 2}


async def test_hubspot_down_keeps_serving_the_valid_token_then_says_unavailable(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with (
        SandboxServer(sandbox_config(token_ttl_s=6)) as sandbox,
        running_auth(
            redis_url=redis_url, caller_tokens=caller_tokens, hubspot_api_base=sandbox.base_url
        ) as auth,
    ):
        await connect_oauth(auth, caller_tokens)
        async with stub(auth, caller_tokens, "writer") as s:
            current = (
                await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL))
            ).access_token
            await add_fault(sandbox.base_url, endpoint="POST /oauth/v3/token", status=502)
            # Refresh fails, but the current token still has > 5 s: the caller gets it.
            assert (await s.GetAccessToken(FORCE)).access_token == current
            await asyncio.sleep(1.2)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.GetAccessToken(FORCE)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        conn_state = await _state(auth, caller_tokens)
    assert conn_state == auth_pb2.CONNECTION_STATE_ACTIVE  # transient: no re-auth needed


async def _state(auth: str, caller_tokens: dict[str, str]) -> int:
    async with stub(auth, caller_tokens, "cli") as s:
        got = await s.GetConnection(auth_pb2.GetConnectionRequest(portal_id=SANDBOX_PORTAL))
    return got.connection.state


def drop_refresh_token(grant: str, data: dict[str, Any]) -> dict[str, Any]:
    # HubSpot may answer a refresh without a new refresh token.
    if grant == "refresh_token":
        data.pop("refresh_token")
    return data


async def test_refresh_without_new_refresh_token_keeps_the_old_one(
    redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    async with auth_behind_proxy(redis_url, caller_tokens, sandbox.base_url, drop_refresh_token) as auth:
        await connect_oauth(auth, caller_tokens)
        async with stub(auth, caller_tokens, "writer") as s:
            seen = {(await s.GetAccessToken(FORCE)).access_token for _ in range(3)}
    assert len(seen) == 3  # three refreshes, each with the one refresh token the code gave
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 4
    assert len((await sandbox_tokens(sandbox.base_url))["refreshTokens"]) == 1


async def test_background_refresher_keeps_idle_connections_fresh_and_finds_dead_ones(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with (
        SandboxServer(sandbox_config(token_ttl_s=3)) as sandbox,
        running_auth(
            redis_url=redis_url,
            caller_tokens=caller_tokens,
            hubspot_api_base=sandbox.base_url,
            settings={"refresh_margin_s": 1, "refresher_interval_s": 0.3},
        ) as auth,
    ):
        first = await connect_oauth(auth, caller_tokens)
        for _ in range(50):  # nobody asks for a token; the refresher refreshes on its own
            await asyncio.sleep(0.1)
            if token_calls(await sandbox_requests(sandbox.base_url)) >= 2:
                break
        assert token_calls(await sandbox_requests(sandbox.base_url)) >= 2
        async with stub(auth, caller_tokens, "cli") as s:
            got = await s.GetConnection(auth_pb2.GetConnectionRequest(portal_id=SANDBOX_PORTAL))
        assert got.connection.access_token_expire_time.ToMilliseconds() > (
            first.access_token_expire_time.ToMilliseconds()
        )
        # HubSpot revokes the refresh token: the refresher marks the connection on its own.
        refresh = (await sandbox_tokens(sandbox.base_url))["refreshTokens"][0]["token"]
        async with httpx.AsyncClient(base_url=sandbox.base_url) as client:
            await client.post("/_sandbox/tokens/revoke", json={"refresh_token": refresh})
        for _ in range(50):
            await asyncio.sleep(0.1)
            if await _state(auth, caller_tokens) == auth_pb2.CONNECTION_STATE_NEEDS_REAUTH:
                break
        assert await _state(auth, caller_tokens) == auth_pb2.CONNECTION_STATE_NEEDS_REAUTH


async def test_rejected_private_app_token_needs_a_new_one(auth: str, caller_tokens: dict[str, str]) -> None:
    await register_sandbox_private_app(auth, caller_tokens)
    async with stub(auth, caller_tokens, "writer") as s:
        stale = await s.InvalidateAccessToken(
            auth_pb2.InvalidateAccessTokenRequest(portal_id=SANDBOX_PORTAL, access_token="pat-na1-old")
        )
        assert stale.access_token == SANDBOX_PRIVATE_TOKEN and not stale.refreshed
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.InvalidateAccessToken(
                auth_pb2.InvalidateAccessTokenRequest(
                    portal_id=SANDBOX_PORTAL, access_token=SANDBOX_PRIVATE_TOKEN
                )
            )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info is not None and info.reason == "CONNECTION_NEEDS_REAUTH"
    assert await _state(auth, caller_tokens) == auth_pb2.CONNECTION_STATE_NEEDS_REAUTH
    await register_sandbox_private_app(auth, caller_tokens)  # storing a new token heals it
    assert await _state(auth, caller_tokens) == auth_pb2.CONNECTION_STATE_ACTIVE


@pytest.mark.on_cluster
async def test_a_crashed_lock_holder_blocks_only_until_its_lock_expires(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer, redis: Any
) -> None:
    await connect_oauth(auth, caller_tokens)
    # Another replica took the refresh lock and died: its lock expires after 400 ms.
    await redis.set("hubsync:{12345}:auth:refresh-lock", "dead-replica", px=400)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with stub(auth, caller_tokens, "writer") as s:
        replies = await asyncio.gather(*(s.GetAccessToken(FORCE) for _ in range(10)))
    waited = loop.time() - started
    assert len({r.access_token for r in replies}) == 1
    assert waited >= 0.3  # nobody refreshed behind the (live) lock's back
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 2


async def test_a_hanging_token_endpoint_is_abandoned_before_the_lock_expires(
    redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer, redis: Any
) -> None:
    async with running_auth(
        redis_url=redis_url,
        caller_tokens=caller_tokens,
        hubspot_api_base=sandbox.base_url,
        settings={"refresh_lock_ttl_s": 3},
    ) as auth:
        await connect_oauth(auth, caller_tokens)
        await add_fault(sandbox.base_url, endpoint="POST /oauth/v3/token", timeout_s=4, remaining=1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with stub(auth, caller_tokens, "writer") as s:
            current = await s.GetAccessToken(FORCE)  # refresh gives up after 1 s: the valid token
        assert 0.9 <= loop.time() - started < 2.5
        assert await redis.exists("hubsync:{12345}:auth:refresh-lock") == 0
        assert await _state(auth, caller_tokens) == auth_pb2.CONNECTION_STATE_ACTIVE
        async with stub(auth, caller_tokens, "writer") as s:
            fresh = await s.GetAccessToken(FORCE)
        assert fresh.access_token != current.access_token
