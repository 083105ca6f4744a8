"""Revocation: the refresh token is revoked at HubSpot first, then the secrets are wiped here."""

from __future__ import annotations

from hubsync.auth._audit import audit
from hubsync.auth._checks import oauth_failure
from hubsync.auth._records import Records
from hubsync.auth.oauth_client import HubSpotOAuthClient, OAuthError
from hubsync.auth.store import KIND_OAUTH, STATE_REVOKED, Connection


async def revoke_connection(records: Records, oauth: HubSpotOAuthClient, portal_id: int) -> Connection:
    """Revoke ``portal_id``'s connection; returns it without secrets."""
    conn = await records.get(portal_id)
    if conn.kind == KIND_OAUTH and conn.sealed:
        _, refresh_token = records.open(conn)
        if refresh_token:
            try:
                await oauth.revoke(refresh_token)
            except OAuthError as exc:
                raise oauth_failure(exc) from None
    new = await records.replace(
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
    audit("revoked", portal_id, kind=conn.kind)
    return new
