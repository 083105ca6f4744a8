"""The OAuth flow the way a person runs it: open hubsync's start link (ingress's ``GET /oauth/start``,
which binds the flow to the browser with a cookie), authorize at HubSpot (the sandbox), follow the
redirect to ingress's ``GET /oauth/callback``, which completes it through auth.

(The whole-suite test, tests/e2e, runs the same flow against the real ingress process.)
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from hubsync.api.auth.v1 import auth_pb2
from hubsync.core.channels import open_channel
from hubsync.core.devredis import free_port
from hubsync.ingress.oauth_callback import OAuthCallback
from hubsync.sandbox import SandboxServer
from hubsync.sandbox.server import AsgiServer
from tests.helpers.auth import SANDBOX_PORTAL, running_auth
from tests.helpers.auth_oauth import browse_start_link
from tests.helpers.auth_sandbox import stub


async def test_oauth_flow_through_ingress_callback(
    redis_url: str, caller_tokens: Mapping[str, str], sandbox: SandboxServer
) -> None:
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oauth/callback"
    async with running_auth(
        redis_url=redis_url,
        caller_tokens=caller_tokens,
        hubspot_api_base=sandbox.base_url,
        settings={"redirect_uri": redirect},
    ) as auth:
        channel = open_channel(auth, caller_tokens["ingress"])
        oauth = OAuthCallback(channel, secure_cookie=False)  # development over http
        app = Starlette(
            routes=[
                Route("/oauth/start", oauth.start_page, methods=["GET"]),
                Route("/oauth/start", oauth.start, methods=["POST"]),
                Route("/oauth/callback", oauth.handle, methods=["GET"]),
            ]
        )
        try:
            async with AsgiServer(app, port=port):
                async with stub(auth, caller_tokens, "cli") as s:
                    begun = await s.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="acme"))
                # A browser follows redirects and keeps cookies (the sandbox consents at once).
                async with httpx.AsyncClient(follow_redirects=True) as browser:
                    page = await browse_start_link(browser, begun.start_url)
                    assert page.status_code == 200, page.text
                    assert str(SANDBOX_PORTAL) in page.text
                    # The same callback again (a replayed state) is refused and changes nothing.
                    again = await browser.get(str(page.url))
                    assert again.status_code == 400
        finally:
            await channel.close()
        async with stub(auth, caller_tokens, "writer") as s:
            token = await s.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=SANDBOX_PORTAL))
    async with httpx.AsyncClient(base_url=sandbox.base_url) as client:
        resp = await client.get(
            "/crm/v3/objects/contacts", headers={"authorization": f"Bearer {token.access_token}"}
        )
    assert resp.status_code == 200
