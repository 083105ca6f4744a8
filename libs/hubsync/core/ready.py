"""Ready sets: consumers touch only portals with work (docs/design/tenancy.md, section 3).

Each portal keeps its own stream (order per record, atomic per-portal scripts). Beside it, a queue
(``events`` for mapper, ``writes`` for writer) has S sharded sorted sets of the portals that have
work, ``hubsync:{ready:<queue>:<s>}`` with ``s = crc32(portal) mod S``, scored by when a portal is
due (ms). The pieces:

- :class:`ReadySets` — the keys and their single-key commands: ``mark`` (producers, after their
  append: ``ZADD NX``, and a nudge on ``hubsync:ready:<queue>`` only when the portal became newly
  ready), ``due`` (``ZRANGEBYSCORE <= now LIMIT k``), back-of-line and future scores, the pending
  set (portals whose delivered entries may need ``XAUTOCLAIM``).
- :class:`ShardLeases` — which replica consumes which shard: consumers heartbeat into
  ``hubsync:ready:<queue>:consumers``, each shard's owner is chosen by rendezvous hashing over the
  live consumers (so every replica holds about ``S / replicas`` shards), and held with
  ``SET NX PX`` renewed at a third of its TTL. One consumer per portal stream at a time.
- :class:`ReadyConsumer` — the loop: take due portals of leased shards, give each a *turn* (one
  single-stream ``XREADGROUP`` of at most ``quantum`` entries), put a portal that filled its
  quantum at the back of the line, remove one that looked drained and re-check (no lost
  wake-up: producers append first and mark second), score a blocked portal to its retry time.
- :class:`Sweeper` — a slow, rate-limited pass over the known-portals set that re-marks portals
  whose stream has undelivered or pending entries: it bounds the window of a crash between append
  and mark, and it is how work queued before the ready sets existed is found after an upgrade.

Every command here names one key (or keys of one shard's hash tag), so nothing crosses a Redis
Cluster slot; idle portals cost nothing but their keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from redis.exceptions import NoScriptError, ResponseError

from hubsync.core.keys import (
    ready_channel,
    ready_consumers_key,
    ready_key,
    ready_lease_key,
    ready_pending_key,
    ready_shard,
    ready_sweep_lease_key,
    ready_swept_key,
)
from hubsync.core.outage import loop_error
from hubsync.core.redis import as_str, follow_channel

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SHARDS",
    "EVENTS",
    "WRITES",
    "Blocked",
    "ReadyConsumer",
    "ReadySets",
    "ShardLeases",
    "Sweeper",
    "group_work",
    "shard_of",
]

DEFAULT_SHARDS = 64
#: The queues: mapper's inbound events (``hubsync:{<portal>}:events``, marked by ingress) and
#: writer's durable write queue (``hubsync:{<portal>}:writes``, marked by writer's enqueue).
EVENTS = "events"
WRITES = "writes"
Entry = tuple[bytes, dict[bytes, bytes]]

_meter = metrics.get_meter("hubsync.core.ready")
_lag = _meter.create_gauge(
    "hubsync.queue.lag", description="Entries not yet processed, summed over the portals with work"
)
_ready_portals = _meter.create_gauge("hubsync.queue.ready_portals", description="Portals with work due")
_oldest = _meter.create_gauge(
    "hubsync.queue.oldest_age", unit="s", description="How long the longest-waiting due portal has waited"
)

# KEYS[1] a ready shard. ARGV: score, portal, channel, shard, mode (NX: keep an existing score;
# LT: bring an existing one forward). Publishes the shard when the portal was added or moved.
_MARK_LUA = """
if redis.call('ZADD', KEYS[1], ARGV[5], 'CH', ARGV[1], ARGV[2]) == 1 then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
"""
_MARK_SHA = hashlib.sha1(_MARK_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts so
# KEYS[1] a lease. ARGV: owner, ttl ms. Renews (1) or drops (2: DEL) the lease if ``owner`` holds it.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == 'del' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def shard_of(portal: int | str, shards: int) -> int:
    """The ready shard of a portal: ``crc32(portal) mod S``."""
    return ready_shard(portal, shards)


def now_ms() -> int:
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

    def shard(self, portal: int | str) -> int:
        """Return the shard of ``portal``."""
        return shard_of(portal, self.shards)

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
        return ["EVALSHA", _MARK_SHA, 1, self.key(shard), score, str(portal), self.channel, shard, mode]

    async def mark(
        self, portals: Iterable[int | str], *, mode: str = "NX", score_ms: int | None = None
    ) -> int:
        """Marks portals ready (after their entries were appended); returns how many were newly
        ready. ``mode`` NX keeps an earlier (or future: blocked) score; LT brings it forward."""
        commands = [self.mark_command(p, score_ms, mode=mode) for p in portals]
        if not commands:
            return 0
        try:
            replies = await _pipeline(self.redis, commands)
        except NoScriptError:
            await self.redis.script_load(_MARK_LUA)
            replies = await _pipeline(self.redis, commands)
        return sum(int(r) for r in replies)

    async def due(self, shard: int, limit: int, at_ms: int | None = None) -> list[tuple[str, int]]:
        """Portals of a shard due now (oldest first), with their scores."""
        rows = await self.redis.zrangebyscore(
            self.key(shard), "-inf", now_ms() if at_ms is None else at_ms, start=0, num=limit, withscores=True
        )
        return [(as_str(p), int(score)) for p, score in rows]

    async def requeue(self, portal: str, at_ms: int) -> None:
        """Sets a portal's turn to ``at_ms``: the back of the line (now), or a blocked portal's
        retry time (the producers' NX marks keep it)."""
        await self.redis.zadd(self.key(self.shard(portal)), {portal: at_ms})

    async def unmark(self, portal: str) -> None:
        """Remove ``portal``'s ready mark."""
        await self.redis.zrem(self.key(self.shard(portal)), portal)

    async def pending_due(self, shard: int, limit: int) -> list[str]:
        """Return up to ``limit`` portals of ``shard`` whose pending entries are due for a claim."""
        rows = await self.redis.zrangebyscore(self.pending_key(shard), "-inf", now_ms(), start=0, num=limit)
        return [as_str(p) for p in rows]

    def pending_command(self, portal: str, at_ms: int, *, earliest: bool = True) -> list[Any]:
        """``ZADD`` of a portal to its shard's pending set (LT: keep an earlier check time)."""
        flags = ["LT"] if earliest else []
        return ["ZADD", self.pending_key(self.shard(portal)), *flags, at_ms, portal]

    async def pending(self, portal: str, at_ms: int, *, earliest: bool = True) -> None:
        """Note that ``portal`` has entries delivered and not acknowledged, due for a claim at ``at_ms``."""
        await self.redis.execute_command(*self.pending_command(portal, at_ms, earliest=earliest))

    async def pending_done(self, portal: str) -> None:
        """Forget ``portal``'s pending mark (nothing of it is pending any more)."""
        await self.redis.zrem(self.pending_key(self.shard(portal)), portal)


async def _pipeline(redis: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    pipe = redis.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    try:
        replies: list[Any] = await pipe.execute()
    except ResponseError as exc:
        if "NOSCRIPT" in str(exc):
            raise NoScriptError(str(exc)) from None
        raise
    return replies


def _weight(shard: int, member: str) -> bytes:
    return hashlib.blake2b(f"{shard}/{member}".encode(), digest_size=8).digest()


class ShardLeases:
    """The shards of one queue this consumer holds, balanced over the live consumers.

    Every ``renew_s`` a consumer heartbeats into the queue's consumers set and learns the live
    ones; each shard belongs to the consumer with the highest rendezvous weight, so all agree
    without talking, and a consumer joining or leaving moves only its share. A consumer renews
    the leases of its shards, releases those that now belong to another, and takes (``SET NX``)
    its own as soon as their previous holder let go or its lease expired.
    """

    def __init__(self, redis: Any, queue: str, shards: int, owner: str, *, ttl_ms: int = 30_000) -> None:
        self.redis = redis
        self.queue = queue
        self.shards = shards
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.held: set[int] = set()
        self.members: list[str] = []
        self._renew = redis.register_script(_RENEW_LUA)

    @property
    def renew_s(self) -> float:
        """Return how often leases are renewed: a third of their time to live."""
        return self.ttl_ms / 3000

    def mine(self) -> set[int]:
        """Return the shards this replica owns: rendezvous hashing over the live members."""
        members = self.members or [self.owner]
        return {s for s in range(self.shards) if max(members, key=lambda m: _weight(s, m)) == self.owner}

    async def refresh(self) -> set[int]:
        """One heartbeat; returns the shards gained."""
        key = ready_consumers_key(self.queue)
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.owner: now + self.ttl_ms})
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zrange(key, 0, -1)
            *_, members = await pipe.execute()
        self.members = sorted(as_str(m) for m in members)
        wanted = self.mine()
        keep = sorted(self.held & wanted)
        if keep:
            # GETEX: renewed in one command. A lease found in another's hands (ours expired and
            # was taken) is dropped here; extending theirs meanwhile is harmless.
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in keep:
                    pipe.getex(ready_lease_key(self.queue, shard), px=self.ttl_ms)
                holders = await pipe.execute()
            for shard, holder in zip(keep, holders, strict=True):
                if holder is None or as_str(holder) != self.owner:
                    self.held.discard(shard)
        for shard in sorted(self.held - wanted):  # now another consumer's: let go at once
            await self._renew(keys=[ready_lease_key(self.queue, shard)], args=[self.owner, 0, "del"])
            self.held.discard(shard)
        gained = set()
        for shard in sorted(wanted - self.held):
            if await self.redis.set(ready_lease_key(self.queue, shard), self.owner, nx=True, px=self.ttl_ms):
                self.held.add(shard)
                gained.add(shard)
        return gained

    async def release(self) -> None:
        """Lets go of every shard (a clean stop: the others take them at their next heartbeat)."""
        for shard in sorted(self.held):
            with contextlib.suppress(Exception):
                await self._renew(keys=[ready_lease_key(self.queue, shard)], args=[self.owner, 0, "del"])
        self.held.clear()
        with contextlib.suppress(Exception):
            await self.redis.zrem(ready_consumers_key(self.queue), self.owner)


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
        name: str = "",
    ) -> None:
        self.redis = redis
        self.sets = ReadySets(redis, queue, shards)
        # Who logs: a Redis outage met by the loop or a turn is one rate-limited WARNING
        # "<name>: Redis unavailable, retrying" (operations.md), anything else an ERROR.
        label = name or f"ready {queue} consumer"
        self._loop_error = loop_error(log, f"{label}: step failed", f"{label}: Redis unavailable, retrying")
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
        self.leases = ShardLeases(
            redis, queue, shards, f"{consumer}/{uuid.uuid4().hex[:8]}", ttl_ms=lease_ttl_ms
        )
        self.busy: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[int] = set()
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
                await self._round()
                timeout = max(min(next_poll, next_pending) - time.monotonic(), 0.0)
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
                self._loop_error(exc)
                await asyncio.sleep(0.5)

    async def _round(self) -> None:
        """Starts turns for due portals of the shards that may have some."""
        for shard in sorted(self._dirty):
            free = self.max_turns - len(self.busy)
            if free <= 0:
                return
            self._dirty.discard(shard)
            if shard not in self.leases.held:
                continue
            due = await self.sets.due(shard, free + len(self.busy))
            started = 0
            for portal, _score in due:
                if portal in self.busy:
                    continue
                if len(self.busy) >= self.max_turns:
                    break
                self._start(portal, self._turn(portal))
                started += 1
            if started and len(due) >= free:
                self._dirty.add(shard)  # maybe more due there

    def _start(self, portal: str, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the portal stays marked (or pending): tried again later
                _reraise_if_cancelling()
                self._loop_error(exc)
            finally:
                self.busy.pop(portal, None)
                self._dirty.add(self.sets.shard(portal))
                self._wake.set()

        self.busy[portal] = asyncio.create_task(run(), name=f"ready-{self.sets.queue}-turn")

    def sweeper(
        self,
        known_key: str,
        probe: Callable[[list[str]], Awaitable[list[tuple[bool, bool]]]],
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
        return [(i, f) for _k, items in reply or [] for i, f in items if f]

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
        await self.sets.pending(portal, now_ms() + self.visibility_ms)
        entries = await self.read(portal, self.quantum)
        if len(entries) >= self.quantum:
            await self.sets.requeue(portal, now_ms())
            return entries
        if entries and self.coalesce_s > 0:
            await asyncio.sleep(self.coalesce_s)  # let a burst's events gather into this turn
        await self.sets.unmark(portal)
        want = self.quantum - len(entries)
        more = await self.read(portal, want)
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
        if entries:
            await self._finish(portal, entries)

    async def _finish(self, portal: str, entries: list[Entry]) -> None:
        blocked = await self.handle(portal, entries)
        if blocked is not None:
            await self.block(portal, blocked.until_ms)

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
        probe: Callable[[list[str]], Awaitable[list[tuple[bool, bool]]]],
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
                _reraise_if_cancelling()
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


def _reraise_if_cancelling() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
