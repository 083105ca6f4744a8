"""Traces without a backend: the suite as ``hubsync run`` starts it, with its local trace store.

One change each way (the demo's outbound push and inbound UI edit, plus a queued push that crosses
writer's Redis stream) is found with ``hubsync trace`` by the id a developer has in hand, and its
whole trace (ingress → mapper → writer → the HubSpot call, across the Redis hops) is in the store
with every parent link, rendered in the terminal and as an HTML page that a real headless
Chromium paints.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.cli.demo import DemoResult, run_demo, sandbox_contact
from hubsync.cli.suite import SANDBOX_CLIENT_SECRET, SANDBOX_PORTAL, SANDBOX_PRIVATE_TOKEN, Suite
from hubsync.cli.trace_store import StoredSpan, TraceSpans, TraceStore
from hubsync.cli.trace_view import SERVICE_COLOURS
from tests.e2e.png import read_png

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5
UPSERT = "HubSpot POST /crm/v3/objects/{objectType}/batch/upsert"
READ = "HubSpot POST /crm/v3/objects/{objectType}/batch/read"


class Changes:
    """The suite, the demo's result and the ids each change is found by."""

    def __init__(
        self, suite: Suite, demo: DemoResult, said: list[str], queued_id: str, event_id: int
    ) -> None:
        self.suite = suite
        self.demo = demo
        self.said = said
        self.queued_id = queued_id
        self.event_id = event_id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def changes(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Changes]:
    async with Suite(Path(tmp_path_factory.mktemp("traces")), traces=True) as suite:
        said: list[str] = []
        demo = await run_demo(suite, say=lambda text, **_: said.append(str(text)), trace_opener=opener(suite))
        queued_id = f"queued-{secrets.token_hex(3)}"
        await push_queued(suite, queued_id)
        await eventually(lambda: sandbox_contact(suite, queued_id), f"{queued_id} written to the sandbox")
        event_id = await ui_edit_event_id(suite, demo.hubspot_id)
        yield Changes(suite, demo, said, queued_id, event_id)


def opener(suite: Suite) -> str:
    return f"hubsync trace --workdir {suite.workdir}"


async def push_queued(suite: Suite, external_id: str) -> None:
    """An outbound push without waiting: writer queues it in its Redis stream and writes later."""
    record = mapper_pb2.ExternalRecord(object_type="contacts", external_id=external_id)
    record.fields.update(
        {"external_id": external_id, "email": f"{external_id}@example.com", "first_name": "Q"}
    )
    async with suite.channel("mapper", "demo-client") as channel:
        reply = await mapper_pb2_grpc.MapperServiceStub(channel).PushRecords(
            mapper_pb2.PushRecordsRequest(
                request_id=secrets.token_hex(8), portal_id=SANDBOX_PORTAL, records=[record], wait=False
            ),
            timeout=30,
        )
    assert mapper_pb2.PushOutcome.Name(reply.results[0].outcome) == "PUSH_OUTCOME_QUEUED"


async def ui_edit_event_id(suite: Suite, hubspot_id: str) -> int:
    """HubSpot's eventId of the demo's UI edit, from the sandbox's webhook delivery log."""
    async with httpx.AsyncClient(base_url=suite.sandbox_url, timeout=10) as client:
        log = (await client.get("/_sandbox/webhooks/deliveries")).json()["results"]
    for delivery in log:
        body = delivery["body"]
        for event in json.loads(body) if isinstance(body, str) else body:
            if str(event.get("objectId")) == hubspot_id and event.get("propertyValue") == "Grace":
                return int(event["eventId"])
    raise AssertionError(f"no delivery of the UI edit of {hubspot_id}: {log}")


async def eventually(probe: Callable[[], object], what: str, attempts: int = 300) -> object:
    """Polls ``probe`` (sync or async) until it returns something truthy; generous for a slow
    machine (the services export spans every 200 ms)."""
    for _ in range(attempts):
        got = probe()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"not seen: {what}")


