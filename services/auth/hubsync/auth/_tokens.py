"""Access tokens for callers: the hot path (cached), refresh on demand, invalidation after a 401."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from hubsync.auth._checks import REAUTH_REASON, check_portal, check_state
from hubsync.auth._records import Records
from hubsync.auth._refresh import SingleFlightRefresh
from hubsync.auth._token_cache import TokenCache
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import KIND_PRIVATE_APP, Connection
from hubsync.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("hubsync.auth.vault")


@dataclass(frozen=True)
class IssuedToken:
    """An access token handed to a caller (``expires_ms`` 0: never expires)."""

    access_token: str
    expires_ms: int


class AccessTokens:
    """Hands out access tokens, refreshing them first when they live too short."""

    def __init__(
        self, records: Records, cache: TokenCache, refresh: SingleFlightRefresh, settings: AuthSettings
    ) -> None:
        """Read tokens through ``records`` and ``cache``, refreshed by ``refresh``."""
        self._records = records
        self._store = records.store
        self._cache = cache
        self._refresh = refresh
        self._settings = settings
        # portal → when this process last noted a use of it (see _note_use).
        self._noted: dict[int, int] = {}

    async def get(self, portal_id: int, min_ttl_s: float | None = None) -> IssuedToken:
        """Hand out a token that lives at least ``min_ttl_s`` (default: the refresh margin) if possible."""
        check_portal(portal_id)
        view = await self._store.token_view(portal_id)
        if view is None:
            raise NotFound(f"no connection for portal {portal_id}", reason="CONNECTION_NOT_FOUND")
        check_state(portal_id, view.state)
        if view.kind == KIND_PRIVATE_APP:
            return IssuedToken(self._cache.access_token(view), 0)
        await self._note_use(portal_id)
        margin = self._settings.refresh_margin_s if min_ttl_s is None else min_ttl_s
        if view.expires_ms - self._records.now_ms() > margin * 1000:
            return IssuedToken(self._cache.access_token(view), view.expires_ms)
        conn = await self._usable(portal_id)
        try:
            fresh, _ = await self._refresh.refresh(conn)
        except Unavailable:
            # HubSpot is down but the current token still works: better than no token.
            if conn.expires_ms - self._records.now_ms() > 5_000:
                log.warning("refresh failed, handing out the current token", extra={"portal_id": portal_id})
                return IssuedToken(self._cache.access_token(conn), conn.expires_ms)
            raise
        return self._issue(fresh)

    async def _note_use(self, portal_id: int) -> None:
        """Mark the connection used (with ``refresh_idle_after_s``).

        At most every quarter of it per process, so the refresher can tell idle connections from
        used ones.
        """
        idle_after_ms = int(self._settings.refresh_idle_after_s * 1000)
        if not idle_after_ms:
            return
        now = self._records.now_ms()
        if now - self._noted.get(portal_id, -idle_after_ms) < idle_after_ms // 4:
            return
        self._noted[portal_id] = now
        await self._store.note_use(portal_id, now)

    async def invalidate(self, portal_id: int, access_token: str) -> tuple[IssuedToken, bool]:
        """After a 401: refresh only if ``access_token`` is still the current one."""
        if not access_token:
            raise InvalidArgument("access_token is required", {"access_token": "required"})
        conn = await self._usable(portal_id)
        current = self._cache.access_token(conn)
        if not hmac.compare_digest(current.encode(), access_token.encode()):
            # Someone refreshed already (or the caller holds an old token): hand out the current one.
            return IssuedToken(current, conn.expires_ms), False
        if conn.kind == KIND_PRIVATE_APP:
            await self._records.mark_needs_reauth(conn, "private-app token rejected by HubSpot")
            raise FailedPrecondition(
                f"HubSpot rejects portal {portal_id}'s private-app token; store a new one",
                reason=REAUTH_REASON,
            )
        fresh, refreshed = await self._refresh.refresh(conn)
        return self._issue(fresh), refreshed

    def _issue(self, conn: Connection) -> IssuedToken:
        check_state(conn.portal_id, conn.state)
        if conn.expires_ms <= self._records.now_ms():
            raise Unavailable(f"no valid access token for portal {conn.portal_id} yet", retry_after=1.0)
        return IssuedToken(self._cache.access_token(conn), conn.expires_ms)

    async def _usable(self, portal_id: int) -> Connection:
        conn = await self._records.get(portal_id)
        check_state(conn.portal_id, conn.state)
        return conn
