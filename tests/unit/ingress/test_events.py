"""The webhook payload: what is required, what is tolerated, and the dedupe identity."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubsync.ingress._dedupe import dedupe_slot
from hubsync.ingress.events import PayloadRejected, object_type_of, parse_events
from tests.helpers.hubspot_events import documented_event

EVENT = documented_event()  # the documented example delivery


def body(*events: object) -> bytes:
    return json.dumps(list(events)).encode()


def test_hubspots_example_parses_and_keeps_unknown_fields() -> None:
    [event] = parse_events(body(EVENT | {"brandNew": {"x": 1}}))
    assert (event.portal_id, event.object_id, event.property_value) == (33, 1246965, "subscriber")
    assert event.object_type == "contacts"
    assert json.loads(event.raw)["brandNew"] == {"x": 1}


@pytest.mark.parametrize("field", ["portalId", "eventId", "objectId", "occurredAt", "subscriptionType"])
def test_missing_required_field_is_named(field: str) -> None:
    with pytest.raises(PayloadRejected, match=field):
        parse_events(body(EVENT, {k: v for k, v in EVENT.items() if k != field}))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"nope",
        b"{}",
        b"[]",
        b"[1]",
        b'"x"',
        body(EVENT | {"objectId": "1"}),
        body(EVENT | {"portalId": True}),
        body(EVENT | {"eventId": 2**64}),
        body(EVENT | {"subscriptionType": "nodot"}),
        body(EVENT | {"portalId": 0}),
    ],
)
def test_malformed_bodies_are_rejected_with_a_reason(raw: bytes) -> None:
    with pytest.raises(PayloadRejected) as err:
        parse_events(raw)
    assert str(err.value)


def test_generic_object_subscription_type() -> None:
    [event] = parse_events(body(EVENT | {"subscriptionType": "object.propertyChange", "objectTypeId": "0-2"}))
    assert object_type_of(event) == "companies"


def test_identity_separates_what_event_id_alone_does_not() -> None:
    a, b, c = parse_events(body(EVENT, EVENT | {"objectId": 2}, EVENT | {"occurredAt": 1}))
    assert len({a.digest(), b.digest(), c.digest()}) == 3
    [again] = parse_events(body(EVENT | {"attemptNumber": 3}))
    assert again.digest() == a.digest()  # a retry is the same event


@given(st.integers(min_value=1, max_value=2**62), st.integers(min_value=0, max_value=2**62))
def test_dedupe_members_are_canonical_int64_strings(object_id: int, occurred: int) -> None:
    [event] = parse_events(body(EVENT | {"objectId": object_id, "occurredAt": occurred}))
    key, member = dedupe_slot(event, 4096)
    assert -(2**63) <= member < 2**63 and str(int(str(member))) == str(member)
    assert key.startswith(f"hubsync:{{{event.portal_id}}}:seen:{occurred // 3_600_000}:")
    assert 0 <= int(key.rsplit(":", 1)[1]) < 4096
