"""Drives the OAuth authorization-code flow against the sandbox, as a user and ingress would."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import httpx

from hubsync.api.auth.v1 import auth_pb2
from tests.integration.auth.helpers import stub


async def consent(authorize_url: str, portal_id: int | None = None) -> tuple[str, str]:
    """Opens the authorize URL like a browser; returns (code, state) from the redirect."""
    url = authorize_url + (f"&portal_id={portal_id}" if portal_id else "")
    async with httpx.AsyncClient() as client:
        resp = await client.get(url, follow_redirects=False)
    assert resp.status_code == 302, resp.text
    query = parse_qs(urlsplit(resp.headers["location"]).query)
    return query["code"][0], query["state"][0]


async def connect_oauth(
    address: str, caller_tokens: Mapping[str, str], *, tenant: str = "acme", portal_id: int | None = None
) -> auth_pb2.Connection:
    """Begin (as cli) → consent at the sandbox → complete (as ingress); returns the connection."""
    async with stub(address, caller_tokens, "cli") as s:
        begun = await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant=tenant))
    code, state = await consent(begun.authorize_url, portal_id)
    async with stub(address, caller_tokens, "ingress") as s:
        done = await s.CompleteAuthorization(auth_pb2.CompleteAuthorizationRequest(code=code, state=state))
    return done.connection


async def sandbox_tokens(base_url: str) -> dict[str, list[dict[str, object]]]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        return (await client.get("/_sandbox/tokens")).json()
