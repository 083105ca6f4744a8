"""Every HubSpot API call the writer makes goes through :class:`HubSpotClient`.

Per call: wait for the portal's circuit breaker and a rate-limit slot, get a token, send, and
correct the limiter from the response headers. Transient answers (423, 429, 477, 500, 503,
521-526, timeouts) are retried with exponential backoff and full jitter, honouring
``Retry-After`` and the 429 policy (TEN_SECONDLY_ROLLING: the whole window is marked used so
every replica waits it out; DAILY: fail with RESOURCE_EXHAUSTED until the reset). A 401 asks
auth for a fresh token and retries once. Everything else (2xx, 207, 400, 403, 404, 409, 502,
504) is returned to the caller, who knows what the batch was (the error table lives in
:mod:`hubsync.writer.batches`). One span per call, linked to the traces of the records it carries.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import orjson
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from hubsync.core.errors import ResourceExhausted, Unauthenticated, Unavailable
from hubsync.core.portal_metrics import PortalCounter
from hubsync.writer.circuit import CircuitBreakers
from hubsync.writer.ratelimit import RateLimiter, ReservedSlot
from hubsync.writer.tokens import TokenSource

__all__ = [
    "FAILURES",
    "MIN_TIMEOUT_S",
    "RETRYABLE",
    "HubSpotClient",
    "HubSpotResponse",
    "RetryPolicy",
    "environment_proxy",
]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("hubsync.writer")
_meter = metrics.get_meter("hubsync.writer")
_requests = PortalCounter(
    _meter.create_counter(
        "hubsync.hubspot.requests", description="HubSpot API calls by portal, endpoint and status"
    )
)
_request_duration = _meter.create_histogram(
    "hubsync.hubspot.request.duration",
    unit="s",
    description="HubSpot API call latency by endpoint and status",
)


def _count(portal_id: int, attrs: dict[str, str], status: str, started: float) -> None:
    _requests.add(1, portal_id, attrs | {"status": status})
    _request_duration.record(time.perf_counter() - started, {"endpoint": attrs["endpoint"], "status": status})


# Connections to HubSpot (the HTTP pool's size), and how long an idle one is kept.
_CONNECTIONS = 64
_KEEPALIVE_S = 15.0
# Sent with every request besides the call's own headers.
_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", "User-Agent": "hubsync-writer"}
# The shortest HTTP timeout a caller's deadline can give a call.
MIN_TIMEOUT_S = 0.5
RETRYABLE = frozenset({423, 429, 477, 500, 503, 521, 522, 523, 524, 525, 526})
# Answers that say HubSpot (not the request) is failing: they feed the circuit breaker.
FAILURES = frozenset({500, 502, 503, 504, 521, 522, 523, 524, 525, 526})


@dataclass
class HubSpotResponse:
    """HubSpot's answer to one call: status, parsed body, headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Return whether the status is 2xx."""
        return 200 <= self.status < 300

    def error(self) -> dict[str, str]:
        """HubSpot's error fields: message, category, correlation id."""
        body = self.body if isinstance(self.body, dict) else {}
        return {
            "message": str(body.get("message") or (self.body if isinstance(self.body, str) else "")),
            "category": str(body.get("category") or body.get("errorType") or ""),
            "correlation_id": str(body.get("correlationId") or ""),
        }


