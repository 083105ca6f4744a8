"""The thin slice mapper depends on: upserts with per-record results, reads, properties."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.redis import portal_key
from hubsync.writer.batches import id_key
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import PORTAL, UPSERT_ROUTE, stack, upsert


async def test_upserts_coalesce_into_batches_and_answer_per_record(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    env = writer_env(batch_max_wait_ms=1000)
    async with stack(redis_url, caller_tokens, writer_env=env) as s:
        # 30 callers with 10 writes each arrive together: 300 records, 3 batch calls of 100.
        async def one(n: int) -> writer_pb2.SubmitWritesResponse:
            writes = [upsert(f"p{n}-{i}@example.com", lastname=f"L{n}") for i in range(10)]
            return await s.stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(
                    request_id=f"r{n}", portal_id=PORTAL, writes=writes, wait=True
                ),
                timeout=30,
            )

        replies = await asyncio.gather(*(one(n) for n in range(30)))
        assert all(r.status == writer_pb2.WRITE_STATUS_SUCCEEDED for reply in replies for r in reply.results)
        assert all(r.created and r.hubspot_id for reply in replies for r in reply.results)
        calls = await s.count(UPSERT_ROUTE)
        assert calls == 3
        contacts = await s.objects()
        assert len(contacts) == 300
        # The written-values record ingress reads to drop our echoes.
        first = replies[0].results[0].hubspot_id
        written = await redis.hgetall(portal_key(PORTAL, "written", "contacts", first))
        assert written[b"lastname"] == b"L0" and written[b"email"] == b"p0-0@example.com"
        assert 0 < await redis.ttl(portal_key(PORTAL, "written", "contacts", first)) <= 3600
        # The HubSpot id each upsert's unique value holds is kept only for the unchanged check
        # (SKIP_UNCHANGED, off here; test_writer_features covers it on): a command per record less.
        assert await redis.get(id_key(PORTAL, "contacts", "email", "p0-0@example.com")) is None

        # The same request id again: the first answer, nothing sent.
        again = await one(0)
        assert again == replies[0]
        assert await s.count(UPSERT_ROUTE) == calls

        # A second upsert of the same emails updates (created = false).
        second = await one(1)
        assert [r.created for r in second.results] == [False] * 10 or second == replies[1]


async def test_read_records_by_id_and_unique_value_in_chunks(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        writes = [upsert(f"r{i}@example.com", lastname="R", external_id=f"x-{i}") for i in range(150)]
        reply = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=writes, wait=True), timeout=30
        )
        ids = [r.hubspot_id for r in reply.results]
        read = await s.stub.ReadRecords(
            writer_pb2.ReadRecordsRequest(
                portal_id=PORTAL, object_type="contacts", ids=[*ids, "999999"], properties=["lastname"]
            ),
            timeout=30,
        )
        assert sorted(r.id for r in read.records) == sorted(ids)
        assert list(read.missing_ids) == ["999999"]
        assert all(
            set(r.properties) >= {"lastname"} and "firstname" not in r.properties for r in read.records
        )
        assert await s.count("POST /crm/v3/objects/{objectType}/batch/read") == 2
        by_value = await s.stub.ReadRecords(
            writer_pb2.ReadRecordsRequest(
                portal_id=PORTAL,
                object_type="contacts",
                ids=["x-1", "x-2", "nope"],
                id_property="external_id",
                properties=["email"],
            ),
            timeout=30,
        )
        assert sorted(r.properties["email"] for r in by_value.records) == ["r1@example.com", "r2@example.com"]
        assert list(by_value.missing_ids) == ["nope"]


async def test_list_properties(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with stack(redis_url, caller_tokens) as s:
        reply = await s.stub.ListProperties(
            writer_pb2.ListPropertiesRequest(portal_id=PORTAL, object_type="contacts"), timeout=10
        )
        by_name = {p.name: p for p in reply.properties}
        assert by_name["external_id"].has_unique_value
        assert by_name["email"].type == "string"


async def test_bad_input_is_invalid_argument_with_details(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        bad = writer_pb2.Write(
            record=writer_pb2.RecordWrite(
                operation=writer_pb2.WRITE_OPERATION_UPSERT, object_type="spaceships"
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=[bad], wait=True)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "writes[0].record.object_type" in str(err.value.trailing_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.ReadRecords(
                writer_pb2.ReadRecordsRequest(portal_id=PORTAL, object_type="x", ids=["1"])
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await s.count(UPSERT_ROUTE) == 0
