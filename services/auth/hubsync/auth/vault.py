"""The token vault: connections, the OAuth flow, single-flight refresh, revocation, rotation.

Domain code: it raises :mod:`hubsync.core.errors` types and knows nothing of gRPC. Secrets are
opened from their sealed form only for the moment they are needed and never logged.

Refresh without races: within a process, concurrent callers share one refresh task; across
replicas, the task first takes a Redis lock (``SET NX PX`` with a random owner). Whoever holds it
re-reads the record and refreshes only if the refresh generation ``g`` is still the one its caller
saw; the write is a compare-and-swap on the record's version and is dropped if ``g`` moved (a
holder whose lock expired is fenced off). Callers that find the lock taken poll the record until
``g`` moves or the lock is released.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlencode, urljoin

from opentelemetry import metrics

from hubsync.auth.keyring import KeyRing, SealError
from hubsync.auth.oauth_client import (
    HubSpotOAuthClient,
    InvalidGrant,
    OAuthError,
    OAuthRejected,
    OAuthUnavailable,
    TokenGrant,
)
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import (
    KIND_OAUTH,
    KIND_PRIVATE_APP,
    STATE_ACTIVE,
    STATE_NEEDS_REAUTH,
    STATE_REVOKED,
    Connection,
    ConnectionStore,
    TokenView,
)
from hubsync.core.callers import current_caller
from hubsync.core.errors import (
    FailedPrecondition,
    HubsyncError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from hubsync.core.keys import auth_refresh_failed_key
from hubsync.core.outage import loop_error
from hubsync.core.portal_metrics import PortalCounter
from hubsync.core.telemetry import trace_id_hex

log = logging.getLogger(__name__)
audit_log = logging.getLogger("hubsync.auth.audit")

REAUTH_REASON = "CONNECTION_NEEDS_REAUTH"
MAX_TOKEN_LENGTH = 1024
# Connections read per page by the refresher and the refresh-due backfill.
_DUE_PAGE = 500
_meter = metrics.get_meter("hubsync.auth")
_refresh_counter = PortalCounter(
    _meter.create_counter("hubsync.token.refresh", description="Token refreshes at HubSpot by outcome")
)
# Set by each background refresher pass from the needs-reauth registry (the latest vault in the process).
_needing_reauth = [0]
_meter.create_observable_gauge(
    "hubsync.connections.needing_reauth",
    callbacks=[lambda _opts: [metrics.Observation(_needing_reauth[0])]],
    description="Connections a person must authorize again",
)


@dataclass(frozen=True)
class IssuedToken:
    """An access token handed to a caller (``expires_ms`` 0: never expires)."""

    access_token: str
    expires_ms: int


@dataclass(frozen=True)
class PendingAuthorization:
    authorize_url: str
    state: str
    expires_ms: int
    # hubsync's start link (empty once redeemed).
    start_url: str


def _now_ms() -> int:
    return int(time.time() * 1000)


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
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.oauth = oauth
        self.settings = settings
        self.development = development
        self.now_ms = clock
        self._flights: dict[int, asyncio.Task[tuple[Connection, bool]]] = {}
        # portal → (record version, access token): spares the hot path a decrypt per call. Kept
        # in this process's memory only, and only as long as the record's version is current.
        self._opened: dict[int, tuple[int, str]] = {}
        self.needing_reauth = 0
        self._due_backfilled = False
        # portal → when this process last noted a use of it (see _note_use).
        self._noted: dict[int, int] = {}

    # ---- secrets ----------------------------------------------------------------------------------

    def _seal(self, portal_id: int, access: str, refresh: str | None) -> bytes:
        payload = json.dumps({"a": access, "r": refresh}).encode()
        return self.keyring.seal(portal_id, payload)

    def _open(self, conn: Connection) -> tuple[str, str | None]:
        return self._open_sealed(conn.portal_id, conn.sealed)

    def _open_sealed(self, portal_id: int, sealed: bytes) -> tuple[str, str | None]:
        if not sealed:
            raise FailedPrecondition(f"portal {portal_id} holds no credentials", reason=REAUTH_REASON)
        try:
            data = json.loads(self.keyring.open(portal_id, sealed))
        except SealError as exc:
            log.error("connection does not open", extra={"portal_id": portal_id, "error": str(exc)})
            raise HubsyncError(f"stored credentials of portal {portal_id} cannot be read") from None
        return str(data["a"]), data.get("r")

    # ---- connections ------------------------------------------------------------------------------

    async def get_connection(self, portal_id: int) -> Connection:
        _check_portal(portal_id)
        conn = await self.store.get(portal_id)
        if conn is None:
            raise NotFound(f"no connection for portal {portal_id}", reason="CONNECTION_NOT_FOUND")
        return conn

    async def list_connections(self, page_size: int, page_token: str) -> tuple[list[Connection], str]:
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
        violations: dict[str, str] = {}
        if portal_id <= 0:
            violations["portal_id"] = "must be a positive HubSpot account id"
        if not tenant or len(tenant) > 128:
            violations["tenant"] = "required, at most 128 characters"
        if not access_token or len(access_token) > MAX_TOKEN_LENGTH or any(c.isspace() for c in access_token):
            violations["access_token"] = f"required, no whitespace, at most {MAX_TOKEN_LENGTH} characters"
        if violations:
            raise InvalidArgument("invalid private-app connection", violations)
        sealed = self._seal(portal_id, access_token, None)
        conn = await self._replace(
            portal_id,
            lambda cur, now: Connection(
                portal_id=portal_id,
                tenant=tenant,
                kind=KIND_PRIVATE_APP,
                state=STATE_ACTIVE,
                scopes=list(scopes),
                created_ms=now,
                updated_ms=now,
                key_id=self.keyring.active,
                generation=(cur.generation + 1) if cur else 1,
                sealed=sealed,
            ),
        )
        self._audit("issued", portal_id, kind=KIND_PRIVATE_APP, tenant=tenant)
        return conn

    async def _replace(
        self, portal_id: int, make: Callable[[Connection | None, int], Connection]
    ) -> Connection:
        """Writes ``make(current, now)`` with a compare-and-swap, retrying on concurrent writes."""
        for _ in range(20):
            cur = await self.store.get(portal_id)
            new = make(cur, self.now_ms())
            new = new.evolve(version=(cur.version + 1) if cur else 1)
            if await self.store.swap(new, cur.version if cur else None):
                return new
        raise Unavailable(f"portal {portal_id}'s connection is changing too fast; retry", retry_after=0.1)

    async def _update(self, conn: Connection, **changes: Any) -> Connection | None:
        """Applies ``changes`` if the refresh generation is still ``conn``'s (None: fenced off)."""
        for _ in range(20):
            cur = await self.store.get(conn.portal_id)
            if cur is None or cur.generation != conn.generation:
                return None
            new = cur.evolve(version=cur.version + 1, updated_ms=self.now_ms(), **changes)
            if await self.store.swap(new, cur.version):
                return new
        raise Unavailable(
            f"portal {conn.portal_id}'s connection is changing too fast; retry", retry_after=0.1
        )

    # ---- OAuth authorization-code flow ------------------------------------------------------------

    async def begin_authorization(
        self, tenant: str, scopes: list[str], optional_scopes: list[str], redirect_uri: str
    ) -> PendingAuthorization:
        """A pending authorization: its state is derived from a fresh start-link ticket, so only
        the link's first opener (:meth:`start_authorization`) can bind it to a browser."""
        self._require_oauth()
        redirect = redirect_uri or self.settings.redirect_uri
        violations: dict[str, str] = {}
        if not tenant or len(tenant) > 128:
            violations["tenant"] = "required, at most 128 characters"
        if not redirect:
            violations["redirect_uri"] = "required (none configured in HUBSYNC_AUTH_REDIRECT_URI)"
        elif not redirect.startswith("https://") and not (
            self.development and redirect.startswith("http://")
        ):
            violations["redirect_uri"] = "must be an https URL outside development"
        elif redirect not in self.settings.allowed_redirect_uris():
            violations["redirect_uri"] = (
                "not an allowed redirect URI (HUBSYNC_AUTH_REDIRECT_URI, HUBSYNC_AUTH_EXTRA_REDIRECT_URIS)"
            )
        wanted = list(scopes) or self.settings.scope_list
        for name, values in (("scopes", wanted), ("optional_scopes", optional_scopes)):
            if any(not s or any(c.isspace() for c in s) for s in values):
                violations[name] = "scopes must be non-empty and contain no whitespace"
        if violations:
            raise InvalidArgument("invalid authorization request", violations)
        ticket = secrets.token_urlsafe(32)
        state = _state_of(ticket)
        expires_ms = self.now_ms() + self.settings.state_ttl_s * 1000
        pending = {
            "tenant": tenant,
            "redirect_uri": redirect,
            "scopes": wanted,
            "optional_scopes": list(optional_scopes),
            "expires_ms": expires_ms,
        }
        await self.store.put_state(_digest(state), pending, self.settings.state_ttl_s)
        self._audit("authorization_begun", 0, tenant=tenant)
        start_url = urljoin(redirect, "start") + "?" + urlencode({"ticket": ticket})
        return PendingAuthorization(self._authorize_url(pending, state), state, expires_ms, start_url)

    def _authorize_url(self, pending: dict[str, Any], state: str) -> str:
        query = {
            "client_id": self.settings.client_id,
            "redirect_uri": str(pending["redirect_uri"]),
            "scope": " ".join(pending["scopes"]),
        }
        if pending.get("optional_scopes"):
            query["optional_scope"] = " ".join(pending["optional_scopes"])
        query["state"] = state
        return f"{self.settings.authorize_url}?{urlencode(query)}"

    async def start_authorization(self, ticket: str, browser_binding: str) -> PendingAuthorization:
        """Redeems a start link: binds its state to the browser holding ``browser_binding``."""
        self._require_oauth()
        violations = {}
        if not ticket or len(ticket) > 256:
            violations["ticket"] = "required"
        if not 32 <= len(browser_binding) <= 256:
            violations["browser_binding"] = "required, 32 to 256 characters"
        if violations:
            raise InvalidArgument("invalid start link", violations)
        state = _state_of(ticket)
        found = await self.store.get_state(_digest(state))
        if found is None or not await self.store.bind_state(
            _digest(state), _digest(browser_binding), found[1]
        ):
            self._audit("authorization_refused", 0, why="unknown, expired or reused start link")
            raise InvalidArgument(
                "start link is unknown, expired or already used",
                {"ticket": "unknown, expired or already used: begin the authorization again"},
                reason="OAUTH_START_LINK_INVALID",
            )
        pending = found[0]
        return PendingAuthorization(
            self._authorize_url(pending, state), state, int(pending["expires_ms"]), ""
        )

    async def complete_authorization(self, code: str, state: str, browser_binding: str) -> Connection:
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
        bound = await self.store.state_browser(_digest(state))
        if bound is not None and not hmac.compare_digest(bound, _digest(browser_binding)):
            self._audit("authorization_refused", 0, why="another browser than the start link's")
            raise InvalidArgument(
                "the authorization was started in another browser",
                {"browser_binding": "not the browser that opened the start link"},
                reason="OAUTH_BROWSER_MISMATCH",
            )
        if bound is None and await self.store.get_state(_digest(state)) is not None:
            self._audit("authorization_refused", 0, why="start link never opened")
            raise InvalidArgument(
                "the authorization was not started from hubsync's start link",
                {"browser_binding": "open the start link (BeginAuthorization's start_url) first"},
                reason="OAUTH_BROWSER_MISMATCH",
            )
        pending = await self.store.take_state(_digest(state))
        await self.store.forget_browser(_digest(state))
        if pending is None or int(pending.get("expires_ms", 0)) < self.now_ms():
            self._audit("authorization_refused", 0, why="unknown, expired or reused state")
            raise InvalidArgument(
                "state is unknown, expired or already used",
                {"state": "unknown, expired or already used: begin the authorization again"},
                reason="OAUTH_STATE_INVALID",
            )
        tenant = str(pending["tenant"])
        started = self.now_ms()
        try:
            grant = await self.oauth.exchange_code(code, str(pending["redirect_uri"]))
        except InvalidGrant:
            self._audit("authorization_refused", 0, tenant=tenant, why="code refused by HubSpot")
            raise InvalidArgument(
                "HubSpot refused the authorization code",
                {"code": "unknown, used or expired"},
                reason="OAUTH_CODE_INVALID",
            ) from None
        except OAuthError as exc:
            raise _oauth_failure(exc) from None
        hub_id = grant.hub_id or await self._hub_id_from_metadata(grant)
        existing = await self.store.get(hub_id)
        if existing is not None and existing.state == STATE_ACTIVE and existing.tenant != tenant:
            self._audit("authorization_refused", hub_id, tenant=tenant, why="portal owned by another tenant")
            raise FailedPrecondition(
                f"portal {hub_id} is connected by another tenant; revoke that connection first",
                reason="PORTAL_CONNECTED_BY_ANOTHER_TENANT",
            )
        sealed = self._seal(hub_id, grant.access_token, grant.refresh_token)
        conn = await self._replace(
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
                key_id=self.keyring.active,
                generation=(cur.generation + 1) if cur else 1,
                sealed=sealed,
            ),
        )
        self._audit("issued", hub_id, kind=KIND_OAUTH, tenant=tenant)
        return conn

    async def _hub_id_from_metadata(self, grant: TokenGrant) -> int:
        try:
            info = await self.oauth.introspect(grant.access_token)
        except OAuthError as exc:
            raise _oauth_failure(exc) from None
        hub_id = info.get("hub_id")
        if not hub_id:
            raise Unavailable("HubSpot did not say which portal the token belongs to", retry_after=1.0)
        return int(hub_id)

    def _require_oauth(self) -> None:
        if not self.oauth.configured:
            raise FailedPrecondition(
                "OAuth is not configured (HUBSYNC_AUTH_CLIENT_ID / HUBSYNC_AUTH_CLIENT_SECRET)",
                reason="OAUTH_NOT_CONFIGURED",
            )

    # ---- access tokens ----------------------------------------------------------------------------

    def _access_token(self, view: TokenView | Connection) -> str:
        cached = self._opened.get(view.portal_id)
        if cached is not None and cached[0] == view.version:
            return cached[1]
        token = self._open_sealed(view.portal_id, view.sealed)[0]
        self._opened[view.portal_id] = (view.version, token)
        return token

    async def get_access_token(self, portal_id: int, min_ttl_s: float | None = None) -> IssuedToken:
        _check_portal(portal_id)
        view = await self.store.token_view(portal_id)
        if view is None:
            raise NotFound(f"no connection for portal {portal_id}", reason="CONNECTION_NOT_FOUND")
        _check_state(portal_id, view.state)
        if view.kind == KIND_PRIVATE_APP:
            return IssuedToken(self._access_token(view), 0)
        await self._note_use(portal_id)
        margin = self.settings.refresh_margin_s if min_ttl_s is None else min_ttl_s
        if view.expires_ms - self.now_ms() > margin * 1000:
            return IssuedToken(self._access_token(view), view.expires_ms)
        conn = await self._usable(portal_id)
        try:
            fresh, _ = await self._refresh_shared(conn)
        except Unavailable:
            # HubSpot is down but the current token still works: better than no token.
            if conn.expires_ms - self.now_ms() > 5_000:
                log.warning("refresh failed, handing out the current token", extra={"portal_id": portal_id})
                return IssuedToken(self._access_token(conn), conn.expires_ms)
            raise
        return self._issue(fresh)

    async def _note_use(self, portal_id: int) -> None:
        """With ``refresh_idle_after_s``: marks the connection used, at most every quarter of it
        per process, so the refresher can tell idle connections from used ones."""
        idle_after_ms = int(self.settings.refresh_idle_after_s * 1000)
        if not idle_after_ms:
            return
        now = self.now_ms()
        if now - self._noted.get(portal_id, -idle_after_ms) < idle_after_ms // 4:
            return
        self._noted[portal_id] = now
        await self.store.note_use(portal_id, now)

    async def invalidate_access_token(self, portal_id: int, access_token: str) -> tuple[IssuedToken, bool]:
        if not access_token:
            raise InvalidArgument("access_token is required", {"access_token": "required"})
        conn = await self._usable(portal_id)
        current = self._access_token(conn)
        if not hmac.compare_digest(current.encode(), access_token.encode()):
            # Someone refreshed already (or the caller holds an old token): hand out the current one.
            return IssuedToken(current, conn.expires_ms), False
        if conn.kind == KIND_PRIVATE_APP:
            await self._mark_needs_reauth(conn, "private-app token rejected by HubSpot")
            raise FailedPrecondition(
                f"HubSpot rejects portal {portal_id}'s private-app token; store a new one",
                reason=REAUTH_REASON,
            )
        fresh, refreshed = await self._refresh_shared(conn)
        return self._issue(fresh), refreshed

    def _issue(self, conn: Connection) -> IssuedToken:
        _check_state(conn.portal_id, conn.state)
        if conn.expires_ms <= self.now_ms():
            raise Unavailable(f"no valid access token for portal {conn.portal_id} yet", retry_after=1.0)
        return IssuedToken(self._access_token(conn), conn.expires_ms)

    async def _usable(self, portal_id: int) -> Connection:
        conn = await self.get_connection(portal_id)
        _check_state(conn.portal_id, conn.state)
        return conn

    async def _refresh_shared(self, seen: Connection) -> tuple[Connection, bool]:
        """One refresh per portal per process; returns (connection, whether *this* call refreshed)."""
        portal = seen.portal_id
        task = self._flights.get(portal)
        leader = task is None
        if task is None:
            task = asyncio.create_task(self._refresh_across_replicas(seen), name=f"refresh-{portal}")
            self._flights[portal] = task
            task.add_done_callback(self._flight_done(portal))
        conn, refreshed = await asyncio.shield(task)
        return conn, refreshed and leader

    def _flight_done(self, portal: int) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            if self._flights.get(portal) is task:
                del self._flights[portal]
            if not task.cancelled():
                task.exception()  # retrieved: every waiter may have gone away

        return done

    async def _refresh_across_replicas(self, seen: Connection) -> tuple[Connection, bool]:
        portal = seen.portal_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.refresh_lock_ttl_s + 5
        while True:
            owner = await self.store.try_lock(portal, self.settings.refresh_lock_ttl_s)
            if owner is not None:
                try:
                    cur = await self.get_connection(portal)
                    if cur.generation != seen.generation or cur.state != STATE_ACTIVE:
                        return cur, False  # another replica refreshed (or gave up) meanwhile
                    return await self._refresh_now(cur), True
                finally:
                    await self.store.unlock(portal, owner)
            # Another replica holds the lock: wait for its result.
            while await self.store.lock_held(portal):
                await asyncio.sleep(0.02)
                cur = await self.get_connection(portal)
                if cur.generation != seen.generation or cur.state != STATE_ACTIVE:
                    return cur, False
                if loop.time() > deadline:
                    raise Unavailable(f"refresh of portal {portal} takes too long", retry_after=1.0)
            cur = await self.get_connection(portal)
            if cur.generation != seen.generation or cur.state != STATE_ACTIVE:
                return cur, False
            failed = await self.store.redis.get(auth_refresh_failed_key(portal))
            if failed is not None and int(failed) == seen.generation:
                raise Unavailable(f"HubSpot's token endpoint is failing for portal {portal}", retry_after=2.0)
            # The holder released (or its lock expired) without a new token: try ourselves.

    async def _refresh_now(self, conn: Connection) -> Connection:
        """Refreshes at HubSpot and stores the result; the caller holds the portal's lock."""
        _, refresh_token = self._open(conn)
        if not refresh_token:
            return await self._needs_reauth_result(conn, "no refresh token stored")
        started = self.now_ms()
        try:
            # Finish (or give up) while the lock is still ours, so no second refresh can start.
            async with asyncio.timeout(max(1.0, self.settings.refresh_lock_ttl_s - 2)):
                grant = await self.oauth.refresh(refresh_token)
        except TimeoutError:
            await self._transient(conn, OAuthUnavailable("refresh outlived the refresh lock"))
        except InvalidGrant:
            return await self._needs_reauth_result(conn, "refresh token refused (invalid_grant)")
        except OAuthUnavailable as exc:
            await self._transient(conn, exc)
        except OAuthRejected as exc:
            self._count(conn.portal_id, "rejected")
            self._audit("refresh_failed", conn.portal_id, why=str(exc))
            raise _oauth_failure(exc) from None
        # A response without a new refresh token keeps the old one.
        sealed = self._seal(conn.portal_id, grant.access_token, grant.refresh_token or refresh_token)
        new = await self._update(
            conn,
            generation=conn.generation + 1,
            expires_ms=started + grant.expires_in * 1000,
            sealed=sealed,
            key_id=self.keyring.active,
            scopes=grant.scopes or conn.scopes,
        )
        if new is None:
            # Fenced off: another holder stored a newer token while our lock had expired.
            self._count(conn.portal_id, "superseded")
            return await self.get_connection(conn.portal_id)
        self._count(conn.portal_id, "success")
        self._audit("refreshed", conn.portal_id, expires_ms=new.expires_ms)
        return new

    async def _transient(self, conn: Connection, exc: OAuthUnavailable) -> NoReturn:
        """Records a transient failure (waiters on other replicas give up instead of piling on)."""
        self._count(conn.portal_id, "transient_failure")
        self._audit("refresh_failed", conn.portal_id, why=str(exc))
        await self.store.redis.set(auth_refresh_failed_key(conn.portal_id), conn.generation, px=2_000)
        raise Unavailable(str(exc), retry_after=exc.retry_after or 1.0)

    async def _needs_reauth_result(self, conn: Connection, why: str) -> Connection:
        self._count(conn.portal_id, "invalid_grant")
        return await self._mark_needs_reauth(conn, why)

    async def _mark_needs_reauth(self, conn: Connection, why: str) -> Connection:
        new = await self._update(conn, state=STATE_NEEDS_REAUTH, sealed=b"", key_id="", expires_ms=0)
        self._audit("needs_reauth", conn.portal_id, why=why)
        return new if new is not None else await self.get_connection(conn.portal_id)

    # ---- revocation and rotation ------------------------------------------------------------------

    async def revoke(self, portal_id: int) -> Connection:
        conn = await self.get_connection(portal_id)
        if conn.kind == KIND_OAUTH and conn.sealed:
            _, refresh_token = self._open(conn)
            if refresh_token:
                try:
                    await self.oauth.revoke(refresh_token)
                except OAuthError as exc:
                    raise _oauth_failure(exc) from None
        new = await self._replace(
            portal_id,
            lambda cur, now: (cur or conn).evolve(
                state=STATE_REVOKED,
                sealed=b"",
                key_id="",
                expires_ms=0,
                updated_ms=now,
                generation=((cur or conn).generation + 1),
            ),
        )
        self._audit("revoked", portal_id, kind=conn.kind)
        return new

    async def rotate_keys(self) -> tuple[str, int]:
        """Re-seals every connection not under the active key; readers never see a gap."""
        count = 0
        after = -1
        while True:
            ids = await self.store.portal_ids(after, 200)
            for portal in ids:
                for _ in range(20):
                    cur = await self.store.get(portal)
                    if cur is None or not cur.sealed or cur.key_id == self.keyring.active:
                        break
                    access, refresh = self._open(cur)
                    new = cur.evolve(
                        version=cur.version + 1,
                        sealed=self._seal(portal, access, refresh),
                        key_id=self.keyring.active,
                        updated_ms=self.now_ms(),
                    )
                    if await self.store.swap(new, cur.version):
                        count += 1
                        break
            if len(ids) < 200:
                break
            after = ids[-1]
        self._audit("rotated", 0, active_key_id=self.keyring.active, reencrypted=count)
        return self.keyring.active, count

    # ---- background refresher ---------------------------------------------------------------------

    async def refresh_due(self) -> int:
        """Refreshes OAuth connections that would fall inside the margin before the next pass.

        Reads only the connections due (``hubsync:auth:refresh-due``, scored by expiry): an idle
        pass is a handful of commands whatever the number of connections. One replica per
        interval runs the pass (a lock with the interval as its life); the per-portal refresh
        lock still keeps a background refresh and callers' refreshes to one at a time.
        """
        interval_ms = int(self.settings.refresher_interval_s * 1000)
        refreshed = 0
        if await self.store.take_refresher_turn(max(interval_ms * 9 // 10, 1)):
            refreshed = await self._refresh_pass(interval_ms)
        self.needing_reauth = _needing_reauth[0] = await self.store.needing_reauth()
        return refreshed

    async def _refresh_pass(self, interval_ms: int) -> int:
        if not self._due_backfilled:
            await self.backfill_due()
        window_ms = int(self.settings.refresh_margin_s * 1000) + interval_ms
        refreshed = 0
        seen: set[int] = set()
        low: float | str = "-inf"
        while True:
            page = await self.store.due(low, self.now_ms() + window_ms, _DUE_PAGE)
            fresh = [(portal, score) for portal, score in page if portal not in seen]
            for portal, score in fresh:
                seen.add(portal)
                refreshed += await self._refresh_in_background(portal, score, window_ms)
            if not fresh or len(page) < _DUE_PAGE:
                break
            low = page[-1][1]
        return refreshed

    async def _refresh_in_background(self, portal: int, score: int, window_ms: int) -> bool:
        conn = await self.store.get(portal)
        if conn is None:
            await self.store.unindex([portal])
            return False
        idle_after_ms = int(self.settings.refresh_idle_after_s * 1000)
        last_use = max(conn.used_ms, conn.created_ms)
        if idle_after_ms and conn.state == STATE_ACTIVE and self.now_ms() - last_use > idle_after_ms:
            # Nobody asked for its token lately: let it expire; the next use refreshes on demand.
            await self.store.drop_due(portal, score)
            return False
        if (
            conn.kind != KIND_OAUTH
            or conn.state != STATE_ACTIVE
            or (conn.expires_ms - self.now_ms() >= window_ms)
        ):
            await self.store.index([conn])  # a stale entry (a write raced its registry update)
            return False
        try:
            fresh, _ = await self._refresh_shared(conn)
        except HubsyncError as exc:
            log.warning("background refresh failed", extra={"portal_id": portal, "error": exc.message})
            return False
        return fresh.generation != conn.generation

    async def backfill_due(self) -> int:
        """Fills the refresh-due and needs-reauth registries from every connection, once per
        installation (an upgrade from a release without them), then marks it done. Safe to run
        again and beside live writes (each record is indexed with a version check)."""
        if await self.store.due_backfilled():
            self._due_backfilled = True
            return 0
        count = 0
        after = -1
        while True:
            ids = await self.store.portal_ids(after, _DUE_PAGE)
            conns = await self.store.index_views(ids)
            await self.store.index(conns)
            count += len(conns)
            if len(ids) < _DUE_PAGE:
                break
            after = ids[-1]
        await self.store.mark_due_backfilled(self.now_ms())
        self._due_backfilled = True
        log.info("refresh-due registry filled from every connection", extra={"connections": count})
        return count

    async def run_refresher(self) -> None:
        interval = self.settings.refresher_interval_s
        if interval <= 0:
            return
        report = loop_error(
            log, "background refresher pass failed", "background refresher: Redis unavailable, retrying"
        )
        while True:
            try:
                await self.refresh_due()
            except Exception as exc:  # a Redis outage: a rate-limited warning, the next pass retries
                report(exc)
            await asyncio.sleep(interval)

    # ---- audit and metrics ------------------------------------------------------------------------

    def _audit(self, event: str, portal_id: int, **details: Any) -> None:
        audit_log.info(
            "auth audit: %s",
            event,
            extra={
                "audit_event": event,
                "portal_id": portal_id,
                "caller": current_caller.get() or "system",
                "trace_id": trace_id_hex(),
                **details,
            },
        )

    @staticmethod
    def _count(portal_id: int, outcome: str) -> None:
        _refresh_counter.add(1, portal_id, {"outcome": outcome})


def _oauth_failure(exc: Exception) -> HubsyncError:
    if isinstance(exc, OAuthUnavailable):
        return Unavailable(str(exc), retry_after=exc.retry_after or 1.0)
    if isinstance(exc, InvalidGrant):
        return FailedPrecondition(str(exc), reason=REAUTH_REASON)
    return FailedPrecondition(str(exc), reason="OAUTH_CLIENT_REJECTED")


def _digest(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def _state_of(ticket: str) -> str:
    """The OAuth state of a start-link ticket: one-way, so the authorize URL reveals no ticket."""
    raw = hashlib.sha256(b"hubsync-oauth-state\0" + ticket.encode()).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _check_state(portal_id: int, state: str) -> None:
    if state == STATE_NEEDS_REAUTH:
        raise FailedPrecondition(
            f"portal {portal_id} must be authorized again",
            reason=REAUTH_REASON,
            metadata={"portal_id": str(portal_id)},
        )
    if state == STATE_REVOKED:
        raise FailedPrecondition(
            f"portal {portal_id}'s connection was revoked",
            reason="CONNECTION_REVOKED",
            metadata={"portal_id": str(portal_id)},
        )


def _check_portal(portal_id: int) -> None:
    if portal_id <= 0:
        raise InvalidArgument("portal_id must be a positive HubSpot account id", {"portal_id": "must be > 0"})
