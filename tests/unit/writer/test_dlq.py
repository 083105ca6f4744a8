"""The dead-letter queue on a real Redis: paging, status filters, selection, purge."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import InvalidArgument, NotFound
from hubsync.writer.dlq import DeadLetterQueue, HubSpotFailure


def write(n: int) -> writer_pb2.Write:
    return writer_pb2.Write(record=writer_pb2.RecordWrite(object_type="contacts", id=f"{n}@x"))


async def test_pages_filters_and_purges(redis: Redis) -> None:
    dlq = DeadLetterQueue(redis)
    ids = [
        await dlq.add(7, write(n), HubSpotFailure(400 if n % 2 else 403, f"m{n}"), attempts=1, trace_id="t")
        for n in range(5)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page, token = await dlq.page(7, page_size=2, page_token=token)
        assert len(page) <= 2
        seen += [e.id for e in page]
        if not token:
            break
    assert seen == ids
    forbidden, _ = await dlq.page(7, statuses=[403])
    assert [e.write.record.id for e in forbidden] == ["0@x", "2@x", "4@x"]
    assert (await dlq.get(7, ids[1])).error.message == "m1"
    assert [e.id for e in await dlq.select(7, [], [400], False)] == [ids[1], ids[3]]
    assert await dlq.select(7, [], [], False) == []
    assert await dlq.purge(7, [ids[0]], False) == 1
    with pytest.raises(NotFound):
        await dlq.get(7, ids[0])
    with pytest.raises(InvalidArgument):
        await dlq.get(7, "not-an-id")
    assert await dlq.purge(7, [], True) == 4
    assert await dlq.depth(7) == 0
