"""Which object types a portal has, and how its associations are typed.

Standard types are known by name (``tickets``, ``ticket``, ``0-5``); custom objects are found
through HubSpot's schemas API (``/crm-object-schemas/v3/schemas``) by name, fully qualified
name (``p<portal>_<name>``), ``p_<name>`` or ``2-…`` id. The canonical name writer uses for a
type (in batch keys, Redis keys, paths) is the plural standard name or the custom object's
``2-…`` id. Association types of a pair (HubSpot-defined and user-defined labels, with their
category) come from the v4 labels API. Both are cached per portal for ``ttl_s``; a name that
is not found refreshes the cache once (a schema created a moment ago is seen).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import InvalidArgument
from hubsync.hubspot import objecttypes as _hubspot_types
from hubsync.writer.hubspot_client import HubSpotClient

__all__ = [
    "CUSTOM_ID",
    "CUSTOM_RANK",
    "DEFAULT_ASSOCIATION_TYPES",
    "ENGAGEMENTS",
    "PARENT_RANK",
    "READ_ONLY",
    "REFERENCES",
    "STANDARD",
    "STANDARD_IDS",
    "AssociationType",
    "CustomType",
    "ObjectTypes",
    "rank",
]

# Canonical plural name → HubSpot's object type id, and every accepted spelling → that name
# (one table for all services: hubsync.hubspot.objecttypes).
STANDARD_IDS = _hubspot_types.STANDARD_IDS
STANDARD = _hubspot_types.STANDARD_NAMES
ENGAGEMENTS = frozenset({"notes", "calls", "emails", "meetings", "tasks"})
# hubsync reads these but never writes them.
READ_ONLY = frozenset({"quotes"})
CUSTOM_ID = re.compile(r"^2-\d+$")

# HubSpot-defined default (unlabelled) association type ids, both directions (reference §4 and
# HubSpot's association type id table).
_PAIRS: dict[tuple[str, str], tuple[int, int]] = {
    ("contacts", "companies"): (279, 280),
    ("deals", "contacts"): (3, 4),
    ("deals", "companies"): (341, 342),
    ("tickets", "contacts"): (16, 15),
    ("tickets", "companies"): (339, 340),
    ("deals", "tickets"): (27, 28),
    ("deals", "line_items"): (19, 20),
    ("quotes", "deals"): (64, 63),
    ("quotes", "line_items"): (67, 68),
    ("quotes", "contacts"): (69, 70),
    ("quotes", "companies"): (71, 72),
    ("calls", "contacts"): (194, 193),
    ("calls", "companies"): (182, 181),
    ("calls", "deals"): (206, 205),
    ("calls", "tickets"): (220, 219),
    ("emails", "contacts"): (198, 197),
    ("emails", "companies"): (186, 185),
    ("emails", "deals"): (210, 209),
    ("emails", "tickets"): (224, 223),
    ("meetings", "contacts"): (200, 199),
    ("meetings", "companies"): (188, 187),
    ("meetings", "deals"): (212, 211),
    ("meetings", "tickets"): (226, 225),
    ("notes", "contacts"): (202, 201),
    ("notes", "companies"): (190, 189),
    ("notes", "deals"): (214, 213),
    ("notes", "tickets"): (228, 227),
    ("tasks", "contacts"): (204, 203),
    ("tasks", "companies"): (192, 191),
    ("tasks", "deals"): (216, 215),
    ("tasks", "tickets"): (230, 229),
}
DEFAULT_ASSOCIATION_TYPES: dict[tuple[str, str], int] = {}
for (_a, _b), (_fwd, _rev) in _PAIRS.items():
    DEFAULT_ASSOCIATION_TYPES[(_a, _b)] = _fwd
    DEFAULT_ASSOCIATION_TYPES[(_b, _a)] = _rev
# Links HubSpot keeps as a property of one end rather than as an association: a line item
# names its product in hs_product_id. Writer sets the property once both ends exist.
REFERENCES: dict[tuple[str, str], str] = {("line_items", "products"): "hs_product_id"}
# Parents before children: how an association between two types orients the write order
# (lower first). Only types linked by an association in one submission are ordered at all;
# custom objects come after the standard types they link to.
PARENT_RANK: dict[str, int] = {
    "companies": 0,
    "contacts": 1,
    "products": 2,
    "deals": 2,
    "tickets": 3,
    "quotes": 3,
    "line_items": 4,
    **dict.fromkeys(ENGAGEMENTS, 6),
}
CUSTOM_RANK = 5


def rank(object_type: str) -> int:
    """Return the type's rank in HubSpot's hierarchy (lower: written first)."""
    return PARENT_RANK.get(object_type, CUSTOM_RANK)


@dataclass(frozen=True)
class CustomType:
    """A custom object of a portal, as the schemas API describes it."""

    object_type_id: str
    name: str
    fully_qualified_name: str


@dataclass(frozen=True)
class AssociationType:
    """An association type of a pair: its id, category and label."""

    type_id: int
    category: str  # HUBSPOT_DEFINED | USER_DEFINED
    label: str  # "" for the unlabelled default


class ObjectTypes:
    """Resolves object type names per portal (schemas API) and association types (labels API)."""

    def __init__(self, client: HubSpotClient, ttl_s: float = 300.0) -> None:
        """Look custom objects and labels up through ``client``; cache them ``ttl_s``."""
        self.client = client
        self.ttl_s = ttl_s
        self._schemas: dict[int, tuple[float, dict[str, str]]] = {}
        self._custom_types: dict[int, list[CustomType]] = {}
        self._labels: dict[tuple[int, str, str], tuple[float, list[AssociationType]]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def resolve(self, portal_id: int, raw: str, field_name: str = "object_type") -> str:
        """Return the canonical name of a type, or InvalidArgument naming the field."""
        name = STANDARD.get(raw) or STANDARD.get(raw.lower())
        if name is not None:
            return name
        if not raw:
            raise InvalidArgument("object type is required", violations={field_name: "required"})
        for refresh in (False, True):
            found = (await self._custom(portal_id, refresh)).get(raw.lower())
            if found is not None:
                return found
        raise InvalidArgument(
            f"unknown object type {raw!r}",
            violations={
                field_name: "a standard object type (contacts, companies, deals, tickets, products, "
                "line_items, quotes, notes, calls, emails, meetings, tasks) or a custom object of "
                "the portal (name, fully qualified name or 2-… id)"
            },
            reason="UNKNOWN_OBJECT_TYPE",
        )

    async def canonicalize(self, portal_id: int, writes: Sequence[writer_pb2.Write]) -> None:
        """Rewrite every object type of ``writes`` to its canonical name (in place).

        Raises one InvalidArgument naming every unknown or read-only type.
        """
        violations: dict[str, str] = {}
        for n, w in enumerate(writes):
            kind = w.WhichOneof("kind")
            fields: Iterable[tuple[object, str, str]] = (
                [(w.record, "object_type", f"writes[{n}].record.object_type")]
                if kind == "record"
                else [
                    (w.association, "from_object_type", f"writes[{n}].association.from_object_type"),
                    (w.association, "to_object_type", f"writes[{n}].association.to_object_type"),
                ]
                if kind == "association"
                else []
            )
            for msg, attr, path in fields:
                try:
                    name = await self.resolve(portal_id, getattr(msg, attr), path)
                except InvalidArgument as exc:
                    violations.update(exc.violations or {path: str(exc)})
                    continue
                if kind == "record" and name in READ_ONLY:
                    violations[path] = f"{name} are read-only in hubsync"
                setattr(msg, attr, name)
        if violations:
            raise InvalidArgument("invalid writes", violations=violations)

    async def _custom(self, portal_id: int, refresh: bool) -> dict[str, str]:
        lock = self._locks.setdefault(portal_id, asyncio.Lock())
        async with lock:
            cached = self._schemas.get(portal_id)
            # A refresh (a name not found) re-reads unless another caller just did.
            if cached is not None and time.monotonic() - cached[0] < (1.0 if refresh else self.ttl_s):
                return cached[1]
            response = await self.client.call(
                portal_id,
                "GET",
                "/crm-object-schemas/v3/schemas",
                route="/crm-object-schemas/v3/schemas",
            )
            from hubsync.writer.reads import raise_for

            raise_for(response, "the schemas API")
            names: dict[str, str] = {}
            found: list[CustomType] = []
            for s in (response.body or {}).get("results") or []:
                tid = str(s.get("objectTypeId") or "")
                if not CUSTOM_ID.match(tid):
                    continue
                name = str(s.get("name") or "")
                fqn = str(s.get("fullyQualifiedName") or "")
                found.append(CustomType(tid, name, fqn))
                for alias in (tid, name, f"p_{name}", fqn):
                    if alias:
                        names[alias.lower()] = tid
            self._schemas[portal_id] = (time.monotonic(), names)
            self._custom_types[portal_id] = found
            return names

    async def custom_types(self, portal_id: int) -> list[CustomType]:
        """Return the portal's custom objects (read fresh: a caller lists them to learn new ones)."""
        await self._custom(portal_id, refresh=True)
        return list(self._custom_types.get(portal_id, []))

    async def association_types(self, portal_id: int, from_type: str, to_type: str) -> list[AssociationType]:
        """Every association type of a pair, from the labels API (cached)."""
        key = (portal_id, from_type, to_type)
        cached = self._labels.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        response = await self.client.call(
            portal_id,
            "GET",
            f"/crm/v4/associations/{from_type}/{to_type}/labels",
            route="/crm/v4/associations/{fromObjectType}/{toObjectType}/labels",
        )
        from hubsync.writer.reads import raise_for

        raise_for(response, "the association labels API")
        out = [
            AssociationType(
                int(r["typeId"]), str(r.get("category") or "HUBSPOT_DEFINED"), str(r.get("label") or "")
            )
            for r in (response.body or {}).get("results") or []
            if "typeId" in r
        ]
        self._labels[key] = (time.monotonic(), out)
        return out

    async def association_type(
        self, portal_id: int, from_type: str, to_type: str, type_id: int, label: str
    ) -> AssociationType:
        """Return the type to write: the given id, the given label, or the pair's default (unlabelled)."""
        pair = (from_type, to_type)
        if not type_id and not label and pair in DEFAULT_ASSOCIATION_TYPES:
            return AssociationType(DEFAULT_ASSOCIATION_TYPES[pair], "HUBSPOT_DEFINED", "")
        for refresh in (False, True):
            if refresh:
                self._labels.pop((portal_id, from_type, to_type), None)
            types = await self.association_types(portal_id, from_type, to_type)
            for t in types:
                if (type_id and t.type_id == type_id) or (
                    not type_id and (t.label.lower() == label.lower() if label else not t.label)
                ):
                    return t
        what = f"type {type_id}" if type_id else f"label {label!r}" if label else "default type"
        raise LookupError(f"no association {what} from {from_type} to {to_type}")
