"""The inbound pipeline under faults (issue 12): an unusable connection parks a portal instead of
retrying forever, what can never succeed is dead-lettered and can be replayed, hubsync's own
writes never come back through reconciliation, and a hung HubSpot read holds up only its batch.

Real auth, writer, mapper (and, for reconciliation, ingress) in-process against the sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from hubsync.api.ingress.v1 import ingress_pb2, ingress_pb2_grpc
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.telemetry import setup_tracing
from hubsync.mapper.settings import PACKAGED_MAPPINGS, MapperSettings
from hubsync.writer.settings import WriterSettings
from tests.helpers.auth import SANDBOX_PORTAL, register_sandbox_private_app
from tests.helpers.mapper import mark_ready, no_more_changes, read_changes, running_mapper, suite
from tests.helpers.mapper_objects import fields_struct
from tests.helpers.writer import writer_env

PORTAL = SANDBOX_PORTAL
EVENTS = f"hubsync:{{{PORTAL}}}:events"
PARKED = mapper_pb2.INBOUND_QUEUE_PARKED
DEAD = mapper_pb2.INBOUND_QUEUE_DEAD_LETTER


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def _consumed(redis: Redis, key: str = EVENTS) -> bool:
    """Mapper has read every entry of ``key`` and has none pending."""
    if not await redis.exists(key):
        return False
    for group in await redis.xinfo_groups(key):
        if group["name"] == b"mapper":
            last = group["last-delivered-id"]
            newest: Any = await redis.xrevrange(key, count=1)
            newest = newest[0][0]
            return bool(group["pending"] == 0 and last == newest)
    return False


async def _hubsync(mapper_address: str, token: str, *args: str) -> str:
    """Runs the ``hubsync`` command as an operator would; returns its output (exit status 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    env |= {"HUBSYNC_MAPPER_ADDRESS": mapper_address, "HUBSYNC_CLI_TOKEN": token, "COLUMNS": "250"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubsync.cli", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out + err).decode()
    return out.decode()


async def test_an_unconnected_portal_is_parked_then_delivered_once_when_connected(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("tests", exporter)
    async with (
        suite(redis_url, caller_tokens, connect=False) as s,
        running_mapper(
            redis_url,
            caller_tokens,
            writer_address=s.writer_address,
            visibility_timeout_ms=200,
            # Only auth's announcement can resume it within the test: no periodic re-check.
            settings={"parked_recheck_s": 3600},
        ) as mapper,
        open_channel(mapper.address, caller_tokens["cli"]) as channel,
        open_channel(mapper.address, caller_tokens["client"]) as feed_channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        feed = mapper_pb2_grpc.MapperServiceStub(feed_channel)  # the change feed is for clients
        hs_id = await s.create_contact(email="p@example.com", external_id="c-p", firstname="Parked")
        await s.idle()

        def attempts() -> int:
            return sum(
                1
                for sp in exporter.get_finished_spans()
                if sp.name == "mapper.inbound" and (sp.attributes or {}).get("hubsync.object_id") == hs_id
            )

        async def tried() -> bool:
            return attempts() >= 1

        await _until(tried, "the event was tried")
        # Ten visibility timeouts later it has not been tried again and again: it is parked.
        await asyncio.sleep(2.0)
        assert attempts() <= 2, f"{attempts()} hydration attempts: the event is retried in a loop"
        assert (await redis.xpending(EVENTS, "mapper"))["pending"] == 0

        (parked,) = (await stub.ListParkedPortals(mapper_pb2.ListParkedPortalsRequest())).portals
        assert parked.portal_id == PORTAL and parked.event_count >= 1 and parked.reason
        listed = await stub.ListInboundEvents(
            mapper_pb2.ListInboundEventsRequest(portal_id=PORTAL, queue=PARKED)
        )
        assert {json.loads(e.raw_event)["objectId"] for e in listed.events} == {int(hs_id)}
        assert all(e.reason == parked.reason for e in listed.events)

        # An operator's replay tries them again now: still not connected, still parked.
        before = attempts()
        replayed = await stub.ReplayInboundEvents(
            mapper_pb2.ReplayInboundEventsRequest(portal_id=PORTAL, queue=PARKED, all=True)
        )
        assert replayed.replayed_count == parked.event_count

        async def retried() -> bool:
            return attempts() > before

        await _until(retried, "the replay tried the parked events again")
        (still,) = (await stub.ListParkedPortals(mapper_pb2.ListParkedPortalsRequest())).portals
        assert still.event_count == parked.event_count

        call = feed.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        await register_sandbox_private_app(s.auth_address, caller_tokens)  # auth announces it
        (change,) = await read_changes(call, 1, 60)
        assert change.hubspot_id == hs_id and change.fields["first_name"] == "Parked"
        await feed.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[change.ack_id]))
        await no_more_changes(call)
        call.cancel()

        async def unparked() -> bool:
            reply = await stub.ListParkedPortals(mapper_pb2.ListParkedPortalsRequest())
            return not reply.portals

        await _until(unparked, "the portal was unparked")
        # New events flow again.
        later = await s.create_contact(email="q@example.com", external_id="c-q")
        call = feed.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        (change,) = await read_changes(call, 1, 60)
        assert change.hubspot_id == later
        call.cancel()


async def test_what_can_never_succeed_is_dead_lettered_and_replays(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis, tmp_path: Path
) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shutil.copy(PACKAGED_MAPPINGS / "contacts.yaml", mappings)  # no deals mapping yet
    async with (
        suite(redis_url, caller_tokens) as s,
        s.running_mapper(
            mappings_dir=mappings,
            visibility_timeout_ms=200,
            settings={"reload_interval_s": 0.2},
        ) as mapper,
        open_channel(mapper.address, caller_tokens["cli"]) as channel,
        open_channel(mapper.address, caller_tokens["client"]) as feed_channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        feed = mapper_pb2_grpc.MapperServiceStub(feed_channel)  # the change feed is for clients
        r = await s.hubspot.post(
            "/crm/v3/objects/deals", json={"properties": {"dealname": "Big", "external_id": "d-1"}}
        )
        assert r.status_code == 201, r.text
        deal = r.json()["id"]
        await s.idle()
        await redis.xadd(EVENTS, {"event": b"{not json", "origin": b"webhook"})
        unknown = {"portalId": PORTAL, "objectId": 5, "subscriptionType": "gizmo.creation", "occurredAt": 1}
        await redis.xadd(EVENTS, {"event": orjson.dumps(unknown), "origin": b"webhook"})
        await mark_ready(redis, PORTAL)
        # The pipeline goes on around them.
        call = feed.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        contact = await s.create_contact(email="ok@example.com", external_id="c-ok")
        (change,) = await read_changes(call, 1, 60)
        assert change.hubspot_id == contact
        await feed.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[change.ack_id]))

        async def consumed() -> bool:
            return await _consumed(redis)

        await _until(consumed, "mapper consumed every event")
        dead = (
            await stub.ListInboundEvents(mapper_pb2.ListInboundEventsRequest(portal_id=PORTAL, queue=DEAD))
        ).events
        reasons = {e.reason for e in dead}
        assert reasons == {"UNMAPPED_OBJECT_TYPE", "MALFORMED_ENTRY", "UNKNOWN_OBJECT_TYPE"}, dead
        malformed = next(e for e in dead if e.reason == "MALFORMED_ENTRY")
        shown = (
            await stub.GetInboundEvent(
                mapper_pb2.GetInboundEventRequest(portal_id=PORTAL, queue=DEAD, id=malformed.id)
            )
        ).event
        assert shown.raw_event == "{not json" and shown.event_stream_id and shown.detail
        deal_letters = [e.id for e in dead if e.reason == "UNMAPPED_OBJECT_TYPE"]
        assert all(json.loads(e.raw_event)["objectId"] == int(deal) for e in dead if e.id in deal_letters)

        # Only operators may see or touch them.
        async with open_channel(mapper.address, caller_tokens["client"]) as other:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await mapper_pb2_grpc.MapperServiceStub(other).PurgeInboundEvents(
                    mapper_pb2.PurgeInboundEventsRequest(portal_id=PORTAL, queue=DEAD, all=True)
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The operator's view: the CLI lists them with their reason.
        listed_by_cli = await _hubsync(
            mapper.address, caller_tokens["cli"], "inbound", "dlq", "list", "--portal", str(PORTAL)
        )
        assert "MALFORMED_ENTRY" in listed_by_cli and "UNMAPPED_OBJECT_TYPE" in listed_by_cli, listed_by_cli
        shown_by_cli = await _hubsync(
            mapper.address,
            caller_tokens["cli"],
            "inbound",
            "dlq",
            "show",
            "--portal",
            str(PORTAL),
            "--id",
            malformed.id,
        )
        assert json.loads(shown_by_cli)["reason"] == "MALFORMED_ENTRY"
        assert "portals with parked" in await _hubsync(
            mapper.address, caller_tokens["cli"], "inbound", "parked", "list"
        )

        # Once deals are mapped, replaying their dead letters delivers the deal, once.
        shutil.copy(PACKAGED_MAPPINGS / "deals.yaml", mappings)

        async def deals_mapped() -> bool:
            listed = await stub.ListMappings(mapper_pb2.ListMappingsRequest())
            return "deals" in {m.object_type for m in listed.mappings}

        await _until(deals_mapped, "the deals mapping was loaded")
        replayed = await stub.ReplayInboundEvents(
            mapper_pb2.ReplayInboundEventsRequest(portal_id=PORTAL, queue=DEAD, ids=deal_letters)
        )
        assert replayed.replayed_count == len(deal_letters)
        (change,) = await read_changes(call, 1, 60)
        assert change.object_type == "deals" and change.hubspot_id == deal and change.external_id == "d-1"
        await feed.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[change.ack_id]))
        await no_more_changes(call)
        call.cancel()
        purged = await stub.PurgeInboundEvents(
            mapper_pb2.PurgeInboundEventsRequest(portal_id=PORTAL, queue=DEAD, all=True)
        )
        assert purged.purged_count == 2
        left = await stub.ListInboundEvents(mapper_pb2.ListInboundEventsRequest(portal_id=PORTAL, queue=DEAD))
        assert not left.events


