"""Builds the mapper service: mappings, the gRPC API, the inbound worker, hot reload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from redis.asyncio import Redis

from hubsync.api.mapper.v1 import config_pb2, config_pb2_grpc, mapper_pb2, mapper_pb2_grpc
from hubsync.api.writer.v1 import writer_pb2_grpc
from hubsync.core.channels import channel_for
from hubsync.core.keys import PORTALS_KEY
from hubsync.core.portal_config import PortalConfigCache
from hubsync.core.ready import FairShare
from hubsync.core.service import ServiceSpec
from hubsync.core.settings import CoreSettings, invalid_configuration
from hubsync.mapper.config_admin import ConfigAdmin
from hubsync.mapper.config_servicer import ConfigServicer
from hubsync.mapper.feed import ChangeFeed
from hubsync.mapper.inbound import InboundWorker
from hubsync.mapper.inbound_queues import InboundQueues
from hubsync.mapper.mappings import MappingError
from hubsync.mapper.objecttypes import CUSTOM_TYPES
from hubsync.mapper.outbound import RecordPusher
from hubsync.mapper.portal_mappings import MAPPINGS, PortalMappings
from hubsync.mapper.properties import PropertyCatalog
from hubsync.mapper.registry import MappingRegistry
from hubsync.mapper.servicer import MapperServicer
from hubsync.mapper.settings import MapperSettings

__all__ = ["ADMIN_METHODS", "CONFIG_SERVICE_NAME", "DEFAULT_PORT", "SERVICE_NAME", "build", "caller_policy"]

SERVICE_NAME = mapper_pb2.DESCRIPTOR.services_by_name["MapperService"].full_name
CONFIG_SERVICE_NAME = config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name
DEFAULT_PORT = 50053
# Operator-only RPCs: the inbound parked and dead-letter queues.
ADMIN_METHODS = (
    "ListParkedPortals",
    "ListInboundEvents",
    "GetInboundEvent",
    "ReplayInboundEvents",
    "PurgeInboundEvents",
)


def caller_policy(settings: MapperSettings) -> dict[str, list[str]]:
    """Who may call each MapperService method: every method is listed (deny by default)."""
    clients, admins = settings.client_callers, settings.admin_callers
    method = f"/{SERVICE_NAME}/{{}}".format
    config = f"/{CONFIG_SERVICE_NAME}/{{}}".format
    return {
        # The public API of internal services: push records, read the change feed.
        method("PushRecords"): clients,
        method("Subscribe"): clients,
        method("Ack"): clients,
        method("Transform"): clients,
        # Working on mappings (`hubsync mapping validate|suggest`).
        method("ListMappings"): [*clients, *admins],
        method("ValidateMapping"): [*clients, *admins],
        method("SuggestMapping"): [*clients, *admins],
        # Operators: the inbound parked and dead-letter queues (`hubsync inbound ...`).
        **{method(name): admins for name in ADMIN_METHODS},
        # Per-portal and per-tenant configuration (`hubsync config ...`): operators only.
        config("GetConfig"): admins,
        config("ListConfigVersions"): admins,
        config("SetConfig"): admins,
        config("RollbackConfig"): admins,
    }


async def build(core: CoreSettings, redis: Redis, settings: MapperSettings) -> ServiceSpec:
    """Build the mapper's :class:`ServiceSpec` (with ``settings`` bound, a ``SpecFactory``).

    Args:
        core: The settings every service shares.
        redis: The client (the caller owns it).
        settings: The mapper's settings, loaded by the caller (``__main__`` reads the
            environment; tests construct them).

    Raises:
        SystemExit: The mappings directory holds invalid mappings
            (:func:`hubsync.core.settings.invalid_configuration` names every problem).
    """
    channel = channel_for(core, core.writer_address)
    writer = writer_pb2_grpc.WriterServiceStub(channel)
    catalog = PropertyCatalog(writer, settings.property_cache_ttl_s)

    async def portals() -> list[int]:
        if settings.validate_portal_ids:
            return list(settings.validate_portal_ids)
        if not settings.validate_max_portals:
            return []
        # A random sample (SRANDMEMBER: O(count), not O(portals)); the others' problems show at
        # use, and an override is checked against its own portal when it is set.
        members = await redis.srandmember(PORTALS_KEY, settings.validate_max_portals)
        names = (m.decode() if isinstance(m, bytes) else str(m) for m in members or [])
        return sorted(int(n) for n in names if n.isdigit())

    registry = MappingRegistry(
        settings.mappings_dir,
        catalog=catalog if settings.validate_properties else None,
        check_portals=portals,
    )
    try:
        await registry.load()
    except MappingError as exc:
        await channel.close()
        variable = MapperSettings.variable("mappings_dir")
        raise invalid_configuration(
            MapperSettings.__name__, [(variable, line) for line in exc.errors]
        ) from None
    feed = ChangeFeed(redis, max_groups=settings.max_consumer_groups)
    configs = PortalConfigCache(redis, (MAPPINGS,))
    portal_mappings = PortalMappings(registry, configs)
    pusher = RecordPusher(
        redis, writer, portal_mappings.for_portal, idempotency_ttl_s=settings.push_idempotency_ttl_s
    )
    servicer = MapperServicer(
        registry, pusher, feed, catalog, InboundQueues(redis, shards=core.ready_shards), portal_mappings
    )
    config_servicer = ConfigServicer(
        ConfigAdmin(redis, portal_mappings, catalog if settings.validate_properties else None)
    )
    worker = InboundWorker(
        redis,
        writer,
        portal_mappings.for_portal,
        consumer=settings.consumer_name,
        coalesce_window_ms=settings.coalesce_window_ms,
        visibility_timeout_ms=settings.visibility_timeout_ms,
        read_batch_size=settings.read_batch_size,
        hydrate_batch_size=settings.hydrate_batch_size,
        hydrate_deadline_s=settings.hydrate_deadline_s,
        max_batches_in_flight=settings.max_batches_in_flight,
        stalled_batch_ms=settings.stalled_batch_ms,
        max_attempts=settings.inbound_max_attempts,
        parked_recheck_s=settings.parked_recheck_s,
        parked_recheck_max_s=settings.parked_recheck_max_s,
        feed_max_len=settings.feed_max_len,
        shards=core.ready_shards,
        poll_s=core.ready_poll_s,
        lease_ttl_ms=core.ready_lease_ttl_ms,
        sweep_interval_s=core.ready_sweep_interval_s,
        sweep_rate=core.ready_sweep_rate,
        fair=FairShare(share=core.ready_fair_share, late_ms=core.ready_fair_late_ms),
    )
    background: list[Callable[[], Awaitable[Any]]] = [configs.listen]
    if settings.inbound_enabled:
        background.append(worker.run)
    if settings.reload_interval_s > 0:
        background.append(lambda: registry.watch(settings.reload_interval_s))

    # Custom objects' type ids (their events name them by id) are learned on demand (an event or
    # push naming one not learned for its portal); this refreshes the portals that used one
    # lately, at a bounded rate: it never walks the known portals.
    background.append(lambda: CUSTOM_TYPES.watch(writer, settings.object_types_refresh_s))

    async def close() -> None:
        await channel.close()

    def register(server: grpc.aio.Server) -> None:
        mapper_pb2_grpc.add_MapperServiceServicer_to_server(servicer, server)
        config_pb2_grpc.add_ConfigServiceServicer_to_server(config_servicer, server)

    return ServiceSpec(
        service_names=[SERVICE_NAME, CONFIG_SERVICE_NAME],
        register=register,
        port=DEFAULT_PORT,
        policy=caller_policy(settings),
        background=background,
        on_stop=[close],
    )
