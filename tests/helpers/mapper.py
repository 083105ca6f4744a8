"""Reusable fixtures: a running mapper in this event loop.

async with running_mapper(redis_url, caller_tokens, writer_address=addr) as mapper:
    channel = open_channel(mapper.address, caller_tokens["client"])
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from opentelemetry import trace

from hubsync.core.devredis import free_port
from hubsync.core.event_entries import encode_entry
from hubsync.core.ready import EVENTS as EVENTS_QUEUE
from hubsync.core.ready import ReadySets
from hubsync.core.redis import portal_key, redis_from_url
from hubsync.core.service import RunningService, start_service
from hubsync.core.telemetry import inject_fields
from hubsync.mapper.service import build
from hubsync.mapper.settings import MapperSettings
from hubsync.sandbox import (
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PRIVATE_TOKEN,
    PortalConfig,
    PrivateAppConfig,
    SandboxConfig,
    SandboxServer,
)
from hubsync.sandbox.testing import ReceivedRequest, ReceiverBehaviour, WebhookReceiver
from tests.helpers.auth import register_sandbox_private_app, running_auth
from tests.helpers.core_settings import process_env, service_core


@dataclass
class RunningMapper:
    service: RunningService
    address: str

    @property
    def port(self) -> int:
        return self.service.port


@asynccontextmanager
async def running_mapper(
    redis_url: str,
    caller_tokens: Mapping[str, str],
    *,
    writer_address: str = "127.0.0.1:1",
    hubspot_api_base: str = "http://127.0.0.1:1",
    mappings_dir: Path | None = None,
    consumer_name: str = "mapper-test",
    coalesce_window_ms: int = 20,
    visibility_timeout_ms: int = 2_000,
    inbound_enabled: bool = True,
    settings: Mapping[str, object] | None = None,
) -> AsyncIterator[RunningMapper]:
    """Starts the mapper on a free loopback port with the given settings; stops it on exit.

    ``settings``: further :class:`MapperSettings` values by setting name
    (``{"parked_recheck_s": 3600}``), validated as the service validates its environment;
    ``os.environ`` is not read.
    """
    values: dict[str, object] = {
        "consumer_name": consumer_name,
        "coalesce_window_ms": coalesce_window_ms,
        "visibility_timeout_ms": visibility_timeout_ms,
        "inbound_enabled": inbound_enabled,
        **(settings or {}),
    }
    if mappings_dir is not None:
        values["mappings_dir"] = mappings_dir
    core = service_core(
        "mapper",
        redis_url,
        caller_tokens,
        hubspot_api_base,
        writer_address=writer_address,
        shutdown_grace_seconds=1.0,
        ready_lease_ttl_ms=3000,
        ready_poll_s=1.0,
    )
    factory = functools.partial(build, settings=MapperSettings.model_validate(values))
    service = await start_service("mapper", core, factory, port=0)
    try:
        yield RunningMapper(service, f"127.0.0.1:{service.port}")
    finally:
        await service.stop()


_FAST_LIMITS: dict[str, Any] = {"burst_per_10s": 100_000, "search_per_second": 1_000}


def fast_portals(other: int, other_token: str) -> list[PortalConfig]:
    """The sandbox's portal and a second one, ``other``, whose private app's token is
    ``other_token``, both with :func:`fast_config`'s generous limits."""
    return [
        PortalConfig(**_FAST_LIMITS),
        PortalConfig(hub_id=other, **_FAST_LIMITS, private_apps=[PrivateAppConfig(token=other_token)]),
    ]


def fast_config(**overrides: Any) -> SandboxConfig:
    """Generous limits, webhook retries compressed to milliseconds."""
    base: dict[str, Any] = {
        "portals": [PortalConfig(**_FAST_LIMITS)],
        "webhook_retry_scale": 0.00001,
        "webhook_retry_jitter": 0.0,
        "webhook_batch_window_ms": 2.0,
    }
    return SandboxConfig.model_validate(base | overrides)


