"""Stopping ingress drains: a request in flight when the stop begins is still answered 200 and
its event is in Redis; afterwards nothing listens."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from redis.asyncio import Redis

from tests.helpers.ingress import PORTAL, TEST_SECRET, event, running_ingress_service, v3_headers


async def test_in_flight_request_finishes_during_stop(redis_url, caller_tokens, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    # a 50 ms commit window keeps the request in flight while the stop begins
    settings = {"commit_window_s": 0.05}
    async with running_ingress_service(
        redis_url=redis_url, caller_tokens=caller_tokens, settings=settings
    ) as (
        service,
        spec,
    ):
        url = f"http://127.0.0.1:{spec.http_port}/webhooks/hubspot"
        body = json.dumps([event(object_id=9)]).encode()
        async with httpx.AsyncClient() as client:
            request = asyncio.create_task(
                client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))
            )
            await asyncio.sleep(0.02)
            await service.stop()
            reply = await request
            assert reply.status_code == 200, reply.text
            assert await redis.xlen(f"hubsync:{{{PORTAL}}}:events") == 1
            with pytest.raises(httpx.ConnectError):
                await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))
