"""Webhook deliveries: events from changes, batches of ≤100, signatures v1 + v3, retries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from .config import SandboxConfig, WebhookSubscriptionConfig
from .objecttypes import ObjectType
from .store import Change
from .webhook_client import WebhookClient, WebhookClientError

# The escapes HubSpot decodes in the URI before computing a v3 signature (facts file, section 1).
# Deliberately not shared with hubsync.hubspot.signatures: the sandbox is the independent ground
# truth that hubsync's verifier is tested against, so a bug there must not be copied here.
_V3_DECODE = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}
USER_AGENT = "HubSpot Connect 2.0 (http://dev.hubspot.com/) - WebhooksExecutorDaemon"


def v3_uri(uri: str) -> str:
    for enc, dec in _V3_DECODE.items():
        uri = uri.replace(enc, dec).replace(enc.lower(), dec)
    return uri


def sign_v1(client_secret: str, body: str) -> str:
    """``sha256_hex(client_secret + body)`` (plain SHA-256, not HMAC)."""
    return hashlib.sha256((client_secret + body).encode()).hexdigest()


def sign_v2(client_secret: str, method: str, uri: str, body: str) -> str:
    return hashlib.sha256((client_secret + method + uri + body).encode()).hexdigest()


def sign_v3(client_secret: str, method: str, uri: str, body: str, timestamp_ms: int | str) -> str:
    """``base64(HMAC_SHA256(client_secret, method + uri + body + timestamp))``."""
    msg = f"{method}{v3_uri(uri)}{body}{timestamp_ms}".encode()
    return base64.b64encode(hmac.new(client_secret.encode(), msg, hashlib.sha256).digest()).decode()


def _parse_type(t: str) -> tuple[str, str, str, str, str, str]:
    """``object.creation@2-123:prop`` → (itself, base, object, kind, type id, property)."""
    base, _, only_prop = t.partition(":")
    base, _, only_type = base.partition("@")
    obj, _, k = base.partition(".")
    return t, base, obj, k, only_type, only_prop


class Subscriptions:
    """Runtime webhook settings of one app (mutable through the admin API)."""

    def __init__(
        self, app_id: int, client_secret: str, cfg: WebhookSubscriptionConfig, installed_in: list[int]
    ):
        self.app_id = app_id
        self.client_secret = client_secret
        self.target_url = cfg.target_url
        self.max_concurrent = cfg.max_concurrent_requests
        self.installed_in = set(installed_in)
        self.ids: dict[str, int] = {}
        self.set_types(cfg.subscription_types)

    def set_types(self, types: list[str]) -> None:
        self.types = list(types)
        self._parsed_from: list[str] = []
        self._parsed: list[tuple[str, str, str, str, str, str]] = []
        for t in self.types:
            self.ids.setdefault(t, self.app_id * 1000 + len(self.ids) + 1)

    def installed(self, hub_id: int) -> bool:
        return not self.installed_in or hub_id in self.installed_in

    def matches(self, otype: ObjectType, kind: str, prop: str | None) -> list[tuple[str, int, bool]]:
        """(subscriptionType, subscriptionId, generic) for every subscription the change matches.

        Classic types (``ticket.creation``) exist for contacts, companies, deals, tickets,
        products and line items; every type, custom objects included, has the generic
        ``object.*`` ones (whose events carry ``objectTypeId``). ``object.creation@2-123``
        limits a generic subscription to one object type id, as HubSpot's generic subscriptions
        are made per object type.
        """
        if self._parsed_from != self.types:  # parsed once per set of types, not per change
            self._parsed = [_parse_type(t) for t in self.types]
            self._parsed_from = list(self.types)
        out = []
        for t, base, obj, k, only_type, only_prop in self._parsed:
            if k != kind:
                continue
            if obj == "object":
                if only_type and only_type != otype.type_id:
                    continue
            elif otype.webhook_prefix is None or obj != otype.webhook_prefix:
                continue
            if only_prop and only_prop != prop:
                continue
            out.append((base, self.ids[t], obj == "object"))
        return out

    def to_wire(self) -> dict[str, Any]:
        return {
            "appId": self.app_id,
            "targetUrl": self.target_url,
            "subscriptionTypes": self.types,
            "subscriptionIds": {t: self.ids[t] for t in self.types},
            "maxConcurrentRequests": self.max_concurrent,
            "installedIn": sorted(self.installed_in),
        }


class WebhookDispatcher:
    """Turns changes into events and delivers them like HubSpot does."""

    def __init__(self, config: SandboxConfig, now_ms: Callable[[], int]):
        self.config = config
        self.now_ms = now_ms
        self.rng = random.Random(config.seed)
        self._sems: dict[tuple[int, int], asyncio.Semaphore] = {}
        self.subs: dict[int, Subscriptions] = {}
        self.reset_subscriptions()
        self._next_event_id = 1
        # (app_id, portal_id) → events waiting to be batched, with the write trace ids
        self._pending: dict[tuple[int, int], list[tuple[dict[str, Any], str | None]]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._outstanding = 0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Plain http:// targets (every local one) go through the lean client; others through httpx.
        self._lean_client: WebhookClient | None = None
        self._client: httpx.AsyncClient | None = None
        self.log: deque[dict[str, Any]] = deque(maxlen=config.delivery_log_size)
        self._delivery_seq = 0
        self.max_in_flight_seen: dict[str, int] = {}
        self._in_flight_by_portal: dict[int, int] = {}
        self.paused = False

    def reset_subscriptions(self) -> None:
        self.subs = {
            a.app_id: Subscriptions(a.app_id, a.client_secret, a.webhooks, a.installed_in)
            for a in self.config.apps
        }
        self._sems.clear()

    # ---- events -------------------------------------------------------------------------------

    def on_change(self, change: Change, otype: ObjectType) -> None:
        for sub in self.subs.values():
            if not sub.target_url or not sub.installed(change.portal_id):
                continue
            for stype, sid, generic in sub.matches(otype, change.kind, change.property_name):
                event: dict[str, Any] = {
                    "eventId": self._next_event_id,
                    "subscriptionId": sid,
                    "portalId": change.portal_id,
                    "appId": sub.app_id,
                    "occurredAt": change.occurred_at,
                    "subscriptionType": stype,
                    "attemptNumber": 0,
                    "objectId": change.object_id,
                    "changeSource": change.source.change_source,
                }
                self._next_event_id += 1
                if change.source.source_id is not None:
                    event["sourceId"] = change.source.source_id
                if generic:
                    event["objectTypeId"] = otype.type_id
                if change.kind == "propertyChange":
                    event["propertyName"] = change.property_name
                    event["propertyValue"] = change.property_value
                # changeFlag is not in the facts file (UNSURE); HubSpot's examples show NEW/DELETED.
                # Consumers should key on subscriptionType, not on this field.
                if change.kind == "creation":
                    event["changeFlag"] = "NEW"
                elif change.kind == "deletion":
                    event["changeFlag"] = "DELETED"
                event.update(change.extra)
                self._pending.setdefault((sub.app_id, change.portal_id), []).append(
                    (event, change.write_trace_id)
                )
                self._mark_busy()
        if self._pending and self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self.config.webhook_batch_window_ms / 1000, self._flush)

    def _mark_busy(self) -> None:
        self._outstanding += 1
        self._idle.clear()

    def _mark_done(self, n: int) -> None:
        self._outstanding -= n
        if self._outstanding <= 0:
            self._outstanding = 0
            self._idle.set()

    def _flush(self) -> None:
        self._flush_handle = None
        if self.paused:
            return
        pending, self._pending = self._pending, {}
        size = max(1, self.config.webhook_max_batch)
        for (app_id, portal_id), items in pending.items():
            for i in range(0, len(items), size):
                chunk = items[i : i + size]
                task = asyncio.create_task(self._deliver(app_id, portal_id, chunk))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def resume(self) -> None:
        self.paused = False
        if self._pending and self._flush_handle is None:
            self._flush()

    # ---- delivery -----------------------------------------------------------------------------

    def _sem(self, app_id: int, portal_id: int) -> asyncio.Semaphore:
        key = (app_id, portal_id)
        sem = self._sems.get(key)
        if sem is None:
            sem = self._sems[key] = asyncio.Semaphore(self.subs[app_id].max_concurrent)
        return sem

    async def _deliver(
        self, app_id: int, portal_id: int, chunk: list[tuple[dict[str, Any], str | None]]
    ) -> None:
        events = [e for e, _ in chunk]
        traces = sorted({t for _, t in chunk if t})
        delays = self.config.scaled_retry_delays()
        try:
            if self.config.webhook_out_of_order_probability and (
                self.rng.random() < self.config.webhook_out_of_order_probability
            ):
                self.rng.shuffle(events)
                # Hold the batch back so a later one can overtake it.
                await asyncio.sleep(self.rng.uniform(0.01, 0.05))
            attempt = 0
            while True:
                ok = await self._attempt(app_id, portal_id, events, attempt, traces, duplicate=False)
                if ok:
                    dup_p = self.config.webhook_duplicate_probability
                    if dup_p and self.rng.random() < dup_p:
                        await self._attempt(app_id, portal_id, events, attempt, traces, duplicate=True)
                    return
                if attempt >= len(delays):
                    return  # HubSpot gives up after its last retry
                delay = delays[attempt]
                jitter = self.config.webhook_retry_jitter
                if jitter:
                    delay *= 1 + self.rng.uniform(-jitter, jitter)
                await asyncio.sleep(max(0.0, delay))
                attempt += 1
        finally:
            self._mark_done(len(chunk))

    async def _attempt(
        self,
        app_id: int,
        portal_id: int,
        events: list[dict[str, Any]],
        attempt: int,
        traces: list[str],
        duplicate: bool,
    ) -> bool:
        sub = self.subs.get(app_id)
        if sub is None or not sub.target_url:
            return True  # unsubscribed meanwhile: nothing to deliver to
        url = sub.target_url
        for e in events:
            e["attemptNumber"] = attempt
        body = orjson.dumps(events).decode()
        async with self._sem(app_id, portal_id):
            self._in_flight_by_portal[portal_id] = n = self._in_flight_by_portal.get(portal_id, 0) + 1
            key = str(portal_id)
            self.max_in_flight_seen[key] = max(self.max_in_flight_seen.get(key, 0), n)
            # Real wall time, not the sandbox clock: advancing the clock to expire tokens must not
            # make deliveries look 5 minutes off to a verifier. The offset simulates skew/replays.
            ts = int(time.time() * 1000) + self.config.webhook_timestamp_offset_ms
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-HubSpot-Signature-Version": "v1",
                "X-HubSpot-Signature": sign_v1(sub.client_secret, body),
                "X-HubSpot-Signature-v3": sign_v3(sub.client_secret, "POST", url, body, ts),
                "X-HubSpot-Request-Timestamp": str(ts),
            }
            started = time.perf_counter()
            status: int | None = None
            error: str | None = None
            try:
                # HubSpot's 5 s is for the whole request, not per connect/read like httpx's timeout.
                async with asyncio.timeout(self.config.webhook_timeout_s):
                    if WebhookClient.handles(url):
                        status = await self._lean().post(url, body.encode(), headers)
                    else:
                        resp = await self._http().post(
                            url, content=body.encode(), headers=headers, timeout=None
                        )
                        status = resp.status_code
            except (TimeoutError, httpx.TimeoutException):
                error = "timeout"
            except (httpx.HTTPError, WebhookClientError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                self._in_flight_by_portal[portal_id] -= 1
        ok = status is not None and 200 <= status < 300
        self._delivery_seq += 1
        self.log.append(
            {
                "id": self._delivery_seq,
                "appId": app_id,
                "portalId": portal_id,
                "url": url,
                "attemptNumber": attempt,
                "status": status,
                "error": error,
                "ok": ok,
                "duplicate": duplicate,
                "at": ts,
                "durationMs": round((time.perf_counter() - started) * 1000, 3),
                "eventIds": [e["eventId"] for e in events],
                "objectWriteTraceIds": traces,
                "body": body,
                "headers": headers,
            }
        )
        return ok

    def _lean(self) -> WebhookClient:
        if self._lean_client is None:
            self._lean_client = WebhookClient()
        return self._lean_client

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
            )
        return self._client

    # ---- lifecycle ------------------------------------------------------------------------------

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Waits until every event is delivered or given up (retries included). False on timeout."""
        if self._pending and self._flush_handle is None and not self.paused:
            self._flush()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "outstandingEvents": self._outstanding,
            "pendingEvents": sum(len(v) for v in self._pending.values()),
            "activeBatches": len(self._tasks),
            "deliveries": self._delivery_seq,
            "maxInFlightByPortal": self.max_in_flight_seen,
            "paused": self.paused,
        }

    async def reset(self) -> None:
        await self.close(keep_client=True)
        self._pending.clear()
        self.log.clear()
        self._outstanding = 0
        self._idle.set()
        self.max_in_flight_seen.clear()
        self._delivery_seq = 0
        self._next_event_id = 1

    async def close(self, keep_client: bool = False) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None and not keep_client:
            await self._client.aclose()
            self._client = None
        if self._lean_client is not None and not keep_client:
            await self._lean_client.aclose()
            self._lean_client = None
