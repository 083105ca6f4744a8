"""One span per HubSpot call, linked to the traces of every record it carries."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.telemetry import setup_tracing
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import PORTAL, stack, upsert

SPAN = "HubSpot POST /crm/v3/objects/{objectType}/batch/upsert"


async def test_a_batched_call_links_to_each_callers_trace(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("tests", exporter)
    tracer = trace.get_tracer("tests")
    async with stack(redis_url, caller_tokens, writer_env=writer_env(batch_max_wait_ms=1000)) as s:
        traces: list[int] = []

        async def caller(n: int, wait: bool) -> None:
            with tracer.start_as_current_span(f"caller {n}") as span:
                traces.append(span.get_span_context().trace_id)
                await s.stub.SubmitWrites(
                    writer_pb2.SubmitWritesRequest(
                        portal_id=PORTAL, writes=[upsert(f"t{n}@example.com")], wait=wait
                    ),
                    timeout=30,
                )

        await asyncio.gather(*(caller(n, wait=True) for n in range(3)))
        calls = [sp for sp in exporter.get_finished_spans() if sp.name == SPAN]
        assert len(calls) == 1
        linked = {link.context.trace_id for link in calls[0].links}
        assert linked >= set(traces)
        assert calls[0].attributes is not None and calls[0].attributes["hubsync.records"] == 3

        # A queued write keeps its trace through the Redis stream.
        exporter.clear()
        traces.clear()
        await caller(9, wait=False)
        for _ in range(100):
            calls = [sp for sp in exporter.get_finished_spans() if sp.name == SPAN]
            if calls:
                break
            await asyncio.sleep(0.05)
        assert calls and traces[0] in {link.context.trace_id for link in calls[0].links}
