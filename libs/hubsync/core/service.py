"""What ``python -m hubsync.<service>`` runs: the common life cycle of a service process.

A service module provides a :class:`ServiceSpec` factory; :func:`main` loads and validates
settings (a bad value exits 2 naming the variable), sets up JSON logs and tracing, connects
Redis, starts the gRPC host and the service's background tasks, and on SIGTERM/SIGINT stops
taking calls, drains, stops the tasks and flushes spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import io
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from redis.asyncio import Redis

from hubsync.core import portal_metrics
from hubsync.core.callers import TOKENS_VARIABLE, Policy, PolicyError, credential_problems
from hubsync.core.grpcserver import ServiceHost, redis_probe, run_until_signalled
from hubsync.core.logging import setup_logging
from hubsync.core.portal_metrics import PortalLabels
from hubsync.core.redis import create_redis
from hubsync.core.settings import CoreSettings, Environment, invalid_configuration, load_settings
from hubsync.core.telemetry import setup_metrics, setup_tracing, shutdown_tracing
from hubsync.core.tls import grpc_tls, production_problems, server_credentials

log = logging.getLogger(__name__)


@dataclass
class ServiceSpec:
    """What a service contributes to the common life cycle."""

    service_names: Sequence[str]
    register: Callable[[grpc.aio.Server], None]
    port: int
    # For every method the servicers expose, the callers allowed to call it (deny by default).
    policy: Policy = field(default_factory=dict)
    # Coroutines started after the server (workers, HTTP servers); cancelled on stop; one that
    # fails is started again.
    background: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    # Awaited on stop, after the gRPC server drained (close clients, flush).
    on_stop: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)


SpecFactory = Callable[[CoreSettings, Redis], Awaitable[ServiceSpec]]
# How long stop() keeps cancelling a background task that has not ended before it gives up on it.
STOP_TASKS_TIMEOUT_S = 10.0
# A failed background task is started again after at most this pause.
RESTART_MAX_S = 30.0


class RunningService:
    """A started service: the host, its port, its tasks. ``stop()`` shuts it down gracefully."""

    def __init__(self, host: ServiceHost, spec: ServiceSpec, redis: Redis, tasks: list[asyncio.Task[Any]]):
        self.host = host
        self.spec = spec
        self.redis = redis
        self.tasks = tasks

    @property
    def port(self) -> int:
        """The gRPC port the service listens on."""
        return self.host.port

    async def stop(self) -> None:
        """Stops the server, then cancels and awaits the background tasks."""
        await self.host.stop()
        for task in self.tasks:
            task.cancel()
        deadline = asyncio.get_running_loop().time() + STOP_TASKS_TIMEOUT_S
        for task in self.tasks:
            # A cancellation can be lost inside a client library (Python 3.11's asyncio.timeout may
            # turn it into a TimeoutError and uncancel the task, and a loop that retries on errors
            # then runs on): cancel again until the task has ended, for a bounded time.
            while not task.done():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    stack = io.StringIO()
                    task.print_stack(limit=20, file=stack)
                    log.error(
                        "background task did not stop; leaving it",
                        extra={"task": task.get_name(), "stack": stack.getvalue()},
                    )
                    break
                await asyncio.wait({task}, timeout=min(0.5, left))
                if not task.done():
                    task.cancel()
            if task.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for hook in self.spec.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("stop hook failed")
        await self.redis.aclose()


async def start_service(
    name: str, core: CoreSettings, factory: SpecFactory, *, port: int | None = None
) -> RunningService:
    """Builds and starts a service in this event loop (also what in-process tests use).

    Refuses to start (SystemExit 2, naming the variable) without caller credentials unless
    ``HUBSYNC_INSECURE_NO_CALLER_AUTH`` opts in, and in production with that opt-in or a short token.
    """
    callers = _checked_callers(name, core)
    redis = create_redis(core)
    try:
        spec = await factory(core, redis)
    except BaseException:
        await redis.aclose()
        raise
    try:
        host = ServiceHost(
            name,
            spec.service_names,
            spec.register,
            callers=callers,
            policy=spec.policy,
            anonymous=core.insecure_no_caller_auth,
            reflection=core.reflection_enabled(),
            health_probe=redis_probe(redis),
            grace_seconds=core.shutdown_grace_seconds,
            max_connection_age_s=core.grpc_max_connection_age_seconds,
        )
    except PolicyError as exc:
        await _close(spec, redis)
        raise invalid_configuration(f"{name} (caller policy)", [("", str(exc))]) from None
    except BaseException:
        await _close(spec, redis)
        raise
    if port is None:
        port = core.grpc_port if core.grpc_port is not None else spec.port
    tls = grpc_tls(core)
    await host.start(
        f"{core.grpc_host}:{port}",
        credentials=server_credentials(tls) if tls else None,
        health_address=f"{core.grpc_host}:{core.grpc_health_port}" if core.grpc_health_port else None,
    )
    tasks = [asyncio.create_task(_guard(job), name=f"{name}-bg") for job in spec.background]
    return RunningService(host, spec, redis, tasks)


async def _close(spec: ServiceSpec, redis: Redis) -> None:
    """Releases what a built spec holds when its server cannot be made."""
    for hook in spec.on_stop:
        with contextlib.suppress(Exception):
            await hook()
    await redis.aclose()


def _checked_callers(name: str, core: CoreSettings) -> dict[str, str]:
    try:
        callers = core.caller_credentials()
    except (OSError, ValueError) as exc:
        problems = [(TOKENS_VARIABLE, f"cannot be read ({exc})")]
    else:
        problems = credential_problems(
            callers,
            production=core.environment == Environment.PRODUCTION,
            insecure_opt_in=core.insecure_no_caller_auth,
        )
    if problems:
        raise invalid_configuration(f"{name} (caller credentials)", problems)
    return callers


async def _guard(job: Callable[[], Awaitable[Any]]) -> None:
    """Runs a background job; one that fails (a bug, an error its own loop did not expect) is
    started again after a pause (1 s doubling to :data:`RESTART_MAX_S`), so a worker never stays
    dead until someone restarts the process. A job that returns is done."""
    loop = asyncio.get_running_loop()
    pause = 1.0
    while True:
        started = loop.time()
        try:
            await job()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if loop.time() - started > RESTART_MAX_S:
                pause = 1.0  # it ran well for a while: this is a new failure, not the same one
            log.exception("background task failed; starting it again", extra={"in_s": pause})
        await asyncio.sleep(pause)
        pause = min(pause * 2, RESTART_MAX_S)


def skip_missing_sniffio() -> None:
    """Makes httpcore's per-request ``import sniffio`` fail at once when sniffio is not installed.

    httpcore imports sniffio inside every request (to tell asyncio from trio) and falls back to
    asyncio on ImportError; anyio 4 no longer brings sniffio, and a failed import is not cached,
    so each request searched every ``sys.path`` entry again (the sandbox: ~13 % of its CPU under
    the whole-suite benchmark, writer ~2 %). A ``None`` in ``sys.modules`` makes the import fail
    without a search: the same fallback, without the file-system look-ups.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def tune_runtime(*, uvloop: bool) -> None:
    """Makes the process cheaper per request; called by ``__main__`` after the imports, before
    :func:`main` starts the event loop.

    ``uvloop`` (shipped with uvicorn[standard]) runs the loop, which roughly halves the cost of
    the socket work (Redis pipelines, gRPC) these services are made of. Everything imported so
    far lives as long as the process: it is moved out of the garbage collector's sight
    (``gc.freeze``), so a full collection no longer walks every module object (bench/ingress: ~8 %
    of the CPU under load and a ~40 ms p99 pause). Nearly everything a request or a change
    allocates is freed by reference counting, so the youngest generation is collected after
    20,000 net allocations rather than 700 (~3 % of the CPU).
    """
    skip_missing_sniffio()
    if uvloop:
        import uvloop as _uvloop

        asyncio.set_event_loop_policy(_uvloop.EventLoopPolicy())
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def main(name: str, factory: SpecFactory) -> None:
    """Entry point of ``python -m hubsync.<name>``."""
    core = load_settings(CoreSettings)
    setup_logging(name, core.log_level)
    setup_tracing(f"hubsync-{name}")
    portal_metrics.configure(PortalLabels.parse(core.metrics_portal_labels))
    setup_metrics(f"hubsync-{name}", core.grpc_host, core.metrics_port)
    if core.environment == "production" and (problems := production_problems(core)):
        for problem in problems:
            log.error(problem)
        raise SystemExit(2)

    async def run() -> None:
        service = await start_service(name, core, factory)
        await run_until_signalled(service.stop)

    try:
        asyncio.run(run())
    finally:
        shutdown_tracing()
