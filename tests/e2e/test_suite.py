"""The whole suite as separate processes, the way a user runs it: Redis, the sandbox, the four
services, every gRPC hop over mutual TLS. Both directions work, and one webhook's journey is one
trace across every service."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.cli.demo import run_demo
from hubsync.cli.suite import Suite
from hubsync.core.channels import open_channel
from hubsync.core.devcerts import DevCA
from hubsync.core.tls import TLSFiles
from tests.e2e.otlp_receiver import ReceivedSpan, read_metric_names, read_spans

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
OAUTH_PORTAL = 23456


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
        # A second portal for the OAuth test; access tokens live 200 s, under auth's 300 s
        # min_ttl, so every token request for an OAuth connection refreshes it.
        sandbox = {
            "portals": [{"hub_id": 12345}, {"hub_id": OAUTH_PORTAL, "private_apps": []}],
            "token_ttl_s": 200,
        }
        async with Suite(
            workdir,
            otlp_endpoint=collector.endpoint,
            sandbox_config=sandbox,
            tls=True,
            redis_cluster=os.environ.get("HUBSYNC_TEST_REDIS") == "cluster",
        ) as suite:
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

    # one trace: ingress's commit span, mapper, writer, and writer's HTTP call to the sandbox
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
    # the attributes docs/operations.md tells people to search by
    (inbound,) = [s for s in spans if s.name == "mapper.inbound"]
    assert inbound.attributes["hubsync.object_id"] == result.hubspot_id
    assert inbound.attributes["hubsync.object_type"] == "contacts"
    # HubSpot sends no trace context: the webhook's trace starts at ingress's round-trip span
    (commit,) = [s for s in spans if s.service == "hubsync-ingress" and s.name == "ingress.commit"]
    assert commit.kind == 4 and not commit.parent_span_id  # SPAN_KIND_PRODUCER, the root
    assert str(commit.attributes["hubsync.portal_id"]) == "12345"
    assert int(result.hubspot_id) in [int(i) for i in commit.attributes["hubsync.object_id"]]


@pytest.mark.asyncio(loop_scope="module")
async def test_every_service_refuses_clients_without_a_certificate_of_the_ca(
    running: tuple[Suite, Collector], tmp_path: Path
) -> None:
    """The services speak mutual TLS only: plaintext, TLS without a client certificate and a
    certificate from another CA are refused at the handshake, even with a valid caller token."""
    suite, _ = running
    cli = suite.tls["cli"]
    assert cli.ca is not None
    ca_pem = cli.ca.read_bytes()
    intruder = DevCA("another CA").write(tmp_path, "intruder")
    intruder.ca.write_bytes(ca_pem)  # it trusts the servers; they do not trust it
    request = health_pb2.HealthCheckRequest()
    token = suite.tokens["cli"]
    for service in ("auth", "ingress", "mapper", "writer"):
        address = suite.address(service)
        channels = {
            "plaintext": open_channel(address, token),
            "no certificate": grpc.aio.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=ca_pem)
            ),
            "another CA": open_channel(
                address, token, TLSFiles(cert=intruder.cert, key=intruder.key, ca=intruder.ca)
            ),
        }
        for kind, channel in channels.items():
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (service, kind)
        # The same token over the suite's mTLS is served.
        async with suite.channel(service) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.asyncio(loop_scope="module")
async def test_unsigned_webhook_is_refused_and_enqueues_nothing(running: tuple[Suite, Collector]) -> None:
    from hubsync.core.redis import redis_from_url

    suite, _ = running
    assert suite.redis is not None
    redis = redis_from_url(suite.redis.url)
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
async def test_oauth_install_through_ingress_then_refresh(running: tuple[Suite, Collector]) -> None:
    """A person installs the app: hubsync's start link (binds the flow to the browser) → HubSpot's
    consent → ingress's /oauth/callback → auth stores the connection; writing to that portal then
    refreshes its token."""
    suite, _ = running
    async with suite.channel("auth") as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        begun = await auth.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant="e2e"), timeout=10)
        assert begun.start_url.startswith(f"{suite.ingress_url}/oauth/start?")
        async with httpx.AsyncClient(follow_redirects=True, timeout=20) as browser:
            # The start link's page, then its button (a form POST): binds the flow to this browser.
            assert (await browser.get(begun.start_url)).status_code == 200
            ticket = parse_qs(urlsplit(begun.start_url).query)["ticket"][0]
            start = await browser.post(
                f"{suite.ingress_url}/oauth/start", data={"ticket": ticket}, follow_redirects=False
            )
            assert start.status_code == 303 and start.headers["location"] == begun.authorize_url
            page = await browser.get(begun.authorize_url + f"&portal_id={OAUTH_PORTAL}")
            assert page.status_code == 200, page.text
            assert str(page.url).startswith(f"{suite.ingress_url}/oauth/callback")
            # the same callback again (a replayed state) is refused and changes nothing
            assert (await browser.get(str(page.url))).status_code == 400
        got = await auth.GetConnection(auth_pb2.GetConnectionRequest(portal_id=OAUTH_PORTAL), timeout=10)
    assert got.connection.kind == auth_pb2.CONNECTION_KIND_OAUTH
    assert got.connection.state == auth_pb2.CONNECTION_STATE_ACTIVE
    assert got.connection.tenant == "e2e"

    record = mapper_pb2.ExternalRecord(object_type="contacts", external_id="oauth-1")
    record.fields.update({"external_id": "oauth-1", "email": "oauth-1@example.com", "first_name": "Kat"})
    async with suite.channel("mapper", "demo-client") as channel:
        reply = await mapper_pb2_grpc.MapperServiceStub(channel).PushRecords(
            mapper_pb2.PushRecordsRequest(
                request_id="e2e-oauth-1", portal_id=OAUTH_PORTAL, records=[record], wait=True
            ),
            timeout=30,
        )
    assert mapper_pb2.PushOutcome.Name(reply.results[0].outcome) == "PUSH_OUTCOME_WRITTEN"


# Issue 8's metric families: the service whose /metrics must show each after a sync, as
# (metric name, a label it must carry or "").
SYNC_METRICS: dict[str, list[tuple[str, str]]] = {
    "mapper": [
        ("hubsync_sync_total", 'direction="outbound"'),
        ("hubsync_sync_total", 'direction="inbound"'),
        ("hubsync_sync_duration_seconds_bucket", 'direction="inbound"'),
        ("hubsync_sync_duration_seconds_bucket", 'direction="outbound"'),
        ("hubsync_queue_lag", 'queue="events"'),
    ],
    "writer": [
        ("hubsync_hubspot_requests_total", 'endpoint="POST /crm/v3/objects/{objectType}/batch/upsert"'),
        ("hubsync_hubspot_request_duration_seconds_bucket", 'status="200"'),
        ("hubsync_dlq_depth", ""),  # no portal label by default (HUBSYNC_METRICS_PORTAL_LABELS)
        ("hubsync_circuit_state", ""),
        ("hubsync_ratelimit_remaining", 'source="writer"'),  # our limiter's count
        ("hubsync_ratelimit_remaining", 'source="hubspot"'),  # HubSpot's headers
        ("hubsync_writer_batch_size_bucket", 'operation="upsert"'),  # records per call, and why
    ],
    "ingress": [
        ("hubsync_webhook_accept_duration_seconds_bucket", ""),
        ("hubsync_webhook_accepted_total", 'origin="webhook"'),
    ],
    "auth": [
        ("hubsync_token_refresh_total", 'outcome="success"'),
        ("hubsync_connections_needing_reauth", ""),
    ],
}


@pytest.mark.asyncio(loop_scope="module")
async def test_metrics_endpoint_after_sync(running: tuple[Suite, Collector]) -> None:
    suite, _ = running

    async def missing() -> dict[str, list[tuple[str, str]]]:
        gaps = {}
        async with httpx.AsyncClient() as client:
            for service, wanted in SYNC_METRICS.items():
                page = (await client.get(f"http://127.0.0.1:{suite.ports.metrics[service]}/metrics")).text
                samples = [line for line in page.splitlines() if line.startswith("hubsync_")]
                absent = [
                    (name, label)
                    for name, label in wanted
                    if not any(line.startswith(name + "{") and label in line for line in samples)
                ]
                if absent:
                    gaps[service] = absent
        return gaps

    # gauges are refreshed every few seconds (DLQ depth every 5 s, queue lag every 30 s)
    for _ in range(40):
        if not await missing():
            break
        await asyncio.sleep(0.5)
    assert await missing() == {}


@pytest.mark.asyncio(loop_scope="module")
async def test_a_second_writer_replica_serves_and_writes(running: tuple[Suite, Collector]) -> None:
    """Suite.add_replica: another writer process on its own ports, same Redis and settings (mTLS
    too), whose writes reach HubSpot; the suite stops it with the rest."""
    suite, _ = running
    name = await suite.add_replica("writer")
    assert name == "writer-2" and suite.address(name) != suite.address("writer")
    async with suite.channel(name, "mapper") as channel:
        reply = await writer_pb2_grpc.WriterServiceStub(channel).SubmitWrites(
            writer_pb2.SubmitWritesRequest(
                portal_id=12345,
                wait=True,
                writes=[
                    writer_pb2.Write(
                        record=writer_pb2.RecordWrite(
                            object_type="contacts",
                            operation=writer_pb2.WRITE_OPERATION_UPSERT,
                            id_property="email",
                            id="replica@example.com",
                            properties={"firstname": "Second"},
                        )
                    )
                ],
            ),
            timeout=60,
        )
    assert reply.results[0].status == writer_pb2.WRITE_STATUS_SUCCEEDED, reply
    async with httpx.AsyncClient(base_url=suite.sandbox_url) as http:
        found = await http.get(
            "/_sandbox/objects/contacts", params={"portal": 12345, "email": "replica@example.com"}
        )
    assert "Second" in found.text


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
