"""The grpc.aio server every service runs: interceptors, health, reflection, graceful stop.

Interceptors, outermost first: tracing (opentelemetry-instrumentation-grpc), caller
authentication and per-method policy, error mapping (domain errors → ``google.rpc.Status``; a
Redis outage → ``UNAVAILABLE`` + ``RetryInfo``, see :mod:`hubsync.core.outage`).
Health (grpc.health.v1) reports SERVING only while Redis answers; on SIGTERM the host marks
everything NOT_SERVING, stops taking new calls and gives in-flight ones the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as reflection_module
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from redis.asyncio import Redis

from hubsync.core.callers import (
    INSECURE_OPT_IN,
    CallerAuthInterceptor,
    CallerRegistry,
    Policy,
    PolicyError,
    PolicyRecorder,
    check_policy,
)
from hubsync.core.errors import HubsyncError, InvalidArgument
from hubsync.core.outage import outage_status

log = logging.getLogger(__name__)

HealthProbe = Callable[[], Awaitable[bool]]


# grpc.aio takes calls from gRPC core one at a time, one event-loop turn each; a burst of calls
# (thousands of waited SubmitWrites) waits in core's queue of calls not yet taken. Core's defaults
# cancel such a call, silently and with a plain CANCELLED (the handler never runs, nothing is
# logged): at random beyond 1,000 waiting, always beyond 3,000, and any that waited 30 s. Raised
# so a call waits until the handler takes it or the caller's own deadline ends it
# (DEADLINE_EXCEEDED, a truthful answer); only a backlog beyond PENDING_CALLS_MAX is still cut.
PENDING_CALLS_MAX = 1_000_000
PENDING_CALL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.server.max_pending_requests", PENDING_CALLS_MAX),
    ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_MAX),
    ("grpc.server_max_unrequested_time_in_server", 24 * 3600),
]

# The health "service" the liveness probe asks for: SERVING while the process serves, whatever
# Redis does. The overall status ("") and each API service follow Redis (readiness).
LIVENESS_SERVICE = "hubsync.liveness"


async def _abort(
    context: grpc.aio.ServicerContext, method: str, exc: Exception, *, malformed_is_invalid: bool
) -> None:
    """Ends the call with the status ``exc`` stands for (called from the handler's ``except``).

    A :class:`HubsyncError` becomes its own status; a ``ValueError``/``TypeError`` (malformed
    protobuf content that slipped past validation) INVALID_ARGUMENT where
    ``malformed_is_invalid``; a Redis outage UNAVAILABLE; anything else INTERNAL, logged.
    """
    if isinstance(exc, HubsyncError):
        await context.abort_with_status(exc.to_status())
        return
    if malformed_is_invalid and isinstance(exc, (ValueError, TypeError)):
        await context.abort_with_status(InvalidArgument(str(exc)).to_status())
        return
    if (outage := outage_status(exc, method)) is not None:
        await context.abort_with_status(outage)
    log.exception("unhandled error", extra={"method": method})
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns :class:`HubsyncError` into a rich status, a Redis outage into UNAVAILABLE, anything
    unexpected into INTERNAL."""

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        """Wraps the handler so its errors become statuses (see the class docstring)."""
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await _abort(context, method, exc, malformed_is_invalid=True)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    result = inner_stream(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:  # a handler that writes with context.write() (grpc's health Watch)
                        await result
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await _abort(context, method, exc, malformed_is_invalid=False)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class ServiceHost:
    """Runs one service's grpc.aio server.

    Args:
        name: the service name (for logs and health).
        service_names: full names of the gRPC services registered (for health and reflection).
        register: adds the servicers to the server.
        callers: ``{caller: token}``; empty only with ``anonymous``.
        policy: for every method the servicers expose, the callers allowed to call it; the host
            refuses to start (PolicyError) when the two do not match.
        anonymous: with no ``callers``, serve every call unauthenticated (the loud, insecure
            development opt-in); without it an empty ``callers`` refuses to start (ValueError).
        reflection: serve gRPC server reflection (grpcurl).
        health_probe: returns True while dependencies (Redis) answer.
    """

    def __init__(
        self,
        name: str,
        service_names: Sequence[str],
        register: Callable[[grpc.aio.Server], None],
        *,
        callers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        anonymous: bool = False,
        reflection: bool = True,
        health_probe: HealthProbe | None = None,
        grace_seconds: float = 10.0,
        probe_interval: float = 2.0,
        max_connection_age_s: float = 0.0,
    ) -> None:
        self.name = name
        self.service_names = list(service_names)
        registry = CallerRegistry(callers or {})
        if not registry.enabled and not anonymous:
            raise ValueError(f"{name}: no caller credentials; refusing to serve every call unauthenticated")
        self.anonymous = not registry.enabled
        if self.anonymous:
            _warn_anonymous(name)
        options: list[tuple[str, int]] = [("grpc.so_reuseport", 0), *PENDING_CALL_OPTIONS]
        if max_connection_age_s:
            # GOAWAY after this age makes clients reconnect and re-resolve; no grace limit, so
            # streams in flight (a Subscribe) run on until they end.
            options.append(("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)))
        self.server = grpc.aio.server(
            interceptors=[
                aio_server_interceptor(),  # type: ignore[no-untyped-call]
                CallerAuthInterceptor(registry, policy, anonymous=anonymous),
                ErrorMappingInterceptor(),
            ],
            options=options,
        )
        recorder = PolicyRecorder(self.server)
        register(recorder)
        if recorder.unnamed:
            raise PolicyError(f"{name}: a generic handler that names no service cannot be checked")
        check_policy(_served_methods(recorder.served), policy or {})
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if reflection:
            reflection_module.enable_server_reflection(
                [*self.service_names, health.SERVICE_NAME, reflection_module.SERVICE_NAME], self.server
            )
        self._probe = health_probe
        self._probe_interval = probe_interval
        self._grace = grace_seconds
        self._probe_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.port = 0
        self._health_server: grpc.aio.Server | None = None
        self.health_port = 0

    async def start(
        self,
        address: str,
        *,
        credentials: grpc.ServerCredentials | None = None,
        health_address: str | None = None,
    ) -> int:
        """Binds ``address`` (port 0 picks a free one), starts serving, returns the port.

        With ``credentials`` (hubsync.core.tls) the port speaks TLS only; ``health_address`` adds
        a plaintext port with grpc.health.v1 alone, for probes that cannot do TLS."""
        if credentials is not None:
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        await self.server.start()
        if health_address is not None:
            self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(health_address)
            if self.health_port == 0:
                raise RuntimeError(f"could not bind {health_address}")
            await self._health_server.start()
        await self._set_all(await self._healthy())
        self._probe_task = asyncio.create_task(self._watch_health(), name=f"{self.name}-health")
        log.info("serving", extra={"service_name": self.name, "address": address, "port": self.port})
        return self.port

    async def _healthy(self) -> bool:
        if self._probe is None:
            return True
        try:
            return await asyncio.wait_for(self._probe(), timeout=max(self._probe_interval, 1.0))
        except Exception:
            return False

    async def _set_all(self, serving: bool) -> None:
        # Liveness is the process answering at all: a Redis outage makes the pod unready (no
        # traffic) but must not make Kubernetes restart every pod of every service at once.
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ["", *self.service_names]:
            await self.health.set(service, status)
        if serving and self.anonymous:
            _warn_anonymous(self.name)

    async def _watch_health(self) -> None:
        last = None
        while not self._stopping.is_set():
            ok = await self._healthy()
            if ok != last:
                if last is not None:
                    log.warning("health changed", extra={"serving": ok})
                await self._set_all(ok)
                last = ok
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._probe_interval)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, drain in-flight ones within the grace."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self.server.stop(self._grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        log.info("stopped", extra={"service_name": self.name})

    async def wait_for_termination(self) -> None:
        """Waits until the server stops."""
        await self.server.wait_for_termination()


def _warn_anonymous(name: str) -> None:
    log.warning(
        "INSECURE: %s SERVES EVERY gRPC CALL WITHOUT CALLER AUTHENTICATION (%s=true); anyone who "
        "reaches its port may read tokens and write to HubSpot. For local development and tests only.",
        name,
        INSECURE_OPT_IN,
    )


def _served_methods(served: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each registered service's methods; a service registered only through a generic handler
    gets its methods from its descriptor."""
    methods = {}
    for service, names in served.items():
        if not names:
            try:
                names = [m.name for m in descriptor_pool.Default().FindServiceByName(service).methods]
            except KeyError:
                message = f"{service}: registered without its methods and has no descriptor"
                raise PolicyError(message) from None
        methods[service] = names
    return methods


def redis_probe(redis: Redis) -> HealthProbe:
    """A health probe that is True while Redis answers PING."""

    async def probe() -> bool:
        return bool(await redis.ping())

    return probe


async def run_until_signalled(stop: Callable[[], Awaitable[None]]) -> None:
    """Waits for SIGTERM or SIGINT, then awaits ``stop``."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    await event.wait()
    log.info("signal received, shutting down")
    await stop()
