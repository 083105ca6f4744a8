"""Opened access tokens, kept in this process's memory while their record's version is current."""

from __future__ import annotations

from hubsync.auth._records import Records
from hubsync.auth.store import Connection, TokenView


class TokenCache:
    """Portal → (record version, access token): spares the hot path a decrypt per call."""

    def __init__(self, records: Records) -> None:
        """Build a cache that opens records through ``records``."""
        self._records = records
        self._opened: dict[int, tuple[int, str]] = {}

    def access_token(self, view: TokenView | Connection) -> str:
        """Return the access token of ``view``, opened at most once per record version."""
        cached = self._opened.get(view.portal_id)
        if cached is not None and cached[0] == view.version:
            return cached[1]
        token = self._records.open_sealed(view.portal_id, view.sealed)[0]
        self._opened[view.portal_id] = (view.version, token)
        return token
