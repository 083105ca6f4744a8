"""Drives the OAuth authorization-code flow against the sandbox, as a user and ingress would."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import httpx

from hubsync.api.auth.v1 import auth_pb2
from tests.helpers.auth_sandbox import stub


async def consent(authorize_url: str, portal_id: int | None = None) -> tuple[str, str]:
    """Opens the authorize URL like a browser; returns (code, state) from the redirect."""
    url = authorize_url + (f"&portal_id={portal_id}" if portal_id else "")
    async with httpx.AsyncClient() as client:
        resp = await client.get(url, follow_redirects=False)
    assert resp.status_code == 302, resp.text
    query = parse_qs(urlsplit(resp.headers["location"]).query)
    return query["code"][0], query["state"][0]


def ticket_of(start_url: str) -> str:
    return parse_qs(urlsplit(start_url).query)["ticket"][0]


async def browse_start_link(browser: httpx.AsyncClient, start_url: str) -> httpx.Response:
    """Opens a start link as a person does: its page, then the page's button (a form POST to
    ingress's ``/oauth/start``); returns the answer to the POST."""
    page = await browser.get(start_url)
    assert page.status_code == 200 and 'name="ticket"' in page.text, page.text
    return await browser.post(start_url.split("?", 1)[0], data={"ticket": ticket_of(start_url)})


async def open_start_link(
    address: str, caller_tokens: Mapping[str, str], begun: auth_pb2.BeginAuthorizationResponse
) -> tuple[str, str]:
    """What ingress's ``/oauth/start`` does for a browser: returns (authorize URL, the browser's
    binding, as its cookie keeps it)."""
    binding = secrets.token_urlsafe(32)
    async with stub(address, caller_tokens, "ingress") as s:
        started = await s.StartAuthorization(
            auth_pb2.StartAuthorizationRequest(ticket=ticket_of(begun.start_url), browser_binding=binding)
        )
    return started.authorize_url, binding


async def complete(
    address: str, caller_tokens: Mapping[str, str], code: str, state: str, binding: str
) -> auth_pb2.CompleteAuthorizationResponse:
    """CompleteAuthorization as ingress's callback calls it."""
    async with stub(address, caller_tokens, "ingress") as s:
        return await s.CompleteAuthorization(
            auth_pb2.CompleteAuthorizationRequest(code=code, state=state, browser_binding=binding)
        )


async def connect_oauth(
    address: str, caller_tokens: Mapping[str, str], *, tenant: str = "acme", portal_id: int | None = None
) -> auth_pb2.Connection:
    """Begin (as cli) → start link (as ingress) → consent at the sandbox → complete (as ingress);
    returns the connection."""
    async with stub(address, caller_tokens, "cli") as s:
        begun = await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant=tenant))
    authorize_url, binding = await open_start_link(address, caller_tokens, begun)
    code, state = await consent(authorize_url, portal_id)
    return (await complete(address, caller_tokens, code, state, binding)).connection


async def sandbox_tokens(base_url: str) -> dict[str, list[dict[str, object]]]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        return (await client.get("/_sandbox/tokens")).json()
