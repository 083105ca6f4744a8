"""HubSpot's OAuth endpoints: code exchange, refresh, introspection, revocation.

Every call sends a form-encoded body (HubSpot reads grants only from the form) and carries tokens
only in bodies, never in URLs, so no token ends up in a span's ``http.url`` or an access log.
Transient failures (network errors, 429, 5xx) are retried with full-jitter exponential backoff.

Errors::

    OAuthError
    ├── InvalidGrant       the code or refresh token is dead: a person must authorize again
    ├── OAuthRejected      any other 4xx (bad client credentials, bad request): not retried
    └── OAuthUnavailable   still failing after the retries (network, 429, 5xx)
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "HubSpotOAuthClient",
    "InvalidGrant",
    "OAuthError",
    "OAuthRejected",
    "OAuthUnavailable",
    "TokenGrant",
]

log = logging.getLogger(__name__)


class OAuthError(Exception):
    """Base of the token endpoint's failures; messages never carry a secret."""


class InvalidGrant(OAuthError):
    """HubSpot refused the grant (``invalid_grant``): the code or refresh token is dead."""


class OAuthRejected(OAuthError):
    """HubSpot refused the request for another reason (e.g. the client credentials)."""

    def __init__(self, message: str, status: int) -> None:
        """Record the HTTP ``status`` of the refusal."""
        super().__init__(message)
        self.status = status


class OAuthUnavailable(OAuthError):
    """The token endpoint kept failing (429, 5xx, network); worth retrying later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        """Record ``retry_after`` as HubSpot asked, if it did."""
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint answered (``refresh_token`` is None when it sent none)."""

    access_token: str
    refresh_token: str | None
    expires_in: int
    hub_id: int | None
    scopes: list[str] = field(default_factory=list)
    hub_domain: str = ""


class HubSpotOAuthClient:
    """A small client of HubSpot's OAuth API (or the sandbox's)."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        token_path: str = "/oauth/v3/token",  # noqa: S107 - a URL path
        revoke_path: str = "/oauth/v3/token/revoke",
        introspect_path: str = "/oauth/v3/token/introspect",
        timeout_s: float = 10.0,
        attempts: int = 4,
        backoff_s: float = 0.2,
    ) -> None:
        """Talk to ``base_url``'s OAuth endpoints with the public app's credentials.

        Transient failures (429, 5xx, network) are retried ``attempts`` times with full-jitter
        backoff from ``backoff_s``.
        """
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_path = token_path
        self._revoke_path = revoke_path
        self._introspect_path = introspect_path
        self._attempts = attempts
        self._backoff = backoff_s

    @property
    def configured(self) -> bool:
        """Return whether a client id and secret are set (the OAuth flow needs both)."""
        return bool(self._client_id and self._client_secret)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def exchange_code(self, code: str, redirect_uri: str) -> TokenGrant:
        """Exchange an authorization code for tokens."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        return _grant(await self._post(self._token_path, form))

    async def refresh(self, refresh_token: str) -> TokenGrant:
        """Refresh: a new access token (and perhaps a new refresh token)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return _grant(await self._post(self._token_path, form))

    async def introspect(self, token: str) -> dict[str, Any]:
        """Return what HubSpot knows of ``token`` (its portal, scopes, expiry)."""
        return await self._post(self._introspect_path, {"token": token})

    async def revoke(self, token: str) -> None:
        """Revoke ``token`` (a refresh token) at HubSpot."""
        await self._post(self._revoke_path, {"token": token})

    async def _post(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        body = {**form, "client_id": self._client_id, "client_secret": self._client_secret}
        last: OAuthUnavailable | None = None
        for attempt in range(self._attempts):
            if attempt:
                delay = (last.retry_after if last and last.retry_after else None) or random.uniform(
                    0, self._backoff * 2 ** (attempt - 1)
                )
                await asyncio.sleep(delay)
            try:
                resp = await self._client.post(path, data=body, headers={"accept": "application/json"})
            except httpx.HTTPError as exc:
                last = OAuthUnavailable(f"HubSpot OAuth endpoint unreachable: {type(exc).__name__}")
                log.warning("oauth endpoint unreachable", extra={"path": path, "attempt": attempt + 1})
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                retry_after = _retry_after(resp)
                last = OAuthUnavailable(f"HubSpot OAuth endpoint answered {resp.status_code}", retry_after)
                log.warning(
                    "oauth endpoint transient failure",
                    extra={"path": path, "status": resp.status_code, "attempt": attempt + 1},
                )
                continue
            data = _json(resp)
            if resp.status_code >= 400:
                error = str(data.get("error", ""))
                status = str(data.get("status", ""))
                if error == "invalid_grant":
                    raise InvalidGrant(f"HubSpot refused the grant ({status or error})")
                raise OAuthRejected(
                    f"HubSpot OAuth endpoint answered {resp.status_code} ({status or error or 'no detail'})",
                    resp.status_code,
                )
            return data
        assert last is not None
        raise last


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return min(float(value), 30.0) if value else None
    except ValueError:
        return None


def _grant(data: dict[str, Any]) -> TokenGrant:
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise OAuthRejected("HubSpot's token response has no access_token", 200)
    scopes = data.get("scopes") or data.get("scope") or []
    if isinstance(scopes, str):
        scopes = scopes.split()
    hub_id = data.get("hub_id")
    refresh = data.get("refresh_token")
    return TokenGrant(
        access_token=token,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_in=int(data.get("expires_in") or 1800),
        hub_id=int(hub_id) if hub_id is not None else None,
        scopes=[str(s) for s in scopes],
        hub_domain=str(data.get("hub_domain") or ""),
    )
