"""Ready sets (hubsync.core.ready) on a real Redis: fairness between portals, no lost wake-up,
the sweeper's repair, shard leases shared by consumers. The consumers here run the real loop
with a handler that acknowledges what it gets and records the order of completion."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from hubsync.core.keys import PORTALS_KEY, events_key
from hubsync.core.ready import Blocked, FairShare, ReadyConsumer, ReadySets, Sweeper, group_work, now_ms

GROUP = "mapper"
QUEUE = "events"


class Recorder:
    """A turn handler that acknowledges every entry and remembers (portal, entry) in order."""

    def __init__(
        self, redis: Redis, block: dict[str, int] | None = None, slow: dict[str, float] | None = None
    ) -> None:
        self.redis = redis
        self.done: list[tuple[str, bytes]] = []
        self.block = block or {}
        self.slow = slow or {}  # seconds a turn of these portals takes

    async def __call__(self, portal: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> Blocked | None:
        if portal in self.block:
            return Blocked(self.block.pop(portal))  # leaves its entries pending
        await asyncio.sleep(self.slow.get(portal, 0))
        await self.redis.xack(events_key(portal), GROUP, *[i for i, _ in entries])
        self.done += [(portal, i) for i, _ in entries]
        return None

    def of(self, portal: str) -> list[bytes]:
        return [i for p, i in self.done if p == portal]


async def append(redis: Redis, portal: str, n: int) -> list[bytes]:
    """Entries appended as ingress does (group made, portal known), without the ready mark."""
    with contextlib.suppress(Exception):
        await redis.xgroup_create(events_key(portal), GROUP, id="0", mkstream=True)
    await redis.sadd(PORTALS_KEY, portal)  # type: ignore[misc]
    ids: list[bytes] = []
    for start in range(0, n, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for k in range(start, min(n, start + 1000)):
                pipe.xadd(events_key(portal), {"event": str(k)})
            ids += await pipe.execute()
    return ids


@contextlib.asynccontextmanager
async def consuming(redis: Redis, handler: Any, **kw: Any) -> AsyncIterator[ReadyConsumer]:
    options: dict[str, Any] = {
        "shards": 8,
        "quantum": 100,
        "max_turns": 4,
        "poll_s": 0.5,
        "lease_ttl_ms": 3000,
    }
    options |= kw
    consumer = ReadyConsumer(
        redis, QUEUE, stream=events_key, group=GROUP, consumer=f"c-{id(handler)}", handle=handler, **options
    )
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Any, tries: int = 600) -> None:
    for _ in range(tries):
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_a_small_portal_is_served_before_a_big_backlog_drains_beside_idle_portals(redis: Redis) -> None:
    sets = ReadySets(redis, QUEUE, 8)
    # Thousands of idle portals: known, their one event processed long ago (not ready).
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(1, 3001):
            pipe.sadd(PORTALS_KEY, f"9{p}")
        await pipe.execute()
    big = await append(redis, "500", 5000)  # ready shard 6 of 8
    await sets.mark(["500"])
    # One turn at a time, each of the backlog's turns taking a while: the small portal (shard 7)
    # must get the next turn, not wait for the backlog to drain (the same on a fast or slow box).
    recorder = Recorder(redis, slow={"500": 0.02})
    async with consuming(redis, recorder, max_turns=1):
        await until(lambda: len(recorder.of("500")) >= 100)  # the backlog is being worked on
        small = await append(redis, "600", 1)
        await sets.mark(["600"])
        await until(lambda: recorder.of("600") == small)
        done_big_when_small_done = len(recorder.of("500"))
        await until(lambda: len(recorder.of("500")) == len(big), tries=3000)
    # Fairness: the small portal got its turn long before the backlog drained.
    assert done_big_when_small_done < len(big) // 2
    # Order per portal is kept, and nothing is processed twice.
    assert recorder.of("500") == big
    assert len(recorder.done) == len(set(recorder.done))
    # Drained portals leave the ready set; idle ones were never in it.
    assert all([await redis.zcard(sets.key(s)) == 0 for s in range(8)])


async def test_an_append_without_its_mark_is_found_by_the_sweeper(redis: Redis) -> None:
    sets = ReadySets(redis, QUEUE, 8)
    recorder = Recorder(redis)
    async with consuming(redis, recorder):
        ids = await append(redis, "700", 3)  # the producer died before marking
        await asyncio.sleep(1.5)  # three polls: nothing reads an unmarked portal
        assert recorder.done == []
        sweeper = Sweeper(redis, sets, PORTALS_KEY, _probe(redis), owner="s1", interval_s=3600, rate=10_000)
        assert await sweeper.maybe_sweep() == 1
        await until(lambda: recorder.of("700") == ids)
        # A second sweep within the interval is not run.
        assert await sweeper.maybe_sweep() is None


async def test_no_wake_up_is_lost_while_portals_drain_and_refill(redis: Redis) -> None:
    sets = ReadySets(redis, QUEUE, 8)
    recorder = Recorder(redis)
    appended: dict[str, list[bytes]] = {}
    async with consuming(redis, recorder, quantum=3, coalesce_s=0.0):
        # Appends race with turns that drain the same portals (append first, mark second).
        for round_ in range(40):
            for p in ("801", "802", "803"):
                appended.setdefault(p, []).extend(await append(redis, p, 1 + round_ % 4))
                await sets.mark([p])
            await asyncio.sleep(0.01 * (round_ % 3))
        await until(lambda: all(recorder.of(p) == ids for p, ids in appended.items()))


async def test_a_blocked_portal_waits_until_its_time_and_its_entries_come_back(redis: Redis) -> None:
    sets = ReadySets(redis, QUEUE, 8)
    recorder = Recorder(redis, block={"900": now_ms() + 1500})
    async with consuming(redis, recorder, visibility_ms=500):
        blocked = await append(redis, "900", 2)
        other = await append(redis, "901", 2)
        await sets.mark(["900", "901"])
        await until(lambda: recorder.of("901") == other)
        # Scored into the future: not due now.
        assert await redis.zscore(sets.key(sets.shard("900")), "900") is not None
        # After its time its pending entries are claimed and processed (exactly once).
        await until(lambda: recorder.of("900") == blocked)
    assert len(recorder.done) == len(set(recorder.done))


async def test_two_consumers_share_the_shards_and_a_dead_ones_entries_are_claimed(redis: Redis) -> None:
    sets = ReadySets(redis, QUEUE, 8)
    first, second = Recorder(redis), Recorder(redis)
    async with (
        consuming(redis, first, visibility_ms=500) as a,
        consuming(redis, second, visibility_ms=500) as b,
    ):
        # Every shard held, by one consumer each (rendezvous hashing may give one of them all 8).
        await until(lambda: len(a.leases.members) == 2 and len(a.leases.held | b.leases.held) == 8)
        assert not (a.leases.held & b.leases.held)
        portals = [str(1000 + k) for k in range(40)]
        ids = {p: await append(redis, p, 2) for p in portals}
        await sets.mark(portals)
        await until(lambda: all(sorted(first.of(p) + second.of(p)) == ids[p] for p in portals))
    # A consumer that read entries and died: they are pending for it, the portal in the pending set.
    dead = await append(redis, "2000", 2)
    await redis.xreadgroup(GROUP, "dead", {events_key("2000"): ">"})
    await sets.pending("2000", now_ms())
    third = Recorder(redis)
    async with consuming(redis, third, visibility_ms=300):
        await until(lambda: third.of("2000") == dead)

        async def forgotten() -> bool:  # nothing pending any more: it leaves the pending set
            return await redis.zscore(sets.pending_key(sets.shard("2000")), "2000") is None

        await until(forgotten)


def _probe(redis: Redis) -> Any:
    async def probe(portals: list[str]) -> list[tuple[bool, bool]]:
        return await group_work(redis, [events_key(p) for p in portals], GROUP)

    return probe


async def test_the_coalesce_window_runs_from_the_first_entrys_append(redis: Redis) -> None:
    """A turn that starts after its entries' window has passed (the consumer was busy) does not
    wait the window again: before, every partial turn slept the whole window, holding a turn
    slot idle, so a replica behind on many small portals fell further behind."""
    sets = ReadySets(redis, QUEUE, 8)
    recorder = Recorder(redis)
    # A window far longer than the test's wait; the entry was appended two minutes ago.
    async with consuming(redis, recorder, coalesce_s=120.0):
        with contextlib.suppress(Exception):
            await redis.xgroup_create(events_key("950"), GROUP, id="0", mkstream=True)
        await redis.sadd(PORTALS_KEY, "950")  # type: ignore[misc]
        old = await redis.xadd(events_key("950"), {"event": "0"}, id=f"{now_ms() - 120_000}-0")
        await sets.mark(["950"])
        await until(lambda: recorder.of("950") == [old])


class Trickle(Recorder):
    """A recorder whose ``trickles`` portals get their next entry (and mark) at the end of each of
    their turns, as ingress would, until each made ``per_portal``; their entries carry ids of a
    minute ago, so every one of their turns ends late whatever the machine's speed. ``seen``:
    how many entries of ``watch`` were done when the last trickle entry was."""

    def __init__(self, redis: Redis, trickles: list[str], per_portal: int, watch: str) -> None:
        super().__init__(redis)
        self.sets = ReadySets(redis, QUEUE, 1)
        self.made = dict.fromkeys(trickles, 0)
        self.per_portal = per_portal
        self.total = per_portal * len(trickles)
        self.watch = watch
        self.seen: int | None = None
        self.old_ms = now_ms() - 60_000

    async def add(self, portal: str) -> None:
        self.made[portal] += 1
        await self.redis.xadd(events_key(portal), {"event": "t"}, id=f"{self.old_ms}-{self.made[portal]}")
        await self.sets.mark([portal])

    async def __call__(self, portal: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> Blocked | None:
        await super().__call__(portal, entries)
        if portal in self.made:
            if self.made[portal] < self.per_portal:
                await self.add(portal)
            elif self.seen is None and len(self.done) - len(self.of(self.watch)) == self.total:
                self.seen = len(self.of(self.watch))
        return None


async def test_a_backlog_takes_no_more_than_its_share_of_the_work_while_others_are_late(redis: Redis) -> None:
    """Fair by work, not only by turns: while flowing portals are late, a portal that fills its
    quantum rests until they have done as much work as it did (share 0.5). Before, it got a turn
    whenever it was due: 20 entries a turn against their one each, about 800 of its entries
    while three late portals did 120. Counted in entries, whatever the machine's speed."""
    trickles = ["901", "902", "903"]
    recorder = Trickle(redis, trickles, per_portal=40, watch="900")
    backlog = await append(redis, "900", 2000)
    for p in trickles:
        await append(redis, p, 0)
        await recorder.add(p)
    await recorder.sets.mark(["900"])
    # No rest ends by time here (hold and max rest far beyond the test): only by work.
    fair = FairShare(share=0.5, late_ms=1000, hold_s=600, max_rest_s=600)
    async with consuming(redis, recorder, shards=1, quantum=20, max_turns=4, fair=fair) as consumer:
        await until(lambda: recorder.seen is not None, tries=2400)
        # Once the others are done, nobody else has work: the backlog drains at full speed.
        await until(lambda: len(recorder.of("900")) == len(backlog), tries=2400)
    trickled = 40 * len(trickles)
    # At most as many as the late portals did, plus its turns before three of theirs were seen
    # late, and the turn it may be in.
    assert recorder.seen is not None and recorder.seen <= trickled + 3 * 20, recorder.seen
    assert consumer.shares.rests > 0
    # Order per portal, nothing lost or doubled.
    assert recorder.of("900") == backlog
    assert len(recorder.done) == len(set(recorder.done)) == len(backlog) + trickled