async def test_reconciliation_after_pushes_sends_nothing_to_the_feed(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    n = 20
    async with (
        suite(redis_url, caller_tokens, real_ingress=True, search_index_lag_ms=0) as s,
        running_mapper(redis_url, caller_tokens, writer_address=s.writer_address) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
        open_channel(s.ingress_address, caller_tokens["cli"]) as ingress_channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        records = [
            mapper_pb2.ExternalRecord(
                object_type="contacts",
                external_id=f"c-{i}",
                fields=fields_struct(email=f"r{i}@example.com", first_name=f"R{i}"),
            )
            for i in range(n)
        ]
        # Half answered once HubSpot has them, half once writer holds them (as the soak did).
        pushed = await stub.PushRecords(
            mapper_pb2.PushRecordsRequest(
                request_id="soak", portal_id=PORTAL, records=records[: n // 2], wait=True
            )
        )
        assert {r.outcome for r in pushed.results} == {mapper_pb2.PUSH_OUTCOME_WRITTEN}
        queued = await stub.PushRecords(
            mapper_pb2.PushRecordsRequest(request_id="soak-2", portal_id=PORTAL, records=records[n // 2 :])
        )
        assert {r.outcome for r in queued.results} <= {
            mapper_pb2.PUSH_OUTCOME_QUEUED,
            mapper_pb2.PUSH_OUTCOME_WRITTEN,
        }

        async def all_written() -> bool:
            listed = (await s.hubspot.get("/_sandbox/objects/contacts")).json()["results"]
            return len(listed) == n

        await _until(all_written, "writer wrote every queued record")
        await s.idle()  # every echo webhook reached ingress
        await asyncio.sleep(0.01)  # the pass's window ends before now: let the clock pass the writes
        reconciler = ingress_pb2_grpc.IngressServiceStub(ingress_channel)
        result = await reconciler.Reconcile(
            ingress_pb2.ReconcileRequest(portal_id=PORTAL, object_types=["contacts"])
        )
        assert result.scanned_count == n
        assert result.found_count == 0, "hubsync's own writes taken for missed changes"
        # Whatever did reach the event stream (nothing, or a reconciliation of an own write)
        # produces no change: mapper knows what hubsync wrote.
        hs_id = pushed.results[0].hubspot_id
        synthetic = {
            "portalId": PORTAL,
            "eventId": 0,
            "objectId": int(hs_id),
            "occurredAt": int(time.time() * 1000),
            "subscriptionType": "contact.propertyChange",
            "changeSource": "RECONCILIATION",
        }
        await redis.xadd(EVENTS, {"event": orjson.dumps(synthetic), "origin": b"reconcile"})
        await redis.sadd("hubsync:portals", str(PORTAL))  # type: ignore[misc]
        await mark_ready(redis, PORTAL)

        async def consumed() -> bool:
            return await _consumed(redis)

        await _until(consumed, "mapper consumed every event")
        assert await redis.xlen(f"hubsync:{{{PORTAL}}}:feed:contacts") == 0


def test_mapper_read_deadline_nests_around_writers_hubspot_timeout() -> None:
    # Writer's HubSpot call may time out once and be retried (or split) inside mapper's deadline:
    # the first call is cut at its share of the deadline (or writer's own timeout), and the halves
    # read again get their share of what is left, all before mapper gives up. On the old settings
    # the deadline equalled writer's timeout: the hung call used all of it and no retry ran.
    writer = WriterSettings()
    deadline = MapperSettings().hydrate_deadline_s
    first_cut = min(writer.http_timeout_s, writer.http_deadline_share * deadline)
    retry = min(writer.http_timeout_s, writer.http_deadline_share * (deadline - first_cut))
    assert first_cut + retry < deadline
    assert retry >= 2.0  # a real retry, not a token one


async def test_a_hung_read_holds_up_only_its_own_batch(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with (
        suite(redis_url, caller_tokens, writer_env=writer_env(http_timeout_s=5)) as s,
        running_mapper(
            redis_url,
            caller_tokens,
            writer_address=s.writer_address,
            settings={"stalled_batch_ms": 200},
        ) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        call = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        rule = {"endpoint": "POST /crm/v3/objects/{objectType}/batch/read", "timeout_s": 10, "remaining": 1}
        r = await s.hubspot.post("/_sandbox/faults", json=rule)
        assert r.status_code in (200, 201), r.text
        hung = await s.create_contact(email="hung@example.com", external_id="c-hung")

        async def hanging() -> bool:
            rules = (await s.hubspot.get("/_sandbox/faults")).json()["results"]
            return all(f["remaining"] == 0 for f in rules)

        await _until(hanging, "the first batch/read is held")
        others = [await s.create_contact(email=f"o{i}@example.com", external_id=f"c-o{i}") for i in range(3)]
        changes = await read_changes(call, 4, 60)
        order = [c.hubspot_id for c in changes]
        # The others' batches went past the held one; it came once writer's retry read it.
        assert order[-1] == hung, order
        assert sorted(order[:3]) == sorted(others)
        assert changes[-1].external_id == "c-hung"
        call.cancel()


async def test_a_reconciled_record_holding_what_writer_wrote_for_a_queued_push_is_not_published(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    # The chaos soak: a dead writer's batch, taken over 30 s later, sent values HubSpot already
    # held; that moved the records' modification time without a webhook, the reconciler reported
    # them (it cannot know the values are the same), and mapper published them as UPDATED: it
    # keeps fingerprints only for pushes answered WRITTEN, not for those answered QUEUED.
    async with (
        suite(redis_url, caller_tokens) as s,
        running_mapper(redis_url, caller_tokens, writer_address=s.writer_address) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        record = mapper_pb2.ExternalRecord(
            object_type="contacts",
            external_id="c-q",
            fields=fields_struct(email="q@example.com", first_name="Q"),
        )
        queued = await stub.PushRecords(
            mapper_pb2.PushRecordsRequest(request_id="queued", portal_id=PORTAL, records=[record])
        )
        assert [r.outcome for r in queued.results] == [mapper_pb2.PUSH_OUTCOME_QUEUED]

        async def written() -> bool:
            return bool((await s.hubspot.get("/_sandbox/objects/contacts")).json()["results"])

        await _until(written, "writer wrote the queued record")
        (contact,) = (await s.hubspot.get("/_sandbox/objects/contacts")).json()["results"]
        await s.idle()
        call = stub.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        reconciled = {
            "portalId": PORTAL,
            "eventId": 0,
            "objectId": int(contact["id"]),
            "occurredAt": int(time.time() * 1000),
            "subscriptionType": "contact.propertyChange",
            "changeSource": "RECONCILIATION",
        }
        await redis.xadd(EVENTS, {"event": orjson.dumps(reconciled), "origin": b"reconcile"})
        await redis.sadd("hubsync:portals", str(PORTAL))  # type: ignore[misc]
        await mark_ready(redis, PORTAL)
        # A real change after it is published: the feed works, and nothing came before it.
        edited = await s.hubspot.post(
            f"/_sandbox/ui/contacts/{contact['id']}", json={"properties": {"firstname": "Edited"}}
        )
        assert edited.status_code < 300, edited.text
        (change,) = await read_changes(call, 1, 60)
        assert change.fields["first_name"] == "Edited", change
        assert list(change.changed_fields) == ["first_name"]
        call.cancel()
