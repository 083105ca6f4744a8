"""The OAuth flow the way a person runs it: authorize at HubSpot (the sandbox), follow the redirect
to ingress's ``GET /oauth/callback``, which completes it through auth.

(The whole-suite test, tests/e2e, runs the same flow against the real ingress process.)
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from hubsync.api.auth.v1 import auth_pb2
from hubsync.core.channels import open_channel
from hubsync.ingress.oauth_callback import OAuthCallback
from hubsync.sandbox import SandboxServer
from hubsync.sandbox.server import AsgiServer
from tests.integration.auth.fixtures import SANDBOX_PORTAL, running_auth
from tests.integration.auth.helpers import stub


async def _browse(url: str) -> httpx.Response:
    """Follows redirects like a browser (the sandbox consents at once)."""
    async with httpx.AsyncClient(follow_redirects=True) as browser:
        return await browser.get(url)


async def test_oauth_flow_through_ingress_callback(
    redis_url: str, caller_tokens: Mapping[str, str], sandbox: SandboxServer
) -> None:
    async with running_auth(
        redis_url=redis_url, caller_tokens=caller_tokens, hubspot_api_base=sandbox.base_url
    ) as auth:
        channel = open_channel(auth, caller_tokens["ingress"])
        handler = OAuthCallback(channel).handle
        app = Starlette(routes=[Route("/oauth/callback", handler, methods=["GET"])])
        try:
            async with AsgiServer(app) as ingress:
                redirect = f"{ingress.base_url}/oauth/callback"
                async with stub(auth, caller_tokens, "cli") as s:
                    begun = await s.BeginAuthorization(
                        auth_pb2.BeginAuthorizationRequest(tenant="acme", redirect_uri=redirect)
                    )
                page = await _browse(begun.authorize_url)
                assert page.status_code == 200, page.text
                assert str(SANDBOX_PORTAL) in page.text
                # The same link again (a replayed state) is refused and changes nothing.
                again = await _browse(str(page.url))
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
