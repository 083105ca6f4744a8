"""A portal whose daily HubSpot quota is spent waits for its reset (issue 13): mapper parks it
until the time writer names, reads nothing of it meanwhile, keeps its events in order, and
delivers them after the reset; the other portals keep flowing.

Real auth, writer, mapper in-process against the sandbox; the sandbox answers the blocked
portal's reads ``429 DAILY`` (its ``daily_limit`` spent). The reset is made to come soon by
writer's ``DAILY_RESET_TIMEZONE`` (a fixed offset whose midnight is a few seconds away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.keys import events_key, inbound_parked_key
from hubsync.core.telemetry import setup_tracing
from tests.helpers.auth import SANDBOX_PORTAL, register_sandbox_private_app
from tests.helpers.mapper import fast_portals, mark_ready, running_mapper, suite
from tests.helpers.writer import writer_env

BLOCKED = SANDBOX_PORTAL
OTHER = 23456
OTHER_TOKEN = "pat-na1-00000000-0000-4000-8000-000000023456"
PARKED = mapper_pb2.INBOUND_QUEUE_PARKED
DEAD = mapper_pb2.INBOUND_QUEUE_DEAD_LETTER
# How far ahead writer's daily reset is put: long enough for the stack to start and the block to
# be seen, short enough for a test.
RESET_IN_S = 40


async def _until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float = 45.0,
    why: Callable[[], Awaitable[str]] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}" + (f" ({await why()})" if why else ""))
        await asyncio.sleep(0.05)


def _reset_zone(midnight: int) -> str:
    """A fixed UTC offset (``UTC±HH:MM:SS``) whose next midnight is at ``midnight`` (epoch s)."""
    offset = -midnight % 86_400
    if offset >= 43_200:
        offset -= 86_400
    sign, size = ("+" if offset >= 0 else "-"), abs(offset)
    return f"UTC{sign}{size // 3600:02d}:{size % 3600 // 60:02d}:{size % 60:02d}"


async def _portal_requests(hubspot: httpx.AsyncClient, portal: int) -> int:
    """HubSpot API requests the sandbox received for ``portal``."""
    log = (await hubspot.get("/_sandbox/requests")).json()
    return int(log["counts"]["byPortal"].get(str(portal), 0))


async def _append(redis: Redis, portal: int, ids: list[str], kind: str) -> list[bytes]:
    """Appends one webhook event per record to the portal's stream as ingress does; marks it."""
    appended: list[Any] = []
    for n, object_id in enumerate(ids):
        event = {
            "objectId": int(object_id),
            "portalId": portal,
            "subscriptionType": kind,
            "occurredAt": int(time.time() * 1000),
            "eventId": n + 1,
            "subscriptionId": 1,
            "attemptNumber": 0,
            "changeSource": "CRM_UI",
        }
        fields: Any = {"event": orjson.dumps(event), "origin": b"webhook"}
        appended.append(await redis.xadd(events_key(portal), fields))
    await mark_ready(redis, portal)
    return appended


