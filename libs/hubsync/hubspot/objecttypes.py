"""HubSpot's standard CRM object types: names, singulars, type ids and classic webhook prefixes.

One table for every service that names a standard type (ingress reads webhook events, the mapper
reads mappings and inbound events, writer resolves names when it writes); services never import
each other, so the table lives here. Custom objects (``2-…`` ids) are per portal and are not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "SINGULAR",
    "STANDARD_IDS",
    "STANDARD_NAMES",
    "TYPES_BY_ID",
    "WEBHOOK_PREFIXES",
]

# Canonical plural name → HubSpot's object type id.
STANDARD_IDS: Mapping[str, str] = MappingProxyType(
    {
        "contacts": "0-1",
        "companies": "0-2",
        "deals": "0-3",
        "tickets": "0-5",
        "products": "0-7",
        "line_items": "0-8",
        "quotes": "0-14",
        "tasks": "0-27",
        "notes": "0-46",
        "meetings": "0-47",
        "calls": "0-48",
        "emails": "0-49",
    }
)
# Object type id → canonical plural name (generic ``object.*`` webhook events name types by id).
TYPES_BY_ID: Mapping[str, str] = MappingProxyType({tid: name for name, tid in STANDARD_IDS.items()})
# Canonical plural name → its singular.
SINGULAR: Mapping[str, str] = MappingProxyType(
    {name: "company" if name == "companies" else name[:-1] for name in STANDARD_IDS}
)
# Every accepted spelling of a standard type (plural, singular, ``0-…`` id) → canonical plural.
STANDARD_NAMES: Mapping[str, str] = MappingProxyType(
    {spelling: name for name, tid in STANDARD_IDS.items() for spelling in (name, tid, SINGULAR[name])}
)
# The classic webhook subscription prefix (``ticket.creation``) of each type that has one → plural.
WEBHOOK_PREFIXES: Mapping[str, str] = MappingProxyType(
    {SINGULAR[name]: name for name in ("contacts", "companies", "deals", "tickets", "products", "line_items")}
)
