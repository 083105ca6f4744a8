"""Reusable fixtures for tests that need a running ingress (any service's tests may import).

    async with running_ingress(redis_url=..., caller_tokens=..., secrets=[SECRET]) as (http, grpc_addr):
        body = json.dumps([event(...)]).encode()
        await httpx.AsyncClient().post(f"{http}/webhooks/hubspot", content=body,
                                       headers=v3_headers(SECRET, f"{http}/webhooks/hubspot", body))

Plain async context managers (no pytest dependency), so other engineers can compose them.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from hubsync.core.service import RunningService, start_service
from hubsync.hubspot.signatures import sign_v1, sign_v3
from hubsync.ingress.service import IngressSpec, build
from hubsync.ingress.settings import IngressSettings
from tests.helpers.core_settings import service_core

TEST_SECRET = "ingress-test-client-secret"
TEST_APP_ID = "1001"
TEST_PRIVATE_APP_ID = "2001"  # a private app whose token writer uses: its writes are ours too
PORTAL = 12345


def ingress_settings(secrets: Sequence[str] = (TEST_SECRET,), **overrides: object) -> IngressSettings:
    """Ingress settings for tests: HTTP on a free loopback port, no periodic reconcile, our app ids;
    ``overrides`` by field name (they take precedence over any ``HUBSYNC_INGRESS_*`` variable)."""
    values: dict[str, object] = {
        "http_host": "127.0.0.1",
        "http_port": 0,
        "webhook_secrets": list(secrets),
        "app_id": f"{TEST_APP_ID}, {TEST_PRIVATE_APP_ID}",
        "reconcile_interval_seconds": 0,
    }
    return IngressSettings.model_validate(values | overrides)


@contextlib.asynccontextmanager
async def running_ingress_service(
    *,
    redis_url: str,
    caller_tokens: Mapping[str, str],
    hubspot_api_base: str = "http://127.0.0.1:9",
    secrets: Sequence[str] = (TEST_SECRET,),
    settings: Mapping[str, object] | None = None,
    auth_address: str = "127.0.0.1:9",
    writer_address: str = "127.0.0.1:9",
) -> AsyncIterator[tuple[RunningService, IngressSpec]]:
    """An in-process ingress (HTTP and gRPC on free loopback ports); yields the service and spec.

    ``settings`` override :func:`ingress_settings` by field name (``{"redis_timeout_s": 1.0}``).
    """
    core = service_core(
        "ingress",
        redis_url,
        caller_tokens,
        hubspot_api_base,
        auth_address=auth_address,
        writer_address=writer_address,
        shutdown_grace_seconds=1.0,
    )
    ingress = ingress_settings(secrets, **dict(settings or {}))
    service = await start_service("ingress", core, functools.partial(build, settings=ingress), port=0)
    assert isinstance(service.spec, IngressSpec)
    try:
        yield service, service.spec
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def running_ingress(**kwargs: Any) -> AsyncIterator[tuple[str, str]]:
    """Like :func:`running_ingress_service`; yields ``(http_base_url, grpc_address)``."""
    async with running_ingress_service(**kwargs) as (service, spec):
        yield f"http://127.0.0.1:{spec.http_port}", f"127.0.0.1:{service.port}"


def v3_headers(secret: str, url: str, body: bytes, timestamp_ms: int | None = None) -> dict[str, str]:
    """HubSpot's v3 signature headers for a POST of ``body`` to ``url``."""
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, ts),
        "X-HubSpot-Request-Timestamp": str(ts),
    }


def v1_headers(secret: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-Version": "v1",
        "X-HubSpot-Signature": sign_v1(secret, body),
    }


_next_event = [1000]


def event(
    portal_id: int = PORTAL,
    object_id: int = 501,
    subscription_type: str = "contact.propertyChange",
    *,
    property_name: str | None = "firstname",
    property_value: str | None = "Ada",
    change_source: str = "CRM_UI",
    event_id: int | None = None,
    occurred_at: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One webhook event in HubSpot's shape (fresh eventId unless given)."""
    if event_id is None:
        _next_event[0] += 1
        event_id = _next_event[0]
    item: dict[str, Any] = {
        "objectId": object_id,
        "eventId": event_id,
        "subscriptionId": 25,
        "portalId": portal_id,
        "appId": int(TEST_APP_ID),
        "occurredAt": occurred_at if occurred_at is not None else int(time.time() * 1000),
        "subscriptionType": subscription_type,
        "attemptNumber": 0,
        "changeSource": change_source,
    }
    if subscription_type.endswith(".propertyChange"):
        item["propertyName"] = property_name
        item["propertyValue"] = property_value
    item.update(extra)
    return item
