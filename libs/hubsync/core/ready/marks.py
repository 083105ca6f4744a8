"""The ready-set scripts, once: mark, take (lease), settle (requeue or release) a member.

A ready set is a sorted set of members with work, scored by when each is due (Unix ms). What a
member is and which key holds it is the caller's *family*: the queues (``hubsync.core.ready.sets``)
keep portals in ``hubsync:{ready:<queue>:<shard>}``, the change feed (``hubsync.mapper.feed_ready``)
keeps portals in ``hubsync:{feed:<group>}:ready:<type>``. Every script takes the keys of one slot
(one shard, one group) and (index into KEYS, member) pairs, so nothing crosses a cluster slot.

- **mark** (producers, *after* appending their work): ``ZADD NX|LT CH`` at a given score, or at
  Redis server time plus a delay; when a member became due (added, or moved), one *nudge*: a
  ``PUBLISH`` (the queues' shard channel) or an ``LPUSH`` to a capped list a waiting consumer
  blocks on (the feed's).
- **take** (the feed's consumers): the longest-due members (score <= server time), each *leased*
  (its score moved to now + lease), so a consumer that dies mid-read loses nothing: the mark is
  due again when the lease ends.
- **settle**: a taken member goes to the back of the line (``requeue``: it read a full quantum)
  or is removed (``release``), but only while its score is still the lease: a producer that
  marked it since (``LT`` brings a lease forward) keeps it due. No wake-up is lost.

The queues take differently (their consumer holds the whole shard: a lease per shard, see
``hubsync.core.ready.leases``): they read due members (:meth:`MarkSets.due`), move one to the
back of the line or to a blocked portal's retry time (:meth:`MarkSets.put`), and remove one that
looked drained before reading it once more (:meth:`MarkSets.remove`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hubsync.core.redis import as_str, pipelined

__all__ = ["SERVER_NOW_LUA", "MarkSets", "Nudge", "Took"]

#: Lua prelude: ``now``, Redis server time in ms (clocks of replicas never compared).
SERVER_NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: sorted sets of one slot (and the nudge list, if any). ARGV[1] 'NX' (only a new member) or
# 'LT' (also bring an existing score forward), ARGV[2] score ms ('': server time + ARGV[3]),
# ARGV[3] delay ms, ARGV[4] nudge: '' (none), 'publish' (ARGV[5] channel, ARGV[6] message) or
# 'list' (ARGV[5] index of the list in KEYS, ARGV[6] cap); then pairs (index into KEYS, member).
# Returns how many members were added or moved; nudges once when any was.
_MARK_LUA = """
local score = ARGV[2]
if score == '' then
  local t = redis.call('TIME')
  score = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
end
local changed = 0
for i = 7, #ARGV, 2 do
  changed = changed + redis.call('ZADD', KEYS[tonumber(ARGV[i])], ARGV[1], 'CH', score, ARGV[i + 1])
end
if changed > 0 then
  if ARGV[4] == 'publish' then
    redis.call('PUBLISH', ARGV[5], ARGV[6])
  elseif ARGV[4] == 'list' and tonumber(ARGV[6]) > 0 then
    local list = KEYS[tonumber(ARGV[5])]
    redis.call('LPUSH', list, '1')
    redis.call('LTRIM', list, 0, tonumber(ARGV[6]) - 1)
  end
