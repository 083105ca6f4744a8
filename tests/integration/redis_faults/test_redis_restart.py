"""Redis restarts (SIGTERM, or kill -9) on the same port under the running suite.

Once it is back, the first calls succeed (no "Connection closed by server" from a pooled
connection the restart closed), ingress's health stays SERVING, and every background worker
resumes by itself, logging the outage as a rate-limited WARNING, never a stack per iteration.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from hubsync.api.auth.v1 import auth_pb2
from hubsync.api.mapper.v1 import mapper_pb2
from tests.helpers.auth import register_sandbox_private_app
from tests.helpers.redis_faults_stack import PORTAL, Stack, running_stack, stacks_logged

# How long ingress's health is watched after Redis is back (longer than the probe interval and
# the pool's health-check interval, so a connection the restart left behind would be met).
WATCH_AFTER_RECOVERY_S = 12.0
BURST = 8


async def _burst(stack: Stack, hs_id: str, client: httpx.AsyncClient, tag: str) -> list[str]:
    """BURST concurrent calls of every kind (so each service's pool holds several connections);
    returns what failed."""
    calls: list[Any] = []
    for n in range(BURST):
        calls += [
            stack.read([hs_id]),
            stack.quota(),
            stack.push(f"c-{tag}-{n}", "Burst", wait=False),
            stack.auth.GetConnection(auth_pb2.GetConnectionRequest(portal_id=PORTAL), timeout=30),
            client.get(f"{stack.http_base}/healthz"),
        ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = []
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            failed.append(f"{result.code().name}: {result.details()}")
        elif isinstance(result, BaseException):
            failed.append(repr(result))
        elif isinstance(result, httpx.Response) and result.status_code != 200:
            failed.append(f"/healthz {result.status_code}")
        elif isinstance(result, mapper_pb2.PushRecordsResponse):
            failed += [r.error for r in result.results if r.outcome == mapper_pb2.PUSH_OUTCOME_FAILED]
    return failed


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_first_calls_after_a_restart_succeed_and_ingress_stays_serving(
    how: str, tmp_path: Path, caller_tokens: dict[str, str]
) -> None:
    async with running_stack(tmp_path, caller_tokens) as stack, httpx.AsyncClient(timeout=30) as client:
        hs_id = await stack.create_contact("before@example.com")
        assert await _burst(stack, hs_id, client, "warm") == []

        await stack.redis.stop(how)
        await stack.redis.start()
        await stack.wait_all_serving()

        # The first calls after Redis is back, all at once: every one succeeds.
        assert await _burst(stack, hs_id, client, "first") == []

        # Ingress's health, watched from now on while webhooks and health checks keep coming.
        watch = stack.health("ingress").Watch(health_pb2.HealthCheckRequest())
        seen: list[int] = []

        async def follow() -> None:
            async for reply in watch:
                seen.append(reply.status)

        follower = asyncio.create_task(follow())
        loop = asyncio.get_running_loop()
        until = loop.time() + WATCH_AFTER_RECOVERY_S
        n = 0
        statuses: set[int] = set()
        while loop.time() < until:
            n += 1
            replies, _ = await asyncio.gather(
                asyncio.gather(*(client.get(f"{stack.http_base}/healthz") for _ in range(BURST))),
                stack.create_contact(f"after-{n}@example.com"),
            )
            statuses |= {r.status_code for r in replies}
            await asyncio.sleep(0.2)
        watch.cancel()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert statuses == {200}
    assert seen and set(seen) == {health_pb2.HealthCheckResponse.SERVING}, seen


@pytest.mark.parametrize("data_lost", [False, True], ids=["aof", "data-lost"])
async def test_workers_resume_after_a_restart_and_log_warnings(
    data_lost: bool, tmp_path: Path, caller_tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ingress_settings: dict[str, object] = {
        "reconcile_interval_seconds": 0.5,
        "reconcile_settle_ms": 0,
        "reconcile_object_types": ["contacts"],
    }
    auth_env = {"HUBSYNC_AUTH_REFRESHER_INTERVAL_S": "0.2"}
    async with running_stack(
        tmp_path, caller_tokens, ingress_settings=ingress_settings, auth_env=auth_env
    ) as stack:
        feed = stack.mapper.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        await stack.create_contact("before@example.com")
        first = (await asyncio.wait_for(feed.read(), 30)).change
        await stack.mapper.Ack(mapper_pb2.AckRequest(consumer_group="g", ack_ids=[first.ack_id]), timeout=30)
        feed.cancel()
        caplog.clear()

        await stack.redis.stop("sigkill")
        # Down long enough for every loop to meet the outage several times.
        loop = asyncio.get_running_loop()
        until = loop.time() + 60
        wanted = ("inbound worker", "write queue consumer", "background refresher")
        while not all(any(w in r.getMessage() for r in caplog.records) for w in wanted):
            assert loop.time() < until, [r.getMessage() for r in caplog.records]
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # the reconciler (every 0.5 s) meets it too, unless in a pass
        await stack.redis.start(data_lost=data_lost)
        await stack.wait_all_serving()
        if data_lost:  # the portal's connection went with the data: an admin connects it again
            await register_sandbox_private_app(stack.auth_address, caller_tokens)

        # writer's queue consumer: a queued push reaches HubSpot.
        reply = await stack.push("c-after", "Resumed", wait=False)
        assert reply.results[0].outcome == mapper_pb2.PUSH_OUTCOME_QUEUED, reply
        for _ in range(600):
            found = await stack.hubspot.get(
                "/crm/v3/objects/contacts/c-after@example.com",
                params={"idProperty": "email", "properties": "firstname"},
            )
            if found.status_code == 200 and found.json()["properties"].get("firstname") == "Resumed":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the queued write never reached HubSpot")

        # mapper's inbound worker, and ingress's reconciler: a change no webhook reports (the
        # subscription points nowhere) is found by reconciliation and reaches the feed. (Without
        # its data Redis no longer knows the portal: there the webhook brings the change.)
        if not data_lost:
            await stack.hubspot.put(
                "/_sandbox/webhooks/1001", json={"target_url": "http://127.0.0.1:9/nowhere"}
            )
        missed = await stack.create_contact("missed@example.com")
        feed = stack.mapper.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        while True:
            change = (await asyncio.wait_for(feed.read(), 60)).change
            if change.hubspot_id == missed:
                break
        feed.cancel()

    ours = [r for r in caplog.records if r.name.startswith("hubsync.")]
    assert not stacks_logged(ours)
    for what in wanted:
        records = [r for r in caplog.records if what in r.getMessage()]
        assert records and all(r.levelno == logging.WARNING for r in records), what
        # rate-limited: not one line per iteration of the loop
        assert len(records) <= 2, [r.getMessage() for r in records]
