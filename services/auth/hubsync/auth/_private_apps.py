"""Private-app connections: a ``pat-…`` token stored for a portal; storing again rotates it."""

from __future__ import annotations

from hubsync.auth._audit import audit
from hubsync.auth._checks import MAX_TOKEN_LENGTH
from hubsync.auth._records import Records
from hubsync.auth.store import KIND_PRIVATE_APP, STATE_ACTIVE, Connection
from hubsync.core.errors import InvalidArgument


async def store_private_app_token(
    records: Records, portal_id: int, tenant: str, access_token: str, scopes: list[str]
) -> Connection:
    """Store ``access_token`` as ``portal_id``'s connection for ``tenant``."""
    violations: dict[str, str] = {}
    if portal_id <= 0:
        violations["portal_id"] = "must be a positive HubSpot account id"
    if not tenant or len(tenant) > 128:
        violations["tenant"] = "required, at most 128 characters"
    if not access_token or len(access_token) > MAX_TOKEN_LENGTH or any(c.isspace() for c in access_token):
        violations["access_token"] = f"required, no whitespace, at most {MAX_TOKEN_LENGTH} characters"
    if violations:
        raise InvalidArgument("invalid private-app connection", violations)
    sealed = records.seal(portal_id, access_token, None)
    conn = await records.replace(
        portal_id,
        lambda cur, now: Connection(
            portal_id=portal_id,
            tenant=tenant,
            kind=KIND_PRIVATE_APP,
            state=STATE_ACTIVE,
            scopes=list(scopes),
            created_ms=now,
            updated_ms=now,
            key_id=records.keyring.active,
            generation=(cur.generation + 1) if cur else 1,
            sealed=sealed,
        ),
    )
    audit("issued", portal_id, kind=KIND_PRIVATE_APP, tenant=tenant)
    return conn
