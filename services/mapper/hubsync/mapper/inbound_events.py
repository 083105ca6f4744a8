"""Event-stream entries → per-record changes: parse, classify, coalesce.

An entry that can never become a change (not JSON, not an event, an object type HubSpot does not
have, a synced type without a mapping) is set aside with the reason, for the inbound dead-letter
queue. Events of HubSpot types hubsync does not sync (tickets, products, line items) are simply
done: that is configuration, not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.core.event_entries import decode_entry
from hubsync.core.telemetry import extract_context
from hubsync.mapper.transforms import MappingSet

SYNCED_TYPES = {"contact": "contacts", "company": "companies", "deal": "deals"}
SYNCED_TYPE_IDS = {"0-1": "contacts", "0-2": "companies", "0-3": "deals"}
# HubSpot object types hubsync does not sync: their events are acknowledged and dropped.
NOT_SYNCED = frozenset({"ticket", "product", "line_item", "0-5", "0-7", "0-8"})
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


@dataclass
class ParsedEntry:
    """One stream entry, parsed once (for scheduling and for processing)."""

    id: bytes
    fields: Fields
    event: dict[str, Any] | None = None
    # (object type, record id, event kind) of a synced record, else None.
    what: tuple[str, str, str] | None = None
    # Why it can never become a change ("" when it can, or is merely not synced).
    reason: str = ""
    detail: str = ""
    # The W3C trace context stored with the event.
    carrier: dict[str, str] = field(default_factory=dict)

    @property
    def record(self) -> tuple[str, str] | None:
        return (self.what[0], self.what[1]) if self.what else None


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
        return self.object_type, self.object_id

    def add(self, suffix: str, event: dict[str, Any], entry: ParsedEntry) -> None:
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


def classify(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(object type, record id, event kind) of a webhook event of a synced type, else None."""
    sub = str(event.get("subscriptionType") or "")
    prefix, _, suffix = sub.partition(".")
    object_type = SYNCED_TYPES.get(prefix) or SYNCED_TYPE_IDS.get(str(event.get("objectTypeId") or ""))
    if object_type is None or not suffix:
        return None
    object_id = event.get("objectId")
    if suffix == "merge":
        object_id = event.get("primaryObjectId") or event.get("newObjectId") or object_id
    if suffix == "associationChange":
        object_id = event.get("fromObjectId") or object_id
    if object_id is None:
        return None
    return object_type, str(object_id), suffix


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
    if prefix in NOT_SYNCED or str(event.get("objectTypeId") or "") in NOT_SYNCED:
        return entry  # not synced: done, no reason
    entry.what = classify(event)
    if entry.what is None:
        if prefix in SYNCED_TYPES or str(event.get("objectTypeId") or "") in SYNCED_TYPE_IDS:
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
        object_type, object_id, suffix = entry.what
        if mappings.get(object_type) is None:
            entry.reason = "UNMAPPED_OBJECT_TYPE"
            entry.detail = f"no mapping is loaded for {object_type}"
            dead.append(entry)
            continue
        # Association changes stay apart from property changes of the same record.
        slot = "assoc" if suffix == "associationChange" else "record"
        group = groups.setdefault((object_type, object_id, slot), RecordChange(object_type, object_id))
        group.add(suffix, entry.event, entry)
    return Batch(list(groups.values()), dead, done)
