"""Connections in Redis: one hash per portal, written only by compare-and-swap on its version.

Keys (``{portal}`` hash tag so a portal's record and lock share a cluster slot):

- ``hubsync:{<portal>}:auth:connection`` — hash: ``v`` (version, bumped by every write), ``g``
  (refresh generation, bumped by every new access token: the fencing token of a refresh),
  descriptive fields, and ``sealed`` (the AES-GCM sealed secrets; never plaintext).
- ``hubsync:{<portal>}:auth:refresh-lock`` — the cross-replica refresh lock (random owner value).
- ``hubsync:auth:connections`` — sorted set of portal ids (score = id) for listing and rotation.
- ``hubsync:auth:refresh-due`` — sorted set of active OAuth connections scored by ``expires_ms``:
  the background refresher reads only the ones due (its cost follows expiring tokens, not
  connections). ``hubsync:auth:needs-reauth`` — set of portals needing a new authorization.
  Both are kept in step by every write (:meth:`ConnectionStore.index`).
- ``hubsync:auth:oauth-state:<sha256 of state>`` — a pending authorization (JSON, with a TTL).
- ``hubsync:auth:oauth-browser:<sha256 of state>`` — the SHA-256 of the browser binding its start
  link set (written once: a start link is single use).

Every write of a connection is announced on ``hubsync:auth:connection-changes`` (the portal id).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis

from hubsync.core.keys import (
    AUTH_CONNECTIONS_KEY,
    AUTH_NEEDS_REAUTH_KEY,
    AUTH_REFRESH_DUE_BACKFILLED_KEY,
    AUTH_REFRESH_DUE_KEY,
    AUTH_REFRESHER_LOCK_KEY,
    CONNECTION_CHANGES_CHANNEL,
    auth_connection_key,
    auth_refresh_failed_key,
    auth_refresh_lock_key,
    oauth_browser_key,
    oauth_state_key,
)

__all__ = [
    "INDEX_KEY",
    "KIND_OAUTH",
    "KIND_PRIVATE_APP",
    "STATE_ACTIVE",
    "STATE_NEEDS_REAUTH",
    "STATE_REVOKED",
    "Connection",
    "ConnectionStore",
    "TokenView",
]

INDEX_KEY = AUTH_CONNECTIONS_KEY

KIND_OAUTH = "oauth"
KIND_PRIVATE_APP = "private_app"
STATE_ACTIVE = "active"
STATE_NEEDS_REAUTH = "needs_reauth"
STATE_REVOKED = "revoked"

_CAS = """
local cur = redis.call('HGET', KEYS[1], 'v')
if (cur or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# Only on an existing record: a connection deleted meanwhile must not come back as a stub.
_NOTE_USE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'used_ms', ARGV[1]) end
return 0
"""

_DROP_DUE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Connection:
    """A stored connection. ``sealed`` holds the secrets; everything else is descriptive."""

    portal_id: int
    tenant: str
    kind: str
    state: str
    scopes: list[str] = field(default_factory=list)
    expires_ms: int = 0  # 0: never (private-app tokens)
    created_ms: int = 0
    updated_ms: int = 0
    # When a token of this connection was last handed out (noted at most every few minutes).
    used_ms: int = 0
    hub_domain: str = ""
    key_id: str = ""
    version: int = 0
    generation: int = 0
    sealed: bytes = b""

    def fields(self) -> dict[str, int | str | bytes]:
        """Return the record as hash fields."""
        out: dict[str, int | str | bytes] = {
            "v": self.version,
            "g": self.generation,
            "portal": self.portal_id,
            "tenant": self.tenant,
            "kind": self.kind,
            "state": self.state,
            "scopes": json.dumps(self.scopes),
            "expires_ms": self.expires_ms,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "used_ms": self.used_ms,
            "hub_domain": self.hub_domain,
            "key_id": self.key_id,
        }
        if self.sealed:
            out["sealed"] = self.sealed
        return out

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> Connection:
        """Read a record from its hash fields."""

        def s(name: str) -> str:
            return raw.get(name.encode(), b"").decode()

        def n(name: str) -> int:
            return int(raw.get(name.encode(), b"0") or b"0")

        return cls(
            portal_id=n("portal"),
            tenant=s("tenant"),
            kind=s("kind"),
            state=s("state"),
            scopes=json.loads(s("scopes") or "[]"),
            expires_ms=n("expires_ms"),
            created_ms=n("created_ms"),
            updated_ms=n("updated_ms"),
            used_ms=n("used_ms"),
            hub_domain=s("hub_domain"),
            key_id=s("key_id"),
            version=n("v"),
            generation=n("g"),
            sealed=raw.get(b"sealed", b""),
        )

    def evolve(self, **changes: Any) -> Connection:
        """Return a copy with ``changes``."""
        return replace(self, **changes)


@dataclass(frozen=True)
class TokenView:
    """The few fields GetAccessToken's hot path needs (one small HMGET instead of HGETALL)."""

    portal_id: int
    version: int
    kind: str
    state: str
    expires_ms: int
    sealed: bytes


