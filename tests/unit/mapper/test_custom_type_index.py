"""CustomTypeIndex: which portals it asks writer about, and how often (a clock stands in for time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubsync.api.writer.v1 import writer_pb2
from hubsync.mapper.objecttypes import CustomTypeIndex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Writer:
    """Answers ListObjectTypes from a table of portal → custom types, counting the calls."""

    def __init__(self) -> None:
        self.types: dict[int, dict[str, str]] = {}
        self.calls: list[int] = []

    async def ListObjectTypes(
        self, request: writer_pb2.ListObjectTypesRequest, timeout: float
    ) -> writer_pb2.ListObjectTypesResponse:
        self.calls.append(request.portal_id)
        return writer_pb2.ListObjectTypesResponse(
            object_types=[
                writer_pb2.ObjectType(object_type_id=tid, schema_name=name, custom=True)
                for tid, name in self.types.get(request.portal_id, {}).items()
            ]
        )


async def test_only_unknown_custom_ids_cost_a_call_and_each_at_most_once_per_retry_period() -> None:
    clock, writer = Clock(), Writer()
    index = CustomTypeIndex(retry_s=30, clock=clock)
    stub: Any = writer
    # Turns of 1,000 portals naming only standard types: no call.
    for portal in range(1, 1001):
        await index.ensure_ids(stub, portal, ["contacts", "companies", "0-5"])
    assert writer.calls == []

    writer.types[7] = {"2-10": "subscription"}
    await index.ensure_ids(stub, 7, ["contacts", "2-10"])
    assert writer.calls == [7] and index.name_of("2-10") == "subscription"
    for _ in range(100):  # known now: no further call
        await index.ensure_ids(stub, 7, ["2-10"])
    assert writer.calls == [7]

    # An id writer does not know (yet): asked about once, again only after the retry period.
    for _ in range(100):
        await index.ensure_ids(stub, 7, ["2-11"])
    assert writer.calls == [7, 7]
    writer.types[7]["2-11"] = "seat"
    clock.now += 31
    await index.ensure_ids(stub, 7, ["2-11"])
    assert writer.calls == [7, 7, 7] and index.name_of("2-11") == "seat"

    # A push naming a schema not learned for the portal learns it; a known one does not.
    writer.types[8] = {"2-20": "plan"}
    await index.ensure(stub, 8, ["plan"])
    await index.ensure(stub, 8, ["plan"])
    assert writer.calls == [7, 7, 7, 8]


async def test_the_refresh_covers_only_portals_that_used_a_custom_object_since_the_last_pass() -> None:
    writer = Writer()
    index = CustomTypeIndex(retry_s=30, clock=Clock())
    stub: Any = writer
    for portal in range(1, 501):  # 500 portals learned once
        writer.types[portal] = {f"2-{portal}": "thing"}
        await index.ensure_ids(stub, portal, [f"2-{portal}"])
    assert len(writer.calls) == 500
    watcher = asyncio.create_task(index.watch(stub, 0.01))
    try:
        # Portals 1 and 2 have events of their custom objects: the next pass refreshes them alone.
        await index.ensure_ids(stub, 1, ["2-1"])
        await index.ensure_ids(stub, 2, ["2-2"])
        for _ in range(500):
            if len(writer.calls) >= 502:
                break
            await asyncio.sleep(0.01)
        assert sorted(writer.calls[500:502]) == [1, 2]
        for _ in range(20):  # further passes: nobody used one since, so nothing is refreshed
            await asyncio.sleep(0.01)
        assert len(writer.calls) == 502
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
