"""The sweeper: re-marks portals whose stream has work that no ready mark names.

A slow, rate-limited pass over a queue's known-portals set (one replica at a time) re-marks
portals whose stream has undelivered or pending entries: it bounds the window of a crash between
append and mark, and it is how work queued before the ready sets existed is found after an upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hubsync.core.keys import ready_sweep_lease_key, ready_swept_key
from hubsync.core.outage import reraise_if_cancelling
from hubsync.core.ready.sets import ReadySets, now_ms
from hubsync.core.redis import as_str

log = logging.getLogger("hubsync.core.ready")

__all__ = ["Sweeper", "group_work"]

Probe = Callable[[list[str]], Awaitable[list[tuple[bool, bool]]]]


def _id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = as_str(value).partition("-")
    return int(ms or 0), int(seq or 0)


async def group_work(redis: Any, keys: Sequence[str], group: str) -> list[tuple[bool, bool]]:
    """For streams read by a consumer group (a journal that keeps its entries): whether each has
    entries the group was not delivered yet, and entries delivered and not acknowledged. A stream
    without the group counts as undelivered work (the group is made from its first entry); no
    stream, as none. Two commands per stream, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.xinfo_groups(key)
            pipe.xrevrange(key, "+", "-", count=1)
        replies = await pipe.execute(raise_on_error=False)
    found = []
    for k in range(len(keys)):
        rows, last = replies[2 * k], replies[2 * k + 1]
        if not isinstance(rows, list):  # no such stream
            found.append((False, False))
            continue
        row = next((g for g in rows if as_str(g["name"]) == group), None)
        if row is None:
            found.append((bool(last), False))
            continue
        lag = row.get("lag")  # Redis 7; on 6.2 compared with the newest entry's id
        if lag is not None:
            undelivered = int(lag) > 0
        else:
            undelivered = bool(last) and _id(last[0][0]) > _id(row["last-delivered-id"])
        found.append((undelivered, int(row.get("pending") or 0) > 0))
    return found


class Sweeper:
    """Re-marks portals of a known-portals set whose stream has work (one replica at a time).

    ``probe(portals)`` answers, per portal, (has undelivered entries, has pending entries). A pass
    runs when the last complete one ended more than ``interval_s`` ago (at once on a fresh
    install or right after an upgrade: that pass finds the work queued by the old layout), pages
    through the set with ``SSCAN`` and looks at no more than ``rate`` portals a second.
    """

    def __init__(
        self,
        redis: Any,
        sets: ReadySets,
        known_key: str,
        probe: Probe,
        *,
        owner: str,
        interval_s: float = 3600.0,
        rate: float = 20.0,
        page: int = 500,
    ) -> None:
        self.redis = redis
        self.sets = sets
        self.known_key = known_key
        self.probe = probe
        self.owner = owner
        self.interval_s = interval_s
        self.rate = rate
        self.page = page
        self.passes = 0

    async def run(self) -> None:
        """Run the sweeper until cancelled.

        A rate-limited pass over the known portals re-marks those with work.
        """
        while True:
            try:
                await self.maybe_sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reraise_if_cancelling()
                log.warning("ready sweep failed", extra={"queue": self.sets.queue, "error": str(exc)[:300]})
            await asyncio.sleep(min(60.0, max(self.interval_s / 4, 0.05)))

    async def maybe_sweep(self) -> int | None:
        """Sweeps if a pass is due and no other replica runs one; returns the portals marked."""
        last = await self.redis.get(ready_swept_key(self.sets.queue))
        if last is not None and now_ms() - int(last) < self.interval_s * 1000:
            return None
        lease = ready_sweep_lease_key(self.sets.queue)
        hold_ms = 60_000
        if not await self.redis.set(lease, self.owner, nx=True, px=hold_ms):
            return None
        # The first pass of an install (or right after the upgrade to the ready sets) finds the
        # work queued before: it runs ten times as fast as the maintenance passes.
        rate = self.rate * 10 if last is None else self.rate
        try:
            marked = await self.sweep(lambda: self.redis.pexpire(lease, hold_ms), rate=rate)
            await self.redis.set(ready_swept_key(self.sets.queue), now_ms())
            self.passes += 1
            return marked
        finally:
            if as_str(await self.redis.get(lease) or b"") == self.owner:
                await self.redis.delete(lease)

    async def sweep(
        self, keep: Callable[[], Awaitable[Any]] | None = None, *, rate: float | None = None
    ) -> int:
        """One full pass; returns how many portals it marked ready or pending."""
        rate = rate or self.rate
        cursor: Any = 0
        marked = 0
        while True:
            started = time.monotonic()
            cursor, members = await self.redis.sscan(self.known_key, cursor, count=self.page)
            portals = sorted({as_str(m) for m in members})
            if portals:
                found = await self.probe(portals)
                ready = [p for p, (undelivered, _pending) in zip(portals, found, strict=True) if undelivered]
                pending = [p for p, (_undelivered, has) in zip(portals, found, strict=True) if has]
                await self.sets.mark(ready)
                for portal in pending:
                    # Due at once: the check claims only entries idle past the visibility timeout.
                    await self.sets.pending(portal, now_ms())
                marked += len(set(ready) | set(pending))
                if keep is not None:
                    await keep()
                await asyncio.sleep(max(len(portals) / rate - (time.monotonic() - started), 0.0))
            if int(cursor) == 0:
                return marked
