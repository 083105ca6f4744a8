"""Object type names in mappings, and the custom objects' type ids the mapper has learned.

A mapping names its object type as HubSpot's standard plural (``tickets``; singular names and
``0-…`` ids are accepted and made plural) or, for a custom object, by its schema name
(``subscription``; ``p_<name>`` and ``p<portal>_<name>`` are accepted). Writer resolves names
when it writes. Inbound events of custom objects name the type by id (``2-…``), so the mapper
learns a portal's custom objects (writer's ListObjectTypes) when one of its events or pushes names
a custom object not learned for it, and refreshes the portals that used one, at a bounded rate
(``CustomTypeIndex``): ``CUSTOM_TYPES`` maps an id to its schema name.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable

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
# An unknown custom type id or name is asked about at most once per RETRY_S per portal (after a
# failed call, once per FAILED_RETRY_S); the periodic refresh calls writer at most REFRESH_RATE
# times a second; at most MAX_ASKED questions are remembered.
RETRY_S = 30.0
FAILED_RETRY_S = 1.0
REFRESH_RATE = 10.0
MAX_ASKED = 10_000


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
    """Whether ``raw`` can name an object type (standard or custom)."""
    try:
        canonical_name(raw)
    except ValueError:
        return False
    return True


class CustomTypeIndex:
    """Custom object type id → schema name, learned from writer (process-wide).

    Cost follows work: a portal's custom objects are learned when one of its events names a type
    id not learned for it, or a push names a custom object not learned for it (:meth:`ensure`,
    :meth:`ensure_ids`); each unknown id or name is asked about at most once per ``retry_s``.
    :meth:`watch` learns again only the portals that used a custom object since its last pass, at
    most ``REFRESH_RATE`` portals a second: an idle portal, or one that only syncs standard
    types, costs no call.
    """

    def __init__(self, *, retry_s: float = RETRY_S, clock: Callable[[], float] = time.monotonic) -> None:
        """An empty index; ``clock`` (seconds) is injectable for tests."""
        self.retry_s = retry_s
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Forgets everything learned (the index is process-wide: a test starts afresh)."""
        self.names: dict[str, str] = {}
        self.portals: set[int] = set()
        # Schema names and type ids learned per portal: a push or an event naming one not learned
        # yet learns again (a schema created after the portal was first learned).
        self.portal_names: dict[int, set[str]] = {}
        self.portal_ids: dict[int, set[str]] = {}
        # (portal, unknown id or name) → when it was last asked about (not asked again sooner
        # than ``retry_s``: an id that stays unknown costs one call per ``retry_s``, not per event).
        self._asked: dict[tuple[int, str], float] = {}
        # Portals that used a custom object since the last refresh pass (what the pass refreshes).
        self._used: set[int] = set()

    def name_of(self, type_id: str) -> str | None:
        """The schema name of a learned custom object type id, else None."""
        return self.names.get(type_id)

    def learn(self, types: list[writer_pb2.ObjectType]) -> None:
        """Adds the custom types of a ListObjectTypes answer to the id → name index."""
        for t in types:
            if t.custom and t.schema_name:
                self.names[t.object_type_id] = t.schema_name.lower()

    async def refresh(self, writer: writer_pb2_grpc.WriterServiceStub, portals: Iterable[int]) -> None:
        """Learns the custom objects of each of ``portals`` (one ListObjectTypes call each)."""
        for portal in portals:
            try:
                reply = await writer.ListObjectTypes(
                    writer_pb2.ListObjectTypesRequest(portal_id=portal), timeout=30
                )
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "custom object types not learned", extra={"portal": portal, "error": exc.code().name}
                )
                # Asked again soon, not after ``retry_s``: the answer was no answer.
                soon = self._clock() - self.retry_s + FAILED_RETRY_S
                for key in [k for k in self._asked if k[0] == portal]:
                    self._asked[key] = min(self._asked[key], soon)
                continue
            custom = [t for t in reply.object_types if t.custom and t.schema_name]
            self.learn(custom)
            self.portals.add(portal)
            self.portal_names[portal] = {t.schema_name.lower() for t in custom}
            self.portal_ids[portal] = {t.object_type_id for t in custom}
            self._used.discard(portal)  # just learned: the next pass need not

    async def ensure(
        self,
        writer: writer_pb2_grpc.WriterServiceStub,
        portal: int,
        names: Iterable[str] = (),
        *,
        ids: Iterable[str] = (),
    ) -> None:
        """Learns a portal's custom objects when ``names`` (a push's custom object names) or
        ``ids`` (custom type ids its events name) hold one not learned for it yet, or, given
        neither, when the portal was never learned. A push learns the id before HubSpot's webhooks
        about the record arrive, so they are not dead-lettered as unknown."""
        wanted = [("name", n) for n in names] + [("id", i) for i in ids]
        if not wanted and portal in self.portals:
            return
        known_names = self.portal_names.get(portal, set())
        known_ids = self.portal_ids.get(portal, set())
        missing = [v for kind, v in wanted if v not in (known_names if kind == "name" else known_ids)]
        if portal in self.portals and not missing:
            self._used.add(portal)  # refreshed by the next pass of ``watch``
            return
        now = self._clock()
        due = [v for v in missing if now - self._asked.get((portal, v), -math.inf) >= self.retry_s]
        if missing and not due:
            self._used.add(portal)
            return  # asked about each of them within ``retry_s``: still unknown
        if len(self._asked) > MAX_ASKED:  # bounded: forget the oldest questions
            for key in sorted(self._asked, key=self._asked.__getitem__)[: MAX_ASKED // 2]:
                del self._asked[key]
        for v in due:
            self._asked[(portal, v)] = now
        await self.refresh(writer, [portal])

    async def ensure_ids(
        self, writer: writer_pb2_grpc.WriterServiceStub, portal: int, type_ids: Iterable[str]
    ) -> None:
        """:meth:`ensure` for the object types an inbound turn's events name (standard types'
        names and ids are skipped): nothing is called unless one is a custom type id."""
        custom = {t for t in type_ids if t.startswith("2-") and CUSTOM_ID.match(t)}
        if custom:
            await self.ensure(writer, portal, ids=custom)

    async def watch(self, writer: writer_pb2_grpc.WriterServiceStub, refresh_s: float) -> None:
        """Every ``refresh_s`` (0: never), learns again the portals that used a custom object
        since the previous pass, at most ``REFRESH_RATE`` a second (a schema's other changes;
        new schemas are learned on demand)."""
        if refresh_s <= 0:
            return
        while True:
            await asyncio.sleep(refresh_s)
            used, self._used = sorted(self._used), set()
            for portal in used:
                try:
                    await self.refresh(writer, [portal])
                except Exception as exc:  # one portal's failure must not end the loop
                    log.warning("custom object type refresh failed", extra={"error": str(exc)[:200]})
                await asyncio.sleep(1 / REFRESH_RATE)


CUSTOM_TYPES = CustomTypeIndex()
