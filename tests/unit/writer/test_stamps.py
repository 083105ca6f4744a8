"""Version stamps of waited submissions: acceptance order per portal, one reservation per burst."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.writer import ordering
from hubsync.writer.ordering import RecordVersions
from tests.helpers.writer_stack import upsert


def upserts(n: int) -> list[writer_pb2.Write]:
    return [upsert(f"s{i}@example.com") for i in range(n)]


async def test_submissions_accepted_together_share_one_reservation_in_order(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    reservations: list[int] = []
    real = ordering.reserve_versions

    async def counted(r: Redis, key: str, count: int) -> int:
        reservations.append(count)
        return await real(r, key, count)

    monkeypatch.setattr(ordering, "reserve_versions", counted)
    versions = RecordVersions(redis, 60)
    batches = [upserts(n) for n in (3, 1, 4, 2)]
    # Accepted in the same event-loop turn (as grpc.aio hands over a burst of calls).
    await asyncio.gather(*(versions.stamp_now(7, b) for b in batches))
    assert reservations == [10]
    stamped = [w.record.version for b in batches for w in b]
    assert stamped == sorted(stamped) and len(set(stamped)) == 10  # the order they were accepted in
    # A later submission takes versions after all of them (a reservation of its own).
    later = upserts(2)
    await versions.stamp_now(7, later)
    assert reservations == [10, 2]
    assert min(w.record.version for w in later) > max(stamped)
    # Another portal's stamps are its own counter's.
    other = upserts(1)
    await asyncio.gather(versions.stamp_now(8, other), versions.stamp_now(7, upserts(1)))
    assert sorted(reservations[2:]) == [1, 1]


async def test_writes_with_their_callers_version_are_not_stamped(redis: Redis) -> None:
    versions = RecordVersions(redis, 60)
    given = upserts(2)
    for w in given:
        w.record.version = 42
    await versions.stamp_now(7, given)
    assert [w.record.version for w in given] == [42, 42]
