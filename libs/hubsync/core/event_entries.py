"""Entries of a portal's event stream (``hubsync:{<portal>}:events``): the one encoder and decoder.

Two formats are read:

- **compact** (written since the release after 0.1.0): one field ``e`` holding a serialized
  :class:`~hubsync.api.internal.v1.journal_pb2.JournalEvent` — the webhook event's fields as
  varints, enums and strings, the trace context as raw bytes, the origin as an enum. About
  144 bytes of Redis memory per event instead of about 424 (``bench/ingress/journal.md``).
- **fields** (written by 0.1.0): ``event`` (the webhook event's JSON text), ``traceparent``,
  ``tracestate``, ``accepted_ms``, ``origin``, ``replay_of``. Entries already in Redis when an
  install upgrades are still processed; nothing writes this format any more.

Everything that reads the stream — mapper's inbound pipeline, ingress's journal (read, replay) and
reconciler, the inbound dead-letter views — goes through :func:`decode_entry`, so a reader never
sees which format an entry has. A copy of an entry into another stream (parked, dead letters)
keeps the fields named in :attr:`~hubsync.core.keys.EventEntry.COPIED`; a plain ``origin`` field
next to ``e`` (added by such a copy sent back) overrides the encoded origin.

Decoding gives back the event HubSpot sent: a field whose JSON type is not the one the message
declares (a number where a string is expected, a null) goes, with every field the message does
not name, into ``extra`` as JSON, and comes back from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from google.protobuf.message import DecodeError

from hubsync.api.internal.v1 import journal_pb2
from hubsync.core.keys import EventEntry
from hubsync.core.streams import entry_ms

__all__ = [
    "ORIGINS",
    "EventRecord",
    "decode_entry",
    "encode_entry",
    "encode_event",
    "encode_trace",
    "replay_copy",
]

Fields = Mapping[bytes, bytes]

_ENTRY: Final = EventEntry.ENTRY.encode()
_EVENT: Final = EventEntry.EVENT.encode()
_TRACEPARENT: Final = EventEntry.TRACEPARENT.encode()
_TRACESTATE: Final = EventEntry.TRACESTATE.encode()
_ACCEPTED_MS: Final = EventEntry.ACCEPTED_MS.encode()
_ORIGIN: Final = EventEntry.ORIGIN.encode()
_REPLAY_OF: Final = EventEntry.REPLAY_OF.encode()

# The enum values' names, in the proto's order (value = index + 1).
_SUBSCRIPTION_TYPES = (
    "contact.propertyChange",
    "contact.creation",
    "contact.deletion",
    "contact.merge",
    "contact.associationChange",
    "contact.restore",
    "contact.privacyDeletion",
    "company.propertyChange",
    "company.creation",
    "company.deletion",
    "company.merge",
    "company.associationChange",
    "company.restore",
    "deal.propertyChange",
    "deal.creation",
    "deal.deletion",
    "deal.merge",
    "deal.associationChange",
    "deal.restore",
    "object.propertyChange",
    "object.creation",
    "object.deletion",
)
_CHANGE_SOURCES = (
    "CRM_UI",
    "INTEGRATION",
    "API",
    "IMPORT",
    "WORKFLOWS",
    "AUTOMATION_PLATFORM",
    "CALCULATED",
    "RECONCILIATION",
    "CRM_UI_BULK_ACTION",
    "MOBILE_IOS",
    "MOBILE_ANDROID",
    "SALES",
    "FORM",
)
#: Every origin an entry can have (``origin`` of the fields format; the ``Origin`` enum).
ORIGINS: Final = ("webhook", "reconcile", "replay", "inbound-dlq-replay")
_SUBSCRIPTION_CODES = {name: i + 1 for i, name in enumerate(_SUBSCRIPTION_TYPES)}
_CHANGE_SOURCE_CODES = {name: i + 1 for i, name in enumerate(_CHANGE_SOURCES)}
_ORIGIN_CODES = {name: i + 1 for i, name in enumerate(ORIGINS)}

# JSON field → message field, for the fields whose JSON type is an integer or a string.
_INTS = {
    "objectId": "object_id",
    "occurredAt": "occurred_at",
    "eventId": "event_id",
    "subscriptionId": "subscription_id",
    "portalId": "portal_id",
    "appId": "app_id",
    "attemptNumber": "attempt_number",
}
_STRINGS = {
    "propertyName": "property_name",
    "propertyValue": "property_value",
    "sourceId": "source_id",
    "objectTypeId": "object_type_id",
}
# Message field → JSON field, for the fields decoded as they are.
_JSON_NAMES = {field: json for json, field in (*_INTS.items(), *_STRINGS.items())} | {
    "subscription_type_name": "subscriptionType",
    "change_source_name": "changeSource",
}
_JSON_ITEMS = tuple(_JSON_NAMES.items())
# JSON field → (message field, the JSON type it holds there).
_FIELDS: dict[str, tuple[str, type]] = {json: (field, int) for json, field in _INTS.items()} | {
    json: (field, str) for field, json in _JSON_NAMES.items() if field not in _INTS.values()
}
_INT_FIELDS = tuple(_INTS.values())
_MIN_INT = -(2**63)
_MAX_INT = 2**63 - 1
_TRACEPARENT_LEN = 55  # 00-<32 hex>-<16 hex>-<2 hex>


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One entry of a portal's event stream, decoded (whichever format it was stored in).

    ``event`` is the webhook event as HubSpot sent it, or None when the entry cannot be read
    (``error`` says why: it is dead-lettered, never retried).
    """

    id: str
    event: dict[str, Any] | None
    origin: str
    accepted_ms: int
    traceparent: str = ""
    tracestate: str = ""
    replay_of: str = ""
    error: str = ""
    # The stored JSON text of a fields-format entry (shown as it is when it is not JSON).
    stored_json: bytes | None = None

    @property
    def carrier(self) -> dict[str, str]:
        """The W3C trace context to continue (``propagate.extract`` reads it)."""
        carrier = {}
        if self.traceparent:
            carrier["traceparent"] = self.traceparent
        if self.tracestate:
            carrier["tracestate"] = self.tracestate
        return carrier

    def event_json(self) -> bytes:
        """The event as JSON text (as stored, for a fields-format entry)."""
        if self.stored_json is not None:
            return self.stored_json
        return orjson.dumps(self.event) if self.event is not None else b""


