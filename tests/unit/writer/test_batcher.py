"""The coalescing batcher: full batches, max wait, merged writes to one record, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import Unavailable
from hubsync.writer.batches import BatchInput, BatchKey, BatchOp, Coalescer, Outcome
from hubsync.writer.ratelimit import ReservedSlot

KEY = BatchKey(1, "contacts", BatchOp.UPSERT, "email")


def item(i: str, **props: str) -> BatchInput:
    return BatchInput(i, i, dict(props), [writer_pb2.Write()])


class Recorder:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.batches: list[list[BatchInput]] = []
        self.slots: list[str | None] = []
        self.fail = fail

    async def __call__(
        self, key: BatchKey, inputs: Sequence[BatchInput], slot: ReservedSlot
    ) -> list[Outcome]:
        self.batches.append(list(inputs))
        self.slots.append(slot.take())
        if self.fail:
            raise self.fail
        return [Outcome(writer_pb2.WRITE_STATUS_SUCCEEDED, hubspot_id=f"hs-{i.id}") for i in inputs]


async def test_full_batches_go_at_once_and_the_rest_after_the_wait() -> None:
    rec = Recorder()
    batcher = Coalescer(rec, max_size=100, max_wait_s=0.05)
    futures = [batcher.submit(KEY, item(f"{n}@x")) for n in range(250)]
    await asyncio.sleep(0.01)
    assert [len(b) for b in rec.batches] == [100, 100]
    outcomes = await asyncio.gather(*futures)
    assert [len(b) for b in rec.batches] == [100, 100, 50]
    assert [o.hubspot_id for o in outcomes] == [f"hs-{n}@x" for n in range(250)]


async def test_writes_to_one_record_merge_later_value_wins() -> None:
    rec = Recorder()
    batcher = Coalescer(rec, max_wait_s=0.01)
    a = batcher.submit(KEY, item("a@x", firstname="A", lastname="One"))
    b = batcher.submit(KEY, item("a@x", lastname="Two"))
    c = batcher.submit(BatchKey(1, "contacts", BatchOp.UPSERT, "external_id"), item("a@x", city="X"))
    assert (await a) == (await b)
    await c
    [first, second] = sorted(rec.batches, key=len)
    assert len(first) == 1 and len(second) == 1
    merged = next(b[0] for b in rec.batches if "firstname" in b[0].properties)
    assert merged.properties == {"firstname": "A", "lastname": "Two"} and len(merged.waiters) == 2


async def test_a_failed_batch_fails_every_caller_in_it() -> None:
    batcher = Coalescer(Recorder(fail=RuntimeError("down")), max_wait_s=0.01)
    futures = [batcher.submit(KEY, item(f"{n}@x")) for n in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError):
            await f


async def test_close_flushes_pending_writes() -> None:
    rec = Recorder()
    batcher = Coalescer(rec, max_wait_s=60)
    future = batcher.submit(KEY, item("a@x"))
    await batcher.close()
    assert (await future).hubspot_id == "hs-a@x"


async def test_full_batches_take_slots_before_the_open_one_which_keeps_filling() -> None:
    rec = Recorder()
    slots: asyncio.Queue[str] = asyncio.Queue()

    class Slots:
        async def acquire_slot(
            self, portal_id: int, *, busy_at: float, demand_per_s: float = 0.0
        ) -> tuple[str, bool]:
            return await slots.get(), False

        async def release(self, portal_id: int, member: str) -> None:
            raise AssertionError("not saturated: no slot is given back")

    batcher = Coalescer(rec, max_size=10, max_wait_s=0.01, slots=Slots())
    futures = [batcher.submit(KEY, item(f"a{n}@x")) for n in range(5)]
    await asyncio.sleep(0.03)  # the open batch of 5 is due, waiting for a slot
    futures += [batcher.submit(KEY, item(f"b{n}@x")) for n in range(27)]  # 3 full, 2 open
    for n in range(3):
        slots.put_nowait(f"slot{n}")
    await asyncio.sleep(0.01)
    assert [len(b) for b in rec.batches] == [10, 10, 10]
    slots.put_nowait("slot3")
    await asyncio.gather(*futures)
    assert [len(b) for b in rec.batches] == [10, 10, 10, 2]
    # Each batch went out on the slot taken for it (handed to the sender, not through a global).
    assert rec.slots == ["slot0", "slot1", "slot2", "slot3"]


async def test_when_saturated_a_partial_batch_gives_its_slot_back_and_fills() -> None:
    rec = Recorder()
    released: list[str] = []
    count = 0

    class Slots:
        async def acquire_slot(
            self, portal_id: int, *, busy_at: float, demand_per_s: float = 0.0
        ) -> tuple[str, bool]:
            nonlocal count
            count += 1
            await asyncio.sleep(0.01)
            return f"slot{count}", True

        async def release(self, portal_id: int, member: str) -> None:
            released.append(member)

    batcher = Coalescer(rec, max_size=10, max_wait_s=0.01, slots=Slots(), max_wait_saturated_s=5)
    futures = [batcher.submit(KEY, item(f"a{n}@x")) for n in range(4)]
    await asyncio.sleep(0.1)
    assert rec.batches == [] and released  # waiting to fill, slots handed back
    futures += [batcher.submit(KEY, item(f"b{n}@x")) for n in range(6)]
    await asyncio.gather(*futures)
    assert [len(b) for b in rec.batches] == [10]


def test_a_reserved_slot_serves_one_call_only() -> None:
    # A split half, a conflict's update or a retry after the first call takes its own slot.
    slot = ReservedSlot("m")
    assert slot.take() == "m"
    assert slot.take() is None
    assert ReservedSlot(None).take() is None


async def test_the_demand_follows_how_fast_writes_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bulk load (hundreds of writes at once) asks for calls; one write now and then does not.
    # The loop's clock stands still while the writes arrive: on a loaded machine the 300 submits
    # could take long enough for the rate to decay under the bound (seen once under load).
    loop = asyncio.get_running_loop()
    now = loop.time()
    monkeypatch.setattr(loop, "time", lambda: now)
    batcher = Coalescer(Recorder(), max_size=100, max_wait_s=60)
    bulk, quiet = KEY, BatchKey(2, "contacts", BatchOp.UPSERT, "email")
    futures = [batcher.submit(bulk, item(f"a{n}@x")) for n in range(300)]
    futures.append(batcher.submit(quiet, item("q@x")))
    assert batcher.demand(bulk) == pytest.approx(3.0)  # 300 writes/s: 3 full batches a second
    assert batcher.demand(quiet) < 0.02
    assert batcher.demand(BatchKey(3, "contacts", BatchOp.UPSERT, "email")) == 0.0
    monkeypatch.undo()
    await batcher.close()
    await asyncio.gather(*futures)


async def test_a_send_cut_off_by_cancellation_answers_its_callers_unavailable() -> None:
    # Only the send was cancelled (the writer stopping), not the callers' calls: they must hear a
    # truthful UNAVAILABLE, not a CancelledError that gRPC would turn into a bare CANCELLED.
    batcher = Coalescer(Recorder(fail=asyncio.CancelledError()), max_wait_s=0.01)
    future = batcher.submit(KEY, item("a@x"))
    with pytest.raises(Unavailable) as err:
        await future
    assert err.value.reason == "WRITER_INTERRUPTED"
    await batcher.close()


class Saturated:
    """A window that is always saturated: every slot is granted, as busy."""

    async def acquire_slot(
        self, portal_id: int, *, busy_at: float, demand_per_s: float = 0.0
    ) -> tuple[str, bool]:
        await asyncio.sleep(0.005)
        return "slot", True

    async def release(self, portal_id: int, member: str) -> None:
        pass


def saturated(rec: Recorder, *, quiet_s: float) -> Coalescer:
    """Batches of 10 on a saturated window: filled until writes stop for ``quiet_s``."""
    return Coalescer(
        rec,
        max_size=10,
        max_wait_s=0.01,
        slots=Saturated(),
        max_wait_saturated_s=quiet_s,
        max_hold_saturated_s=60,
    )


async def test_when_saturated_a_batch_fills_while_its_writes_keep_arriving() -> None:
    # A quota-bound portal whose writes trickle in (submissions arriving one by one): the partial
    # batch keeps filling past max_wait_saturated since it opened, as long as each write comes
    # less than max_wait_saturated after the one before: a partial call would waste quota.
    rec = Recorder()
    batcher = saturated(rec, quiet_s=1.0)
    futures = []
    for n in range(10):
        futures.append(batcher.submit(KEY, item(f"a{n}@x")))
        await asyncio.sleep(0.15)  # 1.35 s in all, each write well within 1 s of the last
    await asyncio.gather(*futures)
    assert [len(b) for b in rec.batches] == [10]


async def test_when_saturated_a_partial_batch_goes_once_its_writes_stop() -> None:
    rec = Recorder()
    batcher = saturated(rec, quiet_s=0.05)
    futures = [batcher.submit(KEY, item(f"a{n}@x")) for n in range(4)]
    await asyncio.gather(*futures)
    assert [len(b) for b in rec.batches] == [4]


async def test_a_stream_of_small_submissions_is_demand_a_lone_one_is_not() -> None:
    # Submissions of 10 writes one after another would each take a call of their own (after
    # max_wait): that is the demand the window sees, not 10 writes' tenth of a full batch. A lone
    # submission is not a stream: its batch goes after max_wait, as on an idle portal.
    batcher = Coalescer(Recorder(), max_size=100, max_wait_s=0.05)
    stream, lone = KEY, BatchKey(2, "contacts", BatchOp.UPSERT, "email")
    futures = [batcher.submit(lone, item(f"l{n}@x")) for n in range(10)]
    for g in range(5):
        futures += [batcher.submit(stream, item(f"s{g}-{n}@x")) for n in range(10)]
        await asyncio.sleep(0.1)  # each group past max_wait: a call of its own
    assert batcher.demand(lone) < 0.2
    assert batcher.demand(stream) > 1.0
    await batcher.close()
    await asyncio.gather(*futures)


async def test_when_saturated_a_stream_slower_than_the_quiet_time_still_fills() -> None:
    # Submissions reaching writer more slowly than max_wait_saturated apart (a busy writer's
    # intake): once they are a stream, the wait for the next follows its pace (twice its
    # interval). The first goes alone: until a second comes, it is a lone submission.
    rec = Recorder()
    batcher = Coalescer(
        rec, max_size=4, max_wait_s=0.01, slots=Saturated(), max_wait_saturated_s=0.2, max_hold_saturated_s=60
    )
    futures = []
    for n in range(5):
        futures.append(batcher.submit(KEY, item(f"a{n}@x")))
        await asyncio.sleep(0.3)
    await asyncio.gather(*futures)
    assert [len(b) for b in rec.batches] == [1, 4]


async def test_when_saturated_irregular_gaps_are_not_taken_for_the_writes_stopping() -> None:
    # Many portals' submissions share a connection and a writer's intake, so one portal's gaps
    # vary. A gap longer than twice its interval (and than max_wait_saturated) is not its writes
    # stopping when its gaps have varied that much: the batch waits the interval plus four times
    # the gaps' spread (here about 0.7 s), as TCP waits for an ACK.
    rec = Recorder()
    batcher = Coalescer(
        rec, max_size=6, max_wait_s=0.01, slots=Saturated(), max_wait_saturated_s=0.3, max_hold_saturated_s=60
    )
    futures = []
    for n, gap in enumerate([0.18, 0.06, 0.36, 0.06, 0.5, 0.0]):
        futures.append(batcher.submit(KEY, item(f"a{n}@x")))
        await asyncio.sleep(gap)
    await asyncio.gather(*futures)
    assert [len(b) for b in rec.batches] == [6]