@dataclass
class RetryPolicy:
    """How often and how long a retryable answer is retried (exponential, full jitter)."""

    max_attempts: int = 6
    base_s: float = 0.5
    max_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base·2^attempt)]."""
        return random.uniform(0, min(self.max_s, self.base_s * (2**attempt)))


class HubSpotClient:
    """HTTP to HubSpot under the portal's quota, circuit and token."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenSource,
        limiter: RateLimiter,
        breakers: CircuitBreakers,
        policy: RetryPolicy,
        *,
        timeout_s: float = 30.0,
        deadline_share: float = 0.4,
    ) -> None:
        """Call ``base_url`` with tokens from ``tokens``, under ``limiter`` and ``breakers``."""
        self.tokens = tokens
        self.limiter = limiter
        self.breakers = breakers
        self.policy = policy
        self.timeout_s = timeout_s
        # With a caller's deadline, one call may take this share of the time left (never more
        # than timeout_s), so a hung call still leaves time to split the batch and retry.
        self.deadline_share = deadline_share
        # HubSpot is called through aiohttp's client: its C HTTP parser and pooled connections
        # took 105 µs of CPU per one-record batch read here, span included, where httpx with its
        # OpenTelemetry instrumentation took 542 µs (bench/writer/results/http_layer-stop19.json).
        # The session is made on the first call, inside the event loop it belongs to. TLS is
        # verified against the system's CA store (SSL_CERT_FILE / SSL_CERT_DIR add others).
        # An egress proxy from the environment (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, NO_PROXY),
        # its credentials sent as Proxy-Authorization rather than left in its URL.
        self._base = base_url.rstrip("/")
        self._proxy, proxy_auth = _proxy_parts(environment_proxy(self._base))
        parts = urlsplit(self._base)
        # To an https HubSpot the proxy's credentials go with the CONNECT that opens the tunnel;
        # to a plain-http one (a local sandbox) with each request the proxy relays.
        tunnel = parts.scheme == "https"
        self._proxy_headers = proxy_auth if tunnel else None
        self._headers = _HEADERS if tunnel or not proxy_auth else {**_HEADERS, **proxy_auth}
        self._session: aiohttp.ClientSession | None = None
        self._server: dict[str, str | int] = {
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        }
        # Calls beyond the pool's connections wait here (at most their timeout), not in the
        # connector's queue, so a slow HubSpot shows as time waiting for a connection.
        self._gate = asyncio.Semaphore(_CONNECTIONS)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_CONNECTIONS, keepalive_timeout=_KEEPALIVE_S),
            # No cookies kept between calls (HubSpot's edge sets some), no proxy from the
            # environment but the one chosen above, and every status returned, not raised.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        return self._session

    async def call(
        self,
        portal_id: int,
        method: str,
        path: str,
        *,
        route: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        search: bool = False,
        links: Sequence[Link] = (),
        deadline: float | None = None,
        records: int = 0,
        reserved: ReservedSlot | None = None,
    ) -> HubSpotResponse:
        """Send one request (with its retries); returns HubSpot's final non-transient answer.

        ``reserved``: a burst-window slot the coalescer already took for this batch; the first
        attempt that finds it unused goes on it, every other attempt takes its own.
        """
        breaker = self.breakers.get(portal_id)
        reauthorized = False
        attempt = 0
        token: str | None = None
        while True:
            probe = await breaker.admit(deadline)
            slot: str | None = None
            try:
                ahead = reserved.take() if reserved is not None and not search else None
                if ahead:
                    slot = ahead
                else:
                    slot = await self.limiter.acquire(portal_id, search=search, deadline=deadline)
                if token is None:
                    token = await self.tokens.token(portal_id)
                response = await self._send(
                    portal_id,
                    method,
                    path,
                    route,
                    json,
                    params,
                    token,
                    links,
                    records,
                    self._timeout(deadline),
                )
            except BaseException:
                if probe:
                    await breaker.record(False, probe)
                if slot is not None:  # no answer to learn the portal's limits from
                    await self.limiter.end_probe(portal_id, slot)
                raise
            status = response.status
            await breaker.record(status not in FAILURES, probe)
            await self.limiter.settle(portal_id, slot, response.headers, search=search)
            if status == 401 and not reauthorized:
                reauthorized = True
                token = await self.tokens.invalidate(portal_id, token)
                continue
            if status == 401:
                raise Unauthenticated(
                    f"HubSpot rejected portal {portal_id}'s fresh token too", reason="HUBSPOT_UNAUTHORIZED"
                )
            if status not in RETRYABLE:
                return response
            attempt += 1
            wait = self._retry_wait(response, attempt)
            if status == 429:
                policy = response.body.get("policyName", "") if isinstance(response.body, dict) else ""
                if policy == "DAILY":
                    until_reset = await self.limiter.block_until_daily_reset(portal_id)
                    raise ResourceExhausted(
                        f"portal {portal_id} reached HubSpot's daily limit",
                        reason="HUBSPOT_DAILY_LIMIT",
                        retry_after=until_reset,
                    )
                if policy != "SECONDLY" and not search:
                    # Every replica waits out the window through the shared limiter.
                    await self.limiter.fill_window(portal_id)
                    wait = _retry_after(response.headers) or 0.0
            if attempt >= self.policy.max_attempts:
                raise Unavailable(
                    f"HubSpot answered {status} {self.policy.max_attempts} times ({route})",
                    reason="HUBSPOT_UNAVAILABLE",
                    retry_after=wait or 1.0,
                    metadata={"http_status": str(status)},
                )
            if deadline is not None and time.monotonic() + wait > deadline:
                raise Unavailable(
                    f"HubSpot answered {status} ({route}); no time left to retry",
                    reason="HUBSPOT_UNAVAILABLE",
                    retry_after=wait,
                    metadata={"http_status": str(status)},
                )
            log.info(
                "retrying HubSpot call",
                extra={"portal": portal_id, "route": route, "status": status, "wait_s": round(wait, 3)},
            )
            await asyncio.sleep(wait)

    def _timeout(self, deadline: float | None) -> float:
        """Return this call's HTTP timeout.

        ``timeout_s``, or less under a caller's deadline (a share of the time left, at least
        MIN_TIMEOUT_S).
        """
        if deadline is None:
            return self.timeout_s
        left = (deadline - time.monotonic()) * self.deadline_share
        return min(self.timeout_s, max(MIN_TIMEOUT_S, left))

    def _retry_wait(self, response: HubSpotResponse, attempt: int) -> float:
        after = _retry_after(response.headers)
        if after is not None:
            return after
        return self.policy.backoff(attempt)

    async def _send(
        self,
        portal_id: int,
        method: str,
        path: str,
        route: str,
        body: Any,
        params: Mapping[str, Any] | None,
        token: str,
        links: Sequence[Link],
        records: int,
        timeout: float,
    ) -> HubSpotResponse:
        attrs = {"endpoint": f"{method} {route}"}
        with _tracer.start_as_current_span(
            f"HubSpot {method} {route}",
            kind=SpanKind.CLIENT,
            links=list(links),
            attributes={"hubsync.portal_id": portal_id, "hubsync.records": records, "http.route": route},
        ) as span:
            content = orjson.dumps(body) if body is not None else None
            headers = {"Authorization": f"Bearer {token}"}
            if content is not None:
                headers["Content-Type"] = "application/json"
            started = time.perf_counter()
            try:
                raw = await self._request(method, path, content, params, headers, timeout)
            except TimeoutError:  # the call's timeout, or no connection free in time
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                _count(portal_id, attrs, "timeout", started)
                # A timeout is HubSpot's 504 as far as the batch is concerned (halve and retry).
                return HubSpotResponse(504, {"message": "request to HubSpot timed out"}, {})
            except aiohttp.ClientError as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                _count(portal_id, attrs, "error", started)
                return HubSpotResponse(503, {"message": f"cannot reach HubSpot: {type(exc).__name__}"}, {})
            span.set_attribute("http.status_code", raw.status)
            if raw.status >= 400:
                span.set_status(Status(StatusCode.ERROR, str(raw.status)))
            _count(portal_id, attrs, str(raw.status), started)
            parsed: Any
            try:
                parsed = orjson.loads(raw.content) if raw.content else None
            except orjson.JSONDecodeError:
                parsed = raw.content.decode("utf-8", "replace")
            return HubSpotResponse(raw.status, parsed, raw.headers)

    async def _request(
        self,
        method: str,
        path: str,
        content: bytes | None,
        params: Mapping[str, Any] | None,
        headers: dict[str, str],
        timeout: float,
    ) -> RawAnswer:
        """One HTTP request once a connection is free (waiting at most ``timeout`` for one), in
        its own client span (method, URL without query, server, status)."""
        try:
            async with asyncio.timeout(timeout):
                await self._gate.acquire()
        except TimeoutError:
            raise TimeoutError("no free connection to HubSpot in time") from None
        try:
            session = self._session or self._open()
            url = self._base + path
            with _tracer.start_as_current_span(
                method,
                kind=SpanKind.CLIENT,
                attributes={"http.request.method": method, "url.full": url, **self._server},
            ) as span:
                async with session.request(
                    method,
                    url,
                    params=_query(params),
                    data=content,
                    headers={**self._headers, **headers},
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    proxy=self._proxy,
                    proxy_headers=self._proxy_headers,
                    allow_redirects=False,
                ) as response:
                    body = await response.read()
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 400:
                    span.set_status(Status(StatusCode.ERROR))
                answer_headers: dict[str, str] = {}
                for key, value in response.headers.items():
                    key = key.lower()
                    seen = answer_headers.get(key)
                    answer_headers[key] = value if seen is None else f"{seen}, {value}"
                return RawAnswer(response.status, answer_headers, body)
        finally:
            self._gate.release()


@dataclass(slots=True)
class RawAnswer:
    """One HTTP answer as received: status, headers (lower-case names, repeats joined), body."""

    status: int
    headers: dict[str, str]
    content: bytes


def _query(params: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    """Query parameters as pairs; a list or tuple value repeats its name."""
    if not params:
        return None
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        for one in value if isinstance(value, list | tuple) else (value,):
            pairs.append((name, str(one).lower() if isinstance(one, bool) else str(one)))
    return pairs


def _proxy_parts(proxy: str | None) -> tuple[str | None, dict[str, str] | None]:
    """The proxy's URL without credentials, and the header that carries them (if any)."""
    if proxy is None:
        return None, None
    parts = urlsplit(proxy)
    if parts.username is None:
        return proxy, None
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), {
        "Proxy-Authorization": "Basic " + base64.b64encode(credentials).decode()
    }


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``<scheme>_proxy`` or ``all_proxy``, either
    case), None when there is none or ``no_proxy`` lists its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(float(value), 0.0)
            except ValueError:
                return None
    return None
