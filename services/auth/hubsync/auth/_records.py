"""Connection records: sealing secrets under the key ring, reading, compare-and-swap writes.

Secrets are opened from their sealed form only for the moment they are needed and never logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from hubsync.auth._audit import audit
from hubsync.auth._checks import REAUTH_REASON, check_portal
from hubsync.auth.keyring import KeyRing, SealError
from hubsync.auth.store import STATE_NEEDS_REAUTH, Connection, ConnectionStore
from hubsync.core.errors import FailedPrecondition, HubsyncError, NotFound, Unavailable

log = logging.getLogger("hubsync.auth.vault")

Clock = Callable[[], int]


def now_ms() -> int:
    """Return the wall-clock time in milliseconds (the vault's default clock)."""
    return int(time.time() * 1000)


class Records:
    """Every part of the vault reads and writes connections through this."""

    def __init__(self, store: ConnectionStore, keyring: KeyRing, clock: Clock = now_ms) -> None:
        """Keep records in ``store``, sealed under ``keyring``; ``clock`` gives the time in ms."""
        self.store = store
        self.keyring = keyring
        self.now_ms = clock

    def seal(self, portal_id: int, access: str, refresh: str | None) -> bytes:
        """Seal a token pair, bound to ``portal_id``."""
        payload = json.dumps({"a": access, "r": refresh}).encode()
        return self.keyring.seal(portal_id, payload)

    def open(self, conn: Connection) -> tuple[str, str | None]:
        """Open the (access, refresh) tokens of ``conn``."""
        return self.open_sealed(conn.portal_id, conn.sealed)

    def open_sealed(self, portal_id: int, sealed: bytes) -> tuple[str, str | None]:
        """Open the (access, refresh) tokens sealed in ``sealed``."""
        if not sealed:
            raise FailedPrecondition(f"portal {portal_id} holds no credentials", reason=REAUTH_REASON)
        try:
            data = json.loads(self.keyring.open(portal_id, sealed))
        except SealError as exc:
            log.error("connection does not open", extra={"portal_id": portal_id, "error": str(exc)})
            raise HubsyncError(f"stored credentials of portal {portal_id} cannot be read") from None
        refresh = data.get("r")
        return str(data["a"]), None if refresh is None else str(refresh)

    async def get(self, portal_id: int) -> Connection:
        """Read the connection of ``portal_id`` (``NotFound`` without one)."""
        check_portal(portal_id)
        conn = await self.store.get(portal_id)
        if conn is None:
            raise NotFound(f"no connection for portal {portal_id}", reason="CONNECTION_NOT_FOUND")
        return conn

    async def replace(
        self, portal_id: int, make: Callable[[Connection | None, int], Connection]
    ) -> Connection:
        """Write ``make(current, now)`` with a compare-and-swap, retrying on concurrent writes."""
        for _ in range(20):
            cur = await self.store.get(portal_id)
            new = make(cur, self.now_ms())
            new = new.evolve(version=(cur.version + 1) if cur else 1)
            if await self.store.swap(new, cur.version if cur else None):
                return new
        raise Unavailable(f"portal {portal_id}'s connection is changing too fast; retry", retry_after=0.1)

    async def update(self, conn: Connection, **changes: object) -> Connection | None:
        """Apply ``changes`` if the refresh generation is still ``conn``'s (None: fenced off)."""
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

    async def mark_needs_reauth(self, conn: Connection, why: str) -> Connection:
        """Wipe ``conn``'s secrets: a person must connect the portal again."""
        new = await self.update(conn, state=STATE_NEEDS_REAUTH, sealed=b"", key_id="", expires_ms=0)
        audit("needs_reauth", conn.portal_id, why=why)
        return new if new is not None else await self.get(conn.portal_id)
