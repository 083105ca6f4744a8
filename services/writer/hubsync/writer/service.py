"""Wires the writer's stages (see the package docstring) from settings passed in."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hubsync.api.auth.v1 import auth_pb2_grpc
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.channels import channel_for
from hubsync.core.portal_config import PortalConfigCache
from hubsync.core.service import ServiceSpec
from hubsync.core.settings import CoreSettings
from hubsync.writer.batches import BatchSender, Coalescer
from hubsync.writer.circuit import CircuitBreakers
from hubsync.writer.dlq import DeadLetterQueue
from hubsync.writer.export import RecordExporter
from hubsync.writer.gateway import WriterGateway
from hubsync.writer.hubspot_client import HubSpotClient, RetryPolicy
from hubsync.writer.ordering import RecordVersions
from hubsync.writer.queue import QueueConsumer, WriteQueue
from hubsync.writer.ratelimit import Budget, LimitOverride, RateLimiter
from hubsync.writer.reads import RecordReader
from hubsync.writer.servicer import WriterServicer
from hubsync.writer.settings import WriterSettings
from hubsync.writer.submissions import WriteSubmitter
from hubsync.writer.tokens import AuthTokenSource

__all__ = [
    "DEFAULT_PORT",
    "PROBE_TTL_MS",
    "SERVICE",
    "build",
    "caller_policy",
]

log = logging.getLogger(__name__)
SERVICE = writer_pb2.DESCRIPTOR.services_by_name["WriterService"].full_name
DEFAULT_PORT = 50054
PROBE_TTL_MS = 2000


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def caller_policy(settings: WriterSettings) -> dict[str, list[str]]:
    """Who may call each WriterService method: every method is listed (deny by default)."""
    admins, clients = settings.admin_callers, settings.client_callers
    return {
        # The mapper's outbound pipeline is the only writer of records: ownership and
        # fingerprints apply to every write.
        _method("SubmitWrites"): ["mapper"],
        # Reads: the mapper hydrates changes and checks mappings' properties; ingress's
        # reconciler searches; internal services and operators read (`hubsync backfill`).
        _method("ReadRecords"): ["mapper", *clients, *admins],
        _method("SearchRecords"): ["ingress", *clients, *admins],
        _method("ListProperties"): ["mapper", *clients, *admins],
        # The mapper learns custom objects' type ids (inbound events name them by id).
        _method("ListObjectTypes"): ["mapper", *clients, *admins],
        _method("ExportRecords"): [*clients, *admins],
        # Operators, through the CLI (`hubsync dlq`, `hubsync quota`).
        _method("ListDeadLetters"): admins,
        _method("GetDeadLetter"): admins,
        _method("ReplayDeadLetters"): admins,
        _method("PurgeDeadLetters"): admins,
        _method("GetQuotaStatus"): admins,
    }


async def build(core: CoreSettings, redis: Redis, settings: WriterSettings) -> ServiceSpec:
    """Return the writer's :class:`ServiceSpec`, built from ``settings`` passed in.

    ``functools.partial(build, settings=…)`` is a ``hubsync.core.service.SpecFactory``
    (``__main__`` loads the settings from the environment; tests construct them).
    """
    burst, daily = settings.limits()
    # Per-portal configuration (mapper's ConfigService stores it): limits and the read-only pilot
    # of the portals this replica works for, read on use and cached briefly.
    configs = PortalConfigCache(redis, ("limits", "pilot"))

    async def limit_override(portal_id: int) -> LimitOverride | None:
        limits = (await configs.get(portal_id)).limits()
        return LimitOverride(
            limits.burst_limit if limits.HasField("burst_limit") else None,
            limits.daily_limit if limits.HasField("daily_limit") else None,
        )

    async def pilot_of(portal_id: int) -> tuple[str, str] | None:
        pilot = (await configs.get(portal_id)).pilot()
        return (pilot[0].reason, pilot[1]) if pilot is not None else None

    limiter = RateLimiter(
        redis,
        Budget("burst", burst, settings.burst_window_ms, daily),
        Budget("search", settings.search_per_second, 1000),
        margin_ms=settings.burst_window_margin_ms,
        reset_zone=settings.reset_zone(),
        cap_burst=settings.explicit_limits()[0],
        cap_daily=settings.explicit_limits()[1],
        # Until HubSpot's headers tell a portal's limits, one call at a time, and another only
        # after 2 s when the first has no answer yet (hung, or its writer died): never a burst.
        probe_ttl_ms=PROBE_TTL_MS,
        overrides=limit_override,
    )
    auth_channel = channel_for(core, core.auth_address)
    tokens = AuthTokenSource(auth_pb2_grpc.AuthServiceStub(auth_channel))
    breakers = CircuitBreakers(settings.circuit_failure_threshold, settings.circuit_open_s, redis)
    client = HubSpotClient(
        core.hubspot_api_base,
        tokens,
        limiter,
        breakers,
        RetryPolicy(settings.max_attempts, settings.backoff_base_s, settings.backoff_max_s),
        timeout_s=settings.http_timeout_s,
        deadline_share=settings.http_deadline_share,
    )
    dlq = DeadLetterQueue(redis)
    versions = RecordVersions(redis, settings.version_ttl_s)
    sender = BatchSender(
        client,
        redis,
        dlq,
        source_tag=settings.source_tag,
        source_property=settings.source_property,
        written_ttl_s=settings.written_ttl_s,
        versions=versions,
        learn_ids=settings.skip_unchanged,
    )
    coalescer = Coalescer(
        sender.run,
        settings.batch_max_size,
        settings.batch_max_wait_ms / 1000,
        slots=limiter,
        fill_above=settings.batch_fill_above,
        max_wait_saturated_s=settings.batch_max_wait_saturated_ms / 1000,
        max_hold_saturated_s=settings.batch_max_hold_saturated_ms / 1000,
    )
    reader = RecordReader(client, concurrency=settings.read_concurrency)
    submitter = WriteSubmitter(
        coalescer, reader, dlq, redis, pilot_mode=settings.pilot_mode, skip_unchanged=settings.skip_unchanged
    )
    queue = WriteQueue(
        redis, maxlen=settings.queue_maxlen, request_ttl_s=settings.request_ttl_s, shards=core.ready_shards
    )
    gateway = WriterGateway(
        submitter,
        queue,
        reader.types,
        versions,
        dlq,
        limiter,
        breakers,
        pilot_mode=settings.pilot_mode,
        pilot_of=pilot_of,
    )
    servicer = WriterServicer(gateway, reader, dlq, RecordExporter(reader, settings.export_lookback_s))
    consumer = QueueConsumer(
        redis,
        gateway.process_queued,
        count=settings.queue_read_count,
        claim_idle_ms=settings.queue_claim_idle_ms,
        shards=core.ready_shards,
        poll_s=core.ready_poll_s,
        lease_ttl_ms=core.ready_lease_ttl_ms,
        max_turns=settings.queue_max_turns,
        sweep_interval_s=core.ready_sweep_interval_s,
        sweep_rate=core.ready_sweep_rate,
    )

    async def publish_gauges() -> None:
        """Every 5 s: DLQ depth of every portal with dead letters, so the gauge exists and stays
        current without a DLQ call (idle portals are not looked at)."""
        while True:
            try:
                await dlq.refresh_depths(breakers.portals())
            except (OSError, RedisError) as exc:
                log.warning("gauge refresh failed", extra={"error": str(exc)[:200]})
            await asyncio.sleep(5)

    return ServiceSpec(
        service_names=[SERVICE],
        register=lambda server: writer_pb2_grpc.add_WriterServiceServicer_to_server(servicer, server),
        port=DEFAULT_PORT,
        policy=caller_policy(settings),
        background=[configs.listen, publish_gauges, *([consumer.run] if settings.consume_queue else [])],
        on_stop=[coalescer.close, client.aclose, auth_channel.close],
    )