def hubsync_trace(suite: Suite, *args: str) -> str:
    """``hubsync trace`` as a developer runs it, in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")} | {"COLUMNS": "250"}
    done = subprocess.run(
        [sys.executable, "-m", "hubsync.cli", "trace", "--workdir", str(suite.workdir), *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def found_trace(
    suite: Suite, ident: str, complete: Callable[[TraceSpans], bool]
) -> Callable[[], TraceSpans | None]:
    def probe() -> TraceSpans | None:
        store = TraceStore(suite.trace_store_path, readonly=True)
        try:
            for summary in reversed(store.find(ident)):
                spans = store.trace(summary.trace_id)
                if complete(spans):
                    return spans
            return None
        finally:
            store.close()

    return probe


def one(spans: TraceSpans, service: str, name: str, kind: int | None = None) -> StoredSpan:
    matching = [
        s
        for s in spans.spans
        if s.service == f"hubsync-{service}" and s.name == name and kind in (None, s.kind)
    ]
    assert len(matching) == 1, (service, name, [(s.service, s.name, s.kind) for s in spans.spans])
    return matching[0]


def has(service: str, name: str) -> Callable[[TraceSpans], bool]:
    return lambda spans: any(s.service == f"hubsync-{service}" and s.name == name for s in spans.spans)


def call_done(name: str, *, failed: bool = False) -> Callable[[TraceSpans], bool]:
    """Writer's HubSpot call ``name`` and its HTTP request are both in the trace (``failed``: the
    call failed). The request's span ends, and is exported, before its call's: waiting for the
    request alone could find the trace before the call's own span (seen once in CI)."""
    return lambda spans: (
        has("writer", "POST")(spans)
        and any(
            s.service == "hubsync-writer" and s.name == name and (s.failed or not failed) for s in spans.spans
        )
    )


def parent_of(spans: TraceSpans, child: StoredSpan) -> str:
    return spans.linked_to.get(child.span_id) or child.parent_span_id


def assert_tree(shown: str, root: str, *chain: str) -> None:
    """``hubsync trace`` printed ``root``, then each span of ``chain`` below the one before, one
    level deeper (``└─`` under it)."""
    lines = shown.splitlines()
    at = [n for n, line in enumerate(lines) if root in line]
    assert at, shown
    column = lines[at[0]].index(root)
    previous = at[0]
    for name in chain:
        found = [n for n, line in enumerate(lines) if n > previous and f"└─ {name}" in line]
        assert found, (name, shown)
        indent = lines[found[0]].index(f"└─ {name}") + len("└─ ")
        assert indent > column, (name, shown)
        previous, column = found[0], indent


def url_of(span: StoredSpan) -> str:
    return str(span.attributes.get("url.full", span.attributes.get("http.url", "")))


def outbound_chain(spans: TraceSpans, external_id: str, queued: bool = False) -> None:
    """mapper PushRecords → mapper.outbound → SubmitWrites (client → server) → the HubSpot
    upsert → its HTTP request; a queued write reaches the upsert through writer's stream, as
    the ``writer.queued`` consumer span under the server span."""
    push = one(spans, "mapper", "/hubsync.api.mapper.v1.MapperService/PushRecords", SERVER)
    outbound = one(spans, "mapper", "mapper.outbound")
    submit_client = one(spans, "mapper", "/hubsync.api.writer.v1.WriterService/SubmitWrites", CLIENT)
    submit_server = one(spans, "writer", "/hubsync.api.writer.v1.WriterService/SubmitWrites", SERVER)
    upsert = one(spans, "writer", UPSERT, CLIENT)
    (http,) = [s for s in spans.spans if s.parent_span_id == upsert.span_id and s.name == "POST"]
    ids = {s.span_id for s in spans.spans}
    assert push.parent_span_id not in ids  # the root: the pushing client sent no trace context
    assert outbound.parent_span_id == push.span_id
    assert outbound.attributes["hubsync.external_id"] == [external_id]
    assert submit_client.parent_span_id == outbound.span_id
    assert submit_server.parent_span_id == submit_client.span_id
    if queued:
        consumer = one(spans, "writer", "writer.queued", CONSUMER)
        assert consumer.parent_span_id == submit_server.span_id
        assert consumer.attributes["hubsync.write_count"] == 1
        assert parent_of(spans, upsert) == consumer.span_id
    else:
        assert not [s for s in spans.spans if s.name == "writer.queued"]
        assert parent_of(spans, upsert) == submit_server.span_id
    assert upsert.attributes["http.status_code"] == 200
    assert url_of(http).endswith("/crm/v3/objects/contacts/batch/upsert")


@pytest.mark.asyncio(loop_scope="module")
async def test_the_demo_prints_the_commands_that_open_its_traces(changes: Changes) -> None:
    assert f"  outbound: {opener(changes.suite)} {changes.demo.external_id}" in changes.said
    assert f"  inbound:  {opener(changes.suite)} {changes.demo.inbound_trace_id}" in changes.said


