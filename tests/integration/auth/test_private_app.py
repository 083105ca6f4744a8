"""The thin slice: private-app connections, encrypted at rest, readable by the writer only."""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2
from hubsync.sandbox import SandboxServer
from tests.helpers.auth import (
    SANDBOX_PORTAL,
    SANDBOX_PRIVATE_TOKEN,
    register_sandbox_private_app,
)
from tests.helpers.auth_sandbox import stub, violations


async def test_writer_gets_the_private_app_token_and_it_works_at_hubspot(
    auth: str, caller_tokens: dict[str, str], sandbox: SandboxServer, redis: Redis
) -> None:
    conn = await register_sandbox_private_app(auth, caller_tokens)
    assert conn.portal_id == SANDBOX_PORTAL
    assert conn.kind == auth_pb2.CONNECTION_KIND_PRIVATE_APP
    assert conn.state == auth_pb2.CONNECTION_STATE_ACTIVE
    assert conn.key_id == "k1"
    async with stub(auth, caller_tokens, "writer") as s:
        reply = await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL))
    assert reply.access_token == SANDBOX_PRIVATE_TOKEN
    assert not reply.HasField("expire_time")
    async with httpx.AsyncClient(base_url=sandbox.base_url) as client:
        resp = await client.get(
            "/crm/v3/objects/contacts", headers={"authorization": f"Bearer {reply.access_token}"}
        )
    assert resp.status_code == 200
    # At rest it is sealed: no key or value in Redis holds the token.
    for key in await redis.keys("*"):
        assert SANDBOX_PRIVATE_TOKEN.encode() not in key
        if await redis.type(key) == b"hash":
            for value in (await redis.hgetall(key)).values():
                assert SANDBOX_PRIVATE_TOKEN.encode() not in value


async def test_get_connection_has_no_secret_and_mapper_may_not_read_tokens(
    auth: str, caller_tokens: dict[str, str]
) -> None:
    await register_sandbox_private_app(auth, caller_tokens)
    async with stub(auth, caller_tokens, "cli") as s:
        got = await s.GetConnection(auth_pb2.GetConnectionRequest(portal_id=SANDBOX_PORTAL))
        assert got.connection.tenant == "test"
        assert SANDBOX_PRIVATE_TOKEN not in str(got)
    async with stub(auth, caller_tokens, "mapper") as s:
        for method, request in (
            (s.GetAccessToken, auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL)),
            (
                s.InvalidateAccessToken,
                auth_pb2.InvalidateAccessTokenRequest(portal_id=SANDBOX_PORTAL, access_token="x"),
            ),
            (
                s.CreatePrivateAppConnection,
                auth_pb2.CreatePrivateAppConnectionRequest(portal_id=1, tenant="t", access_token="x"),
            ),
            (s.RotateKeys, auth_pb2.RotateKeysRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(request)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with stub(auth, caller_tokens, "cli") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_unknown_portal_is_not_found_and_bad_input_names_the_fields(
    auth: str, caller_tokens: dict[str, str]
) -> None:
    async with stub(auth, caller_tokens, "writer") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=999))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=0))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetAccessToken(
                auth_pb2.GetAccessTokenRequest(portal_id=1, min_ttl=duration_pb2.Duration(seconds=-1))
            )
        assert violations(err.value) == {"min_ttl"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetAccessToken(
                auth_pb2.GetAccessTokenRequest(portal_id=1, min_ttl=duration_pb2.Duration(seconds=86_400))
            )
        assert violations(err.value) == {"min_ttl"}
    async with stub(auth, caller_tokens, "cli") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.CreatePrivateAppConnection(
                auth_pb2.CreatePrivateAppConnectionRequest(portal_id=-1, tenant="", access_token="a b")
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == {"portal_id", "tenant", "access_token"}


async def test_list_connections_pages_in_portal_order(auth: str, caller_tokens: dict[str, str]) -> None:
    for portal in (30, 10, 20):
        await register_sandbox_private_app(auth, caller_tokens, portal_id=portal, token=f"pat-na1-{portal}")
    async with stub(auth, caller_tokens, "cli") as s:
        first = await s.ListConnections(auth_pb2.ListConnectionsRequest(page_size=2))
        assert [c.portal_id for c in first.connections] == [10, 20]
        assert first.next_page_token
        rest = await s.ListConnections(
            auth_pb2.ListConnectionsRequest(page_size=2, page_token=first.next_page_token)
        )
        assert [c.portal_id for c in rest.connections] == [30]
        assert rest.next_page_token == ""
