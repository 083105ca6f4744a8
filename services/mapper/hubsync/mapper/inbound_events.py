"""Event-stream entries → per-record changes: parse, classify, coalesce.

An entry that can never become a change (not JSON, not an event, an object type HubSpot does not
have, contacts/companies/deals without a mapping, a custom object id the mapper has not learned
yet) is set aside with the reason, for the inbound dead-letter queue. Events of the other types
(tickets, line items, a known custom object, …) without a mapping are simply done: that is
configuration, not a failure. A change carries its mapping's object type name (a custom object's
events name it by id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.core.event_entries import decode_entry
from hubsync.core.telemetry import extract_context
from hubsync.mapper.objecttypes import CUSTOM_ID, CUSTOM_TYPES, STANDARD_IDS, WEBHOOK_PREFIX
from hubsync.mapper.transforms import MappingSet

__all__ = ["Batch", "EventTarget", "ParsedEntry", "RecordChange", "classify", "coalesce", "parse_entry"]

SYNCED_TYPES = WEBHOOK_PREFIX
SYNCED_TYPE_IDS = {tid: name for name, tid in STANDARD_IDS.items()}
# Without a mapping, events of these types are dead-lettered (hubsync's core objects); of any
# other type they are done.
MUST_MAP = frozenset({"contacts", "companies", "deals"})


def _type_of_id(type_id: str) -> str | None:
    """A generic event's objectTypeId: a standard type's name, or a custom object's id."""
    return SYNCED_TYPE_IDS.get(type_id) or (type_id if CUSTOM_ID.match(type_id) else None)


_KIND_RANK = {  # the strongest kind of a coalesced group wins
    "propertyChange": (1, mapper_pb2.CHANGE_KIND_UPDATED),
    "associationChange": (0, mapper_pb2.CHANGE_KIND_ASSOCIATION_CHANGED),
    "creation": (2, mapper_pb2.CHANGE_KIND_CREATED),
    "restore": (3, mapper_pb2.CHANGE_KIND_RESTORED),
    "merge": (4, mapper_pb2.CHANGE_KIND_MERGED),
    "deletion": (5, mapper_pb2.CHANGE_KIND_DELETED),
    "privacyDeletion": (5, mapper_pb2.CHANGE_KIND_DELETED),
}

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class EventTarget:
    """What a webhook event of a synced type is about: its record and its kind."""

    object_type: str
    object_id: str
    # The subscription type's suffix: creation, propertyChange, merge, deletion, …
    kind: str


@dataclass
class ParsedEntry:
    """One stream entry, parsed once (for scheduling and for processing)."""

    id: bytes
    fields: Fields
    event: dict[str, Any] | None = None
    # The record and kind of an event of a synced type, else None.
    what: EventTarget | None = None
    # Why it can never become a change ("" when it can, or is merely not synced).
    reason: str = ""
    detail: str = ""
    # The W3C trace context stored with the event.
    carrier: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordChange:
    """Events of one record within one batch, coalesced."""

    object_type: str
    object_id: str
    rank: int = -1
    kind: Any = mapper_pb2.CHANGE_KIND_UNSPECIFIED
    properties: set[str] = field(default_factory=set)
    related: list[str] = field(default_factory=list)
    occurred_ms: int = 0
    contexts: list[Any] = field(default_factory=list)
    entry_ids: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        """The (object type, record id) of the change's record."""
        return self.object_type, self.object_id

    def add(self, suffix: str, event: dict[str, Any], entry: ParsedEntry) -> None:
        """Add one event of the record (``suffix``: its kind) to this change."""
        rank, kind = _KIND_RANK.get(suffix, (1, mapper_pb2.CHANGE_KIND_UPDATED))
        if rank > self.rank:
            self.rank, self.kind = rank, kind
        if event.get("propertyName"):
            self.properties.add(str(event["propertyName"]))
        if suffix == "merge":
            for merged in event.get("mergedObjectIds") or []:
                if str(merged) not in self.related:
                    self.related.append(str(merged))
        if suffix == "associationChange":
            other = event.get("toObjectId")
            if other is not None and str(other) not in self.related:
                self.related.append(str(other))
        self.occurred_ms = max(self.occurred_ms, _int(event.get("occurredAt")))
        if entry.carrier.get("traceparent"):
            self.contexts.append(extract_context(entry.carrier))
        self.entry_ids.append(entry.id)


