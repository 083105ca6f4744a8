"""Refresh without races, within a process and across replicas.

Within a process, concurrent callers share one refresh task; across replicas, the task first takes
a Redis lock (``SET NX PX`` with a random owner). Whoever holds it re-reads the record and
refreshes only if the refresh generation ``g`` is still the one its caller saw; the write is a
compare-and-swap on the record's version and is dropped if ``g`` moved (a holder whose lock
expired is fenced off). Callers that find the lock taken poll the record until ``g`` moves or the
lock is released.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NoReturn

from hubsync.auth._audit import audit
from hubsync.auth._checks import oauth_failure
from hubsync.auth._metrics import AuthMetrics
from hubsync.auth._records import Records
from hubsync.auth.oauth_client import HubSpotOAuthClient, InvalidGrant, OAuthRejected, OAuthUnavailable
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import STATE_ACTIVE, Connection
from hubsync.core.errors import Unavailable

_Flight = asyncio.Task[tuple[Connection, bool]]


class SingleFlightRefresh:
    """One refresh per portal at a time, whichever replica and caller asks."""

    def __init__(
        self, records: Records, oauth: HubSpotOAuthClient, settings: AuthSettings, metrics: AuthMetrics
    ) -> None:
        """Refresh through ``oauth``; ``settings`` gives the lock's life."""
        self._records = records
        self._store = records.store
        self._oauth = oauth
        self._settings = settings
        self._metrics = metrics
        self._flights: dict[int, _Flight] = {}

    async def refresh(self, seen: Connection) -> tuple[Connection, bool]:
        """Refresh once per portal per process; return (connection, whether *this* call refreshed)."""
        portal = seen.portal_id
        task = self._flights.get(portal)
        leader = task is None
        if task is None:
            task = asyncio.create_task(self._refresh_across_replicas(seen), name=f"refresh-{portal}")
            self._flights[portal] = task
            task.add_done_callback(self._flight_done(portal))
        conn, refreshed = await asyncio.shield(task)
        return conn, refreshed and leader

    def _flight_done(self, portal: int) -> Callable[[_Flight], None]:
        def done(task: _Flight) -> None:
            if self._flights.get(portal) is task:
                del self._flights[portal]
            if not task.cancelled():
                task.exception()  # retrieved: every waiter may have gone away

        return done

    async def _refresh_across_replicas(self, seen: Connection) -> tuple[Connection, bool]:
        portal = seen.portal_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.refresh_lock_ttl_s + 5
        while True:
            owner = await self._store.try_lock(portal, self._settings.refresh_lock_ttl_s)
            if owner is not None:
                try:
                    cur = await self._records.get(portal)
                    if cur.generation != seen.generation or cur.state != STATE_ACTIVE:
                        return cur, False  # another replica refreshed (or gave up) meanwhile
                    return await self._refresh_now(cur), True
                finally:
                    await self._store.unlock(portal, owner)
            # Another replica holds the lock: wait for its result.
            while await self._store.lock_held(portal):
                await asyncio.sleep(0.02)
                cur = await self._records.get(portal)
                if cur.generation != seen.generation or cur.state != STATE_ACTIVE:
                    return cur, False
                if loop.time() > deadline:
                    raise Unavailable(f"refresh of portal {portal} takes too long", retry_after=1.0)
            cur = await self._records.get(portal)
            if cur.generation != seen.generation or cur.state != STATE_ACTIVE:
                return cur, False
            if await self._store.refresh_failed(portal) == seen.generation:
                raise Unavailable(f"HubSpot's token endpoint is failing for portal {portal}", retry_after=2.0)
            # The holder released (or its lock expired) without a new token: try ourselves.

    async def _refresh_now(self, conn: Connection) -> Connection:
        """Refresh at HubSpot and store the result; the caller holds the portal's lock."""
        _, refresh_token = self._records.open(conn)
        if not refresh_token:
            return await self._needs_reauth(conn, "no refresh token stored")
        started = self._records.now_ms()
        try:
            # Finish (or give up) while the lock is still ours, so no second refresh can start.
            async with asyncio.timeout(max(1.0, self._settings.refresh_lock_ttl_s - 2)):
                grant = await self._oauth.refresh(refresh_token)
        except TimeoutError:
            await self._transient(conn, OAuthUnavailable("refresh outlived the refresh lock"))
        except InvalidGrant:
            return await self._needs_reauth(conn, "refresh token refused (invalid_grant)")
        except OAuthUnavailable as exc:
            await self._transient(conn, exc)
        except OAuthRejected as exc:
            self._metrics.refreshed(conn.portal_id, "rejected")
            audit("refresh_failed", conn.portal_id, why=str(exc))
            raise oauth_failure(exc) from None
        # A response without a new refresh token keeps the old one.
        sealed = self._records.seal(conn.portal_id, grant.access_token, grant.refresh_token or refresh_token)
        new = await self._records.update(
            conn,
            generation=conn.generation + 1,
            expires_ms=started + grant.expires_in * 1000,
            sealed=sealed,
            key_id=self._records.keyring.active,
            scopes=grant.scopes or conn.scopes,
        )
        if new is None:
            # Fenced off: another holder stored a newer token while our lock had expired.
            self._metrics.refreshed(conn.portal_id, "superseded")
            return await self._records.get(conn.portal_id)
        self._metrics.refreshed(conn.portal_id, "success")
        audit("refreshed", conn.portal_id, expires_ms=new.expires_ms)
        return new

    async def _transient(self, conn: Connection, exc: OAuthUnavailable) -> NoReturn:
        """Record a transient failure (waiters on other replicas give up instead of piling on)."""
        self._metrics.refreshed(conn.portal_id, "transient_failure")
        audit("refresh_failed", conn.portal_id, why=str(exc))
        await self._store.mark_refresh_failed(conn.portal_id, conn.generation, 2_000)
        raise Unavailable(str(exc), retry_after=exc.retry_after or 1.0)

    async def _needs_reauth(self, conn: Connection, why: str) -> Connection:
        self._metrics.refreshed(conn.portal_id, "invalid_grant")
        return await self._records.mark_needs_reauth(conn, why)
