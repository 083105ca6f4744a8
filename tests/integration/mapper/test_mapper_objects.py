"""The mapper with every object type: a custom object defined in the sandbox, mapped from YAML,
pushed, edited in the sandbox "UI" and delivered on the feed; tickets in a pipeline with stage
mapping; notes associated to contacts in one push."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from hubsync.api.mapper.v1 import mapper_pb2
from tests.helpers.mapper import read_changes, suite
from tests.helpers.mapper_objects import (
    define_subscription,
    hubspot_object,
    objects_mapper,
    push,
    record,
)


async def test_custom_object_mapped_pushed_edited_in_the_ui_and_delivered_on_the_feed(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    async with suite(redis_url, caller_tokens) as s:
        type_id = await define_subscription(s)
        async with objects_mapper(s, redis_url, caller_tokens, tmp_path) as stub:
            feed = stub.Subscribe(
                mapper_pb2.SubscribeRequest(
                    consumer_group="billing", consumer="b1", object_types=["subscription"]
                )
            )
            reply = await push(
                stub,
                record("contacts", "c-1", email="owner@example.com", first_name="Own"),
                record("subscription", "s-1", plan="pro", seats=5, owner_id="c-1"),
            )
            assert [r.outcome for r in reply.results] == [mapper_pb2.PUSH_OUTCOME_WRITTEN] * 2, reply
            hs_id = reply.results[1].hubspot_id
            rec = await hubspot_object(s, type_id, hs_id)
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
        objects_mapper(s, redis_url, caller_tokens, tmp_path, inbound_enabled=False) as stub,
    ):
        reply = await push(
            stub,
            record("tickets", "t-1", title="Printer on fire", status="done"),
            record("contacts", "c-1", email="n@example.com"),
            record(
                "notes", "n-1", text="Called about the printer", at="2024-05-01T10:00:00Z", contact_id="c-1"
            ),
        )
        assert [r.outcome for r in reply.results] == [mapper_pb2.PUSH_OUTCOME_WRITTEN] * 3, reply
        ticket = await hubspot_object(s, "tickets", reply.results[0].hubspot_id)
        assert ticket["properties"]["hs_pipeline_stage"] == "4" and ticket["properties"]["hs_pipeline"] == "0"
        note = await hubspot_object(s, "notes", reply.results[2].hubspot_id)
        assert [a["id"] for a in note["associations"]["contacts"]] == [reply.results[1].hubspot_id]

        # A stage the pipeline's mapping does not know: refused, naming pipeline and stage.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await push(stub, record("tickets", "t-2", title="x", status="escalated"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = str(err.value.trailing_metadata())
        assert "escalated" in details and "pipeline '0'" in details


async def test_pushed_deletions_follow_the_mappings_ownership_rule(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    async with (
        suite(redis_url, caller_tokens) as s,
        objects_mapper(s, redis_url, caller_tokens, tmp_path, inbound_enabled=False) as stub,
    ):
        made = await push(
            stub,
            record("tickets", "t-1", title="Old", status="open"),
            record("notes", "n-1", text="ours", at="2024-05-01T10:00:00Z"),
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
        reply = await push(stub, gone, ours, not_ours)
        outcomes = [r.outcome for r in reply.results]
        assert outcomes == [
            mapper_pb2.PUSH_OUTCOME_WRITTEN,
            mapper_pb2.PUSH_OUTCOME_WRITTEN,
            mapper_pb2.PUSH_OUTCOME_FAILED,
        ]
        assert "deletes: owned" in reply.results[2].error
        assert (await hubspot_object(s, "tickets", ticket_id))["archived"] is True
        assert (await hubspot_object(s, "notes", note_id))["archived"] is True
        assert (await hubspot_object(s, "notes", theirs))["archived"] is False
        log = (await s.hubspot.get("/_sandbox/requests")).json()["counts"]["byEndpointAndStatus"]
        assert log["POST /crm/v3/objects/{objectType}/batch/archive"] == {"204": 2}

        # The default contacts mapping allows no deletes at all.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await push(
                stub, mapper_pb2.ExternalRecord(object_type="contacts", external_id="c-1", deleted=True)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not allow deletes" in str(err.value.trailing_metadata())