async def test_a_portal_out_of_daily_quota_waits_for_the_reset_and_the_others_flow(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("tests", exporter)
    caplog.set_level(logging.INFO, logger="hubsync.mapper")
    async with suite(redis_url, caller_tokens, portals=fast_portals(OTHER, OTHER_TOKEN)) as s:
        await register_sandbox_private_app(s.auth_address, caller_tokens, portal_id=OTHER, token=OTHER_TOKEN)
        blocked_ids = [await s.create_contact(email=f"b{n}@example.com", firstname=f"B{n}") for n in range(3)]
        other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
        other_ids = []
        for n in range(3):
            r = await s.hubspot.post(
                "/crm/v3/objects/contacts", json={"properties": {"email": f"o{n}@example.com"}}, headers=other
            )
            assert r.status_code == 201, r.text
            other_ids.append(str(r.json()["id"]))
        await s.idle()
        # The blocked portal's daily quota is spent (a new limit restarts the day's count).
        (await s.hubspot.put(f"/_sandbox/portals/{BLOCKED}", json={"daily_limit": 1})).raise_for_status()
        spent = await s.hubspot.get("/crm/v3/objects/contacts", params={"limit": 1})
        assert spent.status_code == 200
        probe = await s.hubspot.get("/crm/v3/objects/contacts", params={"limit": 1})
        assert probe.status_code == 429 and probe.json()["policyName"] == "DAILY"

        # Writer's daily reset comes soon: the block has an end the test can wait for.
        reset_at = int(time.time()) + RESET_IN_S
        env = writer_env(daily_reset_timezone=_reset_zone(reset_at))
        async with (
            s.running_writer(env) as writer,
            running_mapper(
                redis_url,
                caller_tokens,
                writer_address=writer,
                visibility_timeout_ms=300,
                # Only the reset may end the block: no periodic re-check within the test.
                settings={"parked_recheck_s": 3600},
            ) as mapper,
            open_channel(mapper.address, caller_tokens["cli"]) as channel,
            open_channel(mapper.address, caller_tokens["client"]) as feed_channel,
        ):
            stub = mapper_pb2_grpc.MapperServiceStub(channel)
            feed = mapper_pb2_grpc.MapperServiceStub(feed_channel)
            delivered: set[tuple[int, str]] = set()

            async def subscribe() -> None:
                call = feed.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
                async for reply in call:
                    delivered.add((reply.change.portal_id, reply.change.hubspot_id))
                    await feed.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[reply.change.ack_id]))

            reader = asyncio.create_task(subscribe())
            try:
                appended = await _append(redis, BLOCKED, blocked_ids, "contact.propertyChange")

                def attempts() -> int:
                    """Hydrations of the blocked portal's records (one per batch that read them)."""
                    return sum(
                        1
                        for sp in exporter.get_finished_spans()
                        if sp.name == "mapper.inbound"
                        and (sp.attributes or {}).get("hubsync.portal_id") == str(BLOCKED)
                    )

                async def parked() -> bool:
                    """Every event of the portal (the webhooks' and ours) is parked."""
                    reply = await stub.ListParkedPortals(mapper_pb2.ListParkedPortalsRequest())
                    count = int(await redis.xlen(events_key(BLOCKED)))
                    return any(p.portal_id == BLOCKED and p.event_count == count for p in reply.portals)

                async def state() -> str:
                    warned = sum("inbound events not read" in r.getMessage() for r in caplog.records)
                    pending = (await redis.xpending(events_key(BLOCKED), "mapper"))["pending"]
                    return (
                        f"hydrations of its records: {attempts()}, entries pending: {pending}, "
                        f"'inbound events not read' warnings: {warned}"
                    )

                await _until(parked, "the blocked portal's events were parked", why=state)
                # Its quota comes back in the sandbox (the reset); only writer's reset time may
                # let mapper read it again.
                (
                    await s.hubspot.put(f"/_sandbox/portals/{BLOCKED}", json={"daily_limit": 100_000_000})
                ).raise_for_status()
                read_before = await _portal_requests(s.hubspot, BLOCKED)
                tried = attempts()
                assert tried >= 1

                # Another portal keeps flowing meanwhile.
                await _append(redis, OTHER, other_ids, "contact.propertyChange")

                async def others_delivered() -> bool:
                    return {(OTHER, i) for i in other_ids} <= delivered

                await _until(others_delivered, "the other portal's changes were delivered")

                # Until the reset: not read again (neither through writer nor at HubSpot), not
                # retried, nothing of it delivered, lost or dead-lettered.
                samples = 0
                while True:
                    reads, hydrations = await _portal_requests(s.hubspot, BLOCKED), attempts()
                    if time.time() >= reset_at - 1:
                        break
                    assert (reads, hydrations) == (read_before, tried), "the blocked portal was read again"
                    assert not {(BLOCKED, i) for i in blocked_ids} & delivered
                    assert (await redis.xpending(events_key(BLOCKED), "mapper"))["pending"] == 0
                    samples += 1
                    await asyncio.sleep(0.2)
                assert samples > 0
                # Every event of the portal (the webhooks' and ours) is parked, in stream order.
                rows: Any = await redis.xrange(events_key(BLOCKED))
                stream = [i for i, _f in rows]
                rows = await redis.xrange(inbound_parked_key(BLOCKED))
                held = [f[b"from_id"] for _i, f in rows]
                assert held == stream and held[-len(appended) :] == appended
                listed = await stub.ListInboundEvents(
                    mapper_pb2.ListInboundEventsRequest(portal_id=BLOCKED, queue=PARKED)
                )
                assert "DAILY_LIMIT" in listed.events[0].reason
                dead = await stub.ListInboundEvents(
                    mapper_pb2.ListInboundEventsRequest(portal_id=BLOCKED, queue=DEAD)
                )
                assert not dead.events

                # After the reset its events are read and delivered, and it is unparked.
                async def blocked_delivered() -> bool:
                    return {(BLOCKED, i) for i in blocked_ids} <= delivered

                await _until(blocked_delivered, "the blocked portal's changes were delivered after the reset")

                async def unparked() -> bool:
                    reply = await stub.ListParkedPortals(mapper_pb2.ListParkedPortalsRequest())
                    return not reply.portals

                await _until(unparked, "the portal was unparked")
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("hubsync.mapper")]
    assert not [m for m in messages if "inbound events not read" in m]
    assert len([m for m in messages if m.startswith("portal blocked")]) == 1, messages
