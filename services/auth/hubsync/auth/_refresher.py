"""The background refresher: one replica per interval refreshes the connections about to expire."""

from __future__ import annotations

import asyncio
import logging

from hubsync.auth._metrics import AuthMetrics
from hubsync.auth._records import Records
from hubsync.auth._refresh import SingleFlightRefresh
from hubsync.auth.settings import AuthSettings
from hubsync.auth.store import KIND_OAUTH, STATE_ACTIVE
from hubsync.core.errors import HubsyncError
from hubsync.core.outage import loop_error

log = logging.getLogger("hubsync.auth.vault")

# Connections read per page by the refresher and the refresh-due backfill.
_DUE_PAGE = 500


class BackgroundRefresher:
    """Keeps OAuth connections fresh, reading only the ones due from the refresh-due registry."""

    def __init__(
        self, records: Records, refresh: SingleFlightRefresh, settings: AuthSettings, metrics: AuthMetrics
    ) -> None:
        """Build a refresher that refreshes through ``refresh`` and reports to ``metrics``."""
        self._records = records
        self._store = records.store
        self._refresh = refresh
        self._settings = settings
        self._metrics = metrics
        self._due_backfilled = False
        self.needing_reauth = 0

    async def refresh_due(self) -> int:
        """Refresh the OAuth connections that would fall inside the margin before the next pass.

        Reads only the connections due (``hubsync:auth:refresh-due``, scored by expiry): an idle
        pass is a handful of commands whatever the number of connections. One replica per
        interval runs the pass (a lock with the interval as its life); the per-portal refresh
        lock still keeps a background refresh and callers' refreshes to one at a time.
        """
        interval_ms = int(self._settings.refresher_interval_s * 1000)
        refreshed = 0
        if await self._store.take_refresher_turn(max(interval_ms * 9 // 10, 1)):
            refreshed = await self._refresh_pass(interval_ms)
        self.needing_reauth = self._metrics.needing_reauth = await self._store.needing_reauth()
        return refreshed

    async def _refresh_pass(self, interval_ms: int) -> int:
        if not self._due_backfilled:
            await self.backfill_due()
        window_ms = int(self._settings.refresh_margin_s * 1000) + interval_ms
        refreshed = 0
        seen: set[int] = set()
        low: float | str = "-inf"
        while True:
            page = await self._store.due(low, self._records.now_ms() + window_ms, _DUE_PAGE)
            fresh = [(portal, score) for portal, score in page if portal not in seen]
            for portal, score in fresh:
                seen.add(portal)
                refreshed += await self._refresh_in_background(portal, score, window_ms)
            if not fresh or len(page) < _DUE_PAGE:
                break
            low = page[-1][1]
        return refreshed

    async def _refresh_in_background(self, portal: int, score: int, window_ms: int) -> bool:
        conn = await self._store.get(portal)
        if conn is None:
            await self._store.unindex([portal])
            return False
        idle_after_ms = int(self._settings.refresh_idle_after_s * 1000)
        last_use = max(conn.used_ms, conn.created_ms)
        if idle_after_ms and conn.state == STATE_ACTIVE and self._records.now_ms() - last_use > idle_after_ms:
            # Nobody asked for its token lately: let it expire; the next use refreshes on demand.
            await self._store.drop_due(portal, score)
            return False
        if (
            conn.kind != KIND_OAUTH
            or conn.state != STATE_ACTIVE
            or (conn.expires_ms - self._records.now_ms() >= window_ms)
        ):
            await self._store.index([conn])  # a stale entry (a write raced its registry update)
            return False
        try:
            fresh, _ = await self._refresh.refresh(conn)
        except HubsyncError as exc:
            log.warning("background refresh failed", extra={"portal_id": portal, "error": exc.message})
            return False
        return fresh.generation != conn.generation

    async def backfill_due(self) -> int:
        """Fill the refresh-due and needs-reauth registries from every connection.

        Once per installation (an upgrade from a release without them), then marks it done. Safe
        to run again and beside live writes (each record is indexed with a version check).
        """
        if await self._store.due_backfilled():
            self._due_backfilled = True
            return 0
        count = 0
        after = -1
        while True:
            ids = await self._store.portal_ids(after, _DUE_PAGE)
            conns = await self._store.index_views(ids)
            await self._store.index(conns)
            count += len(conns)
            if len(ids) < _DUE_PAGE:
                break
            after = ids[-1]
        await self._store.mark_due_backfilled(self._records.now_ms())
        self._due_backfilled = True
        log.info("refresh-due registry filled from every connection", extra={"connections": count})
        return count

    async def run(self) -> None:
        """Run a pass every ``refresher_interval_s`` until cancelled (0: return at once)."""
        interval = self._settings.refresher_interval_s
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
