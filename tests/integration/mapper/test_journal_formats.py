"""Upgrading with events in flight: entries an older hubsync wrote to a portal's event stream (the
field format) are still processed once the compact format is written beside them.

Real auth, writer and mapper against the sandbox; the sandbox's webhooks go to a stand-in for
ingress that writes first the older format, then the compact one.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.keys import events_key
from hubsync.core.telemetry import setup_tracing
from tests.helpers.auth import SANDBOX_PORTAL
from tests.helpers.mapper import no_more_changes, read_changes, running_mapper, suite


async def test_entries_of_both_formats_reach_the_feed_once(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    setup_tracing("tests", InMemorySpanExporter())
    stream = events_key(SANDBOX_PORTAL)
    async with suite(redis_url, caller_tokens) as s:
        # Before the upgrade: events wait in the older format (no mapper is running).
        s.standin.legacy = True
        old = await s.create_contact(email="old@example.com", external_id="c-old", firstname="Old")
        await s.idle()
        entries: Any = await redis.xrange(stream)
        assert entries and all(b"event" in fields and b"e" not in fields for _i, fields in entries)
        # After it: new events are compact, beside the old ones.
        s.standin.legacy = False
        new = await s.create_contact(email="new@example.com", external_id="c-new", firstname="New")
        await s.idle()
        entries = await redis.xrange(stream)
        assert any(set(fields) == {b"e"} for _i, fields in entries)
        async with (
            running_mapper(redis_url, caller_tokens, writer_address=s.writer_address) as mapper,
            open_channel(mapper.address, caller_tokens["client"]) as channel,
        ):
            stub = mapper_pb2_grpc.MapperServiceStub(channel)
            call = stub.Subscribe(
                mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c", object_types=["contacts"])
            )
            changes = await read_changes(call, 2)
            by_id = {c.hubspot_id: c for c in changes}
            assert sorted(by_id) == sorted([old, new])
            assert by_id[old].fields["first_name"] == "Old" and by_id[new].fields["first_name"] == "New"
            assert all(c.trace_id for c in changes)  # both formats carried the trace context
            await stub.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[c.ack_id for c in changes]))
            await no_more_changes(call)
            call.cancel()
        pending = await redis.xpending(stream, "mapper")
        assert pending["pending"] == 0