end
return changed
"""
_MARK_SHA = hashlib.sha1(_MARK_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts so

# KEYS: sets. ARGV[1] limit, ARGV[2] lease ms, ARGV[3..] only these members (none: any). Takes the
# longest-due members (score <= now) and leases them; returns {lease, next, index, member, ...}
# where next is, when none was due, the earliest time one will be (-1: none marked).
_TAKE_LUA = (
    SERVER_NOW_LUA
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
# line) or 'release' (removed). Only while the score is still the lease: a producer that marked
# the member since keeps it due. Returns 1 when applied.
_SETTLE_LUA = (
    SERVER_NOW_LUA
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


_SETTLE_SHA = hashlib.sha1(_SETTLE_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts so


@dataclass(frozen=True)
class Nudge:
    """How a mark that made a member due wakes consumers: ``PUBLISH channel message``, or an
    ``LPUSH`` to ``list_key`` (a key of the sets' slot) trimmed to ``cap``; neither by default."""

    channel: str = ""
    message: str = ""
    list_key: str = ""
    cap: int = 0


@dataclass(frozen=True)
class Took:
    """What :meth:`MarkSets.take` leased: (index into its keys, member) pairs until ``lease``
    (ms, server time), and when nothing was due the next due time (None: nothing marked)."""

    lease: int
    members: list[tuple[int, str]]
    next_ms: int | None


class MarkSets:
    """The ready-set commands over any family's keys (see the module doc)."""

    #: The Lua of :meth:`mark_command` and :meth:`settle_command`, for a caller's pipeline that
    #: runs them with commands of its own (``pipelined(..., scripts=MarkSets.SCRIPTS)``).
    SCRIPTS = (_MARK_LUA, _SETTLE_LUA)

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._mark: Any = redis.register_script(_MARK_LUA)
        self._take: Any = redis.register_script(_TAKE_LUA)
        self._settle: Any = redis.register_script(_SETTLE_LUA)

    @staticmethod
    def mark_command(
        marks: Sequence[tuple[str, str]],
        *,
        mode: str = "NX",
        score_ms: int | None = None,
        delay_ms: int = 0,
        nudge: Nudge = Nudge(),
    ) -> list[Any]:
        """The ``EVALSHA`` marking (key, member) pairs of one slot (for a caller's pipeline);
        ``score_ms`` None: due at Redis server time plus ``delay_ms``."""
        keys: list[str] = []
        index: dict[str, int] = {}
        pairs: list[Any] = []
        for key, member in marks:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            pairs += [index[key], member]
        if nudge.list_key:
            keys.append(nudge.list_key)
            how: list[Any] = ["list", len(keys), nudge.cap]
        elif nudge.channel:
            how = ["publish", nudge.channel, nudge.message]
        else:
            how = ["", "", ""]
        score = "" if score_ms is None else score_ms
        return ["EVALSHA", _MARK_SHA, len(keys), *keys, mode, score, delay_ms, *how, *pairs]

    async def mark(self, commands: Sequence[Sequence[Any]]) -> list[int]:
        """Runs mark commands (of any slots) in one pipeline; returns each one's marks changed."""
        if not commands:
            return []
        replies = await pipelined(self.redis, commands, scripts=self.SCRIPTS)
        return [int(r) for r in replies]

    async def due(self, key: str, limit: int, at_ms: int) -> list[tuple[str, int]]:
        """Up to ``limit`` members of ``key`` due at ``at_ms`` (oldest first), with their scores."""
        rows = await self.redis.zrangebyscore(key, "-inf", at_ms, start=0, num=limit, withscores=True)
        return [(as_str(m), int(score)) for m, score in rows]

    async def members(self, key: str, limit: int) -> list[str]:
        """Up to ``limit`` members of ``key`` by score (due or not), earliest first."""
        return [as_str(m) for m in await self.redis.zrange(key, 0, limit - 1)]

    async def take(self, keys: Sequence[str], *, limit: int, lease_ms: int, only: Sequence[str] = ()) -> Took:
        """Leases up to ``limit`` due members of ``keys`` (of ``only``, if given), longest due first."""
        reply = await self._take(keys=list(keys), args=[limit, lease_ms, *only])
        lease, later = int(reply[0]), int(reply[1])
        members = [(int(reply[i]) - 1, as_str(reply[i + 1])) for i in range(2, len(reply), 2)]
        return Took(lease, members, None if later < 0 else later)

    @staticmethod
    def settle_command(key: str, member: str, lease: int, *, requeue: bool) -> list[Any]:
        """The ``EVALSHA`` of :meth:`settle` (for a caller's pipeline: run it with
        :meth:`mark`, which loads the scripts again if Redis lost them)."""
        return ["EVALSHA", _SETTLE_SHA, 1, key, lease, member, "requeue" if requeue else "release"]

    async def settle(self, key: str, member: str, lease: int, *, requeue: bool) -> bool:
        """Requeues (due now) or removes a taken member unless it was marked since; True if done."""
        args = [lease, member, "requeue" if requeue else "release"]
        return bool(await self._settle(keys=[key], args=args))

    async def put(self, key: str, member: str, at_ms: int, *, earliest: bool = False) -> None:
        """Sets ``member``'s score to ``at_ms`` (``earliest``: unless it already has an earlier one)."""
        await self.redis.execute_command(*self.put_command(key, member, at_ms, earliest=earliest))

    @staticmethod
    def put_command(key: str, member: str, at_ms: int, *, earliest: bool = False) -> list[Any]:
        """The ``ZADD`` of :meth:`put` (for a caller's pipeline)."""
        return ["ZADD", key, *(["LT"] if earliest else []), at_ms, member]

    async def remove(self, key: str, member: str) -> None:
        """Removes ``member``'s mark."""
        await self.redis.zrem(key, member)
