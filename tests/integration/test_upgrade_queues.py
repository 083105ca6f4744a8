"""Upgrading to the ready sets with work in flight: queued writes, events delivered to a consumer
that is gone and never acknowledged, events not delivered yet, and ingress's dedupe sets, all as
the layout before the ready sets left them (no ready marks). The new writer and mapper find
every entry (their sweeper's first pass) and process each exactly once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.keys import (
    WRITER_PORTALS_KEY,
    FeedEntry,
    events_key,
    feed_key,
    ready_key,
    ready_swept_key,
    writes_key,
)
from hubsync.core.ready import DEFAULT_SHARDS, EVENTS, WRITES, group_work
from hubsync.core.versions import reserve_versions
from hubsync.ingress.committer import CommitOutcome, EventAppender, EventCommitter
from hubsync.ingress.events import parse_events
from hubsync.writer.ordering import version_counter_key
from tests.helpers.auth import SANDBOX_PORTAL
from tests.helpers.mapper import running_mapper, suite
from tests.helpers.writer import writer_env

PORTAL = SANDBOX_PORTAL
pytestmark = pytest.mark.timeout(300)


async def old_layout_write(redis: Redis, name: str) -> None:
    """A queued submission exactly as the writer before the ready sets stored it."""
    request = writer_pb2.SubmitWritesRequest(
        portal_id=PORTAL,
        request_id=f"old-{name}",
        writes=[
            writer_pb2.Write(
                record=writer_pb2.RecordWrite(
                    operation=writer_pb2.WRITE_OPERATION_CREATE,
                    object_type="companies",
                    properties={"name": name},
                )
            )
        ],
    )
    base = await reserve_versions(redis, version_counter_key(PORTAL), 1)
    fields = {
        "request": request.SerializeToString(),
        "accepted_ms": int(time.time() * 1000),
        "version_base": base,
    }
    await redis.xadd(writes_key(PORTAL), fields, maxlen=1_000_000, approximate=True)  # type: ignore[arg-type]


async def forget_ready_marks(redis: Redis) -> None:
    """What a Redis written by the code before the ready sets holds: no marks, no sweep."""
    for queue in (EVENTS, WRITES):
        await redis.delete(ready_swept_key(queue), *[ready_key(queue, s) for s in range(DEFAULT_SHARDS)])


async def until(check: object, tries: int = 1200) -> None:
    for _ in range(tries):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached")


async def test_work_queued_by_the_old_layout_is_processed_once_after_the_upgrade(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    async with suite(redis_url, caller_tokens, writer_env=writer_env(consume_queue="false")) as s:
        # Events: records created in HubSpot, their webhooks appended to the portal's stream.
        contacts = [
            await s.create_contact(email=f"up{i}@example.com", external_id=f"up-{i}") for i in range(6)
        ]
        await s.idle()
        # Ingress's dedupe: one more event committed through the committer (dedupe set written).
        committer = EventCommitter(
            EventAppender(redis, retention_ms=86_400_000, dedupe_ttl_s=3600, dedupe_buckets=8), timeout_s=10
        )
        event = {
            "eventId": 77,
            "subscriptionId": 1,
            "portalId": PORTAL,
            "appId": 1,
            "occurredAt": int(time.time() * 1000),
            "subscriptionType": "contact.propertyChange",
            "attemptNumber": 0,
            "objectId": int(contacts[0]),
            "propertyName": "firstname",
            "propertyValue": "Upgraded",
            "changeSource": "CRM_UI",
        }
        (parsed,) = parse_events(orjson.dumps([event]))
        assert await committer.submit([parsed]) == [CommitOutcome.ACCEPTED]
        # The old mapper's group, from the stream's start; a replica read two and died.
        await redis.xgroup_create(events_key(PORTAL), "mapper", id="0")
        taken: Any = await redis.xreadgroup("mapper", "old-replica", {events_key(PORTAL): ">"}, count=2)
        assert len(taken[0][1]) == 2
        # Writes: three queued, one of them delivered to a writer that died.
        await redis.sadd(WRITER_PORTALS_KEY, str(PORTAL))  # type: ignore[misc]
        await redis.xgroup_create(writes_key(PORTAL), "writer", id="0", mkstream=True)
        for name in ("old-a", "old-b", "old-c"):
            await old_layout_write(redis, name)
        await redis.xreadgroup("writer", "old-writer", {writes_key(PORTAL): ">"}, count=1)
        await forget_ready_marks(redis)
        entries = await redis.xlen(events_key(PORTAL))

        # The upgrade: the new writer and mapper start.
        async with (
            s.running_writer(writer_env(queue_claim_idle_ms=500)),
            running_mapper(
                redis_url, caller_tokens, writer_address=s.writer_address, visibility_timeout_ms=500
            ),
        ):

            async def writes_done() -> bool:
                return int(await redis.xlen(writes_key(PORTAL))) == 0

            async def events_done() -> bool:
                return await group_work(redis, [events_key(PORTAL)], "mapper") == [(False, False)]

            await until(writes_done)
            await until(events_done)
            feed: Any = await redis.xrange(feed_key(PORTAL, "contacts"))
        # Every queued write went to HubSpot once.
        r = await s.hubspot.get("/_sandbox/objects/companies", params={"portal": PORTAL})
        body = r.json()
        names = sorted(o["properties"]["name"] for o in (body["results"] if isinstance(body, dict) else body))
        assert names == ["old-a", "old-b", "old-c"]
        # Every event was consumed: none pending, none left undelivered (checked above).
        assert await redis.xlen(events_key(PORTAL)) >= entries  # the writes' own webhooks came too
        assert (await redis.xpending(events_key(PORTAL), "mapper"))["pending"] == 0
        # Each record reached the feed, once (repeats of the same record state are not published).
        published = sorted(f[FeedEntry.HUBSPOT_ID.encode()].decode() for _i, f in feed)
        assert sorted(set(published)) == sorted(contacts)
        assert len(published) <= len(contacts) + 1  # contact 0 changed once more ("Upgraded")
        # Ingress's dedupe sets were kept: the same delivery again is a duplicate.
        assert await committer.submit([parsed]) == [CommitOutcome.DUPLICATE]
        await committer.close()
