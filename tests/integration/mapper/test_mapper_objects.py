"""The mapper with every object type: a custom object defined in the sandbox, mapped from YAML,
pushed, edited in the sandbox "UI" and delivered on the feed; tickets in a pipeline with stage
mapping; notes associated to contacts in one push."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.mapper.settings import PACKAGED_MAPPINGS
from tests.integration.auth.fixtures import SANDBOX_PORTAL
from tests.integration.mapper.fixtures import Suite, read_changes, running_mapper, suite

PORTAL = SANDBOX_PORTAL

SCHEMA = {
    "name": "subscription",
    "labels": {"singular": "Subscription", "plural": "Subscriptions"},
    "primaryDisplayProperty": "plan",
    "requiredProperties": ["plan"],
    "properties": [
        {"name": "plan", "label": "Plan", "type": "string", "fieldType": "text"},
        {"name": "seats", "label": "Seats", "type": "number", "fieldType": "number"},
        {"name": "sub_key", "label": "Key", "type": "string", "fieldType": "text", "hasUniqueValue": True},
    ],
    "associatedObjects": ["CONTACT"],
}

MAPPINGS = {
    "subscription.yaml": """
object_type: subscription
id: {external: id, hubspot: sub_key}
fields:
  - {hubspot: plan, external: plan}
  - {hubspot: seats, external: seats, transform: integer}
associations:
  - {external: owner_id, to: contacts}
""",
    "tickets.yaml": """
object_type: ticket
id: {external: id, hubspot: external_id}
deletes: any
fields:
  - {hubspot: subject, external: title}
  - {hubspot: hs_pipeline_stage, external: status, transform: enum, pipeline: "0",
     values: {"1": open, "2": waiting, "4": done}}
""",
    "notes.yaml": """
object_type: notes
id: {external: id, hubspot: external_id}
deletes: owned
fields:
  - {hubspot: hs_note_body, external: text}
  - {hubspot: hs_timestamp, external: at, transform: datetime}
associations:
  - {external: contact_id, to: contacts}
