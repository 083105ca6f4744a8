"""OAuth 2.0: authorize (auto-consent), token (code and refresh grants), token metadata."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .config import AppConfig
from .errors import ApiError, error_body, oauth_error
from .routing import json_response, public_route
from .state import AuthCode, SandboxState, Token

TOKEN_PATHS = ("/oauth/v1/token", "/oauth/v3/token", "/oauth/2026-03/token")
GRANT_TYPES = ("authorization_code", "refresh_token")


def routes(state: SandboxState) -> list[Route]:
    async def authorize(request: Request) -> Response:
        q = request.query_params
        app = state.apps_by_client.get(q.get("client_id", ""))
        if app is None:
            raise ApiError(400, error_body("Unknown client_id", "VALIDATION_ERROR"))
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri or (app.redirect_uris and redirect_uri not in app.redirect_uris):
            raise ApiError(
                400, error_body("redirect_uri is missing or not allowed for this app", "VALIDATION_ERROR")
            )
        requested = q.get("scope", "").split()
        optional = q.get("optional_scope", "").split()
        missing = [s for s in requested if s not in app.scopes]
        if missing:
            raise ApiError(400, error_body(f"The app may not request scopes {missing}", "VALIDATION_ERROR"))
        scopes = requested + [s for s in optional if s in app.scopes and s not in requested]
        # The sandbox's "user" picks the portal: ?portal_id=… (else the first portal).
        hub_id = int(q.get("portal_id") or q.get("hub_id") or next(iter(state.portals)))
        if hub_id not in state.portals:
            raise ApiError(400, error_body(f"Unknown portal {hub_id}", "VALIDATION_ERROR"))
        code = state.new_token_string("", 36)
        state.codes[code] = AuthCode(code, app.client_id, redirect_uri, hub_id, scopes or ["oauth"])
        # Consenting installs the app in the portal, so the portal's changes reach its webhooks.
        subs = state.webhooks.subs.get(app.app_id)
        if subs is not None and subs.installed_in:
            subs.installed_in.add(hub_id)
        params = {"code": code}
        if "state" in q:
            params["state"] = q["state"]
        parts = urlsplit(redirect_uri)
        query = parts.query + ("&" if parts.query else "") + urlencode(params)
        return RedirectResponse(urlunsplit(parts._replace(query=query)), status_code=302)

    async def read_form(request: Request) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await request.body()
        if ctype != "application/x-www-form-urlencoded":
            # HubSpot reads the grant only from a form body: query parameters or JSON look empty.
            raise oauth_error("BAD_GRANT_TYPE", "unsupported_grant_type", "missing or invalid grant type")
        return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def client_app(form: dict[str, str]) -> AppConfig:
        app = state.apps_by_client.get(form.get("client_id", ""))
        if app is None:
            raise oauth_error("BAD_CLIENT_ID", "invalid_client", "missing or unknown client id")
        if form.get("client_secret") != app.client_secret:
            raise oauth_error("BAD_CLIENT_SECRET", "invalid_client", "missing or invalid client secret")
        return app

    async def token(request: Request) -> Response:
        form = await read_form(request)
        grant = form.get("grant_type")
        outcome = getattr(request.state, "sandbox_outcome", None)
        if outcome is not None:
            # The request log tells code exchanges from refreshes (tests count refreshes).
            outcome.grant_type = grant if grant in GRANT_TYPES else "unsupported"
        if grant not in GRANT_TYPES:
            raise oauth_error("BAD_GRANT_TYPE", "unsupported_grant_type", "missing or invalid grant type")
        app = client_app(form)
        if grant == "authorization_code":
            code = state.codes.get(form.get("code", ""))
            if code is None or code.used or code.client_id != app.client_id:
                raise oauth_error("BAD_AUTH_CODE", "invalid_grant", "missing or unknown auth code")
            if form.get("redirect_uri") != code.redirect_uri:
                raise oauth_error(
                    "BAD_REDIRECT_URI", "invalid_grant", "redirect_uri does not match initial redirect_uri"
                )
            code.used = True  # single use
            rt = state.issue_refresh_token(app, code.hub_id, code.scopes)
        else:
            found = state.refresh_tokens.get(form.get("refresh_token", ""))
            if found is None or found.revoked or found.client_id != app.client_id:
                raise oauth_error(
                    "BAD_REFRESH_TOKEN", "invalid_grant", "refresh token is invalid, expired or revoked"
                )
            rt = found
        tok = state.issue_access_token(rt)
        return json_response(
            200,
            {
                "token_type": "bearer",
                "refresh_token": rt.token,
                "access_token": tok.token,
                "expires_in": state.config.token_ttl_s,
                "hub_id": rt.hub_id,
                "scopes": rt.scopes,
                # Required by the AccessTokenResponse of HubSpot's OAuth v1/v3 specs.
                "token_use": "access_token",
                "user_id": rt.user_id,
            },
        )

    async def access_token_info(request: Request) -> Response:
        tok = state.tokens.get(request.path_params["token"])
        now = state.clock.now_ms()
        if tok is None or tok.kind != "oauth" or (tok.expires_at is not None and tok.expires_at <= now):
            # UNSURE: HubSpot's exact status/body for an unknown or expired token here.
            raise ApiError(404, error_body("Token not found or expired", "OBJECT_NOT_FOUND"))
        portal = state.portals[tok.hub_id]
        return json_response(
            200,
            {
                "token": tok.token,
                "user": tok.user,
                "hub_domain": portal.domain,
                "scopes": tok.scopes,
                "hub_id": tok.hub_id,
                "app_id": tok.app_id,
                "expires_in": max(0, ((tok.expires_at or now) - now) // 1000),
                "user_id": tok.user_id,
                "token_type": "access",
            },
        )

    async def refresh_token_info(request: Request) -> Response:
        rt = state.refresh_tokens.get(request.path_params["token"])
        if rt is None or rt.revoked:
            raise oauth_error(
                "BAD_REFRESH_TOKEN", "invalid_grant", "refresh token is invalid, expired or revoked", 404
            )
        return json_response(
            200,
            {
                "token": rt.token,
                "user": rt.user,
                "hub_domain": state.portals[rt.hub_id].domain,
                "scopes": rt.scopes,
                "hub_id": rt.hub_id,
                "client_id": rt.client_id,
                "user_id": rt.user_id,
                "token_type": "refresh",
            },
        )

    async def refresh_token_delete(request: Request) -> Response:
        rt = state.refresh_tokens.get(request.path_params["token"])
        if rt is None:
            raise oauth_error(
                "BAD_REFRESH_TOKEN", "invalid_grant", "refresh token is invalid, expired or revoked", 404
            )
        rt.revoked = True
        return Response(status_code=204)

    # The newer introspect/revoke endpoints follow RFC 7662/7009; HubSpot's exact field names are
    # UNSURE, so only the RFC's core fields plus hub_id/app_id are returned.
    async def introspect(request: Request) -> Response:
        form = await read_form(request)
        app = client_app(form)
        value = form.get("token", "")
        now = state.clock.now_ms()
        tok = state.tokens.get(value)
        if (
            tok is not None
            and tok.kind == "oauth"
            and tok.app_id == app.app_id
            and (tok.expires_at or 0) > now
        ):
            return json_response(
                200,
                {
                    "active": True,
                    "token_type": "access_token",
                    "client_id": app.client_id,
                    "hub_id": tok.hub_id,
                    "app_id": tok.app_id,
                    "scope": " ".join(tok.scopes),
                    "exp": (tok.expires_at or now) // 1000,
                    # The fields HubSpot's v3 spec (PublicAccessTokenInfoResponse) requires;
                    # the RFC 7662 ones above stay for clients written against the RFC.
                    "token": tok.token,
                    "token_use": "access_token",
                    "scopes": tok.scopes,
                    "expires_in": max(0, ((tok.expires_at or now) - now) // 1000),
                    "user_id": tok.user_id,
                    "is_private_distribution": False,
                    "signed_access_token": _signed_access_token(tok, app.client_secret),
                },
            )
        rt = state.refresh_tokens.get(value)
        if rt is not None and not rt.revoked and rt.app_id == app.app_id:
            return json_response(
                200,
                {
                    "active": True,
                    "token_type": "refresh_token",
                    "client_id": app.client_id,
                    "hub_id": rt.hub_id,
                    "app_id": rt.app_id,
                    "scope": " ".join(rt.scopes),
                    "token": rt.token,
                    "token_use": "refresh_token",
                    "hub_domain": state.portals[rt.hub_id].domain,
                    "scopes": rt.scopes,
                    "user_id": rt.user_id,
                },
            )
        return json_response(200, {"active": False})

    async def revoke(request: Request) -> Response:
        form = await read_form(request)
        app = client_app(form)
        value = form.get("token", "")
        rt = state.refresh_tokens.get(value)
        if rt is not None and rt.app_id == app.app_id:
            state.revoke_refresh_token(rt)
        tok = state.tokens.get(value)
        if tok is not None and tok.kind == "oauth" and tok.app_id == app.app_id:
            del state.tokens[value]
        return Response(status_code=200)  # RFC 7009: 200 whether or not the token existed

    out = [
        public_route(state, "GET", "/oauth/authorize", authorize),
        public_route(state, "GET", "/oauth/v1/access-tokens/{token}", access_token_info),
        public_route(state, "GET", "/oauth/v1/refresh-tokens/{token}", refresh_token_info),
        public_route(state, "DELETE", "/oauth/v1/refresh-tokens/{token}", refresh_token_delete),
    ]
    out += [public_route(state, "POST", p, token) for p in TOKEN_PATHS]
    for version in ("v3", "2026-03"):
        out.append(public_route(state, "POST", f"/oauth/{version}/token/introspect", introspect))
        out.append(public_route(state, "POST", f"/oauth/{version}/token/revoke", revoke))
    return out


def authorize_url(base_url: str, client_id: str, redirect_uri: str, scopes: list[str], state: str) -> str:
    """The URL a user would open; the sandbox consents at once and redirects with a code."""
    q = urlencode(
        {"client_id": client_id, "redirect_uri": redirect_uri, "scope": " ".join(scopes), "state": state}
    )
    return f"{base_url}/oauth/authorize?{q}"


def _signed_access_token(tok: Token, secret: str) -> dict[str, Any]:
    """The ``signed_access_token`` object of HubSpot's v3 introspection spec. Its signature
    scheme is not published (UNSURE): here an HMAC of the token, which nobody should verify."""
    sig = hmac.new(secret.encode(), tok.token.encode(), hashlib.sha256).hexdigest()
    return {
        "appId": tok.app_id,
        "appInstallId": f"{tok.app_id}-{tok.hub_id}",
        "audience": "hubspot",
        "expiresAt": tok.expires_at or 0,
        "hubId": tok.hub_id,
        "hublet": "na1",
        "installingUserId": tok.user_id,
        "isPrivateDistribution": False,
        "isServiceAccount": False,
        "isUserLevel": False,
        "newSignature": sig,
        "scopeToScopeGroupPks": "",
        "scopes": " ".join(tok.scopes),
        "signature": sig,
        "trialScopeToScopeGroupPks": "",
        "trialScopes": "",
        "userId": tok.user_id,
    }
