"""Object types a portal knows: HubSpot's standard ones and custom objects from the schemas API.

Every store key is a canonical name: the plural path name of a standard type (``tickets``,
``line_items``) or the ``2-…`` object type id of a custom object. ``TypeRegistry.resolve``
turns what a URL may hold (plural or singular name, ``0-5``, a custom object's id,
fully qualified name ``p<portal>_<name>`` or ``p_<name>``) into that name.

Type ids and association type ids come from HubSpot's developer documentation (object type
ids table, association type ids table); engagement ids (``0-46`` notes …) likewise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ObjectType:
    """One object type of a portal."""

    name: str  # canonical store key
    type_id: str  # "0-1", "2-1001"
    singular: str  # "contact"; a custom object's schema name
    upper: str  # "CONTACT", used in messages and associationChange types
    # Prefix of HubSpot's classic webhook subscription types ("ticket.creation"); None: the type
    # is only delivered through the generic ``object.*`` subscriptions.
    webhook_prefix: str | None
    default_read: tuple[str, ...]
    query_props: tuple[str, ...]
    required: tuple[str, ...] = ()
    custom: bool = False
    # Custom objects: the schema as the schemas API describes it (labels, FQN, display, …).
    schema: dict[str, Any] = field(default_factory=dict)

    def aliases(self, hub_id: int) -> list[str]:
        out = [self.name, self.type_id, self.singular]
        if self.custom:
            out += [f"p{hub_id}_{self.singular}", f"p_{self.singular}"]
        return out


_ENG = ("hs_createdate", "hs_lastmodifieddate", "hs_object_id")

STANDARD: tuple[ObjectType, ...] = (
    ObjectType(
        "contacts",
        "0-1",
        "contact",
        "CONTACT",
        "contact",
        ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"),
        ("firstname", "lastname", "email", "phone", "company", "hs_additional_emails"),
    ),
    ObjectType(
        "companies",
        "0-2",
        "company",
        "COMPANY",
        "company",
        ("createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name"),
        ("name", "domain", "website", "phone"),
    ),
    ObjectType(
        "deals",
        "0-3",
        "deal",
        "DEAL",
        "deal",
        (
            "amount",
            "closedate",
            "createdate",
            "dealname",
            "dealstage",
            "hs_lastmodifieddate",
            "hs_object_id",
            "pipeline",
        ),
        ("dealname",),
    ),
    ObjectType(
        "tickets",
        "0-5",
        "ticket",
        "TICKET",
        "ticket",
        (
            "content",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
            "hs_pipeline",
            "hs_pipeline_stage",
            "hs_ticket_category",
            "hs_ticket_priority",
            "subject",
        ),
        ("subject", "content"),
        required=("subject", "hs_pipeline_stage"),
    ),
    ObjectType(
        "products",
        "0-7",
        "product",
        "PRODUCT",
        "product",
        ("createdate", "description", "hs_lastmodifieddate", "hs_object_id", "name", "price"),
        ("name", "description", "hs_sku"),
        required=("name",),
    ),
    ObjectType(
        "line_items",
        "0-8",
        "line_item",
        "LINE_ITEM",
        "line_item",
        (
            "amount",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
            "hs_product_id",
            "name",
            "price",
            "quantity",
        ),
        ("name",),
    ),
    ObjectType(
        "quotes",
        "0-14",
        "quote",
        "QUOTE",
        None,
        (
            "hs_createdate",
            "hs_expiration_date",
            "hs_lastmodifieddate",
            "hs_object_id",
            "hs_quote_amount",
            "hs_status",
            "hs_title",
        ),
        ("hs_title",),
    ),
    ObjectType("notes", "0-46", "note", "NOTE", None, _ENG, ("hs_note_body",), required=("hs_timestamp",)),
    ObjectType(
        "calls",
        "0-48",
        "call",
        "CALL",
        None,
        _ENG,
        ("hs_call_title", "hs_call_body"),
        required=("hs_timestamp",),
    ),
    ObjectType(
        "emails",
        "0-49",
        "email",
        "EMAIL",
        None,
        _ENG,
        ("hs_email_subject", "hs_email_text"),
        required=("hs_timestamp",),
    ),
    ObjectType(
        "meetings",
        "0-47",
        "meeting",
        "MEETING",
        None,
        _ENG,
        ("hs_meeting_title", "hs_meeting_body"),
        required=("hs_timestamp",),
    ),
    ObjectType(
        "tasks",
        "0-27",
        "task",
        "TASK",
        None,
        _ENG,
        ("hs_task_subject", "hs_task_body"),
        required=("hs_timestamp",),
    ),
)
STANDARD_BY_NAME = {t.name: t for t in STANDARD}
ENGAGEMENTS = frozenset({"notes", "calls", "emails", "meetings", "tasks"})

# HubSpot-defined association types: (from, to) → (type id, type id of the reverse direction).
DEFAULT_ASSOCIATIONS: dict[tuple[str, str], tuple[int, int]] = {
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
# HubSpot-defined labelled ("Primary") types: (from, to) → (type id, reverse type id).
PRIMARY_ASSOCIATIONS: dict[tuple[str, str], tuple[int, int]] = {
    ("contacts", "companies"): (1, 2),
    ("deals", "companies"): (5, 6),
    ("tickets", "companies"): (26, 25),
}


@dataclass(slots=True)
class AssociationDef:
    """One association type (one direction): what the v4 labels API lists for a pair."""

    type_id: int
    from_type: str
    to_type: str
    category: str  # HUBSPOT_DEFINED | USER_DEFINED
    label: str | None
    inverse_id: int
    name: str = ""


class TypeRegistry:
    """The object types and association types of one portal."""

    def __init__(self, hub_id: int):
        self.hub_id = hub_id
        self.types: dict[str, ObjectType] = {}
        self._aliases: dict[str, str] = {}
        self.assoc_defs: dict[int, AssociationDef] = {}
        self.default_assoc: dict[tuple[str, str], int] = {}
        self._next_assoc_id = 1000
        self._next_custom = 1
        for t in STANDARD:
            self.add(t)
        for (a, b), (fwd, rev) in DEFAULT_ASSOCIATIONS.items():
            self.define_pair(a, b, fwd, rev, "HUBSPOT_DEFINED", None, None)
        for (a, b), (fwd, rev) in PRIMARY_ASSOCIATIONS.items():
            self.define_pair(a, b, fwd, rev, "HUBSPOT_DEFINED", "Primary", "Primary", default=False)

    def add(self, t: ObjectType) -> None:
        self.types[t.name] = t
        for a in t.aliases(self.hub_id):
            self._aliases[a] = t.name
            self._aliases[a.lower()] = t.name

    def remove(self, name: str) -> None:
        """Forgets a custom object type, its aliases and its association types."""
        self.types.pop(name, None)
        for a in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[a]
        for tid in [i for i, d in self.assoc_defs.items() if name in (d.from_type, d.to_type)]:
            del self.assoc_defs[tid]
        for pair in [p for p in self.default_assoc if name in p]:
            del self.default_assoc[pair]

    def resolve(self, raw: str) -> str | None:
        return self._aliases.get(raw) or self._aliases.get(raw.lower())

    def new_custom_id(self) -> str:
        # HubSpot's custom ids are "2-" + a portal-unique number (e.g. 2-3508482).
        n = self._next_custom
        self._next_custom += 1
        return f"2-{self.hub_id * 100 + n}"

    def new_assoc_id(self) -> int:
        self._next_assoc_id += 1
        return self._next_assoc_id

    def define_pair(
        self,
        a: str,
        b: str,
        fwd: int,
        rev: int,
        category: str,
        label: str | None,
        inverse_label: str | None,
        default: bool = True,
        name: str = "",
    ) -> tuple[AssociationDef, AssociationDef]:
        d1 = AssociationDef(fwd, a, b, category, label, rev, name)
        d2 = AssociationDef(rev, b, a, category, inverse_label, fwd, name)
        self.assoc_defs[fwd] = d1
        self.assoc_defs[rev] = d2
        if default:
            self.default_assoc.setdefault((a, b), fwd)
            self.default_assoc.setdefault((b, a), rev)
        return d1, d2

    def can_associate(self, a: str, b: str) -> bool:
        return (a, b) in self.default_assoc

    def defs_for(self, a: str, b: str) -> list[AssociationDef]:
        return sorted(
            (d for d in self.assoc_defs.values() if d.from_type == a and d.to_type == b),
            key=lambda d: d.type_id,
        )

    def association_label(self, a: str, b: str) -> str:
        """The ``associationType`` of an associationChange webhook: ``CONTACT_TO_COMPANY``."""
        return f"{self.types[a].upper}_TO_{self.types[b].upper}"
