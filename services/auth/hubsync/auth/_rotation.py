"""Key rotation: every connection re-sealed under the key ring's active key."""

from __future__ import annotations

from hubsync.auth._audit import audit
from hubsync.auth._records import Records

_PAGE = 200


async def reseal_connections(records: Records) -> tuple[str, int]:
    """Re-seal every connection not under the active key; readers never see a gap.

    Returns the active key id and how many connections were re-sealed.
    """
    store, active = records.store, records.keyring.active
    count = 0
    after = -1
    while True:
        ids = await store.portal_ids(after, _PAGE)
        for portal in ids:
            for _ in range(20):
                cur = await store.get(portal)
                if cur is None or not cur.sealed or cur.key_id == active:
                    break
                access, refresh = records.open(cur)
                new = cur.evolve(
                    version=cur.version + 1,
                    sealed=records.seal(portal, access, refresh),
                    key_id=active,
                    updated_ms=records.now_ms(),
                )
                if await store.swap(new, cur.version):
                    count += 1
                    break
        if len(ids) < _PAGE:
            break
        after = ids[-1]
    audit("rotated", 0, active_key_id=active, reencrypted=count)
    return active, count
