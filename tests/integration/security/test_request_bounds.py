"""Strings callers send that become Redis keys, consumer groups or metric labels are bounded:
too long or outside their charset is INVALID_ARGUMENT naming the field, and the number of
change-feed consumer groups is capped (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from redis.asyncio import Redis

from hubsync.api.ingress.v1 import ingress_pb2, ingress_pb2_grpc
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.errors import error_info
from hubsync.core.redis import portal_key
from tests.helpers.security_stack import running_services

PORTAL = 4242


def violations(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call."""
    found: dict[str, str] = {}
    for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    found |= {v.field: v.description for v in bad.field_violations}
    return found


@pytest.fixture
async def stack(
    redis_url: str, caller_tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, str]]:
    env = {"HUBSYNC_MAPPER_MAX_CONSUMER_GROUPS": "2"}
    async with running_services(redis_url, caller_tokens, monkeypatch, env) as addresses:
        yield addresses


BAD_REQUEST_IDS = ["r" * 129, "two words", "a\nb", "x{1}y", "ü"]


async def test_push_request_id_and_external_id_are_bounded(stack, caller_tokens) -> None:  # type: ignore[no-untyped-def]
    fields = struct_pb2.Struct()
    fields.update({"email": "ada@example.com"})
    async with open_channel(stack["mapper"], caller_tokens["client"]) as channel:
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        for request_id in BAD_REQUEST_IDS:
            record = mapper_pb2.ExternalRecord(object_type="contacts", external_id="ext-1", fields=fields)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PushRecords(
                    mapper_pb2.PushRecordsRequest(request_id=request_id, portal_id=PORTAL, records=[record])
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request_id
            assert set(violations(err.value)) == {"request_id"}, request_id
        for external_id in ["e" * 257, "tab\there"]:
            record = mapper_pb2.ExternalRecord(object_type="contacts", external_id=external_id, fields=fields)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PushRecords(
                    mapper_pb2.PushRecordsRequest(request_id="r-1", portal_id=PORTAL, records=[record])
                )
            assert set(violations(err.value)) == {"records[0].external_id"}


async def test_submit_writes_request_id_is_bounded(stack, caller_tokens, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    write = writer_pb2.Write(
        record=writer_pb2.RecordWrite(
            operation=writer_pb2.WRITE_OPERATION_UPSERT,
            object_type="contacts",
            id="ada@example.com",
            id_property="email",
            properties={"firstname": "Ada"},
        )
    )
    async with open_channel(stack["writer"], caller_tokens["mapper"]) as channel:
        stub = writer_pb2_grpc.WriterServiceStub(channel)
        for request_id in ["r" * 201, *BAD_REQUEST_IDS[1:]]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitWrites(
                    writer_pb2.SubmitWritesRequest(request_id=request_id, portal_id=PORTAL, writes=[write])
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request_id
            assert set(violations(err.value)) == {"request_id"}, request_id
        # nothing was queued nor remembered for them; a well-formed id still works
        assert await redis.keys(portal_key(PORTAL, "writer", "request", "*")) == []
        ok = await stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(request_id="mapper:" + "r" * 128, portal_id=PORTAL, writes=[write])
        )
        assert len(ok.results) == 1


async def test_replay_request_id_is_bounded(stack, caller_tokens) -> None:  # type: ignore[no-untyped-def]
    async with open_channel(stack["ingress"], caller_tokens["cli"]) as channel:
        stub = ingress_pb2_grpc.IngressServiceStub(channel)
        for request_id in BAD_REQUEST_IDS:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReplayJournal(
                    ingress_pb2.ReplayJournalRequest(
                        portal_id=PORTAL, start_offset="1-0", end_offset="2-0", request_id=request_id
                    )
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request_id
            assert set(violations(err.value)) == {"request_id"}, request_id


async def _first_change(stub: mapper_pb2_grpc.MapperServiceStub, group: str) -> str:
    """Subscribes as ``group`` and returns the first change's ack id (or the refusal's code)."""
    call = stub.Subscribe(
        mapper_pb2.SubscribeRequest(
            consumer_group=group, consumer="c-1", portal_ids=[PORTAL], object_types=["contacts"]
        ),
        timeout=60,
    )
    try:
        async for reply in call:
            return reply.change.ack_id
    except grpc.aio.AioRpcError as exc:
        info = error_info(exc)
        return f"{exc.code().name} {info.reason if info else ''}"
    finally:
        call.cancel()
    return ""


async def test_consumer_groups_are_bounded_in_name_and_number(stack, caller_tokens, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    change = mapper_pb2.Change(portal_id=PORTAL, object_type="contacts", hubspot_id="1")
    await redis.sadd("hubsync:portals", str(PORTAL))
    await redis.xadd(portal_key(PORTAL, "feed", "contacts"), {"change": change.SerializeToString()})
    async with open_channel(stack["mapper"], caller_tokens["client"]) as channel:
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        for group in ["g" * 65, "two words", "-leading", "a:b", "é"]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Subscribe(
                    mapper_pb2.SubscribeRequest(consumer_group=group, consumer="c-1")
                ):
                    break
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, group
            assert set(violations(err.value)) == {"consumer_group"}, group
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Ack(mapper_pb2.AckRequest(consumer_group="two words", ack_ids=[]))
        assert set(violations(err.value)) == {"consumer_group"}

        # The limit is 2 groups: a third new one is refused, known ones still get their changes.
        assert (await _first_change(stub, "billing")).startswith(f"{PORTAL}/contacts/")
        assert (await _first_change(stub, "support.v2")).startswith(f"{PORTAL}/contacts/")
        assert await _first_change(stub, "third") == "RESOURCE_EXHAUSTED TOO_MANY_CONSUMER_GROUPS"
        assert (await _first_change(stub, "billing")).startswith(f"{PORTAL}/contacts/")
    feed_groups = await redis.xinfo_groups(portal_key(PORTAL, "feed", "contacts"))
    assert sorted(g["name"].decode() for g in feed_groups) == ["billing", "support.v2"]