@dataclass
class Batch:
    """One portal's entries, coalesced: changes to hydrate, entries to dead-letter, entries done."""

    changes: list[RecordChange]
    dead: list[ParsedEntry]
    done: list[bytes]


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def classify(event: dict[str, Any]) -> EventTarget | None:
    """Return the record and kind of a webhook event of a synced type, else None."""
    sub = str(event.get("subscriptionType") or "")
    prefix, _, suffix = sub.partition(".")
    object_type = SYNCED_TYPES.get(prefix) or _type_of_id(str(event.get("objectTypeId") or ""))
    if object_type is None or not suffix:
        return None
    object_id = event.get("objectId")
    if suffix == "merge":
        object_id = event.get("primaryObjectId") or event.get("newObjectId") or object_id
    if suffix == "associationChange":
        object_id = event.get("fromObjectId") or object_id
    if object_id is None:
        return None
    return EventTarget(object_type, str(object_id), suffix)


def parse_entry(entry_id: bytes, fields: Fields) -> ParsedEntry:
    """Parses an entry (either stored format) and says why it can never become a change, if it
    cannot."""
    decoded = decode_entry(entry_id, fields)
    entry = ParsedEntry(entry_id, fields, carrier=decoded.carrier)
    event = decoded.event
    if event is None:
        entry.reason, entry.detail = "MALFORMED_ENTRY", decoded.error
        return entry
    entry.event = event
    sub = str(event.get("subscriptionType") or "")
    prefix = sub.partition(".")[0]
    entry.what = classify(event)
    if entry.what is None:
        if prefix in SYNCED_TYPES or _type_of_id(str(event.get("objectTypeId") or "")):
            entry.reason, entry.detail = "MALFORMED_ENTRY", "the event names no record or no kind"
        else:
            entry.reason = "UNKNOWN_OBJECT_TYPE"
            entry.detail = f"no object type hubsync knows in subscriptionType {sub[:100]!r}"
    return entry


def coalesce(entries: list[ParsedEntry], mappings: MappingSet) -> Batch:
    """Groups one portal's entries into a change per record (association changes apart)."""
    groups: dict[tuple[str, str, str], RecordChange] = {}
    dead: list[ParsedEntry] = []
    done: list[bytes] = []
    for entry in entries:
        if entry.reason:
            dead.append(entry)
            continue
        if entry.what is None or entry.event is None:
            done.append(entry.id)
            continue
        object_type, object_id, suffix = entry.what.object_type, entry.what.object_id, entry.what.kind
        mapping = mappings.get(object_type)
        if mapping is None:
            if CUSTOM_ID.match(object_type) and CUSTOM_TYPES.name_of(object_type) is None:
                entry.reason = "UNKNOWN_CUSTOM_OBJECT"
                entry.detail = f"custom object type {object_type} is not known (yet): replay once it is"
                dead.append(entry)
            elif object_type in MUST_MAP:
                entry.reason = "UNMAPPED_OBJECT_TYPE"
                entry.detail = f"no mapping is loaded for {object_type}"
                dead.append(entry)
            else:
                done.append(entry.id)  # a type hubsync is not configured to sync
            continue
        object_type = mapping.object_type
        # Association changes stay apart from property changes of the same record.
        slot = "assoc" if suffix == "associationChange" else "record"
        group = groups.setdefault((object_type, object_id, slot), RecordChange(object_type, object_id))
        group.add(suffix, entry.event, entry)
    return Batch(list(groups.values()), dead, done)
