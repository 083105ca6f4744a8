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

This is the feed's family of the shared ready sets (:mod:`hubsync.core.ready`, design doc §3):
the scripts (mark, take with a lease, settle) are :class:`hubsync.core.ready.MarkSets`; what is
the feed's own is the member shape (a portal per group and object type), the keys, the nudge list
and the publication records.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Required, TypedDict, Unpack

from hubsync.core.keys import (
    FEED_GROUPS_KEY,
    FEED_PUBLISHING_KEY,
    feed_nudge_key,
    feed_pending_key,
    feed_ready_key,
)
from hubsync.core.ready import MarkSets, Nudge
from hubsync.core.ready.marks import SERVER_NOW_LUA
from hubsync.core.redis import as_str, pipelined

__all__ = ["NUDGE_CAP", "STALE_PUBLISH_MS", "FeedMarks", "TakeOptions", "Taken"]

# A publication recorded longer ago than this is a publisher that died before marking.
STALE_PUBLISH_MS = 60_000
# Waiting subscribers are woken by at most this many queued nudges per group.
NUDGE_CAP = 64

# KEYS[1] publishing set; ARGV[1] member. Records a publication at server time.
_BEGIN_LUA = SERVER_NOW_LUA + "return redis.call('ZADD', KEYS[1], now, ARGV[1])"
_BEGIN_SHA = hashlib.sha1(_BEGIN_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts so

# KEYS[1] publishing set; ARGV[1] age ms, ARGV[2] limit: publications older than age.
_STALE_LUA = (
    SERVER_NOW_LUA
    + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, ARGV[2])"
)


