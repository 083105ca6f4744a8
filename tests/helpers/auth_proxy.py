"""A real HTTP proxy in front of the sandbox that rewrites OAuth token responses, for HubSpot
behaviours the sandbox does not produce on its own (no refresh token on refresh, no hub_id)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hubsync.sandbox.server import AsgiServer
from tests.helpers.auth import running_auth

# (grant_type, JSON body of a 200 token response) -> the body to send instead
Rewrite = Callable[[str, dict[str, Any]], dict[str, Any]]


class TokenRewritingProxy(AsgiServer):
    def __init__(self, upstream: str, rewrite: Rewrite) -> None:
        self.upstream = upstream
        self.rewrite = rewrite
        super().__init__(Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])]))

    async def forward(self, request: Request) -> Response:
        body = await request.body()
        async with httpx.AsyncClient(base_url=self.upstream) as client:
            resp = await client.request(
                request.method,
                request.url.path,
                params=request.query_params,
                content=body,
                headers={"content-type": request.headers.get("content-type", "")},
            )
        content = resp.content
        grant = parse_qs(body.decode()).get("grant_type", [""])[0]
        if grant and resp.status_code == 200:
            content = orjson.dumps(self.rewrite(grant, orjson.loads(content)))
        return Response(content, resp.status_code, media_type=resp.headers.get("content-type"))


@asynccontextmanager
async def auth_behind_proxy(
    redis_url: str, caller_tokens: Mapping[str, str], sandbox_url: str, rewrite: Rewrite
) -> AsyncIterator[str]:
    """An in-process auth whose calls to HubSpot go through a :class:`TokenRewritingProxy` in front
    of the sandbox at ``sandbox_url`` (its authorize links still name the sandbox): its address."""
    async with (
        TokenRewritingProxy(sandbox_url, rewrite) as proxy,
        running_auth(
            redis_url=redis_url,
            caller_tokens=caller_tokens,
            hubspot_api_base=proxy.base_url,
            settings={"authorize_url": f"{sandbox_url}/oauth/authorize"},
        ) as address,
    ):
        yield address
