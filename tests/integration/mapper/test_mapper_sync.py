"""Both pipelines against the sandbox, with real auth and writer in-process.

Ingress is stood in for by ``ingress_standin`` (a webhook target that appends every delivery to
the event streams as ingress does, without its dedupe), so duplicates do reach the mapper.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from google.protobuf import duration_pb2, struct_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.telemetry import setup_tracing
from tests.helpers.auth import SANDBOX_PORTAL
from tests.helpers.mapper import (
    Suite,
    mapper_process,
    no_more_changes,
    read_changes,
    running_mapper,
    suite,
)
from tests.helpers.mapper_objects import fields_struct, push, record

PORTAL = SANDBOX_PORTAL


@asynccontextmanager
async def mapped_suite(
    redis_url: str, caller_tokens: dict[str, str], *, inbound: bool = True
) -> AsyncIterator[tuple[Suite, mapper_pb2_grpc.MapperServiceStub]]:
    """The suite plus an in-process mapper and a client stub for it."""
    async with (
        suite(redis_url, caller_tokens) as s,
        running_mapper(
            redis_url, caller_tokens, writer_address=s.writer_address, inbound_enabled=inbound
        ) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        yield s, mapper_pb2_grpc.MapperServiceStub(channel)


async def test_ui_edit_reaches_subscriber_once_despite_duplicates_and_a_killed_mapper(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis, tmp_path: Path
) -> None:
    async with suite(redis_url, caller_tokens, webhook_duplicate_probability=1.0) as s:
        hs_id = await s.create_contact(email="ada@example.com", external_id="c-1")
        r = await s.hubspot.post(
            f"/_sandbox/ui/contacts/{hs_id}", json={"properties": {"firstname": "Ada", "lastname": "L"}}
        )
        assert r.status_code == 200
        await s.idle()
        stream = f"hubsync:{{{PORTAL}}}:events"
        total = await redis.xlen(stream)
        assert total >= 10  # creation + 2 property changes + 2 UI edits, each delivered twice
        # A mapper process reads the events, then dies before it publishes (long coalesce window).
        async with mapper_process(
            redis_url,
            caller_tokens,
            writer_address=s.writer_address,
            log_dir=tmp_path,
            consumer_name="doomed",
            env={"HUBSYNC_MAPPER_COALESCE_WINDOW_MS": "60000"},
        ) as proc:
            for _ in range(200):
                pending = await redis.xpending(stream, "mapper") if await redis.exists(stream) else None
                consumers = {c["name"]: c["pending"] for c in (pending or {}).get("consumers") or []}
                if consumers.get(b"doomed") == total:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the doomed mapper never read the events")
            proc.kill()
            await proc.wait()
        assert await redis.xlen(f"hubsync:{{{PORTAL}}}:feed:contacts") == 0
        # A healthy replica claims the dead consumer's entries after the visibility timeout.
        async with (
            running_mapper(
                redis_url, caller_tokens, writer_address=s.writer_address, visibility_timeout_ms=500
            ) as mapper,
            open_channel(mapper.address, caller_tokens["client"]) as channel,
        ):
            stub = mapper_pb2_grpc.MapperServiceStub(channel)
            call = stub.Subscribe(
                mapper_pb2.SubscribeRequest(
                    consumer_group="crm-mirror", consumer="m1", object_types=["contacts"]
                )
            )
            # Creation and edit were read in one batch: one change, the record as it is now.
            changes = await read_changes(call, 1)
            (change,) = changes
            assert change.kind == mapper_pb2.CHANGE_KIND_CREATED
            assert change.hubspot_id == hs_id and change.external_id == "c-1"
            assert change.fields["first_name"] == "Ada" and change.fields["last_name"] == "L"
            assert {"first_name", "last_name"} <= set(change.changed_fields)
            await stub.Ack(
                mapper_pb2.AckRequest(consumer_group="crm-mirror", ack_ids=[c.ack_id for c in changes])
            )
            await no_more_changes(call)
            call.cancel()
        # Every event, duplicates included, was consumed and acked.
        pending = await redis.xpending(f"hubsync:{{{PORTAL}}}:events", "mapper")
        assert pending["pending"] == 0


async def test_inbound_span_continues_the_ingress_trace(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("tests", exporter)
    async with mapped_suite(redis_url, caller_tokens) as (s, stub):
        call = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        await s.create_contact(email="t@example.com", external_id="c-t", firstname="T")
        (change,) = await read_changes(call, 1)
        call.cancel()
    spans = exporter.get_finished_spans()
    ingress = [sp for sp in spans if sp.name == "ingress.webhook"]
    inbound = [sp for sp in spans if sp.name == "mapper.inbound"]
    assert ingress and inbound
    trace_ids = {format(sp.context.trace_id, "032x") for sp in ingress}
    assert format(inbound[0].context.trace_id, "032x") in trace_ids
    assert change.trace_id in trace_ids


@pytest.mark.on_cluster
async def test_push_writes_and_an_identical_push_costs_nothing(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with mapped_suite(redis_url, caller_tokens, inbound=False) as (s, stub):
        records = [
            mapper_pb2.ExternalRecord(
                object_type="companies", external_id="co-1", fields=fields_struct(name="Acme")
            ),
            mapper_pb2.ExternalRecord(
                object_type="contacts",
                external_id="c-1",
                fields=fields_struct(
                    first_name="Ada",
                    email="ada@example.com",
                    company_id="co-1",
                    additional_emails=["a@x.io", "b@x.io"],
                    email_opt_out=False,
                ),
            ),
        ]
        first = await stub.PushRecords(
            mapper_pb2.PushRecordsRequest(request_id="r1", portal_id=PORTAL, records=records, wait=True)
        )
        assert [r.outcome for r in first.results] == [mapper_pb2.PUSH_OUTCOME_WRITTEN] * 2, first
        contact = await s.contact(first.results[1].hubspot_id)
        assert contact["properties"]["firstname"] == "Ada"
        # companies were written before contacts, and the association after both.
        assert [a["id"] for a in contact["associations"]["companies"]] == [first.results[0].hubspot_id]
        assert contact["properties"]["hs_additional_emails"] == "a@x.io;b@x.io"
        # The same request again answers the first result; a new identical push is unchanged.
        before = await s.request_total()
        again = await stub.PushRecords(
            mapper_pb2.PushRecordsRequest(request_id="r1", portal_id=PORTAL, records=records, wait=True)
        )
        assert again == first
        second = await stub.PushRecords(
            mapper_pb2.PushRecordsRequest(request_id="r2", portal_id=PORTAL, records=records, wait=True)
        )
        assert [r.outcome for r in second.results] == [mapper_pb2.PUSH_OUTCOME_UNCHANGED] * 2
        assert await s.request_total() == before, "an unchanged push must make no HubSpot call"


async def test_a_hubspot_owned_field_is_never_overwritten(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with mapped_suite(redis_url, caller_tokens, inbound=False) as (s, stub):
        hs_id = await s.create_contact(email="o@example.com", external_id="c-o", lifecyclestage="customer")
        reply = await push(stub, record("contacts", "c-o", first_name="Olga", lifecycle_stage="lead"))
        assert reply.results[0].outcome == mapper_pb2.PUSH_OUTCOME_WRITTEN
        assert reply.results[0].hubspot_id == hs_id
        props = (await s.contact(hs_id))["properties"]
        assert props["firstname"] == "Olga"
        assert props["lifecyclestage"] == "customer"


@pytest.mark.on_cluster
async def test_a_two_way_edit_does_not_loop(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with mapped_suite(redis_url, caller_tokens) as (s, stub):
        hs_id = await s.create_contact(email="w@example.com", external_id="c-w", firstname="W")
        call = stub.Subscribe(
            mapper_pb2.SubscribeRequest(
                consumer_group="two-way", consumer="c", visibility_timeout=duration_pb2.Duration(seconds=60)
            )
        )
        await s.hubspot.post(f"/_sandbox/ui/contacts/{hs_id}", json={"properties": {"lastname": "Ui"}})
        await s.idle()
        upserts_before = (await s.endpoint_counts()).get("POST /crm/v3/objects/{objectType}/batch/upsert", 0)
        # A two-way client mirrors every change back; the echoes must die out, not ping-pong.
        rounds = 0
        while True:
            try:
                msg = await asyncio.wait_for(call.read(), 2.0)
            except TimeoutError:
                break
            change = msg.change
            rounds += 1
            assert rounds < 10, "changes keep coming: a loop"
            fields = dict(change.fields)
            fields["job_title"] = "Engineer"  # the client's own edit, made once
            reply = await push(stub, record("contacts", change.external_id, **fields))
            assert reply.results[0].outcome != mapper_pb2.PUSH_OUTCOME_FAILED, reply
            await stub.Ack(mapper_pb2.AckRequest(consumer_group="two-way", ack_ids=[change.ack_id]))
            await s.idle()
        call.cancel()
        upserts = (await s.endpoint_counts()).get("POST /crm/v3/objects/{objectType}/batch/upsert", 0)
        assert upserts - upserts_before == 1, "only the client's own edit is written, once"
        props = (await s.contact(hs_id))["properties"]
        assert props["lastname"] == "Ui" and props["jobtitle"] == "Engineer"


@pytest.mark.parametrize("kind", ["deletion", "merge", "restore", "association"])
async def test_deletions_and_merges_reach_the_feed(
    redis_url: str, caller_tokens: dict[str, str], kind: str
) -> None:
    async with mapped_suite(redis_url, caller_tokens) as (s, stub):
        a = await s.create_contact(email="a@example.com", external_id="c-a")
        b = await s.create_contact(email="b@example.com", external_id="c-b")
        await s.idle()
        call = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        seen = await read_changes(call, 2)
        await stub.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[c.ack_id for c in seen]))
        if kind == "deletion":
            assert (await s.hubspot.delete(f"/_sandbox/ui/contacts/{a}")).status_code == 200
            (change,) = await read_changes(call, 1)
            assert change.kind == mapper_pb2.CHANGE_KIND_DELETED
            assert change.hubspot_id == a and change.external_id == "c-a"
        elif kind == "restore":
            assert (await s.hubspot.delete(f"/_sandbox/ui/contacts/{a}")).status_code == 200
            await read_changes(call, 1)  # the deletion
            assert (await s.hubspot.post(f"/_sandbox/ui/contacts/{a}/restore")).status_code == 200
            (restored,) = await read_changes(call, 1)
            assert restored.kind == mapper_pb2.CHANGE_KIND_RESTORED
            assert restored.external_id == "c-a" and restored.fields["email"] == "a@example.com"
        elif kind == "association":
            co = (
                await s.hubspot.post("/crm/v3/objects/companies", json={"properties": {"name": "Acme"}})
            ).json()
            r = await s.hubspot.post(
                "/_sandbox/ui/associations",
                json={
                    "fromObjectType": "contacts",
                    "fromObjectId": a,
                    "toObjectType": "companies",
                    "toObjectId": co["id"],
                },
            )
            assert r.status_code == 200, r.text
            await s.idle()
            changes = await read_changes(call, 3)
            assoc = next(
                c
                for c in changes
                if c.kind == mapper_pb2.CHANGE_KIND_ASSOCIATION_CHANGED and c.object_type == "contacts"
            )
            assert assoc.hubspot_id == a and list(assoc.related_ids) == [str(co["id"])]
        else:
            r = await s.hubspot.post(
                "/_sandbox/ui/contacts/merge", json={"primaryObjectId": a, "objectIdToMerge": b}
            )
            assert r.status_code == 200, r.text
            await s.idle()
            changes = await read_changes(call, 1)
            merged = next(c for c in changes if c.kind == mapper_pb2.CHANGE_KIND_MERGED)
            assert merged.hubspot_id == a and list(merged.related_ids) == [b]
        call.cancel()


async def test_validate_and_suggest_against_the_portals_properties(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with mapped_suite(redis_url, caller_tokens, inbound=False) as (_suite, stub):
        bad = await stub.ValidateMapping(
            mapper_pb2.ValidateMappingRequest(
                source="people.yaml",
                portal_id=PORTAL,
                yaml="object_type: contacts\nid: {external: id, hubspot: firstname}\nfields:\n"
                "  - {hubspot: first_name, external: a}\n"
                "  - {hubspot: hs_email_optout, external: b, transform: date}\n",
            )
        )
        assert not bad.valid
        text = "\n".join(bad.errors)
        assert "id.hubspot: property 'firstname' is not unique" in text
        assert (
            "fields[0].hubspot: property 'first_name' does not exist in portal 12345 "
            "(did you mean 'firstname'?)" in text
        )
        assert "fields[1].hubspot: property 'hs_email_optout' has type bool" in text
        schema = struct_pb2.Struct()
        schema.update(
            {"id": {"type": "string"}, "first_name": {"type": "string"}, "shoe_size": {"type": "number"}}
        )
        suggestion = await stub.SuggestMapping(
            mapper_pb2.SuggestMappingRequest(portal_id=PORTAL, object_type="contacts", external_schema=schema)
        )
        assert list(suggestion.unmatched_fields) == ["shoe_size"]
        checked = await stub.ValidateMapping(
            mapper_pb2.ValidateMappingRequest(yaml=suggestion.yaml, portal_id=PORTAL, source="suggested.yaml")
        )
        assert checked.valid, checked.errors


async def test_two_replicas_in_one_group_publish_each_change_once(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    async with (
        suite(redis_url, caller_tokens, webhook_duplicate_probability=1.0) as s,
        running_mapper(redis_url, caller_tokens, writer_address=s.writer_address, consumer_name="a") as one,
        running_mapper(redis_url, caller_tokens, writer_address=s.writer_address, consumer_name="b"),
        open_channel(one.address, caller_tokens["client"]) as channel,
    ):
        inputs = [{"properties": {"email": f"r{i}@example.com", "external_id": f"r-{i}"}} for i in range(40)]
        r = await s.hubspot.post("/crm/v3/objects/contacts/batch/create", json={"inputs": inputs})
        assert r.status_code in (200, 201), r.text
        await s.idle()
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        call = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        seen: list[str] = []
        while True:
            try:
                msg = await asyncio.wait_for(call.read(), 3.0)
            except TimeoutError:
                break
            seen.append(msg.change.external_id)
            await stub.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[msg.change.ack_id]))
        call.cancel()
        assert sorted(seen) == sorted(f"r-{i}" for i in range(40)), "each record once"
        assert (await redis.xpending(f"hubsync:{{{PORTAL}}}:events", "mapper"))["pending"] == 0


async def test_concurrent_retries_of_one_push_write_once(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with mapped_suite(redis_url, caller_tokens, inbound=False) as (s, stub):
        request = mapper_pb2.PushRecordsRequest(
            request_id="same",
            portal_id=PORTAL,
            wait=True,
            records=[
                mapper_pb2.ExternalRecord(
                    object_type="deals", external_id="d-1", fields=fields_struct(name="Big")
                )
            ],
        )
        replies = await asyncio.gather(*(stub.PushRecords(request) for _ in range(5)))
        assert all(r == replies[0] for r in replies)
        assert replies[0].results[0].outcome == mapper_pb2.PUSH_OUTCOME_WRITTEN
        counts = await s.endpoint_counts()
        assert counts.get("POST /crm/v3/objects/{objectType}/batch/upsert") == 1
