"""The whole suite as separate processes, the way a user runs it: Redis, the sandbox, the four
services. Both directions work, and one webhook's journey is one trace across every service."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from hubsync.cli.demo import run_demo
from hubsync.cli.suite import Suite
from tests.e2e.otlp_receiver import ReceivedSpan, read_metric_names, read_spans

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


class Collector:
    """The OTLP receiver, a separate process; spans land in a JSON-lines file."""

    def __init__(self, workdir: Path) -> None:
        self.spans_file = workdir / "spans.jsonl"
        port_file = workdir / "otlp.port"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("otlp_receiver.py")),
             "--port-file", str(port_file), "--out", str(self.spans_file)]
        )  # fmt: skip
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{port_file.read_text()}"

    def metric_names(self) -> dict[str, set[str]]:
        return read_metric_names(self.spans_file.with_name("metrics.jsonl"))

    def in_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in read_spans(self.spans_file) if s.trace_id == trace_id]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Suite, Collector]]:
    workdir = Path(tmp_path_factory.mktemp("suite"))
    collector = Collector(workdir)
    try:
        async with Suite(workdir, otlp_endpoint=collector.endpoint) as suite:
            yield suite, collector
    finally:
        collector.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_every_service_serving(running: tuple[Suite, Collector]) -> None:
    suite, _ = running
    assert await suite.health() == {s: "SERVING" for s in ("auth", "writer", "mapper", "ingress")}


@pytest.mark.asyncio(loop_scope="module")
async def test_both_directions_and_one_trace(running: tuple[Suite, Collector]) -> None:
    suite, receiver = running
    result = await run_demo(suite, say=lambda *_a, **_k: None)

    # outbound: the pushed record is in "HubSpot", mapped to HubSpot's property names
    assert result.outbound_outcome == "PUSH_OUTCOME_WRITTEN"
    assert result.sandbox_properties["firstname"] == "Ada"
    assert result.sandbox_properties["email"] == f"{result.external_id}@example.com"
    # inbound: the UI edit reached the subscriber in the company's shape
    assert result.inbound_change["fields"]["first_name"] == "Grace"
    assert result.inbound_change["hubspot_id"] == result.hubspot_id

    # one trace: ingress's webhook span, mapper, writer, and writer's HTTP call to the sandbox
    trace_id = result.inbound_trace_id
    assert len(trace_id) == 32 and trace_id != "0" * 32

    def services_in_trace() -> set[str]:
        return {s.service for s in receiver.in_trace(trace_id)}

    wanted = {"hubsync-ingress", "hubsync-mapper", "hubsync-writer"}
    for _ in range(100):
        if wanted <= services_in_trace():
            break
        await asyncio.sleep(0.2)
    spans = receiver.in_trace(trace_id)
    assert wanted <= {s.service for s in spans}, sorted((s.service, s.name) for s in spans)
    http_to_sandbox = [
        s
        for s in spans
        if s.service == "hubsync-writer"
        and s.kind == 3  # SPAN_KIND_CLIENT
        and "batch/read" in str(s.attributes.get("url.full", s.attributes.get("http.url", "")))
    ]
    assert http_to_sandbox, sorted((s.service, s.name, s.kind) for s in spans)


@pytest.mark.asyncio(loop_scope="module")
async def test_unsigned_webhook_is_refused_and_enqueues_nothing(running: tuple[Suite, Collector]) -> None:
    from redis.asyncio import Redis

    suite, _ = running
    assert suite.redis is not None
    redis = Redis.from_url(suite.redis.url)
    try:
        before = await redis.xlen("hubsync:{12345}:events")
        body = (
            b'[{"objectId":1,"eventId":9,"portalId":12345,'
            b'"subscriptionType":"contact.creation","occurredAt":1}]'
        )
        async with httpx.AsyncClient() as client:
            reply = await client.post(f"{suite.ingress_url}/webhooks/hubspot", content=body)
        assert reply.status_code == 401
        assert await redis.xlen("hubsync:{12345}:events") == before
    finally:
        await redis.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_metrics_endpoint_after_sync(running: tuple[Suite, Collector]) -> None:
    suite, _ = running
    async with httpx.AsyncClient() as client:
        writer = (await client.get(f"http://127.0.0.1:{suite.ports.metrics['writer']}/metrics")).text
    assert "hubsync_hubspot_requests_total" in writer


@pytest.mark.asyncio(loop_scope="module")
async def test_metrics_exported_over_otlp(running: tuple[Suite, Collector]) -> None:
    """Every service pushes its metrics to the OTLP endpoint too (the suite exports every 2 s)."""
    _, collector = running
    wanted = {
        "hubsync-ingress": "hubsync.webhook.accepted",
        "hubsync-writer": "hubsync.hubspot.requests",
        "hubsync-auth": "hubsync.connections.needing_reauth",
    }
    for _ in range(100):
        names = collector.metric_names()
        if all(metric in names.get(service, set()) for service, metric in wanted.items()):
            break
        await asyncio.sleep(0.2)
    names = collector.metric_names()
    for service, metric in wanted.items():
        assert metric in names.get(service, set()), (service, sorted(names.get(service, set())))


@pytest.mark.parametrize("service", ["auth", "ingress", "mapper", "writer"])
def test_invalid_setting_exits_naming_the_variable(service: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    env["HUBSYNC_REDIS_URL"] = "ftp://nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", f"hubsync.{service}"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "HUBSYNC_REDIS_URL" in proc.stderr