@dataclass
class StandinFormat:
    """Which entry format :func:`ingress_standin` writes: the compact one, as ingress does, or
    (``legacy``) the field format hubsync 0.1.0 wrote."""

    legacy: bool = False


@dataclass
class Suite:
    sandbox: SandboxServer
    hubspot: httpx.AsyncClient
    writer_address: str
    redis_url: str
    caller_tokens: dict[str, str]
    auth_address: str = ""
    # The real ingress's gRPC address, when the suite runs it (else ingress_standin stands in).
    ingress_address: str = ""
    # The entry format ingress_standin writes (the older field format while ``legacy`` is set).
    standin: StandinFormat = field(default_factory=StandinFormat)

    async def idle(self) -> None:
        r = await self.hubspot.post("/_sandbox/webhooks/wait-idle", params={"timeout": 10})
        assert r.json()["idle"] is True

    async def request_total(self, prefix: str = "/crm/") -> int:
        log = (await self.hubspot.get("/_sandbox/requests")).json()
        return sum(n for endpoint, n in log["counts"]["byEndpoint"].items() if prefix in endpoint)

    async def endpoint_counts(self) -> dict[str, int]:
        return dict((await self.hubspot.get("/_sandbox/requests")).json()["counts"]["byEndpoint"])

    async def create_contact(self, **props: str) -> str:
        r = await self.hubspot.post("/crm/v3/objects/contacts", json={"properties": props})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def contact(self, hs_id: str) -> dict[str, Any]:
        r = await self.hubspot.get(f"/_sandbox/objects/contacts/{hs_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def running_writer(self, env: Mapping[str, str] | None = None) -> AbstractAsyncContextManager[str]:
        """Another in-process writer on this suite's Redis, sandbox and auth; yields its address."""
        from tests.helpers.writer import running_writer

        return running_writer(
            redis_url=self.redis_url,
            caller_tokens=self.caller_tokens,
            hubspot_api_base=self.sandbox.base_url,
            auth_address=self.auth_address,
            env=env,
        )

    def running_mapper(self, **options: Any) -> AbstractAsyncContextManager[RunningMapper]:
        """:func:`running_mapper` on this suite's Redis and writer, with ``options`` beside."""
        return running_mapper(
            self.redis_url, self.caller_tokens, writer_address=self.writer_address, **options
        )


@asynccontextmanager
async def suite(
    redis_url: str,
    caller_tokens: dict[str, str],
    *,
    connect: bool = True,
    writer_env: Mapping[str, str] | None = None,
    real_ingress: bool = False,
    entry_format: StandinFormat | None = None,
    **sandbox: Any,
) -> AsyncIterator[Suite]:
    """Sandbox, auth, writer in-process, the sandbox's webhooks going to ``ingress_standin`` (or,
    with ``real_ingress``, to a real ingress that reconciles through the writer). ``connect``:
    the portal's private-app connection is stored in auth (else the portal is not connected).
    ``entry_format``: the standin's entry format (a test may switch it while the suite runs)."""
    from tests.helpers.ingress import running_ingress
    from tests.helpers.writer import running_writer

    standin = entry_format or StandinFormat()
    async with (
        ingress_standin(redis_url, entry_format=standin) as receiver,
        SandboxServer(fast_config(**sandbox)) as sb,
        httpx.AsyncClient(
            base_url=sb.base_url, headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"}, timeout=15
        ) as hubspot,
        running_auth(redis_url=redis_url, caller_tokens=caller_tokens, hubspot_api_base=sb.base_url) as auth,
    ):
        if connect:
            await register_sandbox_private_app(auth, caller_tokens)
        async with contextlib.AsyncExitStack() as stack:
            writer = await stack.enter_async_context(
                running_writer(
                    redis_url=redis_url,
                    caller_tokens=caller_tokens,
                    hubspot_api_base=sb.base_url,
                    auth_address=auth,
                    env=writer_env,
                )
            )
            target, ingress = receiver.url, ""
            if real_ingress:
                base, ingress = await stack.enter_async_context(
                    running_ingress(
                        redis_url=redis_url,
                        caller_tokens=caller_tokens,
                        hubspot_api_base=sb.base_url,
                        secrets=[DEFAULT_CLIENT_SECRET],
                        writer_address=writer,
                        auth_address=auth,
                        settings={
                            "reconcile_lookback_s": 600,
                            "reconcile_settle_ms": 0,
                        },
                    )
                )
                target = f"{base}/webhooks/hubspot"
            sb.state.webhooks.subs[1001].target_url = target
            yield Suite(sb, hubspot, writer, redis_url, caller_tokens, auth, ingress, standin)


async def read_changes(call: Any, n: int, timeout: float = 10.0) -> list[Any]:
    """The next ``n`` changes of a Subscribe call."""
    return [(await asyncio.wait_for(call.read(), timeout)).change for _ in range(n)]


async def no_more_changes(call: Any, wait: float = 1.0) -> None:
    """Fails if a Subscribe call delivers another change within ``wait`` seconds."""
    try:
        extra = await asyncio.wait_for(call.read(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected change: {extra}")


@asynccontextmanager
async def mapper_process(
    redis_url: str,
    caller_tokens: Mapping[str, str],
    *,
    writer_address: str,
    log_dir: Path,
    consumer_name: str = "mapper-proc",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real ``python -m hubsync.mapper`` process (stderr to ``log_dir/<consumer>.log``)."""
    from tests.helpers.auth_processes import wait_serving

    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    full |= process_env(
        "mapper",
        redis_url,
        caller_tokens,
        port,
        writer_address=writer_address,
        ready_lease_ttl_ms="3000",
        ready_poll_s="1",
        mapper_consumer_name=consumer_name,
    )
    full |= env or {}
    log = (log_dir / f"{consumer_name}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubsync.mapper", env=full, stdout=log, stderr=log
    )
    try:
        await wait_serving(f"127.0.0.1:{port}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def mark_ready(redis: Any, portal: int | str) -> None:
    """Marks a portal in the ``events`` ready set, as ingress does after appending its events."""
    await ReadySets(redis, EVENTS_QUEUE).mark([portal])


@asynccontextmanager
async def ingress_standin(
    redis_url: str, behaviour: ReceiverBehaviour | None = None, entry_format: StandinFormat | None = None
) -> AsyncIterator[WebhookReceiver]:
    """A webhook target that appends each received event to ``hubsync:{<portal>}:events`` the way
    ingress does (a compact entry with the context of an ``ingress.webhook`` span, origin webhook;
    or, with ``entry_format.legacy``, the older fields ``event``, ``traceparent``/``tracestate``,
    ``accepted_ms``, ``origin``; portal added to ``hubsync:portals``). It verifies nothing and
    dedupes nothing: every delivery, duplicates included, reaches the stream."""
    chosen = entry_format or StandinFormat()
    redis = redis_from_url(redis_url)
    tracer = trace.get_tracer("tests.ingress-standin")
    receiver = WebhookReceiver(behaviour=behaviour)

    async def on_request(request: ReceivedRequest) -> None:
        for event in request.json():
            portal = event["portalId"]
            with tracer.start_as_current_span("ingress.webhook"):
                fields: Any = inject_fields(
                    {
                        "event": orjson.dumps(event),
                        "accepted_ms": int(time.time() * 1000),
                        "origin": "webhook",
                    }
                )
                if not chosen.legacy:
                    fields = encode_entry(
                        event,
                        origin="webhook",
                        traceparent=fields.get("traceparent", ""),
                        tracestate=fields.get("tracestate", ""),
                    )
                await redis.xadd(portal_key(portal, "events"), fields)  # type: ignore[arg-type]
            await redis.sadd("hubsync:portals", str(portal))  # type: ignore[misc]
            await mark_ready(redis, portal)  # after the append, as ingress's committer does

    receiver.on_request = on_request
    try:
        async with receiver:
            yield receiver
    finally:
        await redis.aclose()
