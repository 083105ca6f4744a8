"""Per-caller credentials for every gRPC call, checked by one shared server interceptor.

Each service (and each internal client) presents ``authorization: Bearer <token>``. The server
knows every caller's token only as a SHA-256 digest and compares digests in constant time, so
a token never sits in memory longer than needed nor appears in a log. A per-method policy says
which callers may call what: ``{"/hubsync.api.auth.v1.AuthService/GetAccessToken": ["writer"]}``;
methods the policy does not name are open to every authenticated caller.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

log = logging.getLogger(__name__)

current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("hubsync_caller", default="")

# Infrastructure methods every orchestrator must reach without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


HASHED = "sha256:"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _known_digest(value: str) -> bytes:
    """A configured credential: the token itself, or ``sha256:<hex>`` of it (verify-only)."""
    if value.startswith(HASHED):
        return bytes.fromhex(value[len(HASHED) :])
    return _digest(value)


def hashed(token: str) -> str:
    """The verify-only form of a token (``sha256:<hex>``), for pods that must not present it."""
    return HASHED + _digest(token).hex()


def own_token(credentials: Mapping[str, str], caller: str) -> str | None:
    """The token ``caller`` presents, when its entry is a token (not a digest)."""
    value = credentials.get(caller)
    return value if value and not value.startswith(HASHED) else None


class CallerRegistry:
    """Maps a presented token to the caller it belongs to. Entries may be tokens or, so that a
    pod holds no other caller's credential, their digests (``sha256:<hex>``)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._digests = [(name, _known_digest(value)) for name, value in tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, token: str) -> str | None:
        presented = _digest(token)
        found = None
        # Compare against every entry so the time taken does not tell which one matched.
        for name, digest in self._digests:
            if hmac.compare_digest(presented, digest):
                found = name
        return found


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects unauthenticated calls (UNAUTHENTICATED) and calls the policy forbids (PERMISSION_DENIED)."""

    def __init__(self, registry: CallerRegistry, policy: Mapping[str, Iterable[str]] | None = None) -> None:
        self.registry = registry
        self.policy = {method: frozenset(callers) for method, callers in (policy or {}).items()}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return handler
        if not self.registry.enabled:
            # Development without configured credentials: the host logged a warning at start.
            return _with_caller(handler, "anonymous")
        token = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer ") :]
        caller = self.registry.identify(token) if token else None
        if caller is None:
            return _abort(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or unknown caller credentials")
        allowed = self.policy.get(method)
        if allowed is not None and caller not in allowed:
            log.warning("caller not allowed", extra={"caller": caller, "method": method})
            return _abort(
                handler, grpc.StatusCode.PERMISSION_DENIED, f"caller {caller!r} may not call {method}"
            )
        return _with_caller(handler, caller)


def _with_caller(handler: grpc.RpcMethodHandler, caller: str) -> grpc.RpcMethodHandler:
    def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def inner(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_caller.set(caller)
            return await fn(request, context)

        return inner

    def wrap_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def inner(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_caller.set(caller)
            async for item in fn(request, context):
                yield item

        return inner

    return _rebuild(handler, wrap_unary, wrap_stream)


def _abort(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover

    return _rebuild(handler, lambda _fn: unary, lambda _fn: stream)


def _rebuild(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[Callable[..., Any]], Callable[..., Any]],
    wrap_stream: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> grpc.RpcMethodHandler:
    """Returns ``handler`` with its behaviour wrapped (unary-unary and unary-stream methods)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class CallerCredentials(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Client side: adds this caller's bearer token to every outgoing call."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class CallerStreamCredentials(grpc.aio.UnaryStreamClientInterceptor):
    """The same for server-streaming calls: grpc.aio files an interceptor under its first
    matching kind only, so :class:`CallerCredentials` is never asked about streaming calls."""

    def __init__(self, token: str) -> None:
        self._inner = CallerCredentials(token)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._inner._details(details), request)
