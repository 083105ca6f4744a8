"""The batches in flight: room for a turn's batches once stalled ones pile up."""

from __future__ import annotations

import asyncio
from typing import Any

from hubsync.mapper._inbound_batches import InFlightBatches
from hubsync.mapper._inbound_process import BatchOutcome, BatchResult
from hubsync.mapper.inbound_events import EventTarget, ParsedEntry
from hubsync.mapper.publish import Source


def _entry(n: int) -> ParsedEntry:
    return ParsedEntry(f"{n}-0".encode(), {}, what=EventTarget("contacts", str(n), "propertyChange"))


async def test_a_turn_waits_for_room_until_a_batch_ends_and_only_then() -> None:
    release: dict[str, asyncio.Event] = {}

    async def process(portal: str, source: Source, entries: list[ParsedEntry]) -> BatchResult:
        await release.setdefault(portal, asyncio.Event()).wait()
        return BatchResult(BatchOutcome.DONE)

    redis: Any = None  # no heartbeat here
    batches = InFlightBatches(redis, process, consumer="c", max_in_flight=1, stall_s=0)
    for portal in ("1", "2"):  # two stalled batches: the most that may pile up
        await batches.turn(portal, Source("events"), [_entry(int(portal))])
    waiting = asyncio.create_task(batches.wait_for_room())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()
    release.setdefault("1", asyncio.Event()).set()
    await asyncio.wait_for(waiting, 60)
    assert len(batches.tasks()) == 1
    release.setdefault("2", asyncio.Event()).set()
    await asyncio.wait_for(asyncio.gather(*batches.tasks()), 60)
