"""The event-stream entry codec: compact entries decode to the event HubSpot sent, entries of the
older field format decode the same way, and a realistic entry stays small."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from hubsync.core.event_entries import decode_entry, encode_entry, replay_copy
from tests.helpers.hubspot_events import documented_event

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HUBSPOT_EVENT: dict[str, Any] = documented_event()  # the documented example delivery


@pytest.mark.parametrize(
    "event",
    [
        HUBSPOT_EVENT,
        # zero values and empty strings are kept, not dropped as proto3 defaults
        HUBSPOT_EVENT | {"objectId": 0, "propertyValue": ""},
        # types the message does not declare, and fields it does not name, come back as they came
        HUBSPOT_EVENT | {"propertyValue": 12, "sourceId": None, "isSensitive": False, "x": [1, {"y": 2.5}]},
        # an integer past int64 (JSON has no limit)
        HUBSPOT_EVENT | {"appId": 2**63, "attemptNumber": -(2**63)},
        # names outside the enums
        HUBSPOT_EVENT | {"subscriptionType": "ticket.creation", "changeSource": "SOMETHING_NEW"},
        # a merge, an association change, a generic object event
        {
            "portalId": 33,
            "objectId": 9,
            "eventId": 1,
            "occurredAt": 5,
            "subscriptionType": "contact.merge",
            "mergedObjectIds": [1, 2],
            "primaryObjectId": 9,
            "newObjectId": 9,
            "numberOfPropertiesMoved": 3,
        },
        {
            "portalId": 33,
            "objectId": 9,
            "eventId": 1,
            "occurredAt": 5,
            "subscriptionType": "object.creation",
            "objectTypeId": "0-1",
            "fromObjectId": 9,
            "toObjectId": 3,
            "associationRemoved": False,
        },
        {
            "portalId": 33,
            "objectId": -1,
            "eventId": 2**63 - 1,
            "occurredAt": 5,
            "subscriptionType": "a.b",
            "propertyValue": 'Zoë 🚀 "q" \\ \n \u0000',
        },
    ],
)
def test_an_event_comes_back_as_it_was_sent(event: dict[str, Any]) -> None:
    fields = encode_entry(event, origin="webhook", traceparent=TRACEPARENT)
    assert set(fields) == {b"e"}
    decoded = decode_entry(b"1700000000000-3", fields)
    assert decoded.event == event and not decoded.error
    assert (decoded.origin, decoded.traceparent, decoded.accepted_ms) == (
        "webhook",
        TRACEPARENT,
        1700000000000,
    )
    assert orjson.loads(decoded.event_json()) == event


def test_a_realistic_entry_takes_well_under_200_bytes() -> None:
    fields = encode_entry(HUBSPOT_EVENT, origin="webhook", traceparent=TRACEPARENT)
    assert len(fields[b"e"]) <= 100  # the JSON alone is 265 bytes, the old traceparent field 55


@pytest.mark.parametrize(
    ("traceparent", "tracestate"),
    [
        ("", ""),
        (TRACEPARENT, "vendor=a,other=b"),
        ("01-abc-def-00", ""),
        ("00-" + "z" * 32 + "-" + "1" * 16 + "-01", ""),
    ],
)
def test_the_trace_context_comes_back(traceparent: str, tracestate: str) -> None:
    decoded = decode_entry(
        "1-0", encode_entry(HUBSPOT_EVENT, origin="reconcile", traceparent=traceparent, tracestate=tracestate)
    )
    assert (decoded.traceparent, decoded.tracestate, decoded.origin) == (traceparent, tracestate, "reconcile")
    assert decoded.carrier == {
        k: v for k, v in (("traceparent", traceparent), ("tracestate", tracestate)) if v
    }


def test_entries_of_the_older_format_decode_the_same_way() -> None:
    fields = {
        b"event": orjson.dumps(HUBSPOT_EVENT),
        b"traceparent": TRACEPARENT.encode(),
        b"tracestate": b"v=1",
        b"accepted_ms": b"1462216308000",
        b"origin": b"replay",
        b"replay_of": b"5-0",
    }
    decoded = decode_entry(b"1700000000000-0", fields)
    assert decoded.event == HUBSPOT_EVENT
    assert (decoded.traceparent, decoded.tracestate, decoded.accepted_ms) == (
        TRACEPARENT,
        "v=1",
        1462216308000,
    )
    assert (decoded.origin, decoded.replay_of) == ("replay", "5-0")
    minimal = decode_entry("42-0", {b"event": orjson.dumps(HUBSPOT_EVENT)})
    assert (minimal.origin, minimal.accepted_ms, minimal.traceparent) == ("webhook", 42, "")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({b"event": b"{not json"}, "the entry's event is not JSON"),
        ({b"event": b"[1]"}, "the entry's event is not a JSON object"),
        ({}, "the entry's event is not JSON"),
        ({b"e": b"\xff\xff\xff"}, "the entry is not a JournalEvent"),
        ({b"e": b"\xc2\x01\x03abc"}, "the entry's extra fields are not a JSON object"),  # extra = b"abc"
    ],
)
def test_an_unreadable_entry_says_why(fields: dict[bytes, bytes], error: str) -> None:
    decoded = decode_entry("1-0", fields)
    assert decoded.event is None and decoded.error == error


def test_a_copy_sent_back_with_an_origin_field_keeps_it() -> None:
    # mapper's dead-letter replay copies the entry's fields and sets ``origin`` beside them
    fields = encode_entry(HUBSPOT_EVENT, origin="webhook") | {b"origin": b"inbound-dlq-replay"}
    assert decode_entry("1-0", fields).origin == "inbound-dlq-replay"


@pytest.mark.parametrize("compact", [True, False])
def test_a_replay_copy_is_compact_and_names_its_original(compact: bool) -> None:
    if compact:
        fields = encode_entry(HUBSPOT_EVENT, origin="webhook", traceparent=TRACEPARENT)
    else:
        fields = {
            b"event": orjson.dumps(HUBSPOT_EVENT),
            b"traceparent": TRACEPARENT.encode(),
            b"origin": b"webhook",
        }
    copy = replay_copy(b"1000-7", fields)
    assert set(copy) == {b"e"}
    decoded = decode_entry("2000-0", copy)
    assert decoded.event == HUBSPOT_EVENT and decoded.traceparent == TRACEPARENT
    assert (decoded.origin, decoded.replay_of, decoded.accepted_ms) == ("replay", "1000-7", 1000)
    # a copy of a copy still points at its own original and keeps the first acceptance time
    again = decode_entry("3000-0", replay_copy("2000-0", copy))
    assert (again.replay_of, again.accepted_ms) == ("2000-0", 1000)


def test_an_unreadable_entry_is_replayed_as_it_is() -> None:
    copy = replay_copy("1-0", {b"event": b"{bad"})
    assert copy == {b"event": b"{bad", b"origin": b"replay", b"replay_of": b"1-0"}


def test_an_unknown_origin_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown origin"):
        encode_entry(HUBSPOT_EVENT, origin="somewhere")
