"""A real HTTP proxy in front of the sandbox that rewrites OAuth token responses, for HubSpot
behaviours the sandbox does not produce on its own (no refresh token on refresh, no hub_id)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hubsync.sandbox.server import AsgiServer

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
