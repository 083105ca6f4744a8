"""Per-caller credentials for every gRPC call, checked by one shared server interceptor.

Each service (and each internal client) presents ``authorization: Bearer <token>``. The server
knows every caller's token only as a SHA-256 digest and compares digests in constant time, so
a token never sits in memory longer than needed nor appears in a log.

Authorization is deny by default: a service's policy names, for every method it serves, the
callers allowed to call it (``{"/hubsync.api.auth.v1.AuthService/GetAccessToken": ["writer"]}``).
A call to a method the policy does not name is refused (PERMISSION_DENIED), and a server whose
servicers expose a method its policy does not name refuses to start (:func:`check_policy`).
Serving without any credential needs an explicit opt-in (``HUBSYNC_INSECURE_NO_CALLER_AUTH``),
which production refuses (:func:`credential_problems`).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

log = logging.getLogger(__name__)

current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("hubsync_caller", default="")

# Infrastructure methods every orchestrator must reach without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

HASHED = "sha256:"
# Production refuses a shorter token: 32 characters of token_urlsafe are 192 bits, and even
# 32 hex digits are 128 bits, beyond guessing over the network.
MIN_TOKEN_LENGTH = 32
INSECURE_OPT_IN = "HUBSYNC_INSECURE_NO_CALLER_AUTH"
TOKENS_VARIABLE = "HUBSYNC_CALLER_TOKENS_FILE"
ANONYMOUS = "anonymous"

Policy = Mapping[str, Iterable[str]]


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


def credential_problems(
    credentials: Mapping[str, str], *, production: bool, insecure_opt_in: bool
) -> list[tuple[str, str]]:
    """What is wrong with serving under these credentials, as ``(variable, message)`` pairs.

    Without credentials a server would accept every call: that needs the explicit opt-in, which
    production refuses outright. Production also refuses guessable (short) tokens; digests are
    fine since they are only compared against.
    """
    problems: list[tuple[str, str]] = []
    if production and insecure_opt_in:
        problems.append((INSECURE_OPT_IN, "serving without caller authentication is refused in production"))
    if not credentials and not insecure_opt_in:
        problems.append(
            (
                TOKENS_VARIABLE,
                "caller credentials are required (or, for local development and tests only, "
                f"{INSECURE_OPT_IN}=true to serve every call unauthenticated)",
            )
        )
    if production:
        for name, value in sorted(credentials.items()):
            if not value.startswith(HASHED) and len(value) < MIN_TOKEN_LENGTH:
                message = f"caller {name!r}: a token must have at least {MIN_TOKEN_LENGTH} characters"
                problems.append((TOKENS_VARIABLE, message))
    return problems


class CallerRegistry:
    """Maps a presented token to the caller it belongs to. Entries may be tokens or, so that a
    pod holds no other caller's credential, their digests (``sha256:<hex>``)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._digests = [(name, _known_digest(value)) for name, value in tokens.items()]

    @property
    def enabled(self) -> bool:
        """Whether any caller credential is configured."""
        return bool(self._digests)

    def identify(self, token: str) -> str | None:
        """The caller whose token this is, or None (compares with every entry, in constant time)."""
        presented = _digest(token)
        found = None
        # Compare against every entry so the time taken does not tell which one matched.
        for name, digest in self._digests:
            if hmac.compare_digest(presented, digest):
                found = name
        return found


class PolicyError(ValueError):
    """A server's policy does not match the methods it serves (the server must not start)."""


def check_policy(served: Mapping[str, Iterable[str]], policy: Policy) -> None:
    """Raises PolicyError unless ``policy`` names exactly the methods of ``served``
    (``{service: [method, ...]}``): an unlisted method would be refused at every call, and a
    listed method nothing serves is a typo that hides a wrong rule."""
    methods = {f"/{service}/{name}" for service, names in served.items() for name in names}
    missing = sorted(methods - set(policy))
    unknown = sorted(set(policy) - methods)
    problems = [f"{m}: served but names no allowed callers" for m in missing]
    problems += [f"{m}: in the policy but not served" for m in unknown]
    if problems:
        raise PolicyError("caller policy does not match the served methods:\n  " + "\n  ".join(problems))


