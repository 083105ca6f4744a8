"""HubSpot's error table, row by row, with the sandbox's request log as the witness."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import error_info
from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, PrivateAppConfig
from tests.helpers.auth import register_sandbox_private_app
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import (
    PORTAL,
    UPSERT_ROUTE,
    Stack,
    record,
    sandbox_config,
    stack,
    upsert,
)

SUCCEEDED = writer_pb2.WRITE_STATUS_SUCCEEDED
DEAD = writer_pb2.WRITE_STATUS_DEAD_LETTERED


async def submit(s: Stack, writes: list[writer_pb2.Write], **kw: object) -> writer_pb2.SubmitWritesResponse:
    return await s.stub.SubmitWrites(
        writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=writes, wait=True, **kw),  # type: ignore[arg-type]
        timeout=60,
    )


async def test_400_isolates_the_bad_records_and_dead_letters_them(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        writes = [upsert(f"ok{i}@example.com") for i in range(20)]
        writes[7] = upsert("bad7@example.com", no_such_property="x")
        writes[13] = upsert("bad13@example.com", no_such_property="y")
        reply = await submit(s, writes)
        statuses = [r.status for r in reply.results]
        assert statuses.count(SUCCEEDED) == 18
        assert statuses[7] == DEAD and statuses[13] == DEAD
        assert reply.results[7].error.http_status == 400
        assert reply.results[7].error.message  # HubSpot's own message
        emails = sorted(o["properties"]["email"] for o in await s.objects())
        assert emails == sorted(f"ok{i}@example.com" for i in range(20) if i not in (7, 13))
        listed = await s.cli.ListDeadLetters(writer_pb2.ListDeadLettersRequest(portal_id=PORTAL))
        assert listed.total == 2
        assert {d.write.record.id for d in listed.dead_letters} == {"bad7@example.com", "bad13@example.com"}
        one = await s.cli.GetDeadLetter(
            writer_pb2.GetDeadLetterRequest(portal_id=PORTAL, id=reply.results[7].dead_letter_id)
        )
        assert one.dead_letter.write.record.properties["no_such_property"] == "x"
        assert one.dead_letter.error.http_status == 400


async def test_401_asks_auth_for_the_current_token_and_retries_once(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    second = "pat-na1-00000000-0000-4000-8000-0000000abcde"
    config = sandbox_config(
        portal={
            "private_apps": [PrivateAppConfig(token=DEFAULT_PRIVATE_TOKEN), PrivateAppConfig(token=second)]
        }
    )
    async with stack(redis_url, caller_tokens, config) as s:
        assert (await submit(s, [upsert("a@example.com")])).results[0].status == SUCCEEDED
        # The token writer has cached is revoked at HubSpot and rotated in auth.
        r = await s.admin.post("/_sandbox/tokens/revoke", json={"token": DEFAULT_PRIVATE_TOKEN})
        r.raise_for_status()
        await register_sandbox_private_app(s.auth_address, caller_tokens, token=second)
        reply = await submit(s, [upsert("b@example.com")])
        assert reply.results[0].status == SUCCEEDED
        assert await s.count(UPSERT_ROUTE, 401) == 1
        assert await s.count(UPSERT_ROUTE, 200) == 2


async def test_403_dead_letters_without_retrying(redis_url: str, caller_tokens: dict[str, str]) -> None:
    read_only = PrivateAppConfig(token=DEFAULT_PRIVATE_TOKEN, scopes=["crm.objects.contacts.read"])
    async with stack(redis_url, caller_tokens, sandbox_config(portal={"private_apps": [read_only]})) as s:
        reply = await submit(s, [upsert("a@example.com"), upsert("b@example.com")])
        assert [r.status for r in reply.results] == [DEAD, DEAD]
        assert reply.results[0].error.http_status == 403
        assert await s.count(UPSERT_ROUTE) == 1


async def test_409_updates_the_record_that_holds_the_unique_value(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        first = await submit(s, [upsert("taken@example.com", lastname="Old")])
        existing = first.results[0].hubspot_id
        create = record(
            "contacts", writer_pb2.WRITE_OPERATION_CREATE, email="taken@example.com", lastname="New"
        )
        reply = await submit(s, [create])
        assert reply.results[0].status == SUCCEEDED
        assert reply.results[0].hubspot_id == existing
        assert await s.count("POST /crm/v3/objects/{objectType}/batch/create", 409) == 1
        objects = await s.objects()
        assert len(objects) == 1 and objects[0]["properties"]["lastname"] == "New"


@pytest.mark.parametrize("status", [423, 429, 500, 503])
async def test_transient_answers_are_retried_with_backoff(
    redis_url: str, caller_tokens: dict[str, str], status: int
) -> None:
    # A 1 s window keeps the 429 row fast; writer marks the window used and every replica waits.
    env = writer_env(burst_window_ms=1000, burst_window_margin_ms=0)
    async with stack(redis_url, caller_tokens, writer_env=env) as s:
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, status=status, remaining=2)
        reply = await submit(s, [upsert(f"t{i}@example.com") for i in range(5)])
        assert all(r.status == SUCCEEDED for r in reply.results)
        assert await s.count(UPSERT_ROUTE, status) == 2
        assert await s.count(UPSERT_ROUTE, 200) == 1
        assert len(await s.objects()) == 5


async def test_502_halves_the_batch_down_to_what_hubspot_takes(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, batch_limit=25)
        reply = await submit(s, [upsert(f"h{i}@example.com") for i in range(100)])
        assert all(r.status == SUCCEEDED for r in reply.results)
        assert len(await s.objects()) == 100
        # 100 → 2x50 → 4x25: three refused batches, four accepted.
        assert await s.count(UPSERT_ROUTE, 502) == 3
        assert await s.count(UPSERT_ROUTE, 200) == 4


async def test_504_on_a_single_record_dead_letters_it(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with stack(redis_url, caller_tokens) as s:
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, status=504)
        reply = await submit(s, [upsert("a@example.com"), upsert("b@example.com")])
        assert [r.status for r in reply.results] == [DEAD, DEAD]
        assert reply.results[0].error.http_status == 504
        assert await s.count(UPSERT_ROUTE, 504) == 3  # the pair, then each alone


async def test_circuit_opens_on_an_outage_and_closes_after_a_probe(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    env = writer_env(circuit_failure_threshold=3, circuit_open_s=1.0, max_attempts=2)
    async with stack(redis_url, caller_tokens, writer_env=env) as s:
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, status=500)
        with pytest.raises(Exception, match=r"UNAVAILABLE|500"):
            await submit(s, [upsert("a@example.com")])
        with pytest.raises(Exception, match=r"UNAVAILABLE|500"):
            await submit(s, [upsert("b@example.com")])
        status = await s.cli.GetQuotaStatus(writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL))
        assert status.circuit_state in (writer_pb2.CIRCUIT_STATE_OPEN, writer_pb2.CIRCUIT_STATE_HALF_OPEN)
        # Opened after the third failure: the retry was never sent, nor is the next call.
        assert await s.count(UPSERT_ROUTE) == 3
        with pytest.raises(Exception, match="circuit open"):
            await submit(s, [upsert("c@example.com")])
        assert await s.count(UPSERT_ROUTE) == 3
        r = await s.admin.delete("/_sandbox/faults")
        r.raise_for_status()
        await asyncio.sleep(1.1)
        reply = await submit(s, [upsert("c@example.com")])  # the half-open probe succeeds
        assert reply.results[0].status == SUCCEEDED
        status = await s.cli.GetQuotaStatus(writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL))
        assert status.circuit_state == writer_pb2.CIRCUIT_STATE_CLOSED


async def test_dead_letters_replay_and_purge(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with stack(redis_url, caller_tokens) as s:
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, status=504, remaining=3)
        reply = await submit(s, [upsert("a@example.com"), upsert("b@example.com")])
        assert [r.status for r in reply.results] == [DEAD, DEAD]
        with pytest.raises(Exception, match="PERMISSION_DENIED"):
            await s.stub.ReplayDeadLetters(writer_pb2.ReplayDeadLettersRequest(portal_id=PORTAL, all=True))
        replayed = await s.cli.ReplayDeadLetters(
            writer_pb2.ReplayDeadLettersRequest(portal_id=PORTAL, http_statuses=[504])
        )
        assert replayed.replayed_count == 2
        for _ in range(100):
            if len(await s.objects()) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(o["properties"]["email"] for o in await s.objects()) == [
            "a@example.com",
            "b@example.com",
        ]
        listed = await s.cli.ListDeadLetters(writer_pb2.ListDeadLettersRequest(portal_id=PORTAL))
        assert listed.total == 0
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, status=504, remaining=1)
        reply = await submit(s, [upsert("c@example.com")])
        assert reply.results[0].status == DEAD
        purged = await s.cli.PurgeDeadLetters(
            writer_pb2.PurgeDeadLettersRequest(portal_id=PORTAL, ids=[reply.results[0].dead_letter_id])
        )
        assert purged.purged_count == 1
        assert (await s.cli.ListDeadLetters(writer_pb2.ListDeadLettersRequest(portal_id=PORTAL))).total == 0


async def test_daily_limit_fails_with_resource_exhausted_and_queued_writes_wait(
    redis_url: str, caller_tokens: dict[str, str], redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    env = writer_env(rate_limit_preset="free_starter", queue_claim_idle_ms=200)
    async with stack(
        redis_url, caller_tokens, sandbox_config(portal={"daily_limit": 4}), writer_env=env
    ) as s:
        await submit(s, [upsert("a@example.com")])
        await submit(s, [upsert("b@example.com")])
        # Writer knows the daily budget (4, from HubSpot's headers) and has used 2; another app
        # spends the rest without writer seeing it, so HubSpot answers writer's next call 429.
        for _ in range(2):
            assert (await s.hubspot.get("/crm/v3/objects/contacts", params={"limit": 1})).status_code == 200
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(s, [upsert("c@example.com")])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(err.value)
        assert info is not None and info.reason == "HUBSPOT_DAILY_LIMIT"
        # Not written, answered with a truthful status, and said in writer's log.
        failed = [r for r in caplog.records if r.getMessage() == "waited submission failed"]
        assert [getattr(r, "reason", "") for r in failed] == ["HUBSPOT_DAILY_LIMIT"]
        status = await s.cli.GetQuotaStatus(writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL))
        assert status.daily_used >= 2
        before = await s.count(UPSERT_ROUTE)
        # After the DAILY 429 nothing more is sent until the reset.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(s, [upsert("c@example.com")])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        queued = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=[upsert("d@example.com")]), timeout=10
        )
        assert queued.results[0].status == writer_pb2.WRITE_STATUS_QUEUED
        await asyncio.sleep(0.5)
        # Not lost, not dead-lettered: still in the queue, waiting for the reset.
        assert (
            await s.cli.GetQuotaStatus(writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL))
        ).queued_writes == 1
        assert (await s.cli.ListDeadLetters(writer_pb2.ListDeadLettersRequest(portal_id=PORTAL))).total == 0
        assert len(await s.objects()) == 2
        assert await s.count(UPSERT_ROUTE, 429) == 1 and await s.count(UPSERT_ROUTE) == before
