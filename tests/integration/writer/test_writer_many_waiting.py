"""Thousands of waited submissions at once: each is written and answered, none cancelled.

grpc.aio takes calls from gRPC core one event-loop turn at a time; with core's defaults a burst
of more than a few thousand calls had the excess cancelled by core (``CANCELLED``, the handler
never ran, writer logged nothing). Every submission here must be answered by writer itself, and
the sandbox (HubSpot) must hold each record exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc

from hubsync.api.writer.v1 import writer_pb2
from tests.helpers.writer_stack import PORTAL, UPSERT_ROUTE, sandbox_config, stack, upsert

# More than core's default hard limit of calls waiting to be taken (3,000).
SUBMISSIONS = 5_000


async def test_thousands_of_waited_submissions_are_all_answered_by_writer(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    # A burst of 30 calls per 10 s: the portal's window is saturated while the calls wait.
    config = sandbox_config({"burst_per_10s": 30})
    async with stack(redis_url, caller_tokens, config=config) as s:

        async def one(n: int) -> str | list[int]:
            try:
                reply = await s.stub.SubmitWrites(
                    writer_pb2.SubmitWritesRequest(
                        portal_id=PORTAL, writes=[upsert(f"many{n}@example.com")], wait=True
                    ),
                    timeout=1800,
                )
            except grpc.aio.AioRpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
            return [r.status for r in reply.results]

        answers = await asyncio.gather(*(one(n) for n in range(SUBMISSIONS)))

        errors = Counter(a for a in answers if isinstance(a, str))
        assert not errors, f"submissions not answered by writer: {dict(errors)}"
        assert all(a == [writer_pb2.WRITE_STATUS_SUCCEEDED] for a in answers)
        # The witness: HubSpot holds every record once, and no call was refused for the rate.
        emails = Counter(c["properties"]["email"] for c in await s.objects())
        assert set(emails) == {f"many{n}@example.com" for n in range(SUBMISSIONS)}
        assert max(emails.values()) == 1
        assert await s.count(UPSERT_ROUTE, 429) == 0
