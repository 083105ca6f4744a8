"""The queues' ready sets: which portals have entries on ``events`` (mapper) or ``writes`` (writer).

A queue has S shards, ``hubsync:{ready:<queue>:<s>}`` with ``s = crc32(portal) mod S``
(:func:`hubsync.core.keys.ready_shard`), scored by when a portal is due (ms, the producer's
clock). Producers mark after their append (``ZADD NX`` through the shared mark script, and a
``PUBLISH`` of the shard on ``hubsync:ready:<queue>`` only when the portal became newly ready).
Beside each shard, a pending set: portals whose delivered entries may need ``XAUTOCLAIM``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from hubsync.core.keys import ready_channel, ready_key, ready_pending_key, ready_shard
from hubsync.core.ready.marks import MarkSets, Nudge

__all__ = ["DEFAULT_SHARDS", "EVENTS", "WRITES", "ReadySets", "now_ms"]

DEFAULT_SHARDS = 64
#: The queues: mapper's inbound events (``hubsync:{<portal>}:events``, marked by ingress) and
#: writer's durable write queue (``hubsync:{<portal>}:writes``, marked by writer's enqueue).
EVENTS = "events"
WRITES = "writes"


def now_ms() -> int:
    """Return the local clock in Unix ms (the queues' scores)."""
    return int(time.time() * 1000)


class ReadySets:
    """One queue's S ready shards and pending sets; every call names keys of one shard."""

    def __init__(self, redis: Any, queue: str, shards: int = DEFAULT_SHARDS) -> None:
        if shards < 1:
            raise ValueError("a queue needs at least one ready shard")
        self.redis = redis
        self.queue = queue
        self.shards = shards
        self.channel = ready_channel(queue)
        self.marks = MarkSets(redis)

    def shard(self, portal: int | str) -> int:
        """Return the shard of ``portal``."""
        return ready_shard(portal, self.shards)

    def key(self, shard: int) -> str:
        """Return the ready set's key of ``shard``."""
        return ready_key(self.queue, shard)

    def pending_key(self, shard: int) -> str:
        """Return the pending set's key of ``shard``."""
        return ready_pending_key(self.queue, shard)

    def mark_command(self, portal: int | str, score_ms: int | None = None, *, mode: str = "NX") -> list[Any]:
        """The ``EVALSHA`` marking a portal ready (for a caller's pipeline)."""
        shard = self.shard(portal)
        score = now_ms() if score_ms is None else score_ms
        nudge = Nudge(channel=self.channel, message=str(shard))
        return MarkSets.mark_command([(self.key(shard), str(portal))], mode=mode, score_ms=score, nudge=nudge)

    async def mark(
        self, portals: Iterable[int | str], *, mode: str = "NX", score_ms: int | None = None
    ) -> int:
        """Mark portals ready (after their entries were appended); return how many became newly ready.

        ``mode`` NX keeps an earlier (or future: blocked) score; LT brings it forward.
        """
        return sum(await self.marks.mark([self.mark_command(p, score_ms, mode=mode) for p in portals]))

    async def due(self, shard: int, limit: int, at_ms: int | None = None) -> list[tuple[str, int]]:
        """Portals of a shard due now (oldest first), with their scores."""
        return await self.marks.due(self.key(shard), limit, now_ms() if at_ms is None else at_ms)

    async def requeue(self, portal: str, at_ms: int) -> None:
        """Set a portal's turn to ``at_ms``.

        The back of the line (now), or a blocked portal's retry time (the producers' NX marks keep it).
        """
        await self.marks.put(self.key(self.shard(portal)), portal, at_ms)

    def unmark_command(self, portal: str) -> list[Any]:
        """The ``ZREM`` removing ``portal``'s ready mark (for a caller's pipeline: a turn's
        consumer sends it with the read that must follow it)."""
        return ["ZREM", self.key(self.shard(portal)), portal]

    async def pending_due(self, shard: int, limit: int) -> list[str]:
        """Return up to ``limit`` portals of ``shard`` whose pending entries are due for a claim."""
        return [p for p, _ in await self.marks.due(self.pending_key(shard), limit, now_ms())]

    def pending_command(self, portal: str, at_ms: int, *, earliest: bool = True) -> list[Any]:
        """``ZADD`` of a portal to its shard's pending set (LT: keep an earlier check time)."""
        return MarkSets.put_command(self.pending_key(self.shard(portal)), portal, at_ms, earliest=earliest)

    async def pending(self, portal: str, at_ms: int, *, earliest: bool = True) -> None:
        """Note that ``portal`` has entries delivered and not acknowledged, due for a claim at ``at_ms``."""
        await self.redis.execute_command(*self.pending_command(portal, at_ms, earliest=earliest))

    async def pending_done(self, portal: str) -> None:
        """Forget ``portal``'s pending mark (nothing of it is pending any more)."""
        await self.marks.remove(self.pending_key(self.shard(portal)), portal)
