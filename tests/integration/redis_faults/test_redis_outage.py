"""While Redis is down (stopped, or killed), every service answers UNAVAILABLE with RetryInfo
and ErrorInfo (REDIS_UNAVAILABLE, domain hubsync.dev), logged at WARNING without a stack; a feed
subscription that loses Redis midway ends the same way. Callers retry; nothing reads INTERNAL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from hubsync.api.auth.v1 import auth_pb2
from hubsync.api.ingress.v1 import ingress_pb2
from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import error_info
from tests.helpers.redis_faults_stack import PORTAL, Stack, retry_delay, running_stack, stacks_logged


async def _first_change(call: Any, timeout: float = 30.0) -> mapper_pb2.Change:
    return (await asyncio.wait_for(call.read(), timeout)).change  # type: ignore[no-any-return]


def _calls(stack: Stack, ack_id: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "mapper PushRecords (queued)": lambda: stack.push("c-down", "Down", wait=False),
        "mapper PushRecords (wait)": lambda: stack.push("c-down", "Down", wait=True),
        "mapper Ack": lambda: stack.mapper.Ack(
            mapper_pb2.AckRequest(consumer_group="g", ack_ids=[ack_id]), timeout=30
        ),
        "writer GetQuotaStatus": stack.quota,
        "writer ReadRecords": lambda: stack.read(["1"]),
        "writer SearchRecords": lambda: stack.writer.SearchRecords(
            writer_pb2.SearchRecordsRequest(portal_id=PORTAL, object_type="contacts", page_size=10),
            timeout=30,
        ),
        "auth GetConnection": lambda: stack.auth.GetConnection(
            auth_pb2.GetConnectionRequest(portal_id=PORTAL), timeout=30
        ),
        "ingress ReplayJournal": lambda: stack.ingress.ReplayJournal(
            ingress_pb2.ReplayJournalRequest(portal_id=PORTAL, request_id="r-1"), timeout=30
        ),
    }


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_redis_down_answers_unavailable_with_retry_info(
    how: str, tmp_path: Path, caller_tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_stack(tmp_path, caller_tokens) as stack:
        # A subscriber is receiving the feed: a UI-made contact reached it through the whole suite.
        feed = stack.mapper.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c"))
        await stack.create_contact("live@example.com")
        change = await _first_change(feed)
        assert change.portal_id == PORTAL
        caplog.clear()

        await stack.redis.stop(how)

        # The open subscription ends UNAVAILABLE (its reads and redeliveries need Redis).
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await _first_change(feed, timeout=60)
        failures: dict[str, grpc.aio.AioRpcError] = {"mapper Subscribe (open)": ended.value}
        new_feed = stack.mapper.Subscribe(mapper_pb2.SubscribeRequest(consumer_group="g", consumer="c2"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _first_change(new_feed, timeout=60)
        failures["mapper Subscribe (new)"] = refused.value
        for name, call in _calls(stack, change.ack_id).items():
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                failures[name] = exc
            else:
                raise AssertionError(f"{name} succeeded without Redis")

    report = {name: (err.code().name, err.details()) for name, err in failures.items()}
    assert {code for code, _ in report.values()} == {"UNAVAILABLE"}, "\n".join(map(str, report.items()))
    for name, err in failures.items():
        info = error_info(err)
        assert info is not None and info.domain == "hubsync.dev", (name, report[name])
        assert info.reason == "REDIS_UNAVAILABLE", (name, info.reason)
        assert retry_delay(err), (name, report[name])
    # No call logged an "unhandled error" with its stack (background loops: test_redis_restart).
    calls = [r for r in caplog.records if r.name == "hubsync.core.grpcserver"]
    assert not stacks_logged(calls)
    assert any(r.levelno == logging.WARNING and "Redis unavailable" in r.getMessage() for r in caplog.records)
