"""The OAuth authorization-code flow: begin (start link + state), start (bind a browser), complete.

A state is derived one-way from a fresh start-link ticket, so only the link's first opener can
bind it to a browser; the callback must come from that browser, and a state is spent once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin

from hubsync.auth._audit import audit
from hubsync.auth._checks import MAX_TOKEN_LENGTH, oauth_failure
from hubsync.auth._records import Records
from hubsync.auth.oauth_client import HubSpotOAuthClient, InvalidGrant, OAuthError, TokenGrant
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import KIND_OAUTH, STATE_ACTIVE, Connection
from hubsync.core.errors import FailedPrecondition, InvalidArgument, Unavailable


@dataclass(frozen=True)
class PendingAuthorization:
    """An authorization waiting for its callback: where to send the person, and its state."""

    authorize_url: str
    state: str
    expires_ms: int
    # hubsync's start link (empty once redeemed).
    start_url: str


class AuthorizationFlow:
    """Connects a portal through HubSpot's consent screen."""

    def __init__(
        self, records: Records, oauth: HubSpotOAuthClient, settings: AuthSettings, *, development: bool
    ) -> None:
        """Build a flow against ``oauth``; outside ``development`` redirect URIs must be https."""
        self._records = records
        self._store = records.store
        self._oauth = oauth
        self._settings = settings
        self._development = development

    async def begin(
        self, tenant: str, scopes: list[str], optional_scopes: list[str], redirect_uri: str
    ) -> PendingAuthorization:
        """Begin an authorization: a pending state and a single-use start link.

        The state is derived from a fresh start-link ticket, so only the link's first opener
        (:meth:`start`) can bind it to a browser.
        """
        self._require_oauth()
        redirect = redirect_uri or self._settings.redirect_uri
        violations: dict[str, str] = {}
        if not tenant or len(tenant) > 128:
            violations["tenant"] = "required, at most 128 characters"
        if not redirect:
            violations["redirect_uri"] = "required (none configured in HUBSYNC_AUTH_REDIRECT_URI)"
        elif not redirect.startswith("https://") and not (
            self._development and redirect.startswith("http://")
        ):
            violations["redirect_uri"] = "must be an https URL outside development"
        elif redirect not in self._settings.allowed_redirect_uris():
            violations["redirect_uri"] = (
                "not an allowed redirect URI (HUBSYNC_AUTH_REDIRECT_URI, HUBSYNC_AUTH_EXTRA_REDIRECT_URIS)"
            )
        wanted = list(scopes) or self._settings.scope_list
        for name, values in (("scopes", wanted), ("optional_scopes", optional_scopes)):
            if any(not s or any(c.isspace() for c in s) for s in values):
                violations[name] = "scopes must be non-empty and contain no whitespace"
        if violations:
            raise InvalidArgument("invalid authorization request", violations)
        ticket = secrets.token_urlsafe(32)
        state = _state_of(ticket)
        expires_ms = self._records.now_ms() + self._settings.state_ttl_s * 1000
        pending = {
            "tenant": tenant,
            "redirect_uri": redirect,
            "scopes": wanted,
            "optional_scopes": list(optional_scopes),
            "expires_ms": expires_ms,
        }
        await self._store.put_state(_digest(state), pending, self._settings.state_ttl_s)
        audit("authorization_begun", 0, tenant=tenant)
        start_url = urljoin(redirect, "start") + "?" + urlencode({"ticket": ticket})
        return PendingAuthorization(self._authorize_url(pending, state), state, expires_ms, start_url)

    def _authorize_url(self, pending: dict[str, Any], state: str) -> str:
        query = {
            "client_id": self._settings.client_id,
            "redirect_uri": str(pending["redirect_uri"]),
            "scope": " ".join(pending["scopes"]),
        }
        if pending.get("optional_scopes"):
            query["optional_scope"] = " ".join(pending["optional_scopes"])
        query["state"] = state
        return f"{self._settings.authorize_url}?{urlencode(query)}"

    async def start(self, ticket: str, browser_binding: str) -> PendingAuthorization:
        """Redeem a start link: binds its state to the browser holding ``browser_binding``."""
        self._require_oauth()
        violations = {}
        if not ticket or len(ticket) > 256:
            violations["ticket"] = "required"
        if not 32 <= len(browser_binding) <= 256:
            violations["browser_binding"] = "required, 32 to 256 characters"
        if violations:
            raise InvalidArgument("invalid start link", violations)
        state = _state_of(ticket)
        found = await self._store.get_state(_digest(state))
        if found is None or not await self._store.bind_state(
            _digest(state), _digest(browser_binding), found[1]
        ):
            audit("authorization_refused", 0, why="unknown, expired or reused start link")
            raise InvalidArgument(
                "start link is unknown, expired or already used",
                {"ticket": "unknown, expired or already used: begin the authorization again"},
                reason="OAUTH_START_LINK_INVALID",
            )
        pending = found[0]
        return PendingAuthorization(
            self._authorize_url(pending, state), state, int(pending["expires_ms"]), ""
        )

    async def complete(self, code: str, state: str, browser_binding: str) -> Connection:
        self._require_oauth()
        violations = {}
        if not code or len(code) > MAX_TOKEN_LENGTH:
            violations["code"] = "required"
        if not state or len(state) > 256:
            violations["state"] = "required"
        if len(browser_binding) > 256:
            violations["browser_binding"] = "at most 256 characters"
        if violations:
            raise InvalidArgument("invalid authorization callback", violations)
        # The browser first (nothing is used up if it is not the one that opened the start link,
        # so a forged callback cannot spoil the real one).
        bound = await self._store.state_browser(_digest(state))
        if bound is not None and not hmac.compare_digest(bound, _digest(browser_binding)):
            audit("authorization_refused", 0, why="another browser than the start link's")
            raise InvalidArgument(
                "the authorization was started in another browser",
                {"browser_binding": "not the browser that opened the start link"},
                reason="OAUTH_BROWSER_MISMATCH",
            )
        if bound is None and await self._store.get_state(_digest(state)) is not None:
            audit("authorization_refused", 0, why="start link never opened")
            raise InvalidArgument(
                "the authorization was not started from hubsync's start link",
                {"browser_binding": "open the start link (BeginAuthorization's start_url) first"},
                reason="OAUTH_BROWSER_MISMATCH",
            )
        pending = await self._store.take_state(_digest(state))
        await self._store.forget_browser(_digest(state))
        if pending is None or int(pending.get("expires_ms", 0)) < self._records.now_ms():
            audit("authorization_refused", 0, why="unknown, expired or reused state")
            raise InvalidArgument(
                "state is unknown, expired or already used",
                {"state": "unknown, expired or already used: begin the authorization again"},
                reason="OAUTH_STATE_INVALID",
            )
        tenant = str(pending["tenant"])
        started = self._records.now_ms()
        try:
            grant = await self._oauth.exchange_code(code, str(pending["redirect_uri"]))
        except InvalidGrant:
            audit("authorization_refused", 0, tenant=tenant, why="code refused by HubSpot")
            raise InvalidArgument(
                "HubSpot refused the authorization code",
                {"code": "unknown, used or expired"},
                reason="OAUTH_CODE_INVALID",
            ) from None
        except OAuthError as exc:
            raise oauth_failure(exc) from None
        hub_id = grant.hub_id or await self._hub_id_from_metadata(grant)
        existing = await self._store.get(hub_id)
        if existing is not None and existing.state == STATE_ACTIVE and existing.tenant != tenant:
            audit("authorization_refused", hub_id, tenant=tenant, why="portal owned by another tenant")
            raise FailedPrecondition(
                f"portal {hub_id} is connected by another tenant; revoke that connection first",
                reason="PORTAL_CONNECTED_BY_ANOTHER_TENANT",
            )
        sealed = self._records.seal(hub_id, grant.access_token, grant.refresh_token)
        conn = await self._records.replace(
            hub_id,
            lambda cur, now: Connection(
                portal_id=hub_id,
                tenant=tenant,
                kind=KIND_OAUTH,
                state=STATE_ACTIVE,
                scopes=grant.scopes or list(pending.get("scopes", [])),
                expires_ms=started + grant.expires_in * 1000,
                created_ms=now,
                updated_ms=now,
                hub_domain=grant.hub_domain,
                key_id=self._records.keyring.active,
                generation=(cur.generation + 1) if cur else 1,
                sealed=sealed,
            ),
        )
        audit("issued", hub_id, kind=KIND_OAUTH, tenant=tenant)
        return conn

    async def _hub_id_from_metadata(self, grant: TokenGrant) -> int:
        try:
            info = await self._oauth.introspect(grant.access_token)
        except OAuthError as exc:
            raise oauth_failure(exc) from None
        hub_id = info.get("hub_id")
        if not hub_id:
            raise Unavailable("HubSpot did not say which portal the token belongs to", retry_after=1.0)
        return int(hub_id)

    def _require_oauth(self) -> None:
        if not self._oauth.configured:
            raise FailedPrecondition(
                "OAuth is not configured (HUBSYNC_AUTH_CLIENT_ID / HUBSYNC_AUTH_CLIENT_SECRET)",
                reason="OAUTH_NOT_CONFIGURED",
            )


def _digest(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def _state_of(ticket: str) -> str:
    """Derive the OAuth state of a start-link ticket (one-way: the authorize URL reveals no ticket)."""
    raw = hashlib.sha256(b"hubsync-oauth-state\0" + ticket.encode()).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
