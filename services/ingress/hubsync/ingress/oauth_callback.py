"""``GET /oauth/callback``: where HubSpot sends the installing user back; auth completes the flow.

The page is for a person: a short readable success or error message, never a secret. A missing,
forged, reused or expired ``state`` is the user's (or an attacker's) request gone wrong → 400.
"""

from __future__ import annotations

import html
import logging

import grpc
from starlette.requests import Request
from starlette.responses import HTMLResponse

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;line-height:1.5}}</style>
</head><body><h1>{title}</h1><p>{message}</p></body></html>
"""

_MAX_PARAM = 2048


def page(status: int, title: str, message: str) -> HTMLResponse:
    body = _PAGE.format(title=html.escape(title), message=html.escape(message))
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


class OAuthCallback:
    """Completes the authorization through auth's ``CompleteAuthorization``."""

    def __init__(self, auth_channel: grpc.aio.Channel, timeout_s: float = 10.0) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
        self._timeout_s = timeout_s

    async def handle(self, request: Request) -> HTMLResponse:
        params = request.query_params
        if "error" in params:
            # The user declined, or HubSpot refused: say so, in HubSpot's words (escaped).
            reason = params.get("error_description") or params["error"]
            return page(400, "HubSpot was not connected", f"HubSpot answered: {reason[:300]}")
        code = params.get("code", "")
        state = params.get("state", "")
        if not state or not code or len(code) > _MAX_PARAM or len(state) > _MAX_PARAM:
            missing = "state" if not state else "code"
            return page(
                400,
                "This link is not valid",
                f"The {missing} parameter is missing or malformed. Start the connection again from hubsync.",
            )
        try:
            reply = await self._stub.CompleteAuthorization(
                auth_pb2.CompleteAuthorizationRequest(code=code, state=state), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return page(
                    400, "This link is not valid",
                    "The authorization request expired, was already used, or did not come from "
                    "hubsync. Start the connection again from hubsync.",
                )  # fmt: skip
            log.warning("CompleteAuthorization failed: %s", exc.code().name)
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return page(
                    503, "Try again in a moment", "hubsync could not finish connecting HubSpot right now."
                )
            return page(502, "HubSpot was not connected", "hubsync could not finish the connection.")
        portal = reply.connection.portal_id
        return page(
            200, "HubSpot is connected",
            f"HubSpot account {portal} is now connected to hubsync. You can close this window.",
        )  # fmt: skip
