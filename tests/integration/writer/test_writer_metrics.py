"""A writer process serves its metrics on Prometheus /metrics."""

from __future__ import annotations

import asyncio

import httpx

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.devredis import free_port
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import PORTAL, UPSERT_ROUTE, stack, upsert


async def test_requests_dead_letters_and_headroom_are_exported(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    port = free_port()
    async with stack(redis_url, caller_tokens, writer_env=writer_env(consume_queue="false")) as s:
        await s.fault(portal=PORTAL, endpoint=UPSERT_ROUTE, status=504, remaining=3)
        env = writer_env() | {"HUBSYNC_METRICS_PORT": str(port)}
        async with s.writer_process(env) as proc:
            async with open_channel(proc.address, caller_tokens["mapper"]) as channel:
                stub = writer_pb2_grpc.WriterServiceStub(channel)
                await stub.SubmitWrites(
                    writer_pb2.SubmitWritesRequest(
                        portal_id=PORTAL, writes=[upsert("a@example.com"), upsert("b@example.com")], wait=True
                    ),
                    timeout=30,
                )
                await stub.SubmitWrites(
                    writer_pb2.SubmitWritesRequest(
                        portal_id=PORTAL, writes=[upsert("c@example.com")], wait=True
                    ),
                    timeout=30,
                )
            async with httpx.AsyncClient() as client:
                text = ""
                for _ in range(50):
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    if "hubsync_dlq_depth" in text:
                        break
                    await asyncio.sleep(0.1)
        lines = text.splitlines()

        def value(prefix: str, *parts: str) -> float:
            for line in lines:
                if line.startswith(prefix) and all(p in line for p in parts):
                    return float(line.rsplit(" ", 1)[1])
            raise AssertionError(f"no {prefix} {parts} in /metrics")

        assert value("hubsync_hubspot_requests", 'status="504"') == 3
        assert value("hubsync_hubspot_requests", 'status="200"') == 1
        assert value("hubsync_dlq_depth") == 2
        # No per-portal series unless HUBSYNC_METRICS_PORTAL_LABELS asks for them.
        assert 'portal="' not in text
        assert value("hubsync_dlq_entries", 'status="504"') == 2
        assert value("hubsync_ratelimit_remaining", 'source="hubspot"') >= 0