def encode_event(event: Mapping[str, Any], origin: str) -> bytes:
    """The serialized ``JournalEvent`` of a webhook event (its trace context apart: see
    :func:`encode_trace`; serialized messages concatenated are one message)."""
    values: dict[str, Any] = {"origin": _origin_code(origin)}
    extra: dict[str, Any] = {}
    fields = _FIELDS
    for key, value in event.items():
        declared = fields.get(key)
        if declared is not None and type(value) is declared[1]:
            values[declared[0]] = value
        else:
            extra[key] = value
    # Names in the enums go as their numbers (a string field of its own otherwise).
    name = values.get("subscription_type_name")
    if name is not None and name in _SUBSCRIPTION_CODES:
        values["subscription_type"] = _SUBSCRIPTION_CODES[values.pop("subscription_type_name")]
    name = values.get("change_source_name")
    if name is not None and name in _CHANGE_SOURCE_CODES:
        values["change_source"] = _CHANGE_SOURCE_CODES[values.pop("change_source_name")]
    try:
        message = journal_pb2.JournalEvent(**values)
    except ValueError:  # an integer past int64 (JSON has no limit): it goes as it came
        for field in _INT_FIELDS:
            number = values.get(field)
            if number is not None and not _MIN_INT <= number <= _MAX_INT:
                extra[_JSON_NAMES[field]] = values.pop(field)
        message = journal_pb2.JournalEvent(**values)
    if extra:
        message.extra = orjson.dumps(extra)
    return message.SerializeToString()


def encode_trace(traceparent: str, tracestate: str = "") -> bytes:
    """The serialized trace-context fields of a ``JournalEvent`` (b"" without a context)."""
    if not traceparent and not tracestate:
        return b""
    message = journal_pb2.JournalEvent()
    if len(traceparent) == _TRACEPARENT_LEN and traceparent.startswith("00-"):
        try:
            message.trace_id = bytes.fromhex(traceparent[3:35])
            message.span_id = bytes.fromhex(traceparent[36:52])
            message.trace_flags = int(traceparent[53:55], 16)
        except ValueError:
            message.Clear()
            message.traceparent = traceparent
    elif traceparent:
        message.traceparent = traceparent
    if tracestate:
        message.tracestate = tracestate
    return message.SerializeToString()


def encode_entry(
    event: Mapping[str, Any],
    *,
    origin: str,
    traceparent: str = "",
    tracestate: str = "",
    accepted_ms: int | None = None,
    replay_of: str = "",
) -> dict[bytes, bytes]:
    """The fields of a compact entry for ``event`` (``accepted_ms`` None: the entry id's time)."""
    blob = encode_event(event, origin) + encode_trace(traceparent, tracestate)
    if accepted_ms is not None or replay_of:
        message = journal_pb2.JournalEvent(replay_of=replay_of)
        if accepted_ms is not None:
            message.accepted_ms = accepted_ms
        blob += message.SerializeToString()
    return {_ENTRY: blob}


