"""Object type names in mappings, and the custom objects' type ids the mapper has learned.

A mapping names its object type as HubSpot's standard plural (``tickets``; singular names and
``0-…`` ids are accepted and made plural) or, for a custom object, by its schema name
(``subscription``; ``p_<name>`` and ``p<portal>_<name>`` are accepted). Writer resolves names
when it writes. Inbound events of custom objects name the type by id (``2-…``), so the mapper
learns each portal's custom objects (writer's ListObjectTypes) at start-up, at every mapping
reload and every ``refresh_s``: ``CUSTOM_TYPES`` maps an id to its schema name.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable

import grpc

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.hubspot import objecttypes as _hubspot_types

log = logging.getLogger(__name__)

# HubSpot's standard types (one table for all services: hubsync.hubspot.objecttypes).
STANDARD_IDS = _hubspot_types.STANDARD_IDS
STANDARD = _hubspot_types.STANDARD_NAMES
# The classic webhook prefix of each standard type that has one (``ticket.creation``).
WEBHOOK_PREFIX = _hubspot_types.WEBHOOK_PREFIXES
_CUSTOM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
_FQN = re.compile(r"^p\d*_([a-z][a-z0-9_]*)$")
CUSTOM_ID = re.compile(r"^2-\d+$")


def canonical_name(raw: str) -> str:
    """The name a mapping is kept under; raises ValueError for what cannot be a type name."""
    name = STANDARD.get(raw) or STANDARD.get(raw.lower())
    if name is not None:
        return name
    low = raw.lower()
    fqn = _FQN.match(low)
    if fqn:
        low = fqn.group(1)
    if not _CUSTOM_NAME.match(low):
        raise ValueError(
            f"object type {raw!r} is neither a standard type ({', '.join(STANDARD_IDS)}) nor a custom "
            "object's schema name (lowercase letters, digits, '_')"
        )
    return low


def known_object_type(raw: str) -> bool:
    try:
        canonical_name(raw)
    except ValueError:
        return False
    return True


class CustomTypeIndex:
    """Custom object type id → schema name, learned from writer (process-wide)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.portals: set[int] = set()
        # Schema names learned per portal: a push naming one not learned yet learns again (a
        # schema created after the portal was first learned).
        self.portal_names: dict[int, set[str]] = {}

    def name_of(self, type_id: str) -> str | None:
        return self.names.get(type_id)

    def learn(self, types: list[writer_pb2.ObjectType]) -> None:
        for t in types:
            if t.custom and t.schema_name:
                self.names[t.object_type_id] = t.schema_name.lower()

    async def refresh(self, writer: writer_pb2_grpc.WriterServiceStub, portals: list[int]) -> None:
        for portal in portals:
            try:
                reply = await writer.ListObjectTypes(
                    writer_pb2.ListObjectTypesRequest(portal_id=portal), timeout=30
                )
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "custom object types not learned", extra={"portal": portal, "error": exc.code().name}
                )
                continue
            self.learn(list(reply.object_types))
            self.portals.add(portal)
            self.portal_names[portal] = {
                t.schema_name.lower() for t in reply.object_types if t.custom and t.schema_name
            }

    async def ensure(
        self, writer: writer_pb2_grpc.WriterServiceStub, portal: int, names: Iterable[str] = ()
    ) -> None:
        """Learns a portal's custom objects once, and again when a push names a custom object not
        learned for it yet (a push learns the id before HubSpot's webhooks about the record
        arrive, so they are not dead-lettered as unknown)."""
        known = self.portal_names.get(portal)
        if portal not in self.portals or known is None or any(n not in known for n in names):
            await self.refresh(writer, [portal])

    async def watch(
        self,
        writer: writer_pb2_grpc.WriterServiceStub,
        portals: Callable[[], Awaitable[list[int]]],
        refresh_s: float,
    ) -> None:
        """Learns every portal's custom objects now, then every ``refresh_s`` (0: only now)."""
        while True:
            try:
                await self.refresh(writer, await portals())
            except Exception as exc:  # a Redis hiccup must not end the loop
                log.warning("custom object type refresh failed", extra={"error": str(exc)[:200]})
            if refresh_s <= 0:
                return
            await asyncio.sleep(refresh_s)


CUSTOM_TYPES = CustomTypeIndex()