@pytest.mark.asyncio(loop_scope="module")
async def test_outbound_push_found_by_external_id_with_its_whole_trace(changes: Changes) -> None:
    external_id = changes.demo.external_id
    spans = await eventually(
        found_trace(changes.suite, external_id, call_done(UPSERT)), f"{external_id}'s HubSpot call"
    )
    assert isinstance(spans, TraceSpans)
    outbound_chain(spans, external_id)
    assert one(spans, "mapper", "mapper.outbound").attributes["hubsync.object_id"] == [
        changes.demo.hubspot_id
    ]

    shown = hubsync_trace(changes.suite, external_id)
    assert f"trace {spans.trace_id}" in shown
    submits = ("WriterService/SubmitWrites (client)", "WriterService/SubmitWrites (server)")
    assert_tree(
        shown,
        "MapperService/PushRecords (server)",
        "mapper.outbound",
        *submits,
        f"{UPSERT} (client)",
        "POST (client)",
    )
    assert f"external_id=[{external_id}]" in shown and "status=200" in shown


@pytest.mark.asyncio(loop_scope="module")
async def test_queued_push_crosses_writers_stream_in_one_trace(changes: Changes) -> None:
    """wait=False: writer answers once the write is in its Redis stream; its worker makes the
    HubSpot call later, still a child of the request that queued it."""
    queued = changes.queued_id
    spans = await eventually(
        found_trace(changes.suite, queued, call_done(UPSERT)), f"{queued}'s HubSpot call"
    )
    assert isinstance(spans, TraceSpans)
    outbound_chain(spans, queued, queued=True)
    assert one(spans, "mapper", "mapper.outbound").attributes["hubsync.outcome"] == ["QUEUED"]
    shown = hubsync_trace(changes.suite, queued)
    submits = ("WriterService/SubmitWrites (client)", "WriterService/SubmitWrites (server)")
    assert_tree(shown, "MapperService/PushRecords (server)", "mapper.outbound", *submits,
                "writer.queued (consumer) ⇢redis", f"{UPSERT} (client)", "POST (client)")  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
async def test_inbound_webhook_found_by_event_id_with_its_whole_trace(
    changes: Changes, tmp_path: Path
) -> None:
    event_id = str(changes.event_id)
    spans = await eventually(
        found_trace(changes.suite, event_id, call_done(READ)), f"event {event_id}'s hydrate call"
    )
    assert isinstance(spans, TraceSpans)
    assert spans.trace_id == changes.demo.inbound_trace_id  # the trace the subscriber was told
    commit = one(spans, "ingress", "ingress.commit", PRODUCER)
    inbound = one(spans, "mapper", "mapper.inbound")
    read_client = one(spans, "mapper", "/hubsync.api.writer.v1.WriterService/ReadRecords", CLIENT)
    read_server = one(spans, "writer", "/hubsync.api.writer.v1.WriterService/ReadRecords", SERVER)
    read = one(spans, "writer", READ, CLIENT)
    (http,) = [s for s in spans.spans if s.parent_span_id == read.span_id]
    assert commit.parent_span_id == ""  # HubSpot sends no trace context: ingress starts the trace
    assert changes.event_id in commit.attributes["hubsync.event_id"]
    # across ingress's Redis stream: the entry carried the commit's traceparent
    assert inbound.parent_span_id == commit.span_id
    assert inbound.attributes["hubsync.object_id"] == changes.demo.hubspot_id
    assert read_client.parent_span_id == inbound.span_id
    assert read_server.parent_span_id == read_client.span_id
    assert read.parent_span_id == read_server.span_id
    assert url_of(http).endswith("/crm/v3/objects/contacts/batch/read")

    page = tmp_path / "inbound.html"
    shown = hubsync_trace(changes.suite, event_id, "--html", str(page))
    reads = ("WriterService/ReadRecords (client)", "WriterService/ReadRecords (server)")
    assert_tree(
        shown,
        "ingress.commit (producer)",
        "mapper.inbound ⇢redis",
        *reads,
        f"{READ} (client)",
        "POST (client)",
    )
    assert f"file://{page}" in shown
    html = page.read_text()
    assert html.count("<tr data-span=") == len(spans.spans)
    assert f'data-span="{inbound.span_id}" data-parent="{commit.span_id}" data-via="redis"' in html


