"""Durable writes, a killed writer, and three writer processes sharing one portal's quota."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.redis import portal_key
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import (
    PORTAL,
    UPSERT_ROUTE,
    Stack,
    all_succeed,
    held_by_a_consumer,
    queue_length_once_drained,
    record,
    sandbox_config,
    stack,
    upsert,
)

QUEUED = writer_pb2.WRITE_STATUS_QUEUED


async def wait_for_objects(s: Stack, n: int, timeout: float = 20.0) -> int:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while True:
        have = len(await s.objects())
        if have >= n or loop.time() > until:
            return have
        await asyncio.sleep(0.1)


async def test_queued_writes_are_durable_and_accepted_once(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    # The stack's writer accepts but does not consume: what it accepted must be in Redis.
    async with stack(redis_url, caller_tokens, writer_env=writer_env(consume_queue="false")) as s:
        for n in range(5):
            request = writer_pb2.SubmitWritesRequest(
                request_id=f"q{n}",
                portal_id=PORTAL,
                writes=[upsert(f"q{n}-{i}@example.com") for i in range(50)],
            )
            reply = await s.stub.SubmitWrites(request, timeout=10)
            assert [r.status for r in reply.results] == [QUEUED] * 50
            assert await redis.xlen(portal_key(PORTAL, "writes")) == n + 1
            again = await s.stub.SubmitWrites(request, timeout=10)
            assert again == reply
            assert await redis.xlen(portal_key(PORTAL, "writes")) == n + 1
        status = await s.cli.GetQuotaStatus(writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL))
        assert status.queued_writes == 5
        async with s.another_writer():
            assert await wait_for_objects(s, 250) == 250
            await queue_length_once_drained(redis, tries=50)
        # Five submissions of 50 coalesce into batches of up to 100.
        assert await s.count(UPSERT_ROUTE) <= 5
        status = await s.cli.GetQuotaStatus(writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL))
        assert status.queued_writes == 0 and status.burst_used >= 1
        # The request id now answers with HubSpot's results.
        done = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(
                request_id="q0", portal_id=PORTAL, writes=[upsert("x@example.com")]
            ),
            timeout=10,
        )
        assert done.results[0].status == writer_pb2.WRITE_STATUS_SUCCEEDED


async def test_a_writer_killed_mid_batch_loses_nothing_it_accepted(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    # The stack's own writer does not consume, so the process below is the only consumer.
    async with stack(redis_url, caller_tokens, writer_env=writer_env(consume_queue="false")) as s:
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, latency_ms=5000)
        env = writer_env(queue_claim_idle_ms=500)
        async with s.writer_process(env) as proc:
            async with open_channel(proc.address, caller_tokens["mapper"]) as channel:
                stub = writer_pb2_grpc.WriterServiceStub(channel)
                reply = await stub.SubmitWrites(
                    writer_pb2.SubmitWritesRequest(
                        request_id="k",
                        portal_id=PORTAL,
                        writes=[upsert(f"k{n}-{i}@example.com") for n in range(3) for i in range(100)],
                    ),
                    timeout=10,
                )
                assert reply.results[0].status == QUEUED
            # Wait until the process holds the entry and its three batches are at HubSpot (held
            # there by the injected latency), then kill it.
            await held_by_a_consumer(redis)
            await asyncio.sleep(0.5)
            proc.kill()
            await proc.proc.wait()
        # Accepted, not acknowledged: the entry is still pending for the dead consumer.
        assert (await redis.xpending(portal_key(PORTAL, "writes"), "writer"))["pending"] == 1
        r = await s.admin.delete("/_sandbox/faults")
        r.raise_for_status()
        # Another writer reclaims what the dead one held.
        async with s.another_writer(env):
            assert await wait_for_objects(s, 300) == 300
        emails = {o["properties"]["email"] for o in await s.objects()}
        assert emails == {f"k{n}-{i}@example.com" for n in range(3) for i in range(100)}


async def test_three_writer_processes_never_exceed_the_portals_limit(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    burst = 30
    config = sandbox_config(portal={"burst_per_10s": burst})
    env = writer_env(burst_limit=burst, rate_limit_preset="free_starter", batch_max_wait_ms=20)
    async with stack(redis_url, caller_tokens, config, writer_env=env) as s:
        procs = [s.writer_process(env) for _ in range(3)]
        async with procs[0] as a, procs[1] as b, procs[2] as c:

            async def push(address: str, tag: str) -> None:
                async with open_channel(address, caller_tokens["mapper"]) as channel:
                    await all_succeed(writer_pb2_grpc.WriterServiceStub(channel), tag, 15, timeout=60)

            await asyncio.gather(push(a.address, "a"), push(b.address, "b"), push(c.address, "c"))
        # 45 batch calls against a limit of 30 per 10 s: all through, none refused.
        assert await s.count(UPSERT_ROUTE, 429) == 0
        assert await s.count(UPSERT_ROUTE, 200) == 45
        assert len(await s.objects()) == 4500


async def test_hubspots_headers_count_requests_writer_did_not_make(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    # Another app on the account spends most of the window; writer learns it from the headers
    # of its first response and waits instead of meeting 429s.
    burst = 8
    config = sandbox_config(portal={"burst_per_10s": burst})
    env = writer_env(burst_limit=burst, rate_limit_preset="free_starter")
    async with stack(redis_url, caller_tokens, config, writer_env=env) as s:
        for _ in range(burst - 2):
            r = await s.hubspot.get("/crm/v3/objects/contacts", params={"limit": 1})
            assert r.status_code == 200
        for n in range(4):
            reply = await s.stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(
                    portal_id=PORTAL, writes=[upsert(f"h{n}@example.com")], wait=True
                ),
                timeout=30,
            )
            assert reply.results[0].status == writer_pb2.WRITE_STATUS_SUCCEEDED
        assert await s.count(UPSERT_ROUTE, 429) == 0
        assert await s.count(UPSERT_ROUTE, 200) == 4


CREATE_ROUTE = "POST /crm/v3/objects/{objectType}/batch/create"


async def test_a_create_cut_off_by_a_killed_writer_is_never_sent_twice(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    """HubSpot has no idempotency key for creates: a queued create whose writer died while the
    call was out may already exist. The next writer does not send it again; it dead-letters it
    as AMBIGUOUS_CREATE for a person to check (nothing doubled, nothing lost). The same entry's
    upsert is idempotent and is simply sent again."""
    async with stack(redis_url, caller_tokens, writer_env=writer_env(consume_queue="false")) as s:
        await s.fault(portal=PORTAL, endpoint=CREATE_ROUTE, latency_ms=3000)
        env = writer_env(queue_claim_idle_ms=500)
        creates = [
            record("contacts", writer_pb2.WRITE_OPERATION_CREATE, email=f"c{i}@example.com") for i in range(3)
        ]
        async with s.writer_process(env) as proc:
            async with open_channel(proc.address, caller_tokens["mapper"]) as channel:
                reply = await writer_pb2_grpc.WriterServiceStub(channel).SubmitWrites(
                    writer_pb2.SubmitWritesRequest(
                        request_id="amb", portal_id=PORTAL, writes=[*creates, upsert("u@example.com")]
                    ),
                    timeout=10,
                )
                assert reply.results[0].status == QUEUED
            # the process holds the entry and its create call is out (held at "HubSpot" by the
            # latency): kill the writer then
            await held_by_a_consumer(redis)
            await asyncio.sleep(1.0)
            proc.kill()
            await proc.proc.wait()
        r = await s.admin.delete("/_sandbox/faults")
        r.raise_for_status()
        await asyncio.sleep(3.2)  # let "HubSpot" finish the call the dead writer made
        async with s.another_writer(env):
            assert await queue_length_once_drained(redis) == 0
            dead = await s.cli.ListDeadLetters(writer_pb2.ListDeadLettersRequest(portal_id=PORTAL))
        assert await s.count(CREATE_ROUTE) == 1  # never sent again
        emails = sorted(o["properties"].get("email", "") for o in await s.objects())
        created = [e for e in emails if e.startswith("c")]
        assert len(created) == len(set(created)) <= 3  # no record twice
        assert "u@example.com" in emails  # the upsert went through
        held = sorted(d.write.record.properties["email"] for d in dead.dead_letters)
        assert held == [f"c{i}@example.com" for i in range(3)]
        assert {d.error.category for d in dead.dead_letters} == {"AMBIGUOUS_CREATE"}
        # nothing was lost: each create is in HubSpot or waiting in the DLQ for a person
        assert set(created) <= set(held)


async def test_a_refusal_before_sending_does_not_resend_a_create_batch_that_went(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis
) -> None:
    """Two create batches of one tier: the first goes out, the second is refused before sending
    (no quota left). The queued request is retried later; the batch that went is not sent again
    (creates are not idempotent at HubSpot), the refused one is."""
    creates = [record("companies", writer_pb2.WRITE_OPERATION_CREATE, name=f"co{i}") for i in range(150)]
    async with stack(redis_url, caller_tokens, writer_env=writer_env(consume_queue="false")) as s:
        # A daily budget of one call: the full batch of 100 takes it, the 50 left are refused.
        async with s.another_writer(writer_env(daily_limit=1)):
            reply = await s.stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(request_id="two", portal_id=PORTAL, writes=creates), timeout=10
            )
            assert reply.results[0].status == QUEUED
            # Wait until the attempt has stopped: its entry's ledger says nothing is in flight.
            stopped = False
            for _ in range(400):
                pending = await redis.xpending_range(portal_key(PORTAL, "writes"), "writer", "-", "+", 1)
                if pending:
                    entry = str(pending[0]["message_id"], "ascii")  # type: ignore[arg-type]
                    ledger = portal_key(PORTAL, "writes", "ledger", entry)
                    if await redis.hget(ledger, "inflight") == b"0":  # type: ignore[misc]
                        stopped = True
                        break
                await asyncio.sleep(0.05)
            assert stopped
        assert await s.count(CREATE_ROUTE) == 1
        # A writer with quota reclaims the entry.
        async with s.another_writer(writer_env(queue_claim_idle_ms=500)):
            assert await queue_length_once_drained(redis, tries=600) == 0
        assert await s.count(CREATE_ROUTE) == 2
        names = sorted(o["properties"]["name"] for o in await s.objects("companies"))
        assert names == sorted(f"co{i}" for i in range(150))  # each once


async def test_writer_learns_the_portals_real_limit_and_never_sends_past_it(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    """The portal allows 20 requests per 10 s; the writer's preset says 100. Writer learns the
    real limit from HubSpot's headers (its first call goes alone) and keeps under it: the
    sandbox answers no 429. The limit is kept in Redis for every replica."""
    burst = 20
    config = sandbox_config(portal={"burst_per_10s": burst})
    env = writer_env(rate_limit_preset="free_starter")
    async with stack(redis_url, caller_tokens, config, writer_env=env) as s:
        await all_succeed(s.stub, "l", 30, timeout=120)
        assert await s.count(UPSERT_ROUTE, 429) == 0
        assert await s.count(UPSERT_ROUTE, 200) == 30
        async with s.another_writer(env) as address, open_channel(address, caller_tokens["cli"]) as channel:
            status = await writer_pb2_grpc.WriterServiceStub(channel).GetQuotaStatus(
                writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL)
            )
        assert (status.burst_limit, status.daily_limit) == (burst, 100_000_000)