class PolicyRecorder:
    """Stands in for a grpc.aio server while servicers register: notes every method they
    expose (``{service: [method, ...]}``) and passes the registration on."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.served: dict[str, list[str]] = {}
        self.unnamed = 0

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        """Registers ``handlers`` and records the service as served (for the policy check)."""
        self.served.setdefault(service, []).extend(handlers)
        self._server.add_registered_method_handlers(service, handlers)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Registers generic handlers, refusing one that names no service."""
        handlers = tuple(handlers)
        for handler in handlers:
            # Generated code registers each service both ways; a handler that names no service
            # could serve any method and is refused (check_policy cannot see its methods).
            name = getattr(handler, "service_name", None)
            if not callable(name):
                self.unnamed += 1
            else:
                self.served.setdefault(name(), [])
        self._server.add_generic_rpc_handlers(handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _Throttle:
    """At most one log line per key and interval; says how many were left out since the last."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def take(self, key: str) -> int | None:
        """The number left out since the last line, or None when this one is left out too."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        if len(self._last) > 1000:  # keys are method names; bound them anyway
            self._last.clear()
        self._last[key] = now
        return self._skipped.pop(key, 0)


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects unauthenticated calls (UNAUTHENTICATED) and calls the policy does not allow,
    including calls to a method it does not name (PERMISSION_DENIED). Failures are logged at
    most once per ``log_interval_s`` and method, never with token material.

    Args:
        registry: the known callers; empty only with ``anonymous``.
        policy: for every served method, the callers allowed to call it.
        anonymous: serve every call as caller ``anonymous`` (the insecure development opt-in).
    """

    def __init__(
        self,
        registry: CallerRegistry,
        policy: Policy | None = None,
        *,
        anonymous: bool = False,
        log_interval_s: float = 60.0,
    ) -> None:
        if not registry.enabled and not anonymous:
            raise ValueError("no caller credentials: refusing to serve every call unauthenticated")
        self.registry = registry
        self.anonymous = anonymous and not registry.enabled
        self.policy = {method: frozenset(callers) for method, callers in (policy or {}).items()}
        self._throttle = _Throttle(log_interval_s)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Admits or refuses the call by its caller's credential and the policy."""
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return handler
        allowed = self.policy.get(method)
        if allowed is None:
            denied = grpc.StatusCode.PERMISSION_DENIED
            return self._refuse(handler, denied, method, "method not in the caller policy")
        if self.anonymous:
            skipped = self._throttle.take("anonymous")
            if skipped is not None:
                log.warning(
                    "UNAUTHENTICATED CALL SERVED (%s=true): anyone who reaches this port may call "
                    "every method",
                    INSECURE_OPT_IN,
                    extra={"method": method, "left_out": skipped},
                )
            return _with_caller(handler, ANONYMOUS)
        token = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer ") :]
        caller = self.registry.identify(token) if token else None
        if caller is None:
            reason = "unknown credentials" if token else "no credentials"
            return self._refuse(handler, grpc.StatusCode.UNAUTHENTICATED, method, reason)
        if caller not in allowed:
            denied = grpc.StatusCode.PERMISSION_DENIED
            return self._refuse(handler, denied, method, "caller not allowed", caller)
        return _with_caller(handler, caller)

    def _refuse(
        self,
        handler: grpc.RpcMethodHandler,
        code: grpc.StatusCode,
        method: str,
        reason: str,
        caller: str = "",
    ) -> grpc.RpcMethodHandler:
        throttle = self._throttle

        async def log_refusal(context: grpc.aio.ServicerContext) -> None:
            skipped = throttle.take(f"{code.name} {method}")
            if skipped is not None:
                # Who and what, never the presented token (nor any part or digest of it).
                log.warning(
                    "call refused: %s",
                    reason,
                    extra={
                        "status": code.name,
                        "method": method,
                        "caller": caller or None,
                        "peer": context.peer(),
                        "left_out": skipped,
                    },
                )

        if code == grpc.StatusCode.UNAUTHENTICATED:
            message = "missing or unknown caller credentials"
        elif caller:
            message = f"caller {caller!r} may not call {method}"
        else:
            message = f"{method} is not open to any caller"
        return _abort(handler, code, message, log_refusal)


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


def _abort(
    handler: grpc.RpcMethodHandler,
    code: grpc.StatusCode,
    message: str,
    before: Callable[[grpc.aio.ServicerContext], Awaitable[None]],
) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await before(context)
        await context.abort(code, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await before(context)
        await context.abort(code, message)
        yield  # pragma: no cover

    return _rebuild(handler, lambda _fn: unary, lambda _fn: stream)


def _rebuild(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[Callable[..., Any]], Callable[..., Any]],
    wrap_stream: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> grpc.RpcMethodHandler:
    """Returns ``handler`` with its behaviour wrapped, for each of the four kinds of method.

    The wrapped function gets the request (or, for client-streaming kinds, the request
    iterator) first: a refusal never reads a message the caller sent. A handler of no known kind
    is turned into a refusal, never passed on unchecked.
    """
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, wrap_unary),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, wrap_stream),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, wrap_unary),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, wrap_stream),
    )
    for behaviour, make, wrap in kinds:
        if behaviour:
            return make(
                wrap(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "unsupported method kind")

    return grpc.unary_unary_rpc_method_handler(refuse)


class CallerCredentials(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
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
        """Adds the caller's token to a unary call."""
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        """Adds the caller's token to a server-streaming call."""
        return await continuation(self._details(details), request)


class CallerStreamCredentials(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """The same for server-streaming calls: grpc.aio files an interceptor under its first
    matching kind only, so :class:`CallerCredentials` is never asked about streaming calls."""

    def __init__(self, token: str) -> None:
        self._inner = CallerCredentials(token)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        """Adds the caller's token to a server-streaming call."""
        return await continuation(self._inner._details(details), request)