@pytest.mark.asyncio(loop_scope="module")
async def test_an_object_changed_both_ways_lists_both_traces(changes: Changes) -> None:
    await eventually(
        found_trace(changes.suite, changes.demo.external_id, call_done(UPSERT)), "the outbound trace"
    )
    await eventually(
        found_trace(changes.suite, changes.demo.inbound_trace_id, call_done(READ)), "the inbound trace"
    )
    shown = hubsync_trace(changes.suite, changes.demo.hubspot_id)
    assert "traces carry" in shown and changes.demo.inbound_trace_id in shown, shown
    listed = hubsync_trace(changes.suite)  # no id: the latest changes
    assert changes.demo.inbound_trace_id in listed


@pytest.mark.asyncio(loop_scope="module")
async def test_a_dead_letters_trace_shows_hubspots_refusal(changes: Changes) -> None:
    """From a dead letter (its trace id, as `hubsync dlq list` shows it) to the trace: the HubSpot
    call that HubSpot refused is shown failed, in red, with its status."""
    suite = changes.suite
    bad = writer_pb2.Write(
        record=writer_pb2.RecordWrite(
            operation=writer_pb2.WRITE_OPERATION_UPSERT,
            object_type="contacts",
            id="traced-dlq@example.com",
            id_property="email",
            properties={"no_such_property": "x"},
        )
    )
    async with suite.channel("writer", "mapper") as channel:  # only mapper may submit writes
        stub = writer_pb2_grpc.WriterServiceStub(channel)
        reply = await stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(
                request_id="traced-dlq-1", portal_id=SANDBOX_PORTAL, writes=[bad], wait=True
            ),
            timeout=30,
        )
        assert writer_pb2.WriteStatus.Name(reply.results[0].status) == "WRITE_STATUS_DEAD_LETTERED"
    async with suite.channel("writer") as channel:
        listed = await writer_pb2_grpc.WriterServiceStub(channel).ListDeadLetters(
            writer_pb2.ListDeadLettersRequest(portal_id=SANDBOX_PORTAL)
        )
    (entry,) = [dl for dl in listed.dead_letters if dl.write.record.id == "traced-dlq@example.com"]
    spans = await eventually(
        found_trace(suite, entry.trace_id, call_done(UPSERT, failed=True)),
        f"dead letter {entry.id}'s HubSpot call",
    )
    assert isinstance(spans, TraceSpans)
    refused = [s for s in spans.spans if s.name == UPSERT and s.failed]
    assert refused and refused[0].attributes["http.status_code"] == 400
    shown = hubsync_trace(suite, entry.trace_id)
    assert f"{UPSERT} (client)" in shown and "✗ ERROR 400" in shown and "status=400" in shown, shown


@pytest.mark.asyncio(loop_scope="module")
async def test_the_store_keeps_no_secret(changes: Changes) -> None:
    suite = changes.suite
    secrets_of_run = [*suite.tokens.values(), SANDBOX_PRIVATE_TOKEN, SANDBOX_CLIENT_SECRET]
    keys = suite.keyring["keys"]
    assert isinstance(keys, dict)
    secrets_of_run += list(keys.values())
    raw = b"".join(p.read_bytes() for p in suite.workdir.glob("traces.sqlite3*"))
    for secret in secrets_of_run:
        assert secret.encode() not in raw
    store = TraceStore(suite.trace_store_path, readonly=True)
    try:
        for summary in store.recent(100):
            for span in store.trace(summary.trace_id).spans:
                for name in ("url.full", "http.url", "http.target"):
                    assert "?" not in str(span.attributes.get(name, "")), span
    finally:
        store.close()


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)"
)
@pytest.mark.asyncio(loop_scope="module")
async def test_headless_chromium_paints_the_html_waterfall(changes: Changes, tmp_path: Path) -> None:
    spans = await eventually(
        found_trace(changes.suite, str(changes.event_id), call_done(READ)), "the inbound trace"
    )
    assert isinstance(spans, TraceSpans)
    page, shot = tmp_path / "trace.html", tmp_path / "trace.png"
    hubsync_trace(changes.suite, spans.trace_id, "--html", str(page))
    done = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,500",
            "--virtual-time-budget=5000", f"--screenshot={shot}", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists(), done.stderr[-2000:]
    width, height, rows = read_png(shot)
    assert (width, height) == (1400, 500)
    # The bars are in the right part of the page (the legend and names are on the left): each
    # service of the trace paints its colour there.
    right = [pixel for row in rows for pixel in row[int(width * 0.6) :]]
    for service in ("ingress", "mapper", "writer"):
        colour = tuple(int(SERVICE_COLOURS[service][i : i + 2], 16) for i in (1, 3, 5))
        painted = sum(1 for p in right if all(abs(p[i] - colour[i]) <= 4 for i in range(3)))
        assert painted >= 20, (service, painted)
