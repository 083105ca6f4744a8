"""Which feed streams have work for a change-feed consumer group: per-group ready and pending sets.

The feed keeps one stream per portal and object type (``hubsync:{<portal>}:feed:<type>``): mapper
publishes a change in the same transaction as that portal's other keys (the last published digest,
the fingerprints, the input's ack), which must stay in the portal's cluster slot. What makes the
feed's cost follow work instead of portals is an index of the streams a group should look at,
kept in the group's own slot (``hubsync:{feed:<group>}:...``), so every script here touches one
slot:

- ``ready:<type>``: portals whose stream may hold changes the group has not read. Score: when the
  portal is due (ms, Redis server time). The publisher marks a portal due *after* its transaction
  (``ZADD LT``: a new member, or a lease lowered to now); a subscriber *takes* due portals, which
  leases them (score moved to now + lease, so a subscriber that dies mid-read loses nothing), reads
  each stream once (``XREADGROUP >``, one key), and then either puts the portal at the back of the
  line (it read a full batch) or releases it — only if the score is still its lease. A publisher
  that appended after the read changed the score (``LT`` lowers a lease to now), so the release
  keeps the mark: no wake-up is lost, and no script spans the portal's slot and the group's.
- ``pending:<type>``: portals with changes delivered to the group and maybe not acked. Score: when
  to look for ones idle past the visibility timeout. Taken (leased) like ready portals; a look
  that finds the stream's pending list empty removes the mark, then checks the list again (a
  delivery between the two re-marks it).
- ``nudge``: a list a waiting subscriber blocks on; a mark that made a portal due pushes to it
  (capped), so an idle subscriber costs one blocking command per wait, whatever the number of
  portals.

Publishers cannot mark inside their transaction (another slot), so a publisher that dies between
its transaction and its marks would leave changes no one looks for. It therefore records the
publication in ``hubsync:feed:publishing`` first and removes it after marking; a member older than
``STALE_PUBLISH_MS`` is repaired by any subscriber (every group marked for that portal).

This is the feed's instance of the ready-set pattern of the design doc (§3). The inbound and
writer queues get theirs in ``hubsync.core.ready``; the two differ in what a mark covers (a
portal per queue there, a portal per group and object type here) and can share the scripts later.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hubsync.core.keys import (
    FEED_GROUPS_KEY,
    FEED_PUBLISHING_KEY,
    feed_nudge_key,
    feed_pending_key,
    feed_ready_key,
)
from hubsync.core.redis import as_str

# A publication recorded longer ago than this is a publisher that died before marking.
STALE_PUBLISH_MS = 60_000
# Waiting subscribers are woken by at most this many queued nudges per group.
NUDGE_CAP = 64

_NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] nudge list, KEYS[2..] sets. ARGV[1] 'LT' (due: a new member, or a lease lowered) or
# 'NX' (only a new member), ARGV[2] delay ms, ARGV[3] nudge cap (0: none), then pairs of (index
# into KEYS, member). Returns how many marks were added or moved.
_MARK_LUA = (
    _NOW_LUA
    + """
local due = now + tonumber(ARGV[2])
local changed = 0
for i = 4, #ARGV, 2 do
  changed = changed + redis.call('ZADD', KEYS[tonumber(ARGV[i])], ARGV[1], 'CH', due, ARGV[i + 1])
end
local cap = tonumber(ARGV[3])
if changed > 0 and cap > 0 then
  redis.call('LPUSH', KEYS[1], '1')
  redis.call('LTRIM', KEYS[1], 0, cap - 1)
end
return changed
"""
)

# KEYS: sets. ARGV[1] limit, ARGV[2] lease ms, ARGV[3..] only these members (none: any). Takes the
# longest-due members (score <= now) and leases them; returns {lease, next, index, member, ...}
# where next is, when none was due, the earliest time one will be (-1: none marked).
_TAKE_LUA = (
    _NOW_LUA
    + """
local limit = tonumber(ARGV[1])
local found = {}
local later = -1
local function seen(score)
  if later < 0 or score < later then later = score end
