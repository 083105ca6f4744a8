"""``GET /oauth/start`` and ``GET /oauth/callback``: the browser's side of connecting HubSpot.

The start link (``BeginAuthorization``'s ``start_url``) is opened by the person who connects the
portal: ingress redeems its single-use ticket at auth with a fresh random value, keeps that value
in an HttpOnly cookie named after the state, and sends the browser on to HubSpot's authorize
URL. HubSpot sends the browser back to the callback, which completes the flow through auth with
the cookie's value: a callback from any other browser (an attacker's consent sent to a victim, or
a stolen authorize URL) is refused. The cookie is ``__Host-`` prefixed and ``Secure`` when the
public URL is https (plain in development over http), and ``SameSite=Lax`` so it comes back on
HubSpot's top-level redirect.

The pages are for a person: a short readable success or error message, never a secret. A
missing, forged, reused or expired ``state``, or another browser's, is the user's (or an
attacker's) request gone wrong → 400.
"""

from __future__ import annotations

import hashlib
import html
import logging
import secrets
import time
from urllib.parse import parse_qs

import grpc
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc

__all__ = ["OAuthCallback", "page"]

log = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;line-height:1.5}}</style>
</head><body><h1>{title}</h1><p>{message}</p></body></html>
"""

_MAX_PARAM = 2048
_INCOMPLETE = "The link is incomplete. Start the connection again from hubsync."
_START_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Connect HubSpot</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;line-height:1.5}}</style>
</head><body><h1>Connect HubSpot to hubsync</h1>
<p>Continue in this browser: HubSpot will ask you to choose an account and approve access.
The connection can only be finished in the browser that continues here.</p>
<form method="post" action="start"><input type="hidden" name="ticket" value="{ticket}">
<button type="submit">Continue to HubSpot</button></form></body></html>
"""


async def _form_ticket(request: Request) -> str:
    """Return the ``ticket`` of a small url-encoded form body ("" if missing, malformed or too large)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_PARAM + 16:
            return ""
    try:
        values = parse_qs(body.decode("ascii"), max_num_fields=4).get("ticket", [""])
    except (UnicodeDecodeError, ValueError):
        return ""
    ticket = values[0]
    return ticket if len(ticket) <= _MAX_PARAM else ""


def _now_s() -> float:
    return time.time()


def page(status: int, title: str, message: str) -> HTMLResponse:
    """Return an escaped HTML page, never cached."""
    body = _PAGE.format(title=html.escape(title), message=html.escape(message))
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _cookie_suffix(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def _unavailable(exc: grpc.aio.AioRpcError, what: str) -> HTMLResponse:
    log.warning("%s failed: %s", what, exc.code().name)
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return page(503, "Try again in a moment", "hubsync could not finish connecting HubSpot right now.")
    return page(502, "HubSpot was not connected", "hubsync could not finish the connection.")


class OAuthCallback:
    """The start link (:meth:`start`) and the redirect (:meth:`handle`), through auth.

    ``secure_cookie``: the browser-binding cookie is ``__Host-``/``Secure`` (set it from the
    public URL's scheme; off only for development over http).
    """

    def __init__(
        self, auth_channel: grpc.aio.Channel, timeout_s: float = 10.0, *, secure_cookie: bool = True
    ) -> None:
        """Set up the handlers; ``secure_cookie`` makes the binding cookie ``__Host-``/``Secure``."""
        self._stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
        self._timeout_s = timeout_s
        self.secure_cookie = secure_cookie

    def cookie_name(self, state: str) -> str:
        """Return the name of the browser-binding cookie of ``state``."""
        prefix = "__Host-" if self.secure_cookie else ""
        return f"{prefix}hubsync-oauth-{_cookie_suffix(state)}"

    async def start_page(self, request: Request) -> HTMLResponse:
        """Answer ``GET /oauth/start``: a page whose button redeems the link (a POST).

        So a chat app's or mail scanner's preview fetch of the link does not use it up.
        """
        ticket = request.query_params.get("ticket", "")
        if not ticket or len(ticket) > _MAX_PARAM:
            return page(400, "This link is not valid", _INCOMPLETE)
        reply = HTMLResponse(
            _START_PAGE.format(ticket=html.escape(ticket, quote=True)),
            headers={
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                "form-action 'self'; frame-ancestors 'none'",
            },
        )
        return reply

    async def start(self, request: Request) -> Response:
        """``POST /oauth/start``: redeems the link for this browser and sends it to HubSpot."""
        ticket = await _form_ticket(request)
        if not ticket:
            return page(400, "This link is not valid", _INCOMPLETE)
        binding = secrets.token_urlsafe(32)
        try:
            started = await self._stub.StartAuthorization(
                auth_pb2.StartAuthorizationRequest(ticket=ticket, browser_binding=binding),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return page(
                    400, "This link is not valid",
                    "The link expired, was already opened, or did not come from hubsync. "
                    "Start the connection again from hubsync.",
                )  # fmt: skip
            return _unavailable(exc, "StartAuthorization")
        reply = RedirectResponse(started.authorize_url, status_code=303)
        reply.headers["Cache-Control"] = "no-store"
        reply.headers["Referrer-Policy"] = "no-referrer"
        max_age = max(int(started.expire_time.seconds - _now_s()), 1)
        reply.set_cookie(
            self.cookie_name(started.state),
            binding,
            max_age=max_age,
            path="/",
            secure=self.secure_cookie,
            httponly=True,
            samesite="lax",
        )
        return reply

    async def handle(self, request: Request) -> HTMLResponse:
        """Answer ``GET /oauth/callback``: complete the authorization through auth, bound to this browser."""
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
        cookie = self.cookie_name(state)
        binding = request.cookies.get(cookie, "")
        if not binding:
            return page(
                400, "This link is not valid",
                "This browser did not start this connection. Open the start link from hubsync in "
                "this browser and connect again.",
            )  # fmt: skip
        try:
            reply = await self._stub.CompleteAuthorization(
                auth_pb2.CompleteAuthorizationRequest(code=code, state=state, browser_binding=binding),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return page(
                    400, "This link is not valid",
                    "The authorization request expired, was already used, was started in another "
                    "browser, or did not come from hubsync. Start the connection again from hubsync.",
                )  # fmt: skip
            return _unavailable(exc, "CompleteAuthorization")
        portal = reply.connection.portal_id
        done = page(
            200, "HubSpot is connected",
            f"HubSpot account {portal} is now connected to hubsync. You can close this window.",
        )  # fmt: skip
        done.delete_cookie(cookie, path="/", secure=self.secure_cookie, httponly=True, samesite="lax")
        return done
