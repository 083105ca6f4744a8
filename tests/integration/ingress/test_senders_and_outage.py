"""Real senders (HubSpot's SDK, the sandbox) are accepted; a Redis outage costs nothing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from hubspot.utils.signature import Signature
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from hubsync.core.devredis import RedisProcess
from hubsync.core.event_entries import decode_entry
from hubsync.core.telemetry import setup_tracing
from hubsync.hubspot.signatures import v3_uri
from hubsync.sandbox import PortalConfig, SandboxConfig, SandboxServer
from hubsync.sandbox.config import DEFAULT_CLIENT_SECRET
from tests.helpers.ingress import PORTAL, TEST_SECRET, event, running_ingress, v3_headers

STREAM = f"hubsync:{{{PORTAL}}}:events"


def sdk_headers(version: str, url: str, body: bytes, ts: str) -> dict[str, str]:
    # The SDK hashes the URI exactly as given; for v3 HubSpot hashes it with the listed escapes
    # decoded (v2: as sent), so the SDK is handed that form, as its documentation says.
    uri = v3_uri(url) if version == "v3" else url
    signature = Signature.get_signature(TEST_SECRET, body.decode(), version, uri, "POST", ts)
    if version == "v3":
        return {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": ts}
    return {"X-HubSpot-Signature-Version": version, "X-HubSpot-Signature": signature}


async def test_signatures_by_hubspots_sdk_are_accepted(redis_url, caller_tokens, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    settings = {"accept_v1": True, "accept_v2": True}
    async with (
        running_ingress(redis_url=redis_url, caller_tokens=caller_tokens, settings=settings) as (base, _),
        httpx.AsyncClient() as client,
    ):
        for n, version in enumerate(("v3", "v1", "v2")):
            # an escaped query: v3 hashes it decoded, v2 as sent
            url = f"{base}/webhooks/hubspot?portal=%3A12345&n={n}"
            body = json.dumps([event(object_id=100 + n)]).encode()
            headers = sdk_headers(version, url, body, str(int(time.time() * 1000)))
            reply = await client.post(url, content=body, headers=headers)
            assert reply.status_code == 200, (version, reply.text)
    assert await redis.xlen(STREAM) == 3


async def test_v1_is_refused_unless_configured(redis_url, caller_tokens, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens) as (base, _):
        body = json.dumps([event()]).encode()
        headers = sdk_headers("v1", base + "/webhooks/hubspot", body, "0")
        async with httpx.AsyncClient() as client:
            reply = await client.post(base + "/webhooks/hubspot", content=body, headers=headers)
    assert reply.status_code == 401
    assert await redis.exists(STREAM) == 0


async def test_sandbox_deliveries_are_accepted_and_stale_ones_refused(
    redis_url, caller_tokens, redis: Redis
) -> None:  # type: ignore[no-untyped-def]
    config = SandboxConfig.model_validate(
        {
            "portals": [PortalConfig(burst_per_10s=100_000, search_per_second=1_000)],
            "webhook_retry_scale": 0.00001,
            "webhook_retry_jitter": 0.0,
            "webhook_batch_window_ms": 2.0,
        }
    )
    async with (
        running_ingress(
            redis_url=redis_url, caller_tokens=caller_tokens, secrets=[DEFAULT_CLIENT_SECRET]
        ) as (base, _),
        SandboxServer(config) as sb,
        httpx.AsyncClient(base_url=sb.base_url, timeout=15) as admin,
    ):
        await admin.put("/_sandbox/webhooks/1001", json={"target_url": f"{base}/webhooks/hubspot"})
        created = await admin.post(
            f"/_sandbox/ui/contacts?portal={PORTAL}", json={"properties": {"email": "a@x.com"}}
        )
        assert created.status_code in (200, 201), created.text
        record_id = int(created.json()["id"])
        await admin.post(
            f"/_sandbox/ui/contacts/{record_id}?portal={PORTAL}", json={"properties": {"firstname": "Ada"}}
        )
        assert (await admin.post("/_sandbox/webhooks/wait-idle", params={"timeout": 10})).json()["idle"]
        deliveries = (await admin.get("/_sandbox/webhooks/deliveries", params={"body": "false"})).json()[
            "results"
        ]
        assert deliveries and all(d["status"] == 200 for d in deliveries), deliveries
        entries: Any = await redis.xrange(STREAM)
        stored = [decode_entry(i, f).event or {} for i, f in entries]
        assert {e["objectId"] for e in stored} == {record_id}
        assert any(e.get("propertyName") == "firstname" and e["propertyValue"] == "Ada" for e in stored)
        before = len(stored)

        # the sandbox's timestamps 10 minutes old: every attempt is refused, nothing enqueued
        sb.state.config.webhook_timestamp_offset_ms = -600_000
        await admin.post(
            f"/_sandbox/ui/contacts/{record_id}?portal={PORTAL}", json={"properties": {"firstname": "Eve"}}
        )
        assert (await admin.post("/_sandbox/webhooks/wait-idle", params={"timeout": 10})).json()["idle"]
        deliveries = (await admin.get("/_sandbox/webhooks/deliveries", params={"body": "false"})).json()[
            "results"
        ]
        assert {d["status"] for d in deliveries[len(deliveries) - 11 :]} == {401}
        assert await redis.xlen(STREAM) == before


async def test_redis_outage_answers_503_and_the_retry_is_processed_once(
    tmp_path: Path, caller_tokens
) -> None:  # type: ignore[no-untyped-def]
    own = RedisProcess(tmp_path / "redis").start()
    port = own.port
    try:
        settings = {"redis_timeout_s": 1.0}
        async with running_ingress(redis_url=own.url, caller_tokens=caller_tokens, settings=settings) as (
            base,
            _,
        ):
            url = base + "/webhooks/hubspot"
            body = json.dumps([event(object_id=1), event(object_id=2)]).encode()
            async with httpx.AsyncClient(timeout=10) as client:
                assert (
                    await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))
                ).status_code == 200
                await asyncio.to_thread(own.stop)
                lost = json.dumps([event(object_id=3)]).encode()
                exporter = InMemorySpanExporter()
                setup_tracing("hubsync-ingress", exporter)
                with suppress_http_instrumentation():  # no trace context, as from HubSpot
                    reply = await client.post(url, content=lost, headers=v3_headers(TEST_SECRET, url, lost))
                assert reply.status_code == 503
                assert reply.headers.get("retry-after")
                # the failed round trip's span and the 503's own server span are errors
                spans = exporter.get_finished_spans()
                [commit] = [s for s in spans if s.name == "ingress.commit"]
                [server] = [s for s in spans if s.name == "POST /webhooks/hubspot"]
                assert commit.status.status_code.name == server.status.status_code.name == "ERROR"
                assert server.attributes is not None and server.attributes["http.response.status_code"] == 503
                assert (await client.get(base + "/healthz")).status_code == 503
                # Redis comes back (same port, same AOF): HubSpot's retries are accepted once
                own = RedisProcess(tmp_path / "redis", port=port)
                await asyncio.to_thread(own.start)
                statuses = []
                for _ in range(3):
                    reply = await client.post(url, content=lost, headers=v3_headers(TEST_SECRET, url, lost))
                    statuses.append(reply.status_code)
                assert statuses[-1] == 200 and 503 not in statuses[1:], statuses
                check = Redis.from_url(own.url)
                try:
                    entries: Any = await check.xrange(STREAM)
                    stored = [decode_entry(i, f).event or {} for i, f in entries]
                    assert [e.get("objectId") for e in stored] == [1, 2, 3]
                finally:
                    await check.aclose()
    finally:
        own.stop()