_VIEW_FIELDS = ("v", "kind", "state", "expires_ms", "sealed")
_INDEX_FIELDS = ("v", "kind", "state", "expires_ms")


connection_key = auth_connection_key
lock_key = auth_refresh_lock_key


class ConnectionStore:
    """Reads and compare-and-swaps connection records; the pending-state and lock primitives."""

    def __init__(self, redis: Redis) -> None:
        """Build a store on ``redis`` (its scripts registered)."""
        self.redis = redis
        self._cas = redis.register_script(_CAS)
        self._release = redis.register_script(_RELEASE)
        self._note_use = redis.register_script(_NOTE_USE)
        self._drop_due = redis.register_script(_DROP_DUE)

    async def get(self, portal_id: int) -> Connection | None:
        """Read a connection, or None."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(connection_key(portal_id))  # type: ignore[assignment]
        return Connection.from_fields(raw) if raw else None

    async def get_many(self, portal_ids: list[int]) -> list[Connection]:
        """Read the connections of ``portal_ids`` that exist, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for portal_id in portal_ids:
                pipe.hgetall(connection_key(portal_id))
            raws: list[dict[bytes, bytes]] = await pipe.execute()
        return [Connection.from_fields(raw) for raw in raws if raw]

    async def index_views(self, portal_ids: list[int]) -> list[Connection]:
        """Just what :meth:`index` needs of each existing connection (no secrets, no decoding)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for portal_id in portal_ids:
                pipe.hmget(connection_key(portal_id), _INDEX_FIELDS)
            rows: list[list[bytes | None]] = await pipe.execute()
        return [
            Connection(
                portal_id=p,
                tenant="",
                kind=(kind or b"").decode(),
                state=(state or b"").decode(),
                expires_ms=int(expires or 0),
                version=int(v),
            )
            for p, (v, kind, state, expires) in zip(portal_ids, rows, strict=True)
            if v is not None
        ]

    async def token_view(self, portal_id: int) -> TokenView | None:
        """Read the few fields GetAccessToken needs, or None."""
        raw: list[bytes | None] = await self.redis.hmget(  # type: ignore[assignment]
            connection_key(portal_id), _VIEW_FIELDS
        )
        v, kind, state, expires, sealed = raw
        if v is None:
            return None
        return TokenView(
            portal_id,
            int(v),
            (kind or b"").decode(),
            (state or b"").decode(),
            int(expires or 0),
            sealed or b"",
        )

    async def swap(self, new: Connection, expected_version: int | None) -> bool:
        """Write ``new`` if the stored version is still ``expected_version``; return whether.

        ``new``'s version must be ``expected_version + 1`` (None: no record yet).
        """
        args: list[int | str | bytes] = ["" if expected_version is None else str(expected_version)]
        for k, v in new.fields().items():
            args += [k, v]
        written = bool(await self._cas(keys=[connection_key(new.portal_id)], args=args))
        if written and expected_version is None:
            await self.redis.zadd(INDEX_KEY, {str(new.portal_id): new.portal_id})
        if written:
            await self.index([new])
            # Mapper resumes a portal's parked inbound events when its connection works again.
            await self.redis.publish(CONNECTION_CHANGES_CHANNEL, str(new.portal_id))
        return written

    async def index(self, conns: list[Connection]) -> None:
        """Bring the refresh-due and needs-reauth registries in step with records written or read.

        Not atomic with the write (the registries live in another slot), so afterwards
        each record's version is read again: a record someone changed meanwhile is indexed again
        from its newer state, and the last registry update always follows the newest record.
        """
        pending = list(conns)
        for _ in range(20):
            if not pending:
                return
            due = {
                str(c.portal_id): c.expires_ms
                for c in pending
                if c.kind == KIND_OAUTH and c.state == STATE_ACTIVE and c.expires_ms
            }
            needs = {str(c.portal_id) for c in pending if c.state == STATE_NEEDS_REAUTH}
            others = [str(c.portal_id) for c in pending]
            async with self.redis.pipeline(transaction=False) as pipe:
                if due:
                    pipe.zadd(AUTH_REFRESH_DUE_KEY, due)
                if len(due) < len(others):
                    pipe.zrem(AUTH_REFRESH_DUE_KEY, *(m for m in others if m not in due))
                if needs:
                    pipe.sadd(AUTH_NEEDS_REAUTH_KEY, *needs)
                if len(needs) < len(others):
                    pipe.srem(AUTH_NEEDS_REAUTH_KEY, *(m for m in others if m not in needs))
                await pipe.execute()
            async with self.redis.pipeline(transaction=False) as pipe:
                for conn in pending:
                    pipe.hget(connection_key(conn.portal_id), "v")
                versions: list[bytes | None] = await pipe.execute()
            moved = [c.portal_id for c, v in zip(pending, versions, strict=True) if int(v or 0) != c.version]
            if not moved:
                return
            fresh = {c.portal_id: c for c in await self.get_many(moved)}
            gone = [p for p in moved if p not in fresh]
            if gone:
                await self.unindex(gone)
            pending = list(fresh.values())

    async def note_use(self, portal_id: int, now_ms: int) -> None:
        """Record that a token was handed out.

        Advisory: not a versioned write; a concurrent compare-and-swap may carry the previous
        value, which only makes the portal look idler.
        """
        await self._note_use(keys=[connection_key(portal_id)], args=[now_ms])

    async def drop_due(self, portal_id: int, score: int) -> None:
        """Take an idle connection off the refresh-due registry (its next use puts it back).

        Unless a write re-scored it since it was read at ``score``.
        """
        await self._drop_due(keys=[AUTH_REFRESH_DUE_KEY], args=[str(portal_id), score])

    async def unindex(self, portal_ids: list[int]) -> None:
        """Drop portals without a record from the refresh-due and needs-reauth registries."""
        members = [str(p) for p in portal_ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(AUTH_REFRESH_DUE_KEY, *members)
            pipe.srem(AUTH_NEEDS_REAUTH_KEY, *members)
            await pipe.execute()

    async def due(self, low: float | str, high_ms: int, limit: int) -> list[tuple[int, int]]:
        """(portal, expires_ms) of connections expiring between ``low`` and ``high_ms``, soonest first."""
        raw: list[tuple[bytes, float]] = await self.redis.zrangebyscore(  # type: ignore[assignment]
            AUTH_REFRESH_DUE_KEY, low, high_ms, start=0, num=limit, withscores=True
        )
        return [(int(member), int(score)) for member, score in raw]

    async def needing_reauth(self) -> int:
        """Count the connections that need a person."""
        return int(await self.redis.scard(AUTH_NEEDS_REAUTH_KEY))

    async def take_refresher_turn(self, ttl_ms: int) -> bool:
        """Return True for the one replica that runs this interval's refresher pass."""
        return bool(await self.redis.set(AUTH_REFRESHER_LOCK_KEY, secrets.token_hex(8), nx=True, px=ttl_ms))

    async def due_backfilled(self) -> bool:
        """Return whether the refresh-due registry was filled from every connection once."""
        return bool(await self.redis.exists(AUTH_REFRESH_DUE_BACKFILLED_KEY))

    async def mark_due_backfilled(self, now_ms: int) -> None:
        """Mark the refresh-due registry as filled."""
        await self.redis.set(AUTH_REFRESH_DUE_BACKFILLED_KEY, now_ms)

    async def portal_ids(self, after: int = -1, limit: int = 100) -> list[int]:
        """Portal ids greater than ``after``, ascending."""
        raw: list[bytes] = await self.redis.zrangebyscore(  # type: ignore[assignment]
            INDEX_KEY, f"({after}", "+inf", start=0, num=limit
        )
        return [int(x) for x in raw]

    async def put_state(self, digest: str, payload: dict[str, Any], ttl_s: int) -> None:
        """Store a pending authorization state (once: an existing one is kept)."""
        await self.redis.set(oauth_state_key(digest), json.dumps(payload), ex=ttl_s, nx=True)

    async def take_state(self, digest: str) -> dict[str, Any] | None:
        """Return and delete a pending state in one step, so it is single use."""
        raw = await self.redis.getdel(oauth_state_key(digest))
        return json.loads(raw) if raw else None

    async def get_state(self, digest: str) -> tuple[dict[str, Any], int] | None:
        """Read a pending state and the milliseconds it has left, without using it up."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(oauth_state_key(digest))
            pipe.pttl(oauth_state_key(digest))
            raw, ttl_ms = await pipe.execute()
        return (json.loads(raw), int(ttl_ms)) if raw and int(ttl_ms) > 0 else None

    async def bind_state(self, digest: str, browser_digest: str, ttl_ms: int) -> bool:
        """Binds a pending state to a browser, once: False if it was bound already."""
        return bool(await self.redis.set(oauth_browser_key(digest), browser_digest, px=ttl_ms, nx=True))

    async def state_browser(self, digest: str) -> str | None:
        """Return the browser digest a pending state is bound to, or None."""
        raw = await self.redis.get(oauth_browser_key(digest))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def forget_browser(self, digest: str) -> None:
        """Forget a state's browser binding."""
        await self.redis.delete(oauth_browser_key(digest))

    async def try_lock(self, portal_id: int, ttl_s: float) -> str | None:
        """Take ``portal_id``'s refresh lock; return its owner, or None if another holds it."""
        owner = secrets.token_hex(16)
        got = await self.redis.set(lock_key(portal_id), owner, nx=True, px=int(ttl_s * 1000))
        return owner if got else None

    async def unlock(self, portal_id: int, owner: str) -> None:
        """Release the refresh lock if ``owner`` still holds it."""
        await self._release(keys=[lock_key(portal_id)], args=[owner])

    async def lock_held(self, portal_id: int) -> bool:
        """Return whether someone holds ``portal_id``'s refresh lock."""
        return bool(await self.redis.exists(lock_key(portal_id)))

    async def mark_refresh_failed(self, portal_id: int, generation: int, ttl_ms: int) -> None:
        """Record that the refresh of ``generation`` just failed transiently (for ``ttl_ms``)."""
        await self.redis.set(auth_refresh_failed_key(portal_id), generation, px=ttl_ms)

    async def refresh_failed(self, portal_id: int) -> int | None:
        """Return the generation whose refresh just failed transiently, if any."""
        raw = await self.redis.get(auth_refresh_failed_key(portal_id))
        return None if raw is None else int(raw)
