"""The soak's clients: an internal service pushing contacts to mapper, people editing contacts in
HubSpot's "UI" (the sandbox), and a subscriber reading mapper's change feed with acks.

Each behaves as a careful real client: pushes are retried with the same ``request_id`` on any
error a retry can fix, the subscriber reconnects with the same consumer name and re-sends acks
that failed. What each saw is recorded for the checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.protobuf import duration_pb2

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.cli.suite import Suite

PORTAL = 12345
FEED_GROUP = "chaos"
# Answers a careful client retries (same request_id: PushRecords is idempotent).
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


def outbound_id(i: int) -> str:
    return f"o-{i}"


def inbound_id(i: int) -> str:
    return f"i-{i}"


@dataclass
class PushLog:
    """What the pushing client did and was told."""

    # external id → the first_name of its last push that mapper accepted
    expected: dict[str, str] = field(default_factory=dict)
    accepted: int = 0
    not_accepted: list[str] = field(default_factory=list)  # gave up after retrying
    outcomes: Counter[str] = field(default_factory=Counter)
    rpc_errors: Counter[str] = field(default_factory=Counter)  # by gRPC status code, every try
    rpc_errors_at: list[tuple[float, str]] = field(default_factory=list)


class OutboundDriver:
    """Pushes contacts through mapper's PushRecords (wait=false: answered once writer holds them)."""

    def __init__(self, suite: Suite, clock: float, retry_s: float) -> None:
        self.suite = suite
        self.clock = clock
        self.retry_s = retry_s
        self.log = PushLog()
        self._seq = 0

    async def push_paced(
        self, ids: list[int], value: str, batch: int, window: tuple[float, float], concurrency: int = 4
    ) -> None:
        """Pushes ``ids`` in batches, spread evenly over ``window`` (seconds since the clock)."""
        batches = [ids[i : i + batch] for i in range(0, len(ids), batch)]
        start, end = window
        step = (end - start) / max(1, len(batches))
        sem = asyncio.Semaphore(concurrency)
        async with self.suite.channel("mapper", "demo-client") as channel:
            stub = mapper_pb2_grpc.MapperServiceStub(channel)

            async def one(n: int, chunk: list[int]) -> None:
                await self._sleep_until(start + n * step)
                async with sem:
                    await self._push(stub, chunk, value)

            await asyncio.gather(*(one(n, chunk) for n, chunk in enumerate(batches)))

    async def _sleep_until(self, t: float) -> None:
        delay = self.clock + t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _push(self, stub: mapper_pb2_grpc.MapperServiceStub, chunk: list[int], value: str) -> None:
        self._seq += 1
        request_id = f"chaos-{value}-{self._seq}-{random.getrandbits(32):08x}"
        records = []
        for i in chunk:
            ext = outbound_id(i)
            r = mapper_pb2.ExternalRecord(object_type="contacts", external_id=ext)
            r.fields.update(
                {"external_id": ext, "email": f"{ext}@chaos.example", "first_name": f"{value}-{i}",
                 "last_name": "Soak"}
            )  # fmt: skip
            records.append(r)
        request = mapper_pb2.PushRecordsRequest(
            request_id=request_id, portal_id=PORTAL, records=records, wait=False
        )
        deadline = time.monotonic() + self.retry_s
        backoff = 0.25
        while True:
            try:
                reply = await stub.PushRecords(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                self.log.rpc_errors[code.name] += 1
                self.log.rpc_errors_at.append((time.monotonic() - self.clock, code.name))
                if code not in RETRYABLE or time.monotonic() > deadline:
                    self.log.not_accepted += [outbound_id(i) for i in chunk]
                    return
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 4.0)
                continue
            failed = []
            for i, result in zip(chunk, reply.results, strict=True):
                outcome = mapper_pb2.PushOutcome.Name(result.outcome)
                self.log.outcomes[outcome] += 1
                ext = outbound_id(i)
                if result.outcome == mapper_pb2.PUSH_OUTCOME_FAILED:
                    failed.append(ext)
                else:
                    self.log.accepted += 1
                # The value the client last asked for, accepted or not: it must be what HubSpot
                # ends with, or the client must have been told it failed.
                self.log.expected[ext] = f"{value}-{i}"
            self.log.not_accepted += failed
            return


