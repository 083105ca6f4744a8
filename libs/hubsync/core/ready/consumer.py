"""The ready consumer: turns for the due portals of the shards this replica leases.

The loop takes due portals of leased shards (:class:`~hubsync.core.ready.sets.ReadySets`), gives
each a *turn* (one single-stream ``XREADGROUP`` of at most ``quantum`` entries), puts a portal
that filled its quantum at the back of the line, removes one that looked drained and re-checks
(no lost wake-up: producers append first and mark second), and scores a blocked portal to its
retry time. Entries a dead consumer left are claimed through the pending sets. With a
:class:`~hubsync.core.ready.fairshare.FairShare`, a portal that filled its quantum while flowing
portals are late rests until they have done their share of the work (fair by work, not only by
turns).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from hubsync.core.outage import loop_error
from hubsync.core.outage import reraise_if_cancelling as _reraise_if_cancelling
from hubsync.core.ready.fairshare import FairShare, WorkShares
from hubsync.core.ready.leases import ShardLeases
from hubsync.core.ready.sets import DEFAULT_SHARDS, ReadySets, now_ms
from hubsync.core.ready.sweep import Probe, Sweeper
from hubsync.core.redis import follow_channel
from hubsync.core.streams import entry_ms

log = logging.getLogger("hubsync.core.ready")

__all__ = ["Blocked", "Entry", "Handler", "ReadyConsumer"]

Entry = tuple[bytes, dict[bytes, bytes]]

_meter = metrics.get_meter("hubsync.core.ready")
_lag = _meter.create_gauge(
    "hubsync.queue.lag", description="Entries not yet processed, summed over the portals with work"
)
_ready_portals = _meter.create_gauge("hubsync.queue.ready_portals", description="Portals with work due")
_oldest = _meter.create_gauge(
    "hubsync.queue.oldest_age", unit="s", description="How long the longest-waiting due portal has waited"
)


@dataclass(frozen=True)
class Blocked:
    """A turn's outcome: the portal cannot proceed before ``until_ms`` (a DAILY 429, an open
    circuit, a parked connection). Its ready mark is scored then; nothing is read before."""

    until_ms: int


Handler = Callable[[str, list[Entry]], Awaitable[Blocked | None]]


class ReadyConsumer:
    """Consumes one queue's portal streams through the ready sets of the shards it leases.

    ``handle(portal, entries)`` processes one turn's entries in order (and acknowledges them);
    it returns :class:`Blocked` to put the portal aside until a retry time. One turn per portal
    at a time (and one consumer per shard: the lease), at most ``max_turns`` turns at once.
    ``fair``: the fair share by work (:mod:`hubsync.core.ready.fairshare`); None: by turns only.
    """

    def __init__(
        self,
        redis: Any,
        queue: str,
        *,
        stream: Callable[[str], str],
        group: str,
        consumer: str,
        handle: Handler,
        shards: int = DEFAULT_SHARDS,
        quantum: int = 100,
        max_turns: int = 8,
        visibility_ms: int = 30_000,
        poll_s: float = 5.0,
        lease_ttl_ms: int = 30_000,
        coalesce_s: float = 0.0,
        lag: Callable[[list[str]], Awaitable[int]] | None = None,
        gate: Callable[[str], int | None] | None = None,
        fair: FairShare | None = None,
        name: str = "",
    ) -> None:
        self.redis = redis
        # One server runs a pipeline's commands in order, so a turn's mark change and the read
        # that must follow it share a round trip; a cluster runs them on different nodes (the
        # shard's slot, the portal's), in no set order, so there the read waits for the change.
        self._in_order = not isinstance(redis, RedisCluster)
        self.sets = ReadySets(redis, queue, shards)
        # Who logs (report_error, shared with the owner's housekeeping): a Redis outage met by the
        # loop or a turn is one rate-limited WARNING
        # "<name>: Redis unavailable, retrying" (operations.md), anything else an ERROR.
        label = name or f"ready {queue} consumer"
        self.report_error = loop_error(log, f"{label}: step failed", f"{label}: Redis unavailable, retrying")
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.handle = handle
        self.quantum = quantum
        self.max_turns = max_turns
        self.visibility_ms = visibility_ms
        self.poll_s = poll_s
        self.coalesce_s = coalesce_s
        self.lag = lag
        # A portal that must not be read now (parked): when to look again (Unix ms), else None.
        self.gate = gate
        self.shares = WorkShares(fair or FairShare(share=1.0))
        self.leases = ShardLeases(
            redis, queue, shards, f"{consumer}/{uuid.uuid4().hex[:8]}", ttl_ms=lease_ttl_ms
        )
        self.busy: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[int] = set()
        # The shard whose portal got the last turn: the next round starts after it, so shards take
        # turns when turns are scarce (a backlog in a low shard must not starve the shards above).
        self._last_shard = -1
        self._wake = asyncio.Event()
        self._grouped: set[str] = set()
        self.turns = 0

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the consumer until cancelled: hold leases, take ready portals' turns, claim pending entries."""
        tasks = [
            asyncio.create_task(self._lease_loop(), name=f"ready-{self.sets.queue}-leases"),
            asyncio.create_task(self._listen(), name=f"ready-{self.sets.queue}-nudges"),
        ]
        try:
            await self._loop()
        finally:
            for task in [*tasks, *self.busy.values()]:
                task.cancel()
            for task in [*tasks, *self.busy.values()]:
                with contextlib.suppress(BaseException):
                    await task
            await self.leases.release()

    async def _lease_loop(self) -> None:
        while True:
            try:
                gained = await self.leases.refresh()
                if gained:
                    self._dirty |= gained
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _reraise_if_cancelling()
                log.warning("ready shard leases not renewed", extra={"error": str(exc)[:200]})
            await asyncio.sleep(self.leases.renew_s)

    async def _listen(self) -> None:
        """Nudges: a producer made a portal newly ready in a shard; read it at once (the periodic
        poll covers a lost subscription)."""
        await follow_channel(self.redis, self.sets.channel, self._nudged, what="ready nudge")

    def _nudged(self, raw: str) -> None:
        if raw.isdigit() and int(raw) in self.leases.held:
            self._dirty.add(int(raw))
            self._wake.set()

    async def _loop(self) -> None:
        next_poll = next_pending = next_lag = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self.poll_s
                    self._dirty |= self.leases.held
                if now >= next_pending:
                    next_pending = now + max(min(self.visibility_ms / 3000, self.poll_s * 3), 0.05)
                    await self._recover()
                if now >= next_lag:
                    next_lag = now + 30.0
                    await self.measure()
                self._wake_rested()
                await self._round()
                wake_at = min(next_poll, next_pending, self.shares.next_end() or next_poll)
                timeout = max(wake_at - time.monotonic(), 0.0)
                if not self._dirty or len(self.busy) >= self.max_turns:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
                    # that arrives as the event is set, and the loop would never stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self._wake.wait()
                _reraise_if_cancelling()
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _reraise_if_cancelling()
                self.report_error(exc)
                await asyncio.sleep(0.5)

    async def _round(self) -> None:
        """Starts turns for due portals of the shards that may have some, shards in turn from the
        one after the shard served last (within a shard, the earliest due portal first); then
        the resting portals' (fair share) whose rest is over once the others have started."""
        shards = sorted(self._dirty)
        after = bisect.bisect_right(shards, self._last_shard)
        resting: list[str] = []
        for shard in shards[after:] + shards[:after]:
            free = self.max_turns - len(self.busy)
            if free <= 0:
                return
            self._dirty.discard(shard)
            if shard not in self.leases.held:
                continue
            due = await self.sets.due(shard, free + len(self.busy) + len(self.shares.resting))
            started = 0
            for portal, _score in due:
                if portal in self.busy:
                    continue
                if portal in self.shares.resting:
                    resting.append(portal)
                    continue
                if len(self.busy) >= self.max_turns:
                    break
                self._start(portal, self._turn(portal))
                started += 1
            if started:
                self._last_shard = shard
                if len(due) >= free:
                    self._dirty.add(shard)  # maybe more due there
        for portal in resting:
            if len(self.busy) >= self.max_turns:
                self._dirty.add(self.sets.shard(portal))
            elif not self.shares.holds(portal, others_busy=bool(self.busy)):
                self._start(portal, self._turn(portal))

    def _start(self, portal: str, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the portal stays marked (or pending): tried again later
                _reraise_if_cancelling()
                self.report_error(exc)
            finally:
                self.busy.pop(portal, None)
                self._dirty.add(self.sets.shard(portal))
                self._wake_rested()
                self._wake.set()

        self.busy[portal] = asyncio.create_task(run(), name=f"ready-{self.sets.queue}-turn")

    def _wake_rested(self) -> None:
        """The shards of resting portals whose rest is over are looked at again."""
        if self.shares.resting:
            for portal in self.shares.worth_a_look(others_busy=bool(self.busy)):
                self._dirty.add(self.sets.shard(portal))

    def sweeper(
        self,
        known_key: str,
        probe: Probe,
        *,
        interval_s: float,
        rate: float,
    ) -> Sweeper:
        """The sweeper of this consumer's queue over ``known_key`` (run it beside :meth:`run`)."""
        return Sweeper(
            self.redis, self.sets, known_key, probe, owner=self.leases.owner, interval_s=interval_s, rate=rate
        )

    # ---- a turn -----------------------------------------------------------------------------

    async def read(self, portal: str, count: int) -> list[Entry]:
        """One single-stream ``XREADGROUP`` (the group made on first use)."""
        key = self.stream(portal)
        try:
            reply = await self.redis.xreadgroup(self.group, self.consumer, {key: ">"}, count=count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group(key, force=True)
            reply = await self.redis.xreadgroup(self.group, self.consumer, {key: ">"}, count=count)
        return _entries(reply)

    async def _then_read(self, command: list[Any], portal: str, count: int) -> list[Entry]:
        """Runs ``command`` (a mark change the read must follow), then :meth:`read`: in one
        pipeline on one server, one after the other on a cluster."""
        if not self._in_order:
            await self.redis.execute_command(*command)
            return await self.read(portal, count)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command(*command)
            pipe.xreadgroup(self.group, self.consumer, {self.stream(portal): ">"}, count=count)
            done, reply = await pipe.execute(raise_on_error=False)
        if isinstance(done, Exception):
            raise done
        if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
            return await self.read(portal, count)  # makes the group, then reads
        if isinstance(reply, Exception):
            raise reply
        return _entries(reply)

    async def ensure_group(self, key: str, *, force: bool = False) -> None:
        """Create the consumer group on ``key`` (once per process unless ``force``)."""
        if key in self._grouped and not force:
            return
        try:
            await self.redis.xgroup_create(key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(key)

    async def take(self, portal: str) -> list[Entry]:
        """A portal's turn's entries: at most ``quantum``; a portal that filled it goes to the back
        of the line, one that looked drained is unmarked and then read once more (an entry
        appended after that read is marked by its producer: no lost wake-up)."""
        # Tracked as pending before the read: a crash after it leaves entries someone claims.
        pending = self.sets.pending_command(portal, now_ms() + self.visibility_ms)
        entries = await self._then_read(pending, portal, self.quantum)
        if len(entries) >= self.quantum:
            await self.sets.requeue(portal, now_ms())
            return entries
        if entries and self.coalesce_s > 0:
            # Let a burst's events gather into this turn. The window runs from the first entry's
            # append (its id's milliseconds, Redis' clock): a turn that starts late, because the
            # consumer was busy, waits only what is left of it, and holds no turn slot idle.
            left = self.coalesce_s - (now_ms() - entry_ms(entries[0][0])) / 1000
            if left > 0:
                await asyncio.sleep(min(left, self.coalesce_s))
        want = self.quantum - len(entries)
        more = await self._then_read(self.sets.unmark_command(portal), portal, want)
        if len(more) >= want:
            await self.sets.mark([portal])
        return entries + more

    async def _turn(self, portal: str) -> None:
        self.turns += 1
        until = self.gate(portal) if self.gate is not None else None
        if until is not None:
            await self.sets.requeue(portal, until)
            return
        entries = await self.take(portal)
        if not entries:
            return
        blocked = await self.handle(portal, entries)
        if blocked is not None:
            await self.block(portal, blocked.until_ms)
        if len(entries) >= self.quantum:
            if blocked is None:
                self.shares.filled(portal, len(entries))
        else:
            # How late a flowing portal is: from its first entry's append (the id's ms, Redis'
            # clock) to the end of its turn; a blocked turn's delay is its own, not contention.
            late = None if blocked is not None else now_ms() - entry_ms(entries[0][0])
            self.shares.flowed(len(entries), late)

    async def block(self, portal: str, until_ms: int) -> None:
        """No new entry of the portal is read before ``until_ms``. What the turn left pending is
        tried again after the visibility timeout, as any pending entry (by any replica, whose
        view of the block may differ: another limit, the quota back); once such a retry goes
        through, the portal's mark is brought forward again."""
        await self.sets.requeue(portal, until_ms)
        await self.sets.pending(portal, now_ms() + self.visibility_ms, earliest=False)

    # ---- entries a dead consumer left -------------------------------------------------------

    async def _recover(self) -> None:
        """For the portals of leased shards whose pending check is due: claims entries idle past
        the visibility timeout and gives them a turn; forgets portals with nothing pending."""
        for shard in sorted(self.leases.held):
            for portal in await self.sets.pending_due(shard, 100):
                if portal in self.busy:
                    await self.sets.pending(portal, now_ms() + self.visibility_ms, earliest=False)
                    continue
                if len(self.busy) >= self.max_turns:
                    return
                self._start(portal, self._claim_turn(portal))

    async def _claim_turn(self, portal: str) -> None:
        key = self.stream(portal)
        try:
            reply = await self.redis.xautoclaim(
                key,
                self.group,
                self.consumer,
                min_idle_time=self.visibility_ms,
                start_id="0-0",
                count=self.quantum,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.sets.pending_done(portal)
            return
        claimed = [e for e in reply[1] if e and e[1]]
        if claimed:
            blocked = await self.handle(portal, claimed)
            if blocked is not None:
                await self.block(portal, blocked.until_ms)
            else:  # not (or no longer) blocked: its new entries are read again now
                await self.sets.mark([portal], mode="LT")
        summary = await self.redis.xpending(key, self.group)
        if int(summary.get("pending") or 0) == 0:
            await self.sets.pending_done(portal)
        else:
            await self.sets.pending(portal, now_ms() + self.visibility_ms // 2, earliest=False)

    # ---- aggregate gauges -------------------------------------------------------------------

    async def measure(self) -> None:
        """``hubsync.queue.*`` of the leased shards (summed over replicas by the metrics backend):
        from the due portals only, so the cost follows work, not the number of portals."""
        queue = {"queue": self.sets.queue}
        now = now_ms()
        ready: list[str] = []
        oldest = 0
        for shard in sorted(self.leases.held):
            rows = await self.sets.due(shard, 1000, now)
            ready += [p for p, _ in rows]
            if rows:
                oldest = max(oldest, now - rows[0][1])
        _ready_portals.set(len(ready), queue)
        _oldest.set(oldest / 1000, queue)
        if self.lag is not None:
            _lag.set(await self.lag(ready[:1000]), queue)


def _entries(reply: Any) -> list[Entry]:
    """An ``XREADGROUP`` reply's entries (a trimmed entry, read as empty fields, left out)."""
    return [(i, f) for _k, items in reply or [] for i, f in items if f]
