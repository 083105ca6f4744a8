"""Reconciliation of every object type (issue 15): a ticket and a custom object changed in HubSpot
without a webhook are found by a pass and reach the change feed once; the echo of hubsync's own
write to a ticket is not taken for a missed change.

Real sandbox, Redis, auth, writer, ingress and mapper, in-process.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from hubsync.api.ingress.v1 import ingress_pb2, ingress_pb2_grpc
from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.core.channels import open_channel
from hubsync.core.event_entries import decode_entry
from hubsync.ingress.reconciler import REPORT_TOLERANCE_MS, _modified_ms
from tests.helpers.mapper import no_more_changes, read_changes, suite
from tests.helpers.mapper_objects import (
    PORTAL,
    define_subscription,
    hubspot_object,
    objects_mapper,
    push,
    record,
)

EVENTS = f"hubsync:{{{PORTAL}}}:events"


async def test_tickets_and_custom_objects_changed_without_a_webhook_are_reconciled_once(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis, tmp_path: Path
) -> None:
    async with suite(redis_url, caller_tokens, real_ingress=True, search_index_lag_ms=0) as s:
        sub = s.sandbox.state.webhooks.subs[1001]
        before = list(sub.types)
        type_id = await define_subscription(s)
        async with (
            objects_mapper(s, redis_url, caller_tokens, tmp_path) as stub,
            open_channel(s.ingress_address, caller_tokens["cli"]) as ingress_channel,
        ):
            reconciler = ingress_pb2_grpc.IngressServiceStub(ingress_channel)
            feed = stub.Subscribe(
                mapper_pb2.SubscribeRequest(
                    consumer_group="g", consumer="c", object_types=["tickets", "subscription"]
                )
            )
            # hubsync writes a ticket and a subscription: their webhooks come back as echoes.
            reply = await push(
                stub,
                record("tickets", "t-1", title="Printer on fire", status="open"),
                record("subscription", "s-1", plan="pro", seats=5),
            )
            assert [r.outcome for r in reply.results] == [mapper_pb2.PUSH_OUTCOME_WRITTEN] * 2, reply
            ticket, subscription = reply.results[0].hubspot_id, reply.results[1].hubspot_id
            await s.idle()  # every echo webhook reached ingress
            await asyncio.sleep(0.01)  # the pass's window ends before now: let the clock pass the writes
            request = ingress_pb2.ReconcileRequest(portal_id=PORTAL, object_types=["tickets", type_id])
            echoes = await reconciler.Reconcile(request)
            assert echoes.scanned_count == 2
            assert echoes.found_count == 0, "hubsync's own writes taken for missed changes"

            # A person edits both in HubSpot, and HubSpot sends no webhook for either. The edits
            # come past the tolerance of the echoes' times (else they count as reported).
            written = [
                (await hubspot_object(s, t, i))["properties"]["hs_lastmodifieddate"]
                for t, i in (("tickets", ticket), (type_id, subscription))
            ]
            edit_after = max(_modified_ms(w) or 0 for w in written) + REPORT_TOLERANCE_MS
            while time.time() * 1000 <= edit_after:
                await asyncio.sleep(0.1)
            sub.set_types([t for t in before if not t.startswith("ticket.")])
            r = await s.hubspot.post(
                f"/_sandbox/ui/tickets/{ticket}", json={"properties": {"subject": "Printer fixed"}}
            )
            assert r.status_code == 200, r.text
            r = await s.hubspot.post(
                f"/_sandbox/ui/{type_id}/{subscription}", json={"properties": {"seats": "9"}}
            )
            assert r.status_code == 200, r.text
            await s.idle()
            await asyncio.sleep(0.01)
            missed = await reconciler.Reconcile(request)
            assert (missed.scanned_count, missed.found_count) == (2, 2)
            assert (await reconciler.Reconcile(request)).found_count == 0

            changes = await read_changes(feed, 2, 60)
            by_type = {c.object_type: c for c in changes}
            assert by_type["tickets"].hubspot_id == ticket
            assert by_type["tickets"].fields["title"] == "Printer fixed"
            assert by_type["subscription"].hubspot_id == subscription
            assert by_type["subscription"].fields["seats"] == 9
            await stub.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[c.ack_id for c in changes]))
            await no_more_changes(feed, 2.0)
            feed.cancel()

        # The synthetic events are the ones HubSpot would send for each type.
        entries: Any = await redis.xrange(EVENTS)
        found = [
            r.event for r in (decode_entry(i, f) for i, f in entries) if r.origin == "reconcile" and r.event
        ]
        shapes = sorted((e["subscriptionType"], e.get("objectTypeId"), e["objectId"]) for e in found)
        assert shapes == sorted(
            [
                ("ticket.propertyChange", None, int(ticket)),
                ("object.propertyChange", type_id, int(subscription)),
            ]
        )

        # A custom object by name would need HubSpot's schemas: ingress takes ids only, and says so.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with open_channel(s.ingress_address, caller_tokens["cli"]) as ingress_channel:
                await ingress_pb2_grpc.IngressServiceStub(ingress_channel).Reconcile(
                    ingress_pb2.ReconcileRequest(portal_id=PORTAL, object_types=["subscription"])
                )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "object_types" in str(err.value.trailing_metadata())