class TakeOptions(TypedDict, total=False):
    """What :meth:`FeedMarks.take` leases: up to ``limit`` streams for ``lease_ms``, of
    ``portals`` only if given (default: every portal)."""

    limit: Required[int]
    lease_ms: Required[int]
    portals: Sequence[str]


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
        self.sets = MarkSets(redis)
        # The groups this replica marked for at its last publication (see :meth:`published`).
        self._groups: tuple[str, ...] = ()
        # Publications marked, to forget later (see :meth:`published`).
        self._done: list[str] = []
        self._stale: Any = redis.register_script(_STALE_LUA)

    # ---- the publisher's side --------------------------------------------------------------

    @staticmethod
    def token(portal: str, object_types: Iterable[str] = ()) -> str:
        """A publication's token for ``portal`` of ``object_types`` (it names the types, so a
        repair marks exactly those)."""
        return f"{portal}|{secrets.token_hex(6)}|{','.join(sorted(set(object_types)))}"

    @staticmethod
    def begin_command(token: str) -> list[Any]:
        """The ``EVALSHA`` recording publication ``token`` (for a caller's pipeline: see
        :meth:`run_with_begin`)."""
        return ["EVALSHA", _BEGIN_SHA, 1, FEED_PUBLISHING_KEY, token]

    async def run_with_begin(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Runs ``commands`` (which may hold a :meth:`begin_command`) in one pipeline; returns
        their replies (the begin script loaded again if Redis lost it)."""
        return await pipelined(self.redis, commands, scripts=(_BEGIN_LUA,))

    async def begin(self, portal: str, object_types: Iterable[str] = ()) -> str:
        """Records a publication for ``portal`` of ``object_types`` before its transaction;
        returns its token."""
        member = self.token(portal, object_types)
        await self.run_with_begin([self.begin_command(member)])
        return member

    def forget_commands(self) -> list[list[Any]]:
        """The ``ZREM`` of the publications whose marks are made and whose forgetting was left
        for later (:meth:`published` with ``later``), for a caller's pipeline; they are taken."""
        done, self._done = self._done, []
        return [["ZREM", FEED_PUBLISHING_KEY, *done]] if done else []

    async def forget(self) -> None:
        """Forgets now the publications left for later (the publisher's housekeeping)."""
        if commands := self.forget_commands():
            await self.redis.execute_command(*commands[0])

    async def published(
        self, portal: str, object_types: Iterable[str], token: str | None, *, later: bool = False
    ) -> None:
        """Marks ``portal``'s streams of ``object_types`` ready for every group (after the
        transaction), then forgets the publication ``token`` (``later``: in the pipeline of the
        next publication's reads, or at the next :meth:`forget`; until then a crash leaves the
        record to :meth:`repair`, which marks those streams again: a look that finds nothing).

        The groups are read in the round trip that marks the groups known from the last time
        (so one group costs one round trip, not two); a group new since is marked in a second one.
        Groups are read after the transaction: a group created later sweeps the streams itself.
        """
        types = sorted(set(object_types))
        if types:
            streams = [(t, portal) for t in types]
            marked = self._groups
            commands: list[Sequence[Any]] = [["SMEMBERS", FEED_GROUPS_KEY]]
            commands += [self._mark_command(group, "ready", streams) for group in marked]
            found = (await pipelined(self.redis, commands, scripts=MarkSets.SCRIPTS))[0]
            groups = sorted(as_str(g) for g in found)
            self._groups = tuple(groups)
            late = [self._mark_command(group, "ready", streams) for group in groups if group not in marked]
            if late:
                await self.sets.mark(late)
        if token is not None:
            if later:
                self._done.append(token)
            else:
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
        return sum(await self.sets.mark([self._mark_command(group, kind, streams, delay_ms, only_new)]))

    @staticmethod
    def _mark_command(
        group: str, kind: str, streams: Sequence[tuple[str, str]], delay_ms: int = 0, only_new: bool = False
    ) -> list[Any]:
        nudge = Nudge(list_key=feed_nudge_key(group), cap=NUDGE_CAP) if kind == "ready" else Nudge()
        return MarkSets.mark_command(
            [(_set_key(group, kind, t), p) for t, p in streams],
            mode="NX" if only_new else "LT",
            delay_ms=delay_ms,
            nudge=nudge,
        )

    async def take(
        self, group: str, kind: str, object_types: Sequence[str], **lease: Unpack[TakeOptions]
    ) -> list[Taken]:
        """Leases up to ``limit`` due streams of ``object_types`` (of ``portals`` only, if given),
        longest due first."""
        return (await self.take_or_next(group, kind, object_types, **lease))[0]

    async def take_or_next(
        self, group: str, kind: str, object_types: Sequence[str], **lease: Unpack[TakeOptions]
    ) -> tuple[list[Taken], float | None]:
        """:meth:`take`, and when nothing was due, in how many seconds the next mark is (None:
        nothing marked), so a subscriber need not look before."""
        keys = [_set_key(group, kind, t) for t in object_types]
        lease_ms = lease["lease_ms"]
        took = await self.sets.take(
            keys, limit=lease["limit"], lease_ms=lease_ms, only=lease.get("portals", ())
        )
        taken = [Taken(object_types[i], portal, took.lease) for i, portal in took.members]
        # The lease is now + lease_ms in server time: the next mark's distance needs no clock here.
        wait = None if took.next_ms is None else max(took.next_ms - (took.lease - lease_ms), 0) / 1000
        return taken, wait

    async def requeue(self, group: str, kind: str, taken: Taken) -> None:
        """Put a taken stream at the back of the line (it may hold more)."""
        await self.sets.settle(
            _set_key(group, kind, taken.object_type), taken.portal, taken.lease, requeue=True
        )

    async def release(self, group: str, kind: str, taken: Taken) -> bool:
        """Remove a taken mark unless it was marked again since; return True when removed."""
        key = _set_key(group, kind, taken.object_type)
        return await self.sets.settle(key, taken.portal, taken.lease, requeue=False)

    async def settle_and_hold(self, group: str, taken: Taken, *, requeue: bool, hold_ms: int | None) -> None:
        """:meth:`requeue` (or :meth:`release`) a taken ready mark and, with ``hold_ms``, mark the
        stream pending (due then, an existing mark's time kept), in one round trip."""
        key = _set_key(group, "ready", taken.object_type)
        commands = [MarkSets.settle_command(key, taken.portal, taken.lease, requeue=requeue)]
        if hold_ms is not None:
            streams = [(taken.object_type, taken.portal)]
            commands.append(self._mark_command(group, "pending", streams, hold_ms, only_new=True))
        await self.sets.mark(commands)

    async def members(self, group: str, kind: str, object_type: str, limit: int) -> list[str]:
        """Up to ``limit`` marked portals, longest due first (a restarted subscriber's look for
        its own unacked changes)."""
        return await self.sets.members(_set_key(group, kind, object_type), limit)


def _set_key(group: str, kind: str, object_type: str) -> str:
    return feed_ready_key(group, object_type) if kind == "ready" else feed_pending_key(group, object_type)
