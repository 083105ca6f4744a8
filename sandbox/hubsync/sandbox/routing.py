"""The request pipeline every HubSpot API route shares: auth, faults, limits, logging.

A handler receives a ``Call`` and returns ``(status, body)``; errors are raised as ``ApiError``.
Kept free of per-request pydantic work: this is the hot path of the benchmark.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .config import OAUTH_APP_BURST, FaultRule
from .errors import (
    ApiError,
    correlation_id,
    error_body,
    expired,
    fault,
    missing_scopes,
    rate_limited,
    unauthorized,
)
from .state import ORIGIN_API, ORIGIN_FAULT, ORIGIN_RATE_LIMIT, RequestOutcome, SandboxState, Token
from .store import PortalStore, WriteSource

logger = logging.getLogger(__name__)

Handler = Callable[["Call"], Awaitable[tuple[int, Any]]]
CORRELATION_HEADER = "X-HubSpot-Correlation-Id"


class Call:
    """One API request, as the handlers see it."""

    __slots__ = ("_body", "batch_size", "params", "request", "state", "store", "token", "trace_ids")

    def __init__(self, request: Request, state: SandboxState):
        self.request = request
        self.state = state
        self.params: dict[str, Any] = request.path_params
        self.token: Token | None = None
        self.store: PortalStore | None = None
        self._body: Any = None
        self.batch_size: int | None = None
        self.trace_ids: list[str] | None = None

    @property
    def body(self) -> Any:
        return self._body

    def object_type(self, key: str = "objectType") -> str:
        raw = self.params[key]
        t = self.portal_store.types.resolve(raw)
        if t is None:
            raise ApiError(
                400,
                error_body(f"Unable to infer object type from: {raw}", "VALIDATION_ERROR"),
            )
        return t

    @property
    def source(self) -> WriteSource:
        """Who the request's writes are attributed to (the token's app)."""
        assert self.token is not None
        return self.token.source

    @property
    def portal_store(self) -> PortalStore:
        assert self.store is not None
        return self.store


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if status == 204 or body is None:
        return Response(status_code=status, headers=headers)
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, error_body(f"Invalid input JSON on line 1: {exc}", "VALIDATION_ERROR")) from None


def _fault_matches(rule: FaultRule, endpoint: str, template: str, path: str, hub_id: int | None) -> bool:
    if rule.portal is not None and rule.portal != hub_id:
        return False
    ep = rule.endpoint
    if ep is None:
        return True
    if ep.endswith("*"):
        prefix = ep[:-1]
        return path.startswith(prefix) or endpoint.startswith(prefix)
    return ep in (endpoint, template, path)


async def apply_faults(
    state: SandboxState,
    endpoint: str,
    template: str,
    path: str,
    hub_id: int | None,
    batch_size: int | None,
    fired: list[dict[str, Any]] | None = None,
) -> None:
    """Applies the matching fault rules; raises the injected answer. Each rule that fires is
    appended to ``fired`` as ``{"id", "kind"}`` (kind: ``status``, ``timeout``, ``batch_limit``
    or ``latency``; a delay before an injected status adds ``latencyMs``) for the request log."""
    for rule in list(state.faults):
        if not _fault_matches(rule, endpoint, template, path, hub_id):
            continue
        if rule.batch_limit is not None and (batch_size is None or batch_size <= rule.batch_limit):
            continue
        if rule.error_rate < 1.0 and state.rng.random() >= rule.error_rate:
            continue
        if rule.remaining is not None:
            if rule.remaining <= 0:
                continue
            rule.remaining -= 1
        record: dict[str, Any] = {"id": rule.id, "kind": _fault_kind(rule)}
        if rule.latency_ms:
            record["latencyMs"] = rule.latency_ms
        if fired is not None:
            fired.append(record)
        if rule.latency_ms:
            await asyncio.sleep(rule.latency_ms / 1000)
        if rule.timeout_s is not None:
            await asyncio.sleep(rule.timeout_s)
            raise fault(504)
        if rule.batch_limit is not None:
            raise fault(502)
        if rule.status == 429:
            raise rate_limited("TEN_SECONDLY_ROLLING")
        if rule.status is not None:
            raise fault(rule.status)


def _fault_kind(rule: FaultRule) -> str:
    if rule.timeout_s is not None:
        return "timeout"
    if rule.batch_limit is not None:
        return "batch_limit"
    if rule.status is not None:
        return "status"
    return "latency"


def authenticate(state: SandboxState, request: Request, now: int) -> Token:
    header = request.headers.get("authorization", "")
    if not header[:7].lower() == "bearer ":
        raise unauthorized()
    tok = state.tokens.get(header[7:].strip())
    if tok is None:
        raise unauthorized()
    if tok.expires_at is not None and tok.expires_at <= now:
        raise expired(max(0, (now - tok.expires_at) // 60_000))
    return tok


def api_route(
    state: SandboxState,
    method: str,
    template: str,
    handler: Handler,
    *,
    kind: str = "api",
    scope: str | None = None,
) -> Route:
    """A HubSpot API route. ``kind``: "api" (rate limited), "search" (5/s, no headers).

    ``scope`` is ``"read"``/``"write"`` (the token needs ``crm.objects.<type>.<scope>``) or
    ``"schema.read"``/``"schema.write"`` (``crm.schemas.<type>.…``; reading also accepts the
    object read scope).
    """
    endpoint_name = f"{method} {template}"
    log = state.requests
    limiter = state.limiter

    async def endpoint(request: Request) -> Response:
        t0 = time.perf_counter()
        now = state.clock.now_ms()
        call = Call(request, state)
        headers: dict[str, str] | None = None
        hub_id: int | None = None
        app_id: int | None = None
        origin = ORIGIN_API
        outcome = RequestOutcome()
        try:
            if (
                len(request.scope.get("raw_path") or request.scope["path"])
                + len(request.scope["query_string"])
                > state.config.max_uri_length
            ):
                raise ApiError(414, error_body("URI Too Long", "URI_TOO_LONG"))
            tok = authenticate(state, request, now)
            call.token = tok
            hub_id, app_id = tok.hub_id, tok.app_id
            call.store = state.stores[hub_id]
            portal = state.portals[hub_id]
            if scope is not None and ("objectType" in call.params or "fromObjectType" in call.params):
                _check_scope(call, tok, scope)
            if method in ("POST", "PATCH", "PUT"):
                call._body = await read_json(request)
                inputs = call._body.get("inputs") if isinstance(call._body, dict) else None
                if isinstance(inputs, list):
                    call.batch_size = len(inputs)
            origin = ORIGIN_RATE_LIMIT
            if kind == "search":
                limiter.check_search(hub_id, portal.search_per_second, now)
                if state.config.search_counts_toward_daily:
                    limiter.count_daily(hub_id, portal.daily, now)
            else:
                oauth = tok.kind == "oauth"
                burst = OAUTH_APP_BURST if oauth and portal.burst_per_10s is None else portal.burst
                headers = limiter.check_api(hub_id, tok.rate_key(), burst, portal.daily, now, oauth)
            origin = ORIGIN_FAULT
            if state.faults:
                await apply_faults(
                    state,
                    endpoint_name,
                    template,
                    request.scope["path"],
                    hub_id,
                    call.batch_size,
                    outcome.faults,
                )
            origin = ORIGIN_API
            status, body = await handler(call)
            h = dict(headers or {})
            h[CORRELATION_HEADER] = correlation_id()
            resp = json_response(status, body, h)
        except ApiError as err:
            status = err.status
            if origin == ORIGIN_RATE_LIMIT:
                outcome.policy = err.body.get("policyName")
            h = dict(headers or {})
            h.update(err.headers)
            # HubSpot sends the body's correlationId as a header as well.
            h[CORRELATION_HEADER] = str(err.body.get("correlationId") or correlation_id())
            if status == 429 and state.config.rate_limit_retry_after_s is not None:
                h.setdefault("Retry-After", str(state.config.rate_limit_retry_after_s))
            resp = json_response(status, err.body, h)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            origin = ORIGIN_API
            # Malformed input that slipped past the handlers' checks (e.g. a string where an
            # object belongs): HubSpot answers such requests with a 400, not a crash.
            logger.debug("bad input on %s", endpoint_name, exc_info=True)
            status = 400
            resp = json_response(
                400,
                error_body(f"Invalid input JSON: {type(exc).__name__}: {exc}", "VALIDATION_ERROR"),
                headers,
            )
        except Exception:
            origin = ORIGIN_API
            logger.exception("sandbox bug on %s", endpoint_name)
            status = 500
            resp = json_response(500, error_body("internal error", "INTERNAL_ERROR"), headers)
        extra: dict[str, Any] | None = None
        if call.batch_size is not None or call.trace_ids:
            extra = {"batchSize": call.batch_size}
            if call.trace_ids:
                extra["objectWriteTraceIds"] = call.trace_ids
        log.add(
            now,
            endpoint_name,
            request.scope["path"],
            status,
            hub_id,
            app_id,
            (time.perf_counter() - t0) * 1000,
            extra,
            origin,
            outcome if outcome.faults or outcome.policy else None,
        )
        return resp

    return Route(template, endpoint, methods=[method], name=endpoint_name)


# Scopes that grant access to a standard type besides ``crm.objects.<type>.<action>``.
_LEGACY_SCOPES = {"tickets": "tickets", "products": "e-commerce", "line_items": "e-commerce"}
# Engagements are granted by the contacts scopes (HubSpot's engagement API pages list them).
_ENGAGEMENT_SCOPE = "contacts"


def object_scopes(t: str, action: str, custom: bool) -> list[str]:
    """Scopes any one of which lets a token ``action`` (read/write) records of type ``t``."""
    if custom:
        return [f"crm.objects.custom.{action}"]
    if t in ("notes", "calls", "emails", "meetings", "tasks"):
        return [f"crm.objects.{_ENGAGEMENT_SCOPE}.{action}"]
    out = [f"crm.objects.{t}.{action}"]
    if t in _LEGACY_SCOPES:
        out.append(_LEGACY_SCOPES[t])
    return out


def _check_scope(call: Call, tok: Token, scope: str) -> None:
    key = "objectType" if "objectType" in call.params else "fromObjectType"
    t = call.portal_store.types.resolve(call.params[key])
    if t is None:
        return  # the handler answers 400 for an unknown type
    custom = call.portal_store.type_def(t).custom
    action = scope.split(".")[-1]
    allowed = object_scopes(t, action, custom)
    if scope.startswith("schema"):
        # Reading property definitions is also allowed with the object read scope.
        schema = f"crm.schemas.{'custom' if custom else t}.{action}"
        # Only the three core objects and custom objects have schema scopes of their own.
        own = custom or t in ("contacts", "companies", "deals")
        allowed = [schema, *allowed] if action == "read" or not own else [schema]
    if not any(s in tok.scopes for s in allowed):
        raise missing_scopes([allowed[0]])


def public_route(
    state: SandboxState,
    method: str,
    template: str,
    handler: Callable[[Request], Awaitable[Response]],
) -> Route:
    """An unauthenticated, unlimited route (OAuth) that still goes to the request log."""
    endpoint_name = f"{method} {template}"

    async def endpoint(request: Request) -> Response:
        t0 = time.perf_counter()
        now = state.clock.now_ms()
        origin = ORIGIN_API
        outcome = RequestOutcome()
        # Handlers note what the log should know (an OAuth token request's grant) here.
        request.state.sandbox_outcome = outcome
        try:
            if state.faults:
                origin = ORIGIN_FAULT
                await apply_faults(
                    state, endpoint_name, template, request.scope["path"], None, None, outcome.faults
                )
                origin = ORIGIN_API
            resp = await handler(request)
        except ApiError as err:
            resp = json_response(err.status, err.body, err.headers)
        state.requests.add(
            now,
            endpoint_name,
            request.scope["path"],
            resp.status_code,
            None,
            None,
            (time.perf_counter() - t0) * 1000,
            None,
            origin,
            outcome if outcome.faults or outcome.grant_type else None,
        )
        return resp

    return Route(template, endpoint, methods=[method], name=endpoint_name)
