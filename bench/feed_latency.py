"""What the two webhook-to-subscriber latency benches share: the subscriber and the percentiles.

Used by bench/mapper/latency_bench.py (everything in one process) and
bench/suite/latency_bench.py (every part its own process); both put the repository root on
``sys.path`` and import this as ``bench.feed_latency``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc

ACK_BATCH = 200


async def subscribe(
    stub: mapper_pb2_grpc.MapperServiceStub,
    expected: int,
    done: asyncio.Event,
    on_change: Callable[[Any, float], None],
    *,
    kind: int | None = None,
) -> None:
    """Reads the change feed as consumer ``b`` of group ``bench``, acking every change in batches.

    Each change of ``kind`` (every change without one) goes to ``on_change(change, receipt time)``;
    ``done`` is set once ``expected`` of them have come. Runs until cancelled.
    """
    call = stub.Subscribe(
        mapper_pb2.SubscribeRequest(consumer_group="bench", consumer="b", max_in_flight=5000)
    )
    acks: list[str] = []
    counted = 0
    async for msg in call:
        now = time.time()
        change = msg.change
        acks.append(change.ack_id)
        if kind is None or change.kind == kind:
            on_change(change, now)
            counted += 1
        if len(acks) >= ACK_BATCH:
            await stub.Ack(mapper_pb2.AckRequest(consumer_group="bench", ack_ids=acks))
            acks = []
        if counted >= expected:
            done.set()


def percentiles_ms(values: Sequence[float], *points: int) -> dict[str, float]:
    """``{"p50": …}`` for each of ``points``, in ms, of ``values`` in seconds (0.0 without two values)."""
    q = statistics.quantiles(sorted(values), n=100) if len(values) > 1 else [0.0] * 99
    return {f"p{p}": round(q[p - 1] * 1000, 1) for p in points}


def latency_ms(latencies: Sequence[float], *points: int) -> dict[str, float | None]:
    """``p<point>_ms`` of each of ``points`` and ``max_ms`` (None without values) of ``latencies``."""
    summary: dict[str, float | None] = {
        f"{name}_ms": value for name, value in percentiles_ms(latencies, *points).items()
    }
    summary["max_ms"] = round(max(latencies) * 1000, 1) if latencies else None
    return summary
