"""Per-record order: an older write never lands after a newer one (the sandbox's state is the
witness), across a writer killed with its call out, the reclaim of its queue entry, and
callers' own versions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.channels import open_channel
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import (
    PORTAL,
    UPSERT_ROUTE,
    Stack,
    held_by_a_consumer,
    queue_length_once_drained,
    stack,
    upsert,
)

SUCCEEDED = writer_pb2.WRITE_STATUS_SUCCEEDED


async def contact(s: Stack, email: str) -> dict[str, Any] | None:
    for o in await s.objects():
        if o["properties"].get("email") == email:
            return o
    return None


async def wait_for_value(s: Stack, email: str, prop: str, value: str, tries: int = 400) -> None:
    for _ in range(tries):
        found = await contact(s, email)
        if found is not None and found["properties"].get(prop) == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{email} never had {prop}={value}")


async def test_a_reclaimed_write_does_not_revert_a_newer_one(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    """A queued write whose writer was killed (kill -9) with its call out is reclaimed after the
    same record's newer write went through: it must not be applied again over the newer one."""
    async with stack(redis_url, caller_tokens, writer_env=writer_env(consume_queue="false")) as s:
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, latency_ms=2000)
        async with s.writer_process(writer_env()) as proc:
            async with open_channel(proc.address, caller_tokens["mapper"]) as channel:
                reply = await writer_pb2_grpc.WriterServiceStub(channel).SubmitWrites(
                    writer_pb2.SubmitWritesRequest(
                        request_id="older", portal_id=PORTAL, writes=[upsert("o@example.com", lastname="old")]
                    ),
                    timeout=10,
                )
                assert reply.results[0].status == writer_pb2.WRITE_STATUS_QUEUED
            await held_by_a_consumer(redis)
            await asyncio.sleep(0.5)  # its call is out, held at "HubSpot" by the latency
            proc.kill()
            await proc.proc.wait()
        # "HubSpot" finishes the call the dead writer made.
        await wait_for_value(s, "o@example.com", "lastname", "old")
        r = await s.admin.delete("/_sandbox/faults")
        r.raise_for_status()
        # The record's newer write, accepted after the older one.
        newer = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(
                portal_id=PORTAL, writes=[upsert("o@example.com", lastname="new")], wait=True
            ),
            timeout=30,
        )
        assert newer.results[0].status == SUCCEEDED
        await wait_for_value(s, "o@example.com", "lastname", "new")
        # Another writer reclaims the dead one's entry.
        async with s.another_writer(writer_env(queue_claim_idle_ms=500)):
            assert await queue_length_once_drained(redis, tries=600) == 0
        found = await contact(s, "o@example.com")
        assert found is not None and found["properties"]["lastname"] == "new"
        assert await s.count(UPSERT_ROUTE) == 2  # the older write was not sent again


def versioned(email: str, version: int, **props: str) -> writer_pb2.Write:
    w = upsert(email, **props)
    w.record.version = version
    return w


@pytest.mark.on_cluster
async def test_a_callers_older_version_writes_only_what_no_newer_one_wrote(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:

        async def submit(w: writer_pb2.Write) -> writer_pb2.WriteResult:
            reply = await s.stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=[w], wait=True), timeout=30
            )
            return reply.results[0]

        assert (await submit(versioned("v@example.com", 200, lastname="new"))).status == SUCCEEDED
        # Older: its lastname is dropped, its phone (no newer write touched it) still lands.
        assert (await submit(versioned("v@example.com", 100, lastname="old", phone="1"))).status == SUCCEEDED
        found = await contact(s, "v@example.com")
        assert found is not None
        assert (found["properties"]["lastname"], found["properties"]["phone"]) == ("new", "1")
        # Older still, and nothing in it is newer than what the record has: nothing is sent.
        calls = await s.count(UPSERT_ROUTE)
        result = await submit(versioned("v@example.com", 50, lastname="older", phone="0", firstname="v"))
        assert result.status == writer_pb2.WRITE_STATUS_SUPERSEDED
        assert await s.count(UPSERT_ROUTE) == calls
        found = await contact(s, "v@example.com")
        assert found is not None
        assert (found["properties"]["lastname"], found["properties"]["phone"]) == ("new", "1")
        # Two versions of one record in one batch: the newer value wins, whatever the order.
        reply = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(
                portal_id=PORTAL,
                writes=[
                    versioned("w@example.com", 20, lastname="b"),
                    versioned("w@example.com", 10, lastname="a"),
                ],
                wait=True,
            ),
            timeout=30,
        )
        assert [r.status for r in reply.results] == [SUCCEEDED, SUCCEEDED]
        found = await contact(s, "w@example.com")
        assert found is not None and found["properties"]["lastname"] == "b"


async def test_a_newer_write_waits_for_the_call_still_carrying_the_older_one(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    """HubSpot holds the call carrying a record's older value; the newer value is submitted
    meanwhile. Sent at once, the newer call would land first and the older one after it."""
    async with stack(redis_url, caller_tokens) as s:
        # A first call teaches writer the portal's limits (until then calls go one at a time).
        warm = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=[upsert("warm@example.com")], wait=True),
            timeout=60,
        )
        assert warm.results[0].status == SUCCEEDED
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, latency_ms=1500, remaining=1)
        older = asyncio.ensure_future(
            s.stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(
                    portal_id=PORTAL, writes=[upsert("r@example.com", lastname="old")], wait=True
                ),
                timeout=60,
            )
        )
        # The older call is at "HubSpot" (the one-shot latency rule has fired on it).
        for _ in range(400):
            rules = (await s.admin.get("/_sandbox/faults")).json()["results"]
            if rules and rules[0].get("remaining") == 0:
                break
            await asyncio.sleep(0.02)
        newer = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(
                portal_id=PORTAL, writes=[upsert("r@example.com", lastname="new")], wait=True
            ),
            timeout=60,
        )
        assert newer.results[0].status == SUCCEEDED
        assert (await older).results[0].status == SUCCEEDED
        found = await contact(s, "r@example.com")
        assert found is not None and found["properties"]["lastname"] == "new"
