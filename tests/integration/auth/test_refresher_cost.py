"""The background refresher's cost follows expiring tokens, not connections (issue 13, part A).

A refresher pass used to read every connection (HGETALL each) every minute; now it reads the
refresh-due registry (a sorted set by expiry) and touches only the connections due. Redis command
counts (``INFO commandstats``) are compared for 10 and 2,000 connected idle portals, no timing.
Also: the one-off backfill after an upgrade, the registry through revocation, re-authorization
and ``invalid_grant``, and two replicas' passes over one due connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from google.protobuf import duration_pb2
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2
from hubsync.auth.keyring import KeyRing
from hubsync.auth.oauth_client import HubSpotOAuthClient
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import KIND_OAUTH, STATE_ACTIVE, Connection, ConnectionStore
from hubsync.auth.vault import TokenVault
from hubsync.core.keys import (
    AUTH_NEEDS_REAUTH_KEY,
    AUTH_REFRESH_DUE_BACKFILLED_KEY,
    AUTH_REFRESH_DUE_KEY,
    AUTH_REFRESHER_LOCK_KEY,
)
from hubsync.sandbox import SandboxServer
from tests.helpers.auth import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_PORTAL,
    new_keyring,
    running_auth,
)
from tests.helpers.auth_oauth import connect_oauth, sandbox_tokens
from tests.helpers.auth_sandbox import sandbox_config, sandbox_requests, stub, token_calls

SIX_HOURS_MS = 6 * 3600 * 1000
AN_HOUR = duration_pb2.Duration(seconds=3600)


def _vault(
    redis: Redis,
    keyring: dict[str, object],
    api_base: str,
    *,
    clock: Callable[[], int] = lambda: int(time.time() * 1000),
    **settings: Any,
) -> TokenVault:
    oauth = HubSpotOAuthClient(api_base, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, backoff_s=0.01)
    return TokenVault(
        ConnectionStore(redis),
        KeyRing.from_json(json.dumps(keyring)),
        oauth,
        AuthSettings(client_id=SANDBOX_CLIENT_ID, **settings),
        clock=clock,
    )


async def _commands(redis: Redis) -> int:
    """Commands Redis has served since the last reset, not counting the INFO that asks (nor the
    CONFIG RESETSTAT that reset them)."""
    stats: dict[str, Any] = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


async def _connect_idle(vault: TokenVault, first: int, count: int) -> None:
    """``count`` OAuth connections whose tokens live six more hours (nothing due)."""
    now = int(time.time() * 1000)
    for portal in range(first, first + count):
        conn = Connection(
            portal_id=portal,
            tenant="t",
            kind=KIND_OAUTH,
            state=STATE_ACTIVE,
            expires_ms=now + SIX_HOURS_MS,
            created_ms=now,
            updated_ms=now,
            key_id=vault.keyring.active,
            version=1,
            generation=1,
            sealed=vault.records.seal(portal, f"access-{portal}", f"refresh-{portal}"),
        )
        assert await vault.store.swap(conn, None)


async def _idle_pass_commands(redis: Redis, portals: int) -> int:
    await redis.flushall()
    # A short interval, so each pass takes the pass lock of its own.
    vault = _vault(redis, new_keyring(), "http://127.0.0.1:9", refresher_interval_s=0.001)
    await _connect_idle(vault, 1000, portals)
    await vault.refresh_due()  # the first pass (after an upgrade it also fills the registry)
    await redis.config_resetstat()
    for _ in range(3):
        await asyncio.sleep(0.01)
        assert await vault.refresh_due() == 0
    return await _commands(redis)


async def test_an_idle_refresher_pass_costs_the_same_for_10_and_2000_connections(redis: Redis) -> None:
    few = await _idle_pass_commands(redis, 10)
    many = await _idle_pass_commands(redis, 2_000)
    # Before: one HGETALL per connection per pass (3 passes x 1,990 more connections).
    assert many - few <= 6, f"3 idle passes: {few} commands at 10 connections, {many} at 2,000"
    assert many <= 30


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(sandbox_config(token_ttl_s=600)) as sb:
        yield sb


async def _due(redis: Redis) -> dict[int, int]:
    raw: list[tuple[bytes, float]] = await redis.zrange(AUTH_REFRESH_DUE_KEY, 0, -1, withscores=True)  # type: ignore[assignment]
    return {int(m): int(s) for m, s in raw}


async def _needs(redis: Redis) -> set[int]:
    return {int(m) for m in await redis.smembers(AUTH_NEEDS_REAUTH_KEY)}  # type: ignore[misc]


async def _connected_then_stopped(
    redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> dict[str, object]:
    """Connects the sandbox portal through a running auth, stops it; returns its key ring."""
    keyring = new_keyring()
    async with running_auth(
        redis_url=redis_url, caller_tokens=caller_tokens, hubspot_api_base=sandbox.base_url, keyring=keyring
    ) as auth:
        await connect_oauth(auth, caller_tokens)
    return keyring


async def test_upgrade_backfills_the_registry_so_a_due_connection_is_refreshed(
    redis: Redis, redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    keyring = await _connected_then_stopped(redis_url, caller_tokens, sandbox)
    # What a release without the registry left behind: the connection and its listing only.
    await redis.delete(AUTH_REFRESH_DUE_KEY, AUTH_NEEDS_REAUTH_KEY, AUTH_REFRESH_DUE_BACKFILLED_KEY)
    # The token (600 s) falls inside margin + interval: due now.
    vault = _vault(redis, keyring, sandbox.base_url, refresh_margin_s=900, refresher_interval_s=60)
    assert await vault.refresh_due() == 1
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 2
    assert list(await _due(redis)) == [SANDBOX_PORTAL]
    assert await redis.exists(AUTH_REFRESH_DUE_BACKFILLED_KEY)
    # Once filled, the next replica or restart does not walk the connections again.
    assert await _vault(redis, keyring, sandbox.base_url).backfill_due() == 0


async def test_the_registry_follows_refresh_reauth_revocation(
    redis: Redis, redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    async with running_auth(
        redis_url=redis_url, caller_tokens=caller_tokens, hubspot_api_base=sandbox.base_url
    ) as auth:
        first = await connect_oauth(auth, caller_tokens)
        assert await _due(redis) == {SANDBOX_PORTAL: first.access_token_expire_time.ToMilliseconds()}
        # A refresh moves the connection's due time with its new expiry.
        async with stub(auth, caller_tokens, "writer") as s:
            await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL, min_ttl=AN_HOUR))
            async with stub(auth, caller_tokens, "cli") as admin:
                got = await admin.GetConnection(auth_pb2.GetConnectionRequest(portal_id=SANDBOX_PORTAL))
            assert await _due(redis) == {
                SANDBOX_PORTAL: got.connection.access_token_expire_time.ToMilliseconds()
            }
            # HubSpot revokes the refresh token: invalid_grant takes it out, into needs-reauth.
            refresh = (await sandbox_tokens(sandbox.base_url))["refreshTokens"][0]["token"]
            async with httpx.AsyncClient(base_url=sandbox.base_url) as client:
                await client.post("/_sandbox/tokens/revoke", json={"refresh_token": refresh})
            with pytest.raises(Exception):
                await s.GetAccessToken(
                    auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL, min_ttl=AN_HOUR)
                )
        assert await _due(redis) == {} and await _needs(redis) == {SANDBOX_PORTAL}
        # Authorized again: due again, no longer needing a person.
        again = await connect_oauth(auth, caller_tokens)
        assert await _due(redis) == {SANDBOX_PORTAL: again.access_token_expire_time.ToMilliseconds()}
        assert await _needs(redis) == set()
        # Revoked (disconnected): nothing left to refresh.
        async with stub(auth, caller_tokens, "cli") as admin:
            await admin.RevokeConnection(auth_pb2.RevokeConnectionRequest(portal_id=SANDBOX_PORTAL))
        assert await _due(redis) == {} and await _needs(redis) == set()


async def test_a_stale_registry_entry_heals_and_replicas_refresh_once(
    redis: Redis, redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    keyring = await _connected_then_stopped(redis_url, caller_tokens, sandbox)
    # A registry entry for a connection that is gone (a crash between two writes) heals on sight.
    await redis.zadd(AUTH_REFRESH_DUE_KEY, {"777": 1})
    replicas = [
        _vault(redis, keyring, sandbox.base_url, refresh_margin_s=900, refresher_interval_s=60)
        for _ in range(3)
    ]
    refreshed = await asyncio.gather(*(v.refresh_due() for v in replicas))
    assert sum(refreshed) == 1
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 2  # the code, one refresh
    assert list(await _due(redis)) == [SANDBOX_PORTAL]


async def test_with_refresh_idle_after_an_idle_connection_waits_for_its_next_use(
    redis: Redis, redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    keyring = await _connected_then_stopped(redis_url, caller_tokens, sandbox)
    # Two hours later (the vault's clock): the token has expired and nobody asked for it.
    later = [int(time.time() * 1000) + 2 * 3600 * 1000]
    vault = _vault(
        redis,
        keyring,
        sandbox.base_url,
        clock=lambda: later[0],
        refresh_margin_s=900,
        refresher_interval_s=60,
        refresh_idle_after_s=3600,
    )
    assert await vault.refresh_due() == 0
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 1  # the code only
    assert await _due(redis) == {}  # an idle connection costs the refresher nothing
    # Its next use refreshes on demand and puts it back in the registry.
    issued = await vault.get_access_token(SANDBOX_PORTAL)
    assert issued.expires_ms > later[0]
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 2
    assert list(await _due(redis)) == [SANDBOX_PORTAL]
    # Used now, so the refresher keeps it fresh again (its 600 s token is inside the window).
    later[0] += 1000
    await redis.delete(AUTH_REFRESHER_LOCK_KEY)
    assert await vault.refresh_due() == 1
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 3
