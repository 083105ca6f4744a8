"""Custom object types are learned on demand: a portal that syncs only standard types costs no
ListObjectTypes call, however many of its events mapper handles, and a custom object defined
after the portal's first events is learned when its first event names it (not dead-lettered)."""

from __future__ import annotations

from pathlib import Path

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.mapper.objecttypes import CUSTOM_TYPES
from tests.helpers.mapper import Suite, read_changes, suite
from tests.helpers.mapper_objects import define_subscription, mappings_dir

SCHEMAS = "GET /crm-object-schemas/v3/schemas"


async def schema_calls(s: Suite) -> int:
    """HubSpot schema listings so far: one per ListObjectTypes answered by writer."""
    return (await s.endpoint_counts()).get(SCHEMAS, 0)


async def test_standard_events_cost_no_type_listing_and_new_custom_types_are_learned_on_demand(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    CUSTOM_TYPES.reset()  # process-wide: what earlier tests learned must not count here
    async with (
        suite(redis_url, caller_tokens) as s,
        s.running_mapper(
            mappings_dir=mappings_dir(tmp_path),
            # A short refresh period: a per-portal refresh loop would show in the count.
            settings={"object_types_refresh_s": 0.05},
        ) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        contacts = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="crm", consumer="c1"))
        # Contact events in several turns: each reaches the feed; no schema listing at all.
        for i in range(3):
            await s.create_contact(email=f"p{i}@example.com", firstname=f"P{i}")
            await s.idle()
            (change,) = await read_changes(contacts, 1, timeout=30)
            assert change.object_type == "contacts"
            await stub.Ack(mapper_pb2.AckRequest(consumer_group="crm", ack_ids=[change.ack_id]))
        assert await schema_calls(s) == 0
        contacts.cancel()

        # A custom object defined now, after the portal's first events, and a record of it
        # made in HubSpot (no push learned its id): its event is learned on demand and
        # delivered under the mapping's name.
        type_id = await define_subscription(s)
        subs = stub.Subscribe(
            mapper_pb2.SubscribeRequest(
                consumer_group="billing", consumer="b1", object_types=["subscription"]
            )
        )
        made = await s.hubspot.post(
            f"/_sandbox/ui/{type_id}", json={"properties": {"plan": "pro", "sub_key": "s-9"}}
        )
        assert made.status_code == 200, made.text
        await s.idle()
        (change,) = await read_changes(subs, 1, timeout=30)
        assert change.object_type == "subscription" and change.hubspot_id == str(made.json()["id"])
        await stub.Ack(mapper_pb2.AckRequest(consumer_group="billing", ack_ids=[change.ack_id]))
        learned = await schema_calls(s)
        assert learned >= 1

        # An edit of that record: the id is known, so no new listing is needed for it.
        r = await s.hubspot.post(
            f"/_sandbox/ui/{type_id}/{change.hubspot_id}", json={"properties": {"plan": "team"}}
        )
        assert r.status_code == 200, r.text
        await s.idle()
        (edited,) = await read_changes(subs, 1, timeout=30)
        assert edited.object_type == "subscription" and edited.fields["plan"] == "team"
        subs.cancel()