""",
}


def _fields(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def _record(object_type: str, external_id: str, **fields: Any) -> mapper_pb2.ExternalRecord:
    return mapper_pb2.ExternalRecord(
        object_type=object_type, external_id=external_id, fields=_fields(**fields)
    )


async def _push(stub: mapper_pb2_grpc.MapperServiceStub, *records: mapper_pb2.ExternalRecord) -> Any:
    return await stub.PushRecords(
        mapper_pb2.PushRecordsRequest(
            request_id=str(uuid.uuid4()), portal_id=PORTAL, records=list(records), wait=True
        ),
        timeout=60,
    )


def _mappings_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mappings"
    d.mkdir()
    for src in PACKAGED_MAPPINGS.glob("*.yaml"):
        (d / src.name).write_text(src.read_text())
    for name, text in MAPPINGS.items():
        (d / name).write_text(text)
    return d


async def _object(s: Suite, object_type: str, hs_id: str) -> dict[str, Any]:
    r = await s.hubspot.get(f"/_sandbox/objects/{object_type}/{hs_id}", params={"portal": PORTAL})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def define_subscription(s: Suite) -> str:
    """Defines the subscription custom object and subscribes to its generic events: its type id."""
    made = await s.hubspot.post("/crm/v3/schemas", json=SCHEMA)
    assert made.status_code == 201, made.text
    type_id: str = made.json()["objectTypeId"]
    # Custom objects' events come through the generic subscriptions, by type id.
    sub = s.sandbox.state.webhooks.subs[1001]
    sub.set_types([*sub.types, f"object.creation@{type_id}", f"object.propertyChange@{type_id}"])
    return type_id


async def test_custom_object_mapped_pushed_edited_in_the_ui_and_delivered_on_the_feed(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    async with suite(redis_url, caller_tokens) as s:
        type_id = await define_subscription(s)
        async with (
            running_mapper(
                redis_url,
                caller_tokens,
                writer_address=s.writer_address,
                mappings_dir=_mappings_dir(tmp_path),
            ) as mapper,
            open_channel(mapper.address, caller_tokens["client"]) as channel,
        ):
            stub = mapper_pb2_grpc.MapperServiceStub(channel)
            feed = stub.Subscribe(
                mapper_pb2.SubscribeRequest(
                    consumer_group="billing", consumer="b1", object_types=["subscription"]
                )
            )
            reply = await _push(
                stub,
                _record("contacts", "c-1", email="owner@example.com", first_name="Own"),
                _record("subscription", "s-1", plan="pro", seats=5, owner_id="c-1"),
            )
            assert [r.outcome for r in reply.results] == [mapper_pb2.PUSH_OUTCOME_WRITTEN] * 2, reply
            hs_id = reply.results[1].hubspot_id
            rec = await _object(s, type_id, hs_id)
            assert rec["properties"]["plan"] == "pro" and rec["properties"]["sub_key"] == "s-1"
            assert [a["id"] for a in rec["associations"]["contacts"]] == [reply.results[0].hubspot_id]

            # A person edits the record in HubSpot: the change reaches the subscriber, in its shape.
            r = await s.hubspot.post(f"/_sandbox/ui/{type_id}/{hs_id}", json={"properties": {"seats": "9"}})
            assert r.status_code == 200, r.text
            await s.idle()
            seen: list[Any] = []
            for _ in range(5):
                (change,) = await read_changes(feed, 1, timeout=20)
                seen.append(change)
                await stub.Ack(mapper_pb2.AckRequest(consumer_group="billing", ack_ids=[change.ack_id]))
                if change.fields["seats"] == 9:
                    break
            last = seen[-1]
            assert last.object_type == "subscription" and last.hubspot_id == hs_id
            assert last.external_id == "s-1" and last.fields["plan"] == "pro" and last.fields["seats"] == 9
            feed.cancel()


async def test_tickets_with_stage_mapping_and_notes_associated_to_contacts(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    async with (
        suite(redis_url, caller_tokens) as s,
        running_mapper(
            redis_url,
            caller_tokens,
            writer_address=s.writer_address,
            mappings_dir=_mappings_dir(tmp_path),
            inbound_enabled=False,
        ) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        reply = await _push(
            stub,
            _record("tickets", "t-1", title="Printer on fire", status="done"),
            _record("contacts", "c-1", email="n@example.com"),
            _record(
                "notes", "n-1", text="Called about the printer", at="2024-05-01T10:00:00Z", contact_id="c-1"
            ),
        )
        assert [r.outcome for r in reply.results] == [mapper_pb2.PUSH_OUTCOME_WRITTEN] * 3, reply
        ticket = await _object(s, "tickets", reply.results[0].hubspot_id)
        assert ticket["properties"]["hs_pipeline_stage"] == "4" and ticket["properties"]["hs_pipeline"] == "0"
        note = await _object(s, "notes", reply.results[2].hubspot_id)
        assert [a["id"] for a in note["associations"]["contacts"]] == [reply.results[1].hubspot_id]

        # A stage the pipeline's mapping does not know: refused, naming pipeline and stage.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _push(stub, _record("tickets", "t-2", title="x", status="escalated"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = str(err.value.trailing_metadata())
        assert "escalated" in details and "pipeline '0'" in details


async def test_pushed_deletions_follow_the_mappings_ownership_rule(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    async with (
        suite(redis_url, caller_tokens) as s,
        running_mapper(
            redis_url,
            caller_tokens,
            writer_address=s.writer_address,
            mappings_dir=_mappings_dir(tmp_path),
            inbound_enabled=False,
        ) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        made = await _push(
            stub,
            _record("tickets", "t-1", title="Old", status="open"),
            _record("notes", "n-1", text="ours", at="2024-05-01T10:00:00Z"),
        )
        ticket_id, note_id = made.results[0].hubspot_id, made.results[1].hubspot_id
        # A note someone else created in HubSpot, with an external id the company also uses.
        r = await s.hubspot.post(
            "/crm/v3/objects/notes",
            json={
                "properties": {
                    "hs_note_body": "theirs",
                    "hs_timestamp": "1700000000000",
                    "external_id": "n-2",
                }
            },
        )
        assert r.status_code == 201, r.text
        theirs = r.json()["id"]

        gone = mapper_pb2.ExternalRecord(object_type="tickets", external_id="t-1", deleted=True)
        ours = mapper_pb2.ExternalRecord(object_type="notes", external_id="n-1", deleted=True)
        not_ours = mapper_pb2.ExternalRecord(object_type="notes", external_id="n-2", deleted=True)
        reply = await _push(stub, gone, ours, not_ours)
        outcomes = [r.outcome for r in reply.results]
        assert outcomes == [
            mapper_pb2.PUSH_OUTCOME_WRITTEN,
            mapper_pb2.PUSH_OUTCOME_WRITTEN,
            mapper_pb2.PUSH_OUTCOME_FAILED,
        ]
        assert "deletes: owned" in reply.results[2].error
        assert (await _object(s, "tickets", ticket_id))["archived"] is True
        assert (await _object(s, "notes", note_id))["archived"] is True
        assert (await _object(s, "notes", theirs))["archived"] is False
        log = (await s.hubspot.get("/_sandbox/requests")).json()["counts"]["byEndpointAndStatus"]
        assert log["POST /crm/v3/objects/{objectType}/batch/archive"] == {"204": 2}

        # The default contacts mapping allows no deletes at all.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _push(
                stub, mapper_pb2.ExternalRecord(object_type="contacts", external_id="c-1", deleted=True)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not allow deletes" in str(err.value.trailing_metadata())
