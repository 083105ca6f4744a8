"""The suite as separate processes, plus what the soak does to them: ``kill -9`` a service and
start it again (as Kubernetes would restart a pod), stop Redis by SIGTERM or ``kill -9`` and start
it again on the same port with the same data directory (AOF on)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from hubsync.cli.suite import SERVICES, Suite
from hubsync.core.devredis import RedisProcess


@dataclass
class HealthLog:
    """grpc.health status of every service, sampled about once a second."""

    samples: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def not_serving(self, start: float, end: float) -> dict[str, int]:
        """Samples in [start, end) where a service was not SERVING, by service."""
        out: dict[str, int] = {}
        for t, status in self.samples:
            if start <= t < end:
                for name, s in status.items():
                    if s != "SERVING":
                        out[name] = out.get(name, 0) + 1
        return out

    def all_serving_after(self, t0: float) -> float | None:
        """The first sample at or after ``t0`` where every service was SERVING."""
        for t, status in self.samples:
            if t >= t0 and all(s == "SERVING" for s in status.values()):
                return t
        return None


class ChaosSuite(Suite):
    """``hubsync.cli.suite.Suite`` with the soak's process faults, and a supervisor that starts
    again any service that exits by itself (as Kubernetes restarts a pod whose process ended)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: set[str] = set()  # killed by the schedule: the schedule starts it again
        self.exits: list[dict[str, Any]] = []  # services that ended by themselves

    async def kill_service(self, name: str) -> None:
        """``kill -9``: no drain, no cleanup; whatever it held in memory is gone."""
        self.held.add(name)
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        self._logs[name].close()

    async def start_service(self, name: str) -> None:
        """Starts a service again with the same environment (same ports, same Redis)."""
        assert name in SERVICES
        self._spawn(name, [sys.executable, "-m", f"hubsync.{name}"], self.env_for(name))
        self.held.discard(name)

    async def supervise(self, stop: asyncio.Event, clock: float) -> None:
        """Restarts (after 1 s) a service whose process ended without the schedule's doing."""
        while not stop.is_set():
            for name in SERVICES:
                proc = self.procs.get(name)
                if name in self.held or proc is None or proc.poll() is None:
                    continue
                self.exits.append(
                    {
                        "service": name,
                        "at_s": round(time.monotonic() - clock, 1),
                        "exit_code": proc.returncode,
                    }
                )
                self._logs[name].close()
                await asyncio.sleep(1.0)
                self._spawn(name, [sys.executable, "-m", f"hubsync.{name}"], self.env_for(name))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def wait_serving(self, name: str, timeout: float = 60.0) -> None:
        await self._wait_serving(name, timeout)

    async def stop_redis(self, how: str) -> None:
        """``sigterm``: Redis writes its AOF and exits; ``sigkill``: gone at once (AOF fsyncs
        every second, so up to a second of acknowledged writes may be lost: that is Redis's
        documented guarantee, and what hubsync must live with)."""
        assert isinstance(self.redis, RedisProcess) and self.redis.proc is not None
        proc = self.redis.proc
        proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        if proc.stderr:
            proc.stderr.close()
        self.redis.proc = None

    async def start_redis(self) -> None:
        """Same port, same data directory: the AOF brings the data back."""
        self.redis = RedisProcess(self.workdir / "redis", self.ports.redis, die_with_parent=True)
        started = time.monotonic()
        while True:
            try:
                await asyncio.to_thread(self.redis.start)
                return
            except (RuntimeError, TimeoutError):
                # the port may still be held for a moment after the old process died
                if time.monotonic() - started > 30:
                    raise
                await asyncio.sleep(0.5)

    async def poll_health(self, log: HealthLog, stop: asyncio.Event, clock: float) -> None:
        """Samples every service's health until ``stop``; times are seconds since ``clock``."""
        while not stop.is_set():
            with contextlib.suppress(Exception):
                status = await self.health()
                log.samples.append((time.monotonic() - clock, status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
