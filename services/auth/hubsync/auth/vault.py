"""The token vault: one object the servicer calls, composed of one part per responsibility.

Domain code: it raises :mod:`hubsync.core.errors` types and knows nothing of gRPC. The parts, in
the order a connection meets them:

- :mod:`hubsync.auth._records`: sealing under the key ring, reads, compare-and-swap writes;
- :mod:`hubsync.auth._oauth_flow` and :mod:`hubsync.auth._private_apps`: connecting a portal;
- :mod:`hubsync.auth._tokens` (with :mod:`hubsync.auth._token_cache`): access tokens for callers;
- :mod:`hubsync.auth._refresh`: single-flight refresh within a process and across replicas;
- :mod:`hubsync.auth._refresher`: the background refresher loop;
- :mod:`hubsync.auth._revocation`, :mod:`hubsync.auth._rotation`: revoking, re-sealing;
- :mod:`hubsync.auth._audit`, :mod:`hubsync.auth._metrics`: the audit trail and instruments.
"""

from __future__ import annotations

from hubsync.auth._metrics import AuthMetrics
from hubsync.auth._oauth_flow import AuthorizationFlow, PendingAuthorization
from hubsync.auth._private_apps import store_private_app_token
from hubsync.auth._records import Clock, Records, now_ms
from hubsync.auth._refresh import SingleFlightRefresh
from hubsync.auth._refresher import BackgroundRefresher
from hubsync.auth._revocation import revoke_connection
from hubsync.auth._rotation import reseal_connections
from hubsync.auth._token_cache import TokenCache
from hubsync.auth._tokens import AccessTokens, IssuedToken
from hubsync.auth.keyring import KeyRing
from hubsync.auth.oauth_client import HubSpotOAuthClient
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import Connection, ConnectionStore
from hubsync.core.errors import InvalidArgument

__all__ = ["IssuedToken", "PendingAuthorization", "TokenVault"]


class TokenVault:
    """Holds every portal's credentials, sealed under the key ring, in Redis."""

    def __init__(
        self,
        store: ConnectionStore,
        keyring: KeyRing,
        oauth: HubSpotOAuthClient,
        settings: AuthSettings,
        *,
        development: bool = True,
        clock: Clock = now_ms,
        metrics: AuthMetrics | None = None,
    ) -> None:
        """Build a vault over ``store``; ``metrics`` default to instruments that record nothing."""
        self.store = store
        self.keyring = keyring
        self.oauth = oauth
        self.settings = settings
        self.records = Records(store, keyring, clock)
        metrics = metrics or AuthMetrics.disabled()
        refresh = SingleFlightRefresh(self.records, oauth, settings, metrics)
        self.flow = AuthorizationFlow(self.records, oauth, settings, development=development)
        self.tokens = AccessTokens(self.records, TokenCache(self.records), refresh, settings)
        self.refresher = BackgroundRefresher(self.records, refresh, settings, metrics)

    # ---- connections ------------------------------------------------------------------------------

    async def get_connection(self, portal_id: int) -> Connection:
        """Return the connection of ``portal_id``, without opening its secrets."""
        return await self.records.get(portal_id)

    async def list_connections(self, page_size: int, page_token: str) -> tuple[list[Connection], str]:
        """Return a page of connections in portal order and the token of the next page ("" at the end)."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", {"page_size": "must be >= 0"})
        size = min(page_size or 100, 1000)
        after = -1
        if page_token:
            try:
                after = int(page_token)
            except ValueError:
                raise InvalidArgument(
                    "page_token is not valid", {"page_token": "not a token we issued"}
                ) from None
        ids = await self.store.portal_ids(after, size + 1)
        out = await self.store.get_many(ids[:size])
        return out, (str(ids[size - 1]) if len(ids) > size else "")

    async def create_private_app(
        self, portal_id: int, tenant: str, access_token: str, scopes: list[str]
    ) -> Connection:
        """Store a private-app token for ``portal_id`` (again: rotates it)."""
        return await store_private_app_token(self.records, portal_id, tenant, access_token, scopes)

    # ---- OAuth authorization-code flow ------------------------------------------------------------

    async def begin_authorization(
        self, tenant: str, scopes: list[str], optional_scopes: list[str], redirect_uri: str
    ) -> PendingAuthorization:
        """Begin an authorization: a pending state with a single-use start link."""
        return await self.flow.begin(tenant, scopes, optional_scopes, redirect_uri)

    async def start_authorization(self, ticket: str, browser_binding: str) -> PendingAuthorization:
        """Redeem a start link: binds its state to the browser holding ``browser_binding``."""
        return await self.flow.start(ticket, browser_binding)

    async def complete_authorization(self, code: str, state: str, browser_binding: str) -> Connection:
        """Exchange the callback's ``code`` and stores the connection."""
        return await self.flow.complete(code, state, browser_binding)

    # ---- access tokens ----------------------------------------------------------------------------

    async def get_access_token(self, portal_id: int, min_ttl_s: float | None = None) -> IssuedToken:
        """Hand out a token living at least ``min_ttl_s`` (default: the refresh margin)."""
        return await self.tokens.get(portal_id, min_ttl_s)

    async def invalidate_access_token(self, portal_id: int, access_token: str) -> tuple[IssuedToken, bool]:
        """After a 401: refresh only if ``access_token`` is still the current one."""
        return await self.tokens.invalidate(portal_id, access_token)

    # ---- revocation and rotation ------------------------------------------------------------------

    async def revoke(self, portal_id: int) -> Connection:
        """Revoke the refresh token at HubSpot, then wipes the secrets here."""
        return await revoke_connection(self.records, self.oauth, portal_id)

    async def rotate_keys(self) -> tuple[str, int]:
        """Re-seal every connection under the active key: (active key id, re-sealed count)."""
        return await reseal_connections(self.records)

    # ---- background refresher ---------------------------------------------------------------------

    async def refresh_due(self) -> int:
        """Run one refresher pass (see :meth:`BackgroundRefresher.refresh_due`); return refreshes."""
        return await self.refresher.refresh_due()

    async def backfill_due(self) -> int:
        """Fill the refresh-due registry from every connection, once per installation."""
        return await self.refresher.backfill_due()

    async def run_refresher(self) -> None:
        """Run the background refresher loop (returns at once with an interval of 0)."""
        await self.refresher.run()

    @property
    def needing_reauth(self) -> int:
        """Count the connections needing a person, as of the last refresher pass."""
        return self.refresher.needing_reauth
