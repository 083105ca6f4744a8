"""Ingress counts what it does: accepted, rejected by reason, duplicates, echoes, accept latency."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import httpx
import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.asyncio import Redis

from tests.helpers.ingress import TEST_SECRET, event, running_ingress, v3_headers

_reader: InMemoryMetricReader | None = None


def reader() -> InMemoryMetricReader:
    """Installs an in-memory meter provider once per test process (instruments bind to it)."""
    global _reader
    if _reader is None:
        current = metrics.get_meter_provider()
        if isinstance(current, MeterProvider):
            pytest.skip("a meter provider was installed by another test; cannot attach a reader")
        _reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    return _reader


def totals(data: Any) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = defaultdict(float)
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # histogram: how many recorded
                    out[(metric.name, tuple(sorted(point.attributes.items())))] += value
    return out


async def test_outcomes_are_counted(redis_url, caller_tokens, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    mem = reader()
    before = totals(mem.get_metrics_data()) if mem.get_metrics_data() else {}
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens) as (base, _):
        url = f"{base}/webhooks/hubspot"
        await redis.hset("hubsync:{12345}:written:contacts:7", mapping={"firstname": "Ada"})
        body = json.dumps([event(object_id=1), event(object_id=7)]).encode()  # 1 new, 1 echo
        async with httpx.AsyncClient() as client:
            for _ in range(2):  # the second time both are duplicates (the echo was seen too)
                await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))
            await client.post(url, content=body)  # unsigned
            await client.post(url, content=b"[]", headers=v3_headers(TEST_SECRET, url, b"[]"))
    after = totals(mem.get_metrics_data())

    def delta(name: str, **attrs: Any) -> float:
        key = (name, tuple(sorted(attrs.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("hubsync.webhook.accepted", origin="webhook") == 1
    assert delta("hubsync.webhook.duplicates") == 2
    assert delta("hubsync.webhook.echoes", kind="written") == 1
    assert delta("hubsync.webhook.rejected", reason="missing_signature") == 1
    assert delta("hubsync.webhook.rejected", reason="bad_payload") == 1
    assert delta("hubsync.webhook.accept.duration") == 2