async def test_a_backlog_beside_portals_on_time_is_not_held_back(redis: Redis) -> None:
    """Work-conserving: flowing portals that are on time cost the backlog nothing (no rest)."""
    sets = ReadySets(redis, QUEUE, 1)
    recorder = Recorder(redis)
    backlog = await append(redis, "910", 1000)
    small = {p: await append(redis, p, 3) for p in ("911", "912")}
    await sets.mark(["910", "911", "912"])
    fair = FairShare(share=0.5, late_ms=600_000, hold_s=600, max_rest_s=600)
    async with consuming(redis, recorder, shards=1, quantum=20, max_turns=4, fair=fair) as consumer:
        await until(lambda: len(recorder.of("910")) == len(backlog), tries=2400)
        await until(lambda: all(recorder.of(p) == ids for p, ids in small.items()))
    assert consumer.shares.rests == 0 and consumer.shares.late_turns == 0
    assert recorder.of("910") == backlog


@pytest.mark.on_cluster
async def test_a_turn_reads_in_two_round_trips_on_one_server(
    redis: Redis, redis_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn marks its portal pending, reads, unmarks it and reads once more: on one server each
    mark change goes in the pipeline of the read that must follow it (two round trips, not
    four); on a cluster they live on different nodes and go one after the other."""
    consumer = ReadyConsumer(
        redis, QUEUE, stream=events_key, group=GROUP, consumer="c", handle=Recorder(redis), shards=8
    )
    sets = ReadySets(redis, QUEUE, 8)
    await append(redis, "77", 3)
    await sets.mark(["77"])
    assert len(await consumer.take("77")) == 3  # connections made, the group known
    sends = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        await original(self, command, check_health)

    ids = await append(redis, "77", 2)
    await sets.mark(["77"])
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    entries = await consumer.take("77")
    monkeypatch.undo()
    assert [i for i, _ in entries] == ids
    if redis_kind == "single":
        assert sends == 2  # four before: each mark change, then its read
    # the marks the turn leaves: pending (for a claim after the visibility timeout), not ready
    shard = sets.shard("77")
    assert await redis.zscore(sets.pending_key(shard), "77") is not None
    assert await redis.zscore(sets.key(shard), "77") is None