end
for i = 1, #KEYS do
  if #ARGV > 2 then
    for j = 3, #ARGV do
      local s = redis.call('ZSCORE', KEYS[i], ARGV[j])
      if s and tonumber(s) <= now then table.insert(found, {tonumber(s), i, ARGV[j]}) end
      if s and tonumber(s) > now then seen(tonumber(s)) end
    end
  else
    local r = redis.call('ZRANGE', KEYS[i], 0, limit - 1, 'WITHSCORES')
    for j = 1, #r, 2 do
      local s = tonumber(r[j + 1])
      if s <= now then table.insert(found, {s, i, r[j]}) else seen(s) end
    end
  end
end
table.sort(found, function(a, b) return a[1] < b[1] end)
local lease = now + tonumber(ARGV[2])
if #found > 0 then later = -1 end
local out = {lease, later}
for k = 1, math.min(limit, #found) do
  redis.call('ZADD', KEYS[found[k][2]], lease, found[k][3])
  table.insert(out, found[k][2])
  table.insert(out, found[k][3])
end
return out
"""
)

# KEYS[1] set; ARGV[1] lease, ARGV[2] member, ARGV[3] 'requeue' (due now, at the back of the
# line) or 'release' (removed). Only while the score is still the lease: a publisher that marked
# the member since keeps it due. Returns 1 when applied.
_SETTLE_LUA = (
    _NOW_LUA
    + """
local s = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not s or tonumber(s) ~= tonumber(ARGV[1]) then return 0 end
if ARGV[3] == 'requeue' then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
end
return 1
"""
)

# KEYS[1] publishing set; ARGV[1] member. Records a publication at server time.
_BEGIN_LUA = _NOW_LUA + "return redis.call('ZADD', KEYS[1], now, ARGV[1])"

# KEYS[1] publishing set; ARGV[1] age ms, ARGV[2] limit: publications older than age.
_STALE_LUA = (
    _NOW_LUA
    + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, ARGV[2])"
)


@dataclass(frozen=True)
class Taken:
    """A leased mark: ``portal``'s ``object_type`` stream, until ``lease`` (ms, server time)."""

    object_type: str
    portal: str
    lease: int


class FeedMarks:
    """The ready and pending sets of every change-feed group (see the module doc)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._mark: Any = redis.register_script(_MARK_LUA)
        self._take: Any = redis.register_script(_TAKE_LUA)
        self._settle: Any = redis.register_script(_SETTLE_LUA)
        self._begin: Any = redis.register_script(_BEGIN_LUA)
        self._stale: Any = redis.register_script(_STALE_LUA)

    # ---- the publisher's side --------------------------------------------------------------

    async def begin(self, portal: str, object_types: Iterable[str] = ()) -> str:
        """Records a publication for ``portal`` of ``object_types`` before its transaction;
        returns its token (which names the types, so a repair marks exactly those)."""
        member = f"{portal}|{secrets.token_hex(6)}|{','.join(sorted(set(object_types)))}"
        await self._begin(keys=[FEED_PUBLISHING_KEY], args=[member])
        return member

    async def published(self, portal: str, object_types: Iterable[str], token: str | None) -> None:
        """Marks ``portal``'s streams of ``object_types`` ready for every group (after the
        transaction), then forgets the publication ``token``."""
        types = sorted(set(object_types))
        if types:
            groups = await self.redis.smembers(FEED_GROUPS_KEY)
            for group in sorted(as_str(g) for g in groups):
                await self.mark(group, "ready", [(t, portal) for t in types])
        if token is not None:
            await self.redis.zrem(FEED_PUBLISHING_KEY, token)

    async def repair(
        self, object_types: Sequence[str], *, age_ms: int = STALE_PUBLISH_MS, limit: int = 100
    ) -> int:
        """Marks the portals of publications older than ``age_ms`` (their publisher died before
        marking); returns how many."""
        stale = [as_str(m) for m in await self._stale(keys=[FEED_PUBLISHING_KEY], args=[age_ms, limit])]
        for member in stale:
            portal, _, rest = member.partition("|")
            named = [t for t in rest.partition("|")[2].split(",") if t]
            await self.published(portal, named or object_types, member)
        return len(stale)

    # ---- the subscriber's side -------------------------------------------------------------

    async def mark(
        self,
        group: str,
        kind: str,
        streams: Sequence[tuple[str, str]],
        *,
        delay_ms: int = 0,
        only_new: bool = False,
    ) -> int:
        """Marks (object type, portal) streams in ``group``'s ``kind`` ("ready" or "pending") set,
        due after ``delay_ms``; ``only_new`` keeps an existing mark's time. Ready marks wake a
        waiting subscriber."""
        if not streams:
            return 0
        keys, args = _indexed(group, kind, streams)
        nudge = NUDGE_CAP if kind == "ready" else 0
        return int(
            await self._mark(
                keys=[feed_nudge_key(group), *keys],
                args=["NX" if only_new else "LT", delay_ms, nudge, *args],
            )
        )

    async def take(
        self,
        group: str,
        kind: str,
        object_types: Sequence[str],
        *,
        limit: int,
        lease_ms: int,
        portals: Sequence[str] = (),
    ) -> list[Taken]:
        """Leases up to ``limit`` due streams of ``object_types`` (of ``portals`` only, if given),
        longest due first."""
        return (
            await self.take_or_next(
                group, kind, object_types, limit=limit, lease_ms=lease_ms, portals=portals
            )
        )[0]

    async def take_or_next(
        self,
        group: str,
        kind: str,
        object_types: Sequence[str],
        *,
        limit: int,
        lease_ms: int,
        portals: Sequence[str] = (),
    ) -> tuple[list[Taken], float | None]:
        """:meth:`take`, and when nothing was due, in how many seconds the next mark is (None:
        nothing marked), so a subscriber need not look before."""
        keys = [_set_key(group, kind, t) for t in object_types]
        reply = await self._take(keys=keys, args=[limit, lease_ms, *portals])
        lease, later = int(reply[0]), int(reply[1])
        taken = [
            Taken(object_types[int(reply[i]) - 1], as_str(reply[i + 1]), lease)
            for i in range(2, len(reply), 2)
        ]
        # The lease is now + lease_ms in server time: the next mark's distance needs no clock here.
        wait = None if later < 0 else max(later - (lease - lease_ms), 0) / 1000
        return taken, wait

    async def requeue(self, group: str, kind: str, taken: Taken) -> None:
        """Puts a taken stream at the back of the line (it may hold more)."""
        await self._settle(
            keys=[_set_key(group, kind, taken.object_type)], args=[taken.lease, taken.portal, "requeue"]
        )

    async def release(self, group: str, kind: str, taken: Taken) -> bool:
        """Removes a taken mark unless it was marked again since; True when removed."""
        key = _set_key(group, kind, taken.object_type)
        return bool(await self._settle(keys=[key], args=[taken.lease, taken.portal, "release"]))

    async def members(self, group: str, kind: str, object_type: str, limit: int) -> list[str]:
        """Up to ``limit`` marked portals, longest due first (a restarted subscriber's look for
        its own unacked changes)."""
        return [as_str(m) for m in await self.redis.zrange(_set_key(group, kind, object_type), 0, limit - 1)]


def _set_key(group: str, kind: str, object_type: str) -> str:
    return feed_ready_key(group, object_type) if kind == "ready" else feed_pending_key(group, object_type)


def _indexed(group: str, kind: str, streams: Sequence[tuple[str, str]]) -> tuple[list[str], list[Any]]:
    """The set keys ``streams`` touch and the (index, member) pairs for the mark script (KEYS[1]
    is the nudge list, so set indexes start at 2)."""
    keys: list[str] = []
    index: dict[str, int] = {}
    args: list[Any] = []
    for object_type, portal in streams:
        key = _set_key(group, kind, object_type)
        if key not in index:
            keys.append(key)
            index[key] = len(keys) + 1
        args += [index[key], portal]
    return keys, args