async def create_inbound_records(http: httpx.AsyncClient, n: int) -> dict[str, str]:
    """Contacts a person makes in HubSpot's UI; returns external id → HubSpot id."""
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[str, str]:
        ext = inbound_id(i)
        async with sem:
            reply = await http.post(
                "/_sandbox/ui/contacts",
                params={"portal": PORTAL},
                json={"properties": {"email": f"{ext}@chaos.example", "external_id": ext,
                                     "firstname": "start", "lastname": "Soak"}},
            )  # fmt: skip
            reply.raise_for_status()
            return ext, str(reply.json()["id"])

    return dict(await asyncio.gather(*(one(i) for i in range(n))))


@dataclass
class Delivery:
    """One change as the subscriber received it."""

    at: float  # seconds since the soak's clock
    hubspot_id: str
    external_id: str
    kind: str
    first_name: str | None
    changed_fields: tuple[str, ...]
    occur_s: float  # the change's occurTime, seconds since the soak's clock
    attempt: int
    phase: str


@dataclass
class FeedLog:
    deliveries: list[Delivery] = field(default_factory=list)
    reconnects: int = 0
    stream_errors: Counter[str] = field(default_factory=Counter)
    ack_errors: Counter[str] = field(default_factory=Counter)
    acked: int = 0


class FeedSubscriber:
    """Reads mapper's change feed for the soak's portal and acks everything it gets."""

    def __init__(self, suite: Suite, clock: float, wall_clock: float) -> None:
        self.suite = suite
        self.clock = clock
        self.wall_clock = wall_clock  # time.time() at ``clock``
        self.log = FeedLog()
        self.phase = "soak"
        self.subscribed = asyncio.Event()
        self._acks: list[str] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def last_delivery_at(self) -> float:
        return self.log.deliveries[-1].at if self.log.deliveries else 0.0

    async def run(self) -> None:
        async with self.suite.channel("mapper", "demo-client") as channel:
            stub = mapper_pb2_grpc.MapperServiceStub(channel)
            acker = asyncio.create_task(self._ack_loop(stub))
            try:
                while not self._stop.is_set():
                    await self._stream(stub)
                    if not self._stop.is_set():
                        self.log.reconnects += 1
                        await asyncio.sleep(0.5)
            finally:
                acker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acker

    async def _stream(self, stub: mapper_pb2_grpc.MapperServiceStub) -> None:
        call = stub.Subscribe(
            mapper_pb2.SubscribeRequest(
                consumer_group=FEED_GROUP,
                consumer="soak",
                portal_ids=[PORTAL],
                visibility_timeout=duration_pb2.Duration(seconds=30),
                max_in_flight=2000,
            )
        )
        stopper = asyncio.create_task(self._stop.wait())
        try:
            self.subscribed.set()
            async for message in _until(call, stopper):
                self._record(message.change)
        except grpc.aio.AioRpcError as exc:
            self.log.stream_errors[exc.code().name] += 1
        finally:
            call.cancel()
            stopper.cancel()

    def _record(self, c: mapper_pb2.Change) -> None:
        now = time.monotonic() - self.clock
        fields = dict(c.fields)
        first = fields.get("first_name")
        self.log.deliveries.append(
            Delivery(
                at=now,
                hubspot_id=c.hubspot_id,
                external_id=c.external_id or str(fields.get("external_id") or ""),
                kind=mapper_pb2.ChangeKind.Name(c.kind),
                first_name=None if first is None else str(first),
                changed_fields=tuple(c.changed_fields),
                occur_s=c.occur_time.ToMilliseconds() / 1000 - self.wall_clock,
                attempt=c.delivery_attempt,
                phase=self.phase,
            )
        )
        self._acks.append(c.ack_id)

    async def _ack_loop(self, stub: mapper_pb2_grpc.MapperServiceStub) -> None:
        while True:
            await asyncio.sleep(0.1)
            if not self._acks:
                continue
            batch, self._acks = self._acks[:1000], self._acks[1000:]
            try:
                reply = await stub.Ack(
                    mapper_pb2.AckRequest(consumer_group=FEED_GROUP, ack_ids=batch), timeout=10
                )
                self.log.acked += reply.acked_count
            except grpc.aio.AioRpcError as exc:
                self.log.ack_errors[exc.code().name] += 1
                self._acks = batch + self._acks  # try again: an unacked change comes back anyway
                await asyncio.sleep(0.5)


async def _until(call: Any, stopper: asyncio.Task[Any]) -> Any:
    """The stream's messages until it ends or ``stopper`` completes."""
    it = call.__aiter__()
    while True:
        nxt = asyncio.ensure_future(it.__anext__())
        done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if nxt not in done:
            nxt.cancel()
            return
        try:
            yield nxt.result()
        except StopAsyncIteration:
            return
