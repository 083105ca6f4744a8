"""No secret at rest or in telemetry: every Redis key and value, every log line and every span
attribute is searched for the plaintext tokens and the client secret after a full workout."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from google.protobuf import duration_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2
from hubsync.core.logging import JsonFormatter
from hubsync.core.telemetry import setup_tracing
from hubsync.sandbox import DEFAULT_CLIENT_SECRET, SandboxServer
from tests.helpers.auth import (
    SANDBOX_PORTAL,
    SANDBOX_PRIVATE_TOKEN,
    register_sandbox_private_app,
)
from tests.helpers.auth_oauth import connect_oauth, sandbox_tokens
from tests.helpers.auth_sandbox import stub


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("auth"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_tracing("hubsync-auth-test", exporter)
    return exporter


async def dump_redis(client: Redis) -> bytes:
    """Every key and every value, whatever its type, as one blob."""
    redis: Any = client
    out: list[bytes] = []
    for key in await redis.keys("*"):
        out.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out.append(await redis.get(key) or b"")
        elif kind == "hash":
            for f, v in (await redis.hgetall(key)).items():
                out += [f, v]
        elif kind == "zset":
            out += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            out += list(await redis.smembers(key))
        elif kind == "list":
            out += await redis.lrange(key, 0, -1)
        elif kind == "stream":
            for _id, fields in await redis.xrange(key):
                for f, v in fields.items():
                    out += [f, v]
        else:
            raise AssertionError(f"unexpected key type {kind}")
    return b"\n".join(out)


async def test_no_plaintext_secret_in_redis_logs_or_spans(
    auth: str,
    caller_tokens: dict[str, str],
    sandbox: SandboxServer,
    redis: Redis,
    captured_logs: io.StringIO,
    spans: InMemorySpanExporter,
) -> None:
    secrets = {SANDBOX_PRIVATE_TOKEN, DEFAULT_CLIENT_SECRET}

    async def harvest() -> None:
        # The sandbox forgets access tokens once revoked: collect them as the workout goes.
        issued = await sandbox_tokens(sandbox.base_url)
        secrets.update(t["token"] for t in issued["accessTokens"])  # type: ignore[misc]
        secrets.update(t["token"] for t in issued["refreshTokens"])  # type: ignore[misc]

    # A workout touching every path that handles a secret.
    await register_sandbox_private_app(auth, caller_tokens, portal_id=777)
    await connect_oauth(auth, caller_tokens)
    an_hour = duration_pb2.Duration(seconds=3600)
    force = auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL, min_ttl=an_hour)
    async with stub(auth, caller_tokens, "writer") as s:
        cached = await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL))
        first = cached.access_token
        await s.GetAccessToken(force)  # a refresh
        await s.InvalidateAccessToken(
            auth_pb2.InvalidateAccessTokenRequest(portal_id=SANDBOX_PORTAL, access_token=first)
        )
        await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=777))
    async with stub(auth, caller_tokens, "cli") as s:
        await s.RotateKeys(auth_pb2.RotateKeysRequest())
    await harvest()
    # invalid_grant path: HubSpot revokes the refresh token, the next refresh fails.
    refresh = (await sandbox_tokens(sandbox.base_url))["refreshTokens"][0]["token"]
    async with httpx.AsyncClient(base_url=sandbox.base_url) as client:
        await client.post("/_sandbox/tokens/revoke", json={"refresh_token": refresh})
    async with stub(auth, caller_tokens, "writer") as s:
        with pytest.raises(Exception, match="authorized again"):
            await s.GetAccessToken(force)
    await connect_oauth(auth, caller_tokens)
    await harvest()
    async with stub(auth, caller_tokens, "cli") as s:
        await s.RevokeConnection(auth_pb2.RevokeConnectionRequest(portal_id=SANDBOX_PORTAL))

    assert len(secrets) >= 7  # 4 OAuth access tokens, 2 refresh tokens, the private token, the secret

    stored = await dump_redis(redis)
    assert b"hubsync:{12345}:auth:connection" in stored  # the dump does see the vault
    logs = captured_logs.getvalue()
    audit = [orjson.loads(line) for line in logs.splitlines() if '"audit_event"' in line]
    assert {"issued", "refreshed", "needs_reauth", "rotated", "revoked"} <= {a["audit_event"] for a in audit}
    refreshed = next(a for a in audit if a["audit_event"] == "refreshed")
    assert refreshed["portal_id"] == SANDBOX_PORTAL and refreshed["caller"] == "writer"
    assert len(refreshed["trace_id"]) == 32
    span_text = "\n".join(
        f"{s.name} {dict(s.attributes or {})} {[(e.name, dict(e.attributes or {})) for e in s.events]}"
        for s in spans.get_finished_spans()
    )
    assert "AuthService/GetAccessToken" in span_text
    for secret in secrets:
        assert secret.encode() not in stored, "a secret is stored in plaintext"
        assert secret not in logs, "a secret reached the logs"
        assert secret not in span_text, "a secret reached a span"
