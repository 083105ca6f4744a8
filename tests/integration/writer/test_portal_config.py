"""Per-portal configuration in the writer: a portal's limits override changes that portal's plan
and the rate limiter's grants only; a portal's read-only pilot refuses its writes (reads work)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest
from redis.asyncio import Redis

from hubsync.api.common.v1 import config_pb2
from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import ResourceExhausted, error_info
from hubsync.core.portal_config import PortalConfigCache, Scope, store_version
from hubsync.core.redis import redis_from_url
from hubsync.writer.ratelimit import Budget, LimitOverride, RateLimiter
from tests.helpers.writer_stack import PORTAL, Stack, stack, upsert

BUSY, QUIET = 101, 202


def _limits(burst: int | None = None, daily: int | None = None) -> config_pb2.ConfigDocument:
    doc = config_pb2.ConfigDocument()
    if burst is not None:
        doc.limits.burst_limit = burst
    if daily is not None:
        doc.limits.daily_limit = daily
    return doc


def _pilot(enabled: bool, reason: str = "") -> config_pb2.ConfigDocument:
    return config_pb2.ConfigDocument(pilot=config_pb2.PilotConfig(enabled=enabled, reason=reason))


def _limiter(redis: Redis, configs: PortalConfigCache) -> RateLimiter:
    async def override(portal_id: int) -> LimitOverride | None:
        limits = (await configs.get(portal_id)).limits()
        return LimitOverride(
            limits.burst_limit if limits.HasField("burst_limit") else None,
            limits.daily_limit if limits.HasField("daily_limit") else None,
        )

    # A long window: nothing leaves it during the test, however slow the machine.
    return RateLimiter(
        redis, Budget("burst", 10, 600_000, 1000), Budget("search", 5, 1000), overrides=override
    )


async def _grants(limiter: RateLimiter, portal: int, tries: int) -> int:
    """How many of ``tries`` immediate requests the limiter grants (none waits)."""
    granted = 0
    for _ in range(tries):
        try:
            await limiter.acquire(portal, deadline=time.monotonic())
        except ResourceExhausted as exc:
            assert exc.reason == "RATE_LIMITED"
            continue
        granted += 1
    return granted


async def test_a_portal_limit_override_changes_only_that_portals_plan(redis: Redis) -> None:
    configs = PortalConfigCache(redis, ("limits", "pilot"))
    limiter = _limiter(redis, configs)
    await store_version(redis, Scope(portal_id=BUSY), "limits", _limits(burst=3, daily=50), author="cli")

    busy, quiet = await limiter.plan(BUSY), await limiter.plan(QUIET)
    assert (busy.burst, busy.daily, busy.cap_burst, busy.overridden) == (3, 50, True, True)
    assert (quiet.burst, quiet.daily, quiet.cap_burst, quiet.overridden) == (10, 1000, False, False)
    assert await _grants(limiter, BUSY, 6) == 3
    assert await _grants(limiter, QUIET, 6) == 6

    # HubSpot's headers name a higher limit for both: the override still caps BUSY.
    headers = {"X-HubSpot-RateLimit-Max": "100", "X-HubSpot-RateLimit-Remaining": "90"}
    await limiter.correct(BUSY, headers, probed=True)
    await limiter.correct(QUIET, headers, probed=True)
    assert (await limiter.limits(BUSY)).burst == 3
    assert (await limiter.limits(QUIET)).burst == 100


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never met")


@pytest.mark.on_cluster
async def test_an_announced_change_reaches_a_running_limiter(redis: Redis) -> None:
    # Entries never expire here: only the announcement can bring the change.
    configs = PortalConfigCache(redis, ("limits", "pilot"), ttl_s=3600)
    limiter = _limiter(redis, configs)
    listener = asyncio.create_task(configs.listen())
    try:
        await configs.subscribed.wait()
        assert (await limiter.plan(BUSY)).burst == 10  # read (and cached) before the change
        await store_version(redis, Scope(portal_id=BUSY), "limits", _limits(burst=2), author="cli")
        await _until(lambda: _burst_is(limiter, BUSY, 2))
        assert (await limiter.plan(QUIET)).burst == 10
        # Cleared: the portal inherits the configured plan again.
        await store_version(redis, Scope(portal_id=BUSY), "limits", config_pb2.ConfigDocument(), author="cli")
        await _until(lambda: _burst_is(limiter, BUSY, 10))
        assert not (await limiter.plan(BUSY)).overridden
    finally:
        listener.cancel()


async def test_a_missed_announcement_costs_at_most_the_cache_life(redis: Redis) -> None:
    # No listener at all: the entry's expiry alone brings the change.
    limiter = _limiter(redis, PortalConfigCache(redis, ("limits", "pilot"), ttl_s=0.2))
    assert (await limiter.plan(BUSY)).burst == 10
    await store_version(redis, Scope(portal_id=BUSY), "limits", _limits(burst=2), author="cli")
    await _until(lambda: _burst_is(limiter, BUSY, 2))


async def _burst_is(limiter: RateLimiter, portal: int, burst: int) -> bool:
    return (await limiter.plan(portal)).burst == burst


async def test_a_tenants_limits_apply_to_its_portals_below_their_own(redis: Redis) -> None:
    configs = PortalConfigCache(redis, ("limits", "pilot"))
    limiter = _limiter(redis, configs)
    acme = Scope(tenant="acme")
    await store_version(redis, acme, "limits", _limits(burst=4, daily=40), author="cli")
    for portal in (BUSY, QUIET):
        member = config_pb2.ConfigDocument(tenant=config_pb2.TenantConfig(tenant="acme"))
        await store_version(redis, Scope(portal_id=portal), "tenant", member, author="cli")
    await store_version(redis, Scope(portal_id=BUSY), "limits", _limits(burst=2), author="cli")
    busy, quiet, other = await limiter.plan(BUSY), await limiter.plan(QUIET), await limiter.plan(303)
    assert (busy.burst, busy.daily) == (2, 40)  # its own burst, the tenant's daily
    assert (quiet.burst, quiet.daily) == (4, 40)
    assert (other.burst, other.daily) == (10, 1000)


async def _submit(stub: object, portal: int, email: str) -> writer_pb2.SubmitWritesResponse:
    return await stub.SubmitWrites(  # type: ignore[attr-defined, no-any-return]
        writer_pb2.SubmitWritesRequest(portal_id=portal, writes=[upsert(email)], wait=True), timeout=30
    )


async def _emails_in(s: Stack, email: str) -> bool:
    """Whether the sandbox holds a contact with this email."""
    return any(o.get("properties", {}).get("email") == email for o in await s.objects())


async def _refused(stub: object, portal: int, email: str) -> grpc.aio.AioRpcError | None:
    try:
        await _submit(stub, portal, email)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return exc
        raise
    return None


async def test_a_pilot_refuses_writes_of_its_portal_only(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    redis = redis_from_url(redis_url)
    async with stack(redis_url, caller_tokens) as s:
        # Another portal in pilot: this one's writes go through.
        await store_version(redis, Scope(portal_id=QUIET), "pilot", _pilot(True), author="cli")
        reply = await _submit(s.stub, PORTAL, "before@example.com")
        assert reply.results[0].status == writer_pb2.WRITE_STATUS_SUCCEEDED

        await store_version(redis, Scope(portal_id=PORTAL), "pilot", _pilot(True, "onboarding"), author="cli")
        refusal = None
        for n in range(600):  # until the writer's cache has the change
            refusal = await _refused(s.stub, PORTAL, f"probe{n}@example.com")
            if refusal is not None:
                break
            await asyncio.sleep(0.05)
        assert refusal is not None
        assert "read-only pilot" in (refusal.details() or "")
        assert "portal:12345" in (refusal.details() or "") and "onboarding" in (refusal.details() or "")
        info = error_info(refusal)
        assert info is not None and info.reason == "PORTAL_PILOT"
        # Queued submissions are refused the same way.
        with pytest.raises(grpc.aio.AioRpcError) as queued:
            await s.stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=[upsert("q@example.com")]), timeout=30
            )
        assert queued.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Reads still work; the quota status says the portal is in pilot.
        read = await s.stub.ReadRecords(
            writer_pb2.ReadRecordsRequest(
                portal_id=PORTAL, object_type="contacts", ids=["before@example.com"], id_property="email"
            ),
            timeout=30,
        )
        assert len(read.records) == 1
        status = await s.cli.GetQuotaStatus(writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL), timeout=30)
        assert status.pilot_mode is True
        assert not await _emails_in(s, "q@example.com")

        # Pilot off again: writes flow.
        await store_version(redis, Scope(portal_id=PORTAL), "pilot", _pilot(False), author="cli")
        for _ in range(600):
            if await _refused(s.stub, PORTAL, "after@example.com") is None:
                break
            await asyncio.sleep(0.05)
        assert await _emails_in(s, "after@example.com")
    await redis.aclose()
