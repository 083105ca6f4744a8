"""ReadRecords under fan-out and under a hung HubSpot call (the sandbox's request log and
answers as the witness)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.redis import POOL_MAX_CONNECTIONS, create_redis
from hubsync.core.settings import CoreSettings
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import PORTAL, stack

READ_ROUTE = "POST /crm/v3/objects/{objectType}/batch/read"


def read(ids: list[str]) -> writer_pb2.ReadRecordsRequest:
    return writer_pb2.ReadRecordsRequest(portal_id=PORTAL, object_type="contacts", ids=ids)


async def test_one_read_of_20000_ids_and_8_concurrent_reads_of_3000_succeed(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    """200 chunks of one request (and 240 of eight) go through a bounded number of calls at a
    time; the Redis pool waits instead of failing."""
    async with stack(redis_url, caller_tokens, writer_env=writer_env(burst_limit=10_000)) as s:
        ids = [str(n) for n in range(1, 20_001)]
        reply = await s.stub.ReadRecords(read(ids), timeout=300)
        assert len(reply.missing_ids) == 20_000
        replies = await asyncio.gather(
            *(s.stub.ReadRecords(read([f"{k}{n}" for n in range(3000)]), timeout=300) for k in range(1, 9))
        )
        assert [len(r.missing_ids) for r in replies] == [3000] * 8
        assert await s.count(READ_ROUTE) == 200 + 8 * 30  # each chunk once (207: ids missing)


async def test_a_failed_read_stops_sending_the_rest_of_its_chunks(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    env = writer_env(read_concurrency=2, max_attempts=2, circuit_failure_threshold=1000)
    async with stack(redis_url, caller_tokens, writer_env=env) as s:
        await s.fault(portal=PORTAL, endpoint=READ_ROUTE, status=500, error_rate=1.0)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await s.stub.ReadRecords(read([str(n) for n in range(1, 2001)]), timeout=60)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        # 20 chunks of 2 attempts each would be 40 calls: only the two chunks out when the first
        # failed were sent (each at most twice).
        assert await s.count(READ_ROUTE) <= 4


async def test_a_hung_read_is_cut_and_retried_within_the_callers_deadline(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    """HubSpot holds one batch/read past the caller's deadline (and past writer's HTTP timeout):
    writer cuts it at a share of the caller's time left and reads its ids again in halves."""
    async with stack(redis_url, caller_tokens) as s:
        await s.fault(portal=PORTAL, endpoint=READ_ROUTE, timeout_s=25, remaining=1)
        ids = [str(n) for n in range(1, 301)]
        reply = await s.stub.ReadRecords(read(ids), timeout=20)
        assert sorted(reply.missing_ids, key=int) == ids  # every chunk answered, the hung one too
        assert await s.count(READ_ROUTE, 207) == 4  # two chunks, then the hung one's halves


@pytest.mark.on_cluster
async def test_a_full_redis_pool_makes_commands_wait_instead_of_failing(redis_url: str) -> None:
    """More commands at once than the pool has connections (each holding one for a moment):
    the extra ones wait for a connection instead of raising MaxConnectionsError. On Redis Cluster
    the keys share one slot, so one node's pool is the one that fills; the commands are the
    client's first, so they also arrive before it knows the slot map."""
    client = create_redis(CoreSettings(redis_url=redis_url))
    try:
        n = POOL_MAX_CONNECTIONS + 50
        replies = await asyncio.gather(*(client.blpop([f"{{p}}:nothing:{k}"], timeout=0.2) for k in range(n)))
        assert replies == [None] * n
    finally:
        await client.aclose()
