"""OAuth connections against the sandbox: the code flow, state checks, refresh, re-auth, revocation."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2
from hubsync.core.errors import error_info
from hubsync.sandbox import SandboxServer
from tests.helpers.auth import SANDBOX_CLIENT_ID, SANDBOX_PORTAL, TEST_REDIRECT_URI, running_auth
from tests.helpers.auth_oauth import (
    complete,
    connect_oauth,
    consent,
    open_start_link,
    sandbox_tokens,
    ticket_of,
)
from tests.helpers.auth_proxy import auth_behind_proxy
from tests.helpers.auth_sandbox import sandbox_config, sandbox_requests, stub, token_calls, violations


async def crm_status(base_url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=base_url) as client:
        resp = await client.get("/crm/v3/objects/contacts", headers={"authorization": f"Bearer {token}"})
    return resp.status_code


async def test_full_authorization_code_flow(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    async with stub(auth, caller_tokens, "cli") as s:
        begun = await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="acme"))
    query = parse_qs(urlsplit(begun.authorize_url).query)
    assert begun.authorize_url.startswith(f"{sandbox.base_url}/oauth/authorize?")
    assert query["client_id"] == [SANDBOX_CLIENT_ID]
    assert query["redirect_uri"] == [TEST_REDIRECT_URI]
    assert "crm.objects.contacts.write" in query["scope"][0].split()
    assert query["state"] == [begun.state] and len(begun.state) >= 40
    assert begun.expire_time.seconds > 0
    # The start link sits next to the redirect URI (ingress's /oauth/start).
    assert begun.start_url.startswith(TEST_REDIRECT_URI.replace("/callback", "/start?ticket="))

    authorize_url, binding = await open_start_link(auth, caller_tokens, begun)
    assert authorize_url == begun.authorize_url
    code, state = await consent(authorize_url)
    conn = (await complete(auth, caller_tokens, code, state, binding)).connection
    assert conn.portal_id == SANDBOX_PORTAL  # learnt from the token response's hub_id
    assert conn.tenant == "acme"
    assert conn.kind == auth_pb2.CONNECTION_KIND_OAUTH
    assert conn.state == auth_pb2.CONNECTION_STATE_ACTIVE
    assert conn.access_token_expire_time.seconds > 0

    async with stub(auth, caller_tokens, "writer") as s:
        reply = await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL))
    token = reply.access_token
    assert await crm_status(sandbox.base_url, token) == 200
    log = await sandbox_requests(sandbox.base_url)
    assert token_calls(log) == 1  # the code exchange; a fresh token needs no refresh


async def test_state_replay_forgery_and_expiry_are_refused(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer, redis: Redis
) -> None:
    async with stub(auth, caller_tokens, "cli") as s:
        begun = await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="acme"))
    authorize_url, binding = await open_start_link(auth, caller_tokens, begun)
    code, state = await consent(authorize_url)
    # Forged: a state we never issued. Nothing is stored, the code is not even exchanged.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await complete(auth, caller_tokens, code, "forged", binding)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err.value)
    assert info is not None and info.reason == "OAUTH_STATE_INVALID"
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 0

    await complete(auth, caller_tokens, code, state, binding)
    # Replayed: the state is single use.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await complete(auth, caller_tokens, code, state, binding)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 1

    # Expired: Redis forgets the state after its TTL (shortened here to now).
    async with stub(auth, caller_tokens, "cli") as s:
        begun = await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="other"))
    authorize_url, binding = await open_start_link(auth, caller_tokens, begun)
    for key in await redis.keys("hubsync:auth:oauth-*"):
        assert await redis.ttl(key) > 590
        await redis.pexpire(key, 1)
    await asyncio.sleep(0.01)
    code, state = await consent(authorize_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await complete(auth, caller_tokens, code, state, binding)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with stub(auth, caller_tokens, "cli") as s:
        got = await s.GetConnection(auth_pb2.GetConnectionRequest(portal_id=SANDBOX_PORTAL))
    assert got.connection.tenant == "acme"  # the refused attempt changed nothing


async def test_state_is_bound_to_the_browser_that_opened_the_start_link(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    async with stub(auth, caller_tokens, "cli") as s:
        begun = await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="acme"))
    # The authorize URL alone (the start link never opened) does not complete.
    code, state = await consent(begun.authorize_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await complete(auth, caller_tokens, code, state, "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err.value)
    assert info is not None and info.reason == "OAUTH_BROWSER_MISMATCH"

    authorize_url, binding = await open_start_link(auth, caller_tokens, begun)
    # The start link works once: a second browser opening it is refused.
    async with stub(auth, caller_tokens, "ingress") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.StartAuthorization(
                auth_pb2.StartAuthorizationRequest(
                    ticket=ticket_of(begun.start_url), browser_binding="o" * 43
                )
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err.value)
    assert info is not None and info.reason == "OAUTH_START_LINK_INVALID"

    # Another browser's callback (an attacker's consent, a stolen authorize URL) is refused, and
    # spoils nothing: the browser that opened the link still completes.
    code, state = await consent(authorize_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await complete(auth, caller_tokens, code, state, "x" * 43)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err.value)
    assert info is not None and info.reason == "OAUTH_BROWSER_MISMATCH"
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 0
    done = await complete(auth, caller_tokens, code, state, binding)
    assert done.connection.tenant == "acme"


async def test_only_allowed_redirect_uris_are_accepted(
    redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    extra = "http://127.0.0.1:9/other/oauth/callback"
    async with (
        running_auth(
            redis_url=redis_url,
            caller_tokens=caller_tokens,
            hubspot_api_base=sandbox.base_url,
            settings={"extra_redirect_uris": [extra]},
        ) as auth,
        stub(auth, caller_tokens, "cli") as s,
    ):
        for uri in ("http://attacker.example.com/oauth/callback", TEST_REDIRECT_URI + "/x"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="t", redirect_uri=uri))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violations(err.value) == {"redirect_uri"}
        for uri in ("", TEST_REDIRECT_URI, extra):
            ok = await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="t", redirect_uri=uri))
            assert parse_qs(urlsplit(ok.authorize_url).query)["redirect_uri"] == [uri or TEST_REDIRECT_URI]
    assert ok.start_url.startswith("http://127.0.0.1:9/other/oauth/start?ticket=")


async def test_begin_refuses_bad_input(auth: str, caller_tokens: dict[str, str]) -> None:
    async with stub(auth, caller_tokens, "cli") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.BeginAuthorization(
                auth_pb2.BeginAuthorizationRequest(tenant="", redirect_uri="ftp://x", scopes=["a b"])
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == {"tenant", "redirect_uri", "scopes"}
    async with stub(auth, caller_tokens, "mapper") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="t"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_expiry_forces_a_refresh(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with (
        SandboxServer(sandbox_config(token_ttl_s=2)) as sandbox,
        running_auth(
            redis_url=redis_url,
            caller_tokens=caller_tokens,
            hubspot_api_base=sandbox.base_url,
            settings={"refresh_margin_s": 1},
        ) as auth,
    ):
        await connect_oauth(auth, caller_tokens)
        async with stub(auth, caller_tokens, "writer") as s:
            request = auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL)
            first = (await s.GetAccessToken(request)).access_token
            assert (await s.GetAccessToken(request)).access_token == first  # cached: lives > 1 s
            assert token_calls(await sandbox_requests(sandbox.base_url)) == 1
            await asyncio.sleep(1.2)
            second = await s.GetAccessToken(request)
        assert second.access_token != first
        assert token_calls(await sandbox_requests(sandbox.base_url)) == 2
        assert await crm_status(sandbox.base_url, second.access_token) == 200
        await asyncio.sleep(1.0)
        assert await crm_status(sandbox.base_url, first) == 401  # the old one really expired


async def test_revoked_refresh_token_needs_reauth(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    await connect_oauth(auth, caller_tokens)
    refresh = (await sandbox_tokens(sandbox.base_url))["refreshTokens"][0]["token"]
    async with httpx.AsyncClient(base_url=sandbox.base_url) as client:
        resp = await client.post("/_sandbox/tokens/revoke", json={"refresh_token": refresh})
        assert resp.status_code == 200
    force = auth_pb2.GetAccessTokenRequest(
        portal_id=SANDBOX_PORTAL, min_ttl=duration_pb2.Duration(seconds=3600)
    )
    async with stub(auth, caller_tokens, "writer") as s:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.GetAccessToken(force)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            info = error_info(err.value)
            assert info is not None and info.reason == "CONNECTION_NEEDS_REAUTH"
    async with stub(auth, caller_tokens, "cli") as s:
        conn = (await s.GetConnection(auth_pb2.GetConnectionRequest(portal_id=SANDBOX_PORTAL))).connection
    assert conn.state == auth_pb2.CONNECTION_STATE_NEEDS_REAUTH
    # One refused refresh; the second call did not ask HubSpot again.
    log = await sandbox_requests(sandbox.base_url)
    assert token_calls(log) == 2
    # Authorizing again brings the connection back.
    conn = await connect_oauth(auth, caller_tokens)
    assert conn.state == auth_pb2.CONNECTION_STATE_ACTIVE


async def test_burst_of_401s_causes_one_refresh(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    await connect_oauth(auth, caller_tokens)
    async with stub(auth, caller_tokens, "writer") as s:
        current = await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL))
        rejected = current.access_token
        replies = await asyncio.gather(
            *(
                s.InvalidateAccessToken(
                    auth_pb2.InvalidateAccessTokenRequest(portal_id=SANDBOX_PORTAL, access_token=rejected)
                )
                for _ in range(20)
            )
        )
        assert len({r.access_token for r in replies}) == 1
        assert replies[0].access_token != rejected
        assert sum(r.refreshed for r in replies) == 1
        # A late 401 for the old token does not refresh again.
        late = await s.InvalidateAccessToken(
            auth_pb2.InvalidateAccessTokenRequest(portal_id=SANDBOX_PORTAL, access_token=rejected)
        )
        assert late.access_token == replies[0].access_token and not late.refreshed
    assert token_calls(await sandbox_requests(sandbox.base_url)) == 2


async def test_revoke_connection_also_revokes_at_hubspot(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    await connect_oauth(auth, caller_tokens)
    async with stub(auth, caller_tokens, "cli") as s:
        revoked = await s.RevokeConnection(auth_pb2.RevokeConnectionRequest(portal_id=SANDBOX_PORTAL))
    assert revoked.connection.state == auth_pb2.CONNECTION_STATE_REVOKED
    refresh = (await sandbox_tokens(sandbox.base_url))["refreshTokens"][0]
    assert refresh["revoked"] is True
    async with stub(auth, caller_tokens, "writer") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info is not None and info.reason == "CONNECTION_REVOKED"


async def test_hub_id_from_token_metadata_when_the_response_has_none(
    redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    def drop_hub_id(grant: str, data: dict[str, Any]) -> dict[str, Any]:
        data.pop("hub_id")
        return data

    async with auth_behind_proxy(redis_url, caller_tokens, sandbox.base_url, drop_hub_id) as auth:
        conn = await connect_oauth(auth, caller_tokens)
    assert conn.portal_id == SANDBOX_PORTAL
    counts = (await sandbox_requests(sandbox.base_url))["counts"]["byEndpoint"]  # type: ignore[index]
    assert counts["POST /oauth/v3/token/introspect"] == 1


async def test_a_portal_connected_by_another_tenant_is_refused(
    auth: str, caller_tokens: dict[str, str]
) -> None:
    await connect_oauth(auth, caller_tokens, tenant="acme")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await connect_oauth(auth, caller_tokens, tenant="intruder")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info is not None and info.reason == "PORTAL_CONNECTED_BY_ANOTHER_TENANT"
    async with stub(auth, caller_tokens, "cli") as s:
        got = await s.GetConnection(auth_pb2.GetConnectionRequest(portal_id=SANDBOX_PORTAL))
    assert got.connection.tenant == "acme"


async def test_http_redirect_refused_outside_development(
    redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    production = running_auth(
        redis_url=redis_url,
        caller_tokens=caller_tokens,
        hubspot_api_base=sandbox.base_url,
        environment="production",
        settings={
            "redirect_uri": "",
            "extra_redirect_uris": ["https://hubsync.example.com/cb"],
            "authorize_url": "https://app.hubspot.com/oauth/authorize",
        },
    )
    async with production as auth, stub(auth, caller_tokens, "cli") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.BeginAuthorization(
                auth_pb2.BeginAuthorizationRequest(tenant="t", redirect_uri="http://example.com/cb")
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == {"redirect_uri"}
        ok = await s.BeginAuthorization(
            auth_pb2.BeginAuthorizationRequest(tenant="t", redirect_uri="https://hubsync.example.com/cb")
        )
    assert ok.authorize_url.startswith("https://app.hubspot.com/oauth/authorize?")


async def test_wrong_client_secret_is_a_configuration_error_and_stores_nothing(
    redis_url: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    async with running_auth(
        redis_url=redis_url,
        caller_tokens=caller_tokens,
        hubspot_api_base=sandbox.base_url,
        settings={"client_secret": "not-the-secret"},
    ) as auth:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await connect_oauth(auth, caller_tokens)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(err.value)
        assert info is not None and info.reason == "OAUTH_CLIENT_REJECTED"
        assert "not-the-secret" not in (err.value.details() or "")
        async with stub(auth, caller_tokens, "cli") as s:
            listed = await s.ListConnections(auth_pb2.ListConnectionsRequest())
        assert list(listed.connections) == []


async def test_revocation_waits_for_hubspot(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer
) -> None:
    await connect_oauth(auth, caller_tokens)
    async with httpx.AsyncClient(base_url=sandbox.base_url) as client:
        await client.post("/_sandbox/faults", json={"endpoint": "POST /oauth/v3/token/revoke", "status": 503})
    async with stub(auth, caller_tokens, "cli") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.RevokeConnection(auth_pb2.RevokeConnectionRequest(portal_id=SANDBOX_PORTAL))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # retry later; nothing changed here
        got = await s.GetConnection(auth_pb2.GetConnectionRequest(portal_id=SANDBOX_PORTAL))
    assert got.connection.state == auth_pb2.CONNECTION_STATE_ACTIVE
    assert (await sandbox_tokens(sandbox.base_url))["refreshTokens"][0]["revoked"] is False
