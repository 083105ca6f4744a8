"""The mapper's gRPC API without HubSpot: Transform, mappings, the change feed's delivery rules."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from redis.asyncio import Redis

from hubsync.api.common.v1 import common_pb2
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.redis import portal_key
from tests.helpers.mapper import running_mapper


@pytest.fixture
async def stub(redis_url, caller_tokens):  # type: ignore[no-untyped-def]
    async with (
        running_mapper(redis_url, caller_tokens, inbound_enabled=False) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        yield mapper_pb2_grpc.MapperServiceStub(channel)


async def test_transform_both_ways(stub) -> None:  # type: ignore[no-untyped-def]
    inbound = await stub.Transform(
        mapper_pb2.TransformRequest(
            direction=mapper_pb2.DIRECTION_INBOUND,
            hubspot_records=[
                common_pb2.HubSpotRecord(
                    id="7",
                    object_type="contacts",
                    properties={
                        "firstname": "Ada",
                        "external_id": "c-1",
                        "city": "London",
                        "hs_additional_emails": "a@x.io;b@x.io",
                        "date_of_birth": "86400000",
                    },
                )
            ],
        )
    )
    rec = inbound.external_records[0]
    assert rec.external_id == "c-1"
    assert rec.fields["first_name"] == "Ada"
    assert rec.fields["address"]["city"] == "London"
    assert list(rec.fields["additional_emails"]) == ["a@x.io", "b@x.io"]
    assert rec.fields["birth_date"] == "1970-01-02"
    fields = struct_pb2.Struct()
    fields.update({"first_name": "Ada", "email_opt_out": True, "address": {"postal_code": "N1"}})
    out = await stub.Transform(
        mapper_pb2.TransformRequest(
            direction=mapper_pb2.DIRECTION_OUTBOUND,
            external_records=[
                mapper_pb2.ExternalRecord(object_type="contacts", external_id="c-1", fields=fields)
            ],
        )
    )
    assert dict(out.hubspot_records[0].properties) == {
        "firstname": "Ada",
        "hs_email_optout": "true",
        "zip": "N1",
        "external_id": "c-1",
    }


async def test_transform_bad_value_is_invalid_argument(stub) -> None:  # type: ignore[no-untyped-def]
    fields = struct_pb2.Struct()
    fields.update({"birth_date": "yesterday"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Transform(
            mapper_pb2.TransformRequest(
                direction=mapper_pb2.DIRECTION_OUTBOUND,
                external_records=[
                    mapper_pb2.ExternalRecord(object_type="contacts", external_id="x", fields=fields)
                ],
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "birth_date" in str(err.value.trailing_metadata())


async def test_list_and_validate_mappings(stub) -> None:  # type: ignore[no-untyped-def]
    listed = await stub.ListMappings(mapper_pb2.ListMappingsRequest())
    by_type = {m.object_type: m for m in listed.mappings}
    assert set(by_type) == {"companies", "contacts", "deals"}
    assert by_type["contacts"].id_property == "external_id"
    bad = await stub.ValidateMapping(
        mapper_pb2.ValidateMappingRequest(
            source="people.yaml",
            yaml="object_type: contacts\nid: {external: id, hubspot: external_id}\nfields:\n"
            "  - {hubspot: firstname, external: first}\n  - {hubspot: lastname, external: last, owner: me}\n",
        )
    )
    assert not bad.valid
    assert any(e.startswith("people.yaml:5: fields.1.owner") for e in bad.errors), bad.errors
    ok = await stub.ValidateMapping(
        mapper_pb2.ValidateMappingRequest(
            yaml="object_type: deals\nid: {external: id, hubspot: external_id}\n"
            "fields: [{hubspot: dealname, external: n}]\n"
        )
    )
    assert ok.valid, ok.errors


async def _publish(redis: Redis, portal: int, hs_id: str, name: str) -> None:
    await redis.sadd("hubsync:portals", str(portal))
    change = mapper_pb2.Change(
        portal_id=portal, object_type="contacts", hubspot_id=hs_id, kind=mapper_pb2.CHANGE_KIND_UPDATED
    )
    change.fields.update({"first_name": name})
    await redis.xadd(portal_key(portal, "feed", "contacts"), {"change": change.SerializeToString()})


async def test_feed_delivers_acks_and_redelivers(stub, redis) -> None:  # type: ignore[no-untyped-def]
    await _publish(redis, 42, "1", "Ada")
    await _publish(redis, 42, "2", "Bob")
    request = mapper_pb2.SubscribeRequest(
        consumer_group="billing", consumer="b-1", visibility_timeout=duration_pb2.Duration(nanos=300_000_000)
    )
    call = stub.Subscribe(request)
    first = (await call.read()).change
    second = (await call.read()).change
    assert (first.hubspot_id, second.hubspot_id) == ("1", "2")
    assert first.fields["first_name"] == "Ada" and first.delivery_attempt == 1
    acked = await stub.Ack(mapper_pb2.AckRequest(consumer_group="billing", ack_ids=[first.ack_id]))
    assert acked.acked_count == 1
    again = await stub.Ack(mapper_pb2.AckRequest(consumer_group="billing", ack_ids=[first.ack_id]))
    assert again.acked_count == 0
    # The unacked one comes back after the visibility timeout, and only that one.
    redelivered = (await asyncio.wait_for(call.read(), 5)).change
    assert redelivered.hubspot_id == "2" and redelivered.delivery_attempt == 2
    await stub.Ack(mapper_pb2.AckRequest(consumer_group="billing", ack_ids=[redelivered.ack_id]))
    call.cancel()
    # Another group sees every change independently.
    other = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="support", consumer="s-1"))
    ids = [(await other.read()).change.hubspot_id for _ in range(2)]
    assert ids == ["1", "2"]
    other.cancel()


async def test_restarted_consumer_gets_its_unacked_changes(stub, redis) -> None:  # type: ignore[no-untyped-def]
    await _publish(redis, 43, "9", "Cy")
    call = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
    assert (await call.read()).change.hubspot_id == "9"
    call.cancel()
    call = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
    change = (await asyncio.wait_for(call.read(), 5)).change
    assert change.hubspot_id == "9" and change.delivery_attempt == 2
    call.cancel()


async def test_bad_subscribe_and_ack_are_invalid_argument(stub) -> None:  # type: ignore[no-untyped-def]
    call = stub.Subscribe(
        mapper_pb2.SubscribeRequest(consumer_group="", consumer="c", object_types=["tickets"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=["nope"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_push_validates_before_any_write(stub) -> None:  # type: ignore[no-untyped-def]
    fields = struct_pb2.Struct()
    fields.update({"birth_date": "not a date"})
    cases = [
        (mapper_pb2.PushRecordsRequest(portal_id=1, records=[]), {"request_id", "records"}),
        (
            mapper_pb2.PushRecordsRequest(
                request_id="r",
                portal_id=1,
                records=[mapper_pb2.ExternalRecord(object_type="tickets", external_id="t")],
            ),
            {"records[0].object_type"},
        ),
        (
            mapper_pb2.PushRecordsRequest(
                request_id="r",
                portal_id=1,
                records=[mapper_pb2.ExternalRecord(object_type="contacts", external_id="c", fields=fields)],
            ),
            {"records[0].fields.birth_date"},
        ),
    ]
    from google.rpc import error_details_pb2, status_pb2

    for request, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PushRecords(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        raw = dict(err.value.trailing_metadata())["grpc-status-details-bin"]
        violations: set[str] = set()
        for detail in status_pb2.Status.FromString(raw).details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations |= {v.field for v in bad.field_violations}
        assert expected <= violations, violations