def decode_entry(entry_id: bytes | str, fields: Fields) -> EventRecord:
    """Decodes an entry of either format; never raises (an unreadable entry has ``error``)."""
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    blob = fields.get(_ENTRY)
    if blob is None:
        return _decode_fields(ident, fields)
    message = journal_pb2.JournalEvent()
    try:
        message.ParseFromString(blob)
    except DecodeError:
        origin = _text(fields.get(_ORIGIN)) or "webhook"
        return EventRecord(ident, None, origin, entry_ms(ident), error="the entry is not a JournalEvent")
    has: Any = message.HasField
    # HasField per optional field costs a third of ListFields (which builds descriptors).
    event: dict[str, Any] = {json: getattr(message, field) for field, json in _JSON_ITEMS if has(field)}
    if message.extra:
        try:
            extra = orjson.loads(message.extra)
        except orjson.JSONDecodeError:
            extra = None
        if not isinstance(extra, dict):
            return EventRecord(
                ident,
                None,
                "webhook",
                entry_ms(ident),
                error="the entry's extra fields are not a JSON object",
            )
        event = extra | event
    code = int(message.subscription_type)
    if 0 < code <= len(_SUBSCRIPTION_TYPES):
        event["subscriptionType"] = _SUBSCRIPTION_TYPES[code - 1]
    code = int(message.change_source)
    if 0 < code <= len(_CHANGE_SOURCES):
        event["changeSource"] = _CHANGE_SOURCES[code - 1]
    origin = _text(fields.get(_ORIGIN))
    if not origin:
        code = int(message.origin)
        origin = ORIGINS[code - 1] if 0 < code <= len(ORIGINS) else "webhook"
    traceparent = message.traceparent
    trace_id, span_id = message.trace_id, message.span_id
    if len(trace_id) == 16 and len(span_id) == 8:
        traceparent = f"00-{trace_id.hex()}-{span_id.hex()}-{message.trace_flags:02x}"
    return EventRecord(
        ident,
        event,
        origin,
        message.accepted_ms if has("accepted_ms") else entry_ms(ident),
        traceparent,
        message.tracestate,
        message.replay_of,
    )


def replay_copy(entry_id: bytes | str, fields: Fields, *, compact: bool = True) -> dict[bytes, bytes]:
    """A copy of an entry for a journal replay: origin ``replay``, ``replay_of`` the entry's id,
    the first acceptance time kept; in the compact format (or, ``compact`` False, the fields
    format). An unreadable entry is copied as it is."""
    record = decode_entry(entry_id, fields)
    if record.event is None:
        copy = dict(fields)
        copy[_ORIGIN] = b"replay"
        copy[_REPLAY_OF] = record.id.encode()
        return copy
    if not compact:
        copy = {_EVENT: record.event_json(), _ACCEPTED_MS: str(record.accepted_ms).encode()}
        if record.traceparent:
            copy[_TRACEPARENT] = record.traceparent.encode()
        if record.tracestate:
            copy[_TRACESTATE] = record.tracestate.encode()
        return copy | {_ORIGIN: b"replay", _REPLAY_OF: record.id.encode()}
    return encode_entry(
        record.event,
        origin="replay",
        traceparent=record.traceparent,
        tracestate=record.tracestate,
        accepted_ms=record.accepted_ms,
        replay_of=record.id,
    )


def _decode_fields(ident: str, fields: Fields) -> EventRecord:
    raw = fields.get(_EVENT) or b""
    accepted = _text(fields.get(_ACCEPTED_MS))
    error = ""
    event: Any = None
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        error = "the entry's event is not JSON"
    if not error and not isinstance(event, dict):
        event, error = None, "the entry's event is not a JSON object"
    return EventRecord(
        ident,
        event,
        _text(fields.get(_ORIGIN)) or "webhook",
        int(accepted) if accepted.isdigit() else entry_ms(ident),
        _text(fields.get(_TRACEPARENT)),
        _text(fields.get(_TRACESTATE)),
        _text(fields.get(_REPLAY_OF)),
        error,
        raw,
    )


def _origin_code(origin: str) -> int:
    code = _ORIGIN_CODES.get(origin)
    if code is None:
        raise ValueError(f"unknown origin {origin!r}: one of {ORIGINS}")
    return code


def _text(value: bytes | None) -> str:
    return value.decode(errors="replace") if value else ""
