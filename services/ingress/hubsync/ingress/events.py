"""The webhook payload: a JSON array of HubSpot events, validated field by field.

Unknown fields are kept as they came (they travel on in the raw event); missing or mistyped
required fields reject the whole request with a reason, so HubSpot's retry does not half-apply.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import orjson

from hubsync.hubspot import objecttypes as _hubspot_types

__all__ = [
    "MAX_EVENTS",
    "OBJECT_TYPES",
    "OBJECT_TYPE_IDS",
    "PayloadRejected",
    "WebhookEvent",
    "object_type_of",
    "parse_events",
    "reconcilable_type",
    "synthetic_change",
    "type_of_id",
]

# subscriptionType prefix → the CRM object type writer records its writes under.
OBJECT_TYPES = _hubspot_types.WEBHOOK_PREFIXES
# Generic ``object.*`` subscriptions name the type by id.
OBJECT_TYPE_IDS = _hubspot_types.TYPES_BY_ID


def type_of_id(type_id: str) -> str | None:
    """Return a generic event's object type: a standard type's name, or a custom object's id.

    A custom object's type is its ``2-…`` id (writer records its writes to custom objects under
    that id).
    """
    if type_id.startswith("2-") and type_id[2:].isdigit():
        return type_id
    return OBJECT_TYPE_IDS.get(type_id)


# The other way round: a type's classic prefix (where HubSpot has one) and its ``0-…`` id.
_CLASSIC_PREFIX = {name: prefix for prefix, name in OBJECT_TYPES.items()}
_TYPE_ID = {name: type_id for type_id, name in OBJECT_TYPE_IDS.items()}


def reconcilable_type(raw: str) -> str | None:
    """Return the object type a reconciliation pass searches for ``raw``, or None.

    A standard type's plural name (``tickets``) or ``0-…`` id, or a custom object's ``2-…`` id.
    A custom object's name would need HubSpot's schemas to resolve: ingress takes ids only.
    """
    return raw if raw in _TYPE_ID else type_of_id(raw)


def synthetic_change(object_type: str) -> dict[str, str]:
    """The subscription fields of a synthetic property change of ``object_type``.

    A type with a classic subscription gets ``<singular>.propertyChange``; the others (engagements,
    quotes, custom objects) the generic ``object.propertyChange`` with their ``objectTypeId``,
    as HubSpot sends them.
    """
    prefix = _CLASSIC_PREFIX.get(object_type)
    if prefix is not None:
        return {"subscriptionType": f"{prefix}.propertyChange"}
    return {
        "subscriptionType": "object.propertyChange",
        "objectTypeId": _TYPE_ID.get(object_type, object_type),
    }


# HubSpot sends at most 100 events per request: more is not HubSpot.
MAX_EVENTS = 100


class PayloadRejected(Exception):
    """The body is not a valid webhook payload; the message says why (safe to show the sender)."""


class WebhookEvent(NamedTuple):
    """One event as HubSpot sent it (``raw``), and the fields ingress reasons about.

    Immutable; a named tuple rather than a frozen dataclass because one is built per event on the
    hot path, and a tuple is built several times faster.
    """

    portal_id: int
    event_id: int
    subscription_type: str
    object_id: int
    occurred_at: int
    property_name: str | None
    property_value: str | None
    change_source: str | None
    source_id: str | None
    raw: bytes
    # Generic ``object.*`` subscriptions name the type by id (``0-1``...).
    object_type_id: str | None = None
    # The event as parsed (what the journal entry encodes; None: parse ``raw`` again).
    data: dict[str, Any] | None = None

    @property
    def raw_text(self) -> str:
        """Return the raw event as text."""
        return self.raw.decode()

    @property
    def object_type(self) -> str | None:
        """Return the CRM object type (``contacts``...), generic ``object.*`` events included."""
        prefix = self.subscription_type.partition(".")[0]
        if prefix == "object":
            return type_of_id(self.object_type_id or "")
        return OBJECT_TYPES.get(prefix)

    def identity(self) -> bytes:
        """Return what makes this event unique: eventId alone is not (HubSpot says so)."""
        return (
            f"{self.portal_id}|{self.event_id}|{self.subscription_type}|{self.object_id}|"
            f"{self.occurred_at}|{self.property_name or ''}"
        ).encode()

    def digest(self) -> bytes:
        """16 bytes of BLAKE2b over :meth:`identity`: bucket and set member come from it."""
        return hashlib.blake2b(self.identity(), digest_size=16).digest()


_REQUIRED_INTS = ("portalId", "eventId", "objectId", "occurredAt")
_MIN_INT = -(2**63)
_MAX_INT = 2**63 - 1


def _int_field(item: dict[str, Any], name: str, index: int) -> int:
    value = item.get(name)
    # bool is an int in Python; HubSpot never sends one here.
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise PayloadRejected(f"event {index}: missing required field {name}")
        raise PayloadRejected(f"event {index}: {name} must be an integer")
    if not _MIN_INT <= value <= _MAX_INT:
        raise PayloadRejected(f"event {index}: {name} is out of range")
    return value


def _opt_str(item: dict[str, Any], name: str, index: int) -> str | None:
    value = item.get(name)
    if value is None or type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise PayloadRejected(f"event {index}: {name} must be a string")


def parse_events(body: bytes) -> list[WebhookEvent]:
    """Parse and validates a webhook body; raises :class:`PayloadRejected` with the reason."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PayloadRejected("body is not valid JSON") from None
    if not isinstance(data, list):
        raise PayloadRejected("body must be a JSON array of events")
    if not data:
        raise PayloadRejected("body holds no events")
    if len(data) > MAX_EVENTS:
        raise PayloadRejected(
            f"body holds {len(data)} events; HubSpot sends at most {MAX_EVENTS} per request"
        )
    events: list[WebhookEvent] = []
    # One event: store it as received (its text inside the array's brackets; JSON whitespace is
    # all ``bytes.strip`` removes) instead of serialising it again.
    single = body.strip()[1:-1].strip() if len(data) == 1 else None
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise PayloadRejected(f"event {index}: must be a JSON object")
        get = item.get
        portal, event_id, object_id, occurred = (
            get("portalId"),
            get("eventId"),
            get("objectId"),
            get("occurredAt"),
        )
        # The usual case checked inline (``type() is int`` also refuses bool); anything else goes
        # through _int_field, which says what is wrong.
        if not (
            type(portal) is int
            and type(event_id) is int
            and type(object_id) is int
            and type(occurred) is int
            and _MIN_INT <= event_id <= _MAX_INT
            and _MIN_INT <= object_id <= _MAX_INT
            and _MIN_INT <= occurred <= _MAX_INT
            and _MIN_INT <= portal <= _MAX_INT
        ):
            portal, event_id, object_id, occurred = (_int_field(item, n, index) for n in _REQUIRED_INTS)
        stype = get("subscriptionType")
        if not isinstance(stype, str) or not stype:
            raise PayloadRejected(f"event {index}: missing required field subscriptionType")
        if "." not in stype or len(stype) > 100:
            raise PayloadRejected(f"event {index}: subscriptionType is not <object>.<change>")
        if portal <= 0:
            raise PayloadRejected(f"event {index}: portalId must be positive")
        events.append(
            WebhookEvent(
                portal_id=portal,
                event_id=event_id,
                subscription_type=stype,
                object_id=object_id,
                occurred_at=occurred,
                property_name=_opt_str(item, "propertyName", index),
                property_value=_opt_str(item, "propertyValue", index),
                change_source=_opt_str(item, "changeSource", index),
                source_id=_opt_str(item, "sourceId", index),
                raw=single if single is not None else orjson.dumps(item),
                object_type_id=_opt_str(item, "objectTypeId", index),
                data=item,
            )
        )
    return events


def object_type_of(event: WebhookEvent) -> str | None:
    """Return the CRM object type (``contacts``...) of an event, generic ``object.*`` ones included."""
    return event.object_type
