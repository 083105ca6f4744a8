"""Compiled transforms: each transform both ways, ownership, and round trips (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubsync.mapper.mappings import LoadedMapping, parse_mappings
from hubsync.mapper.transforms import TransformError, compile_mapping

MAPPING = """
object_type: contacts
id: {external: id, hubspot: external_id}
fields:
  - {hubspot: properties.firstname, external: first_name}
  - {hubspot: properties.city, external: address.city}
  - {hubspot: properties.zip, external: address.postal_code}
  - {hubspot: properties.hs_additional_emails, external: emails, transform: split, delimiter: ";"}
  - {hubspot: properties.hs_email_optout, external: opted_out, transform: bool}
  - {hubspot: properties.numberofemployees, external: size, transform: number}
  - {hubspot: properties.seats, external: seats, transform: integer}
  - {hubspot: properties.date_of_birth, external: born, transform: date}
  - {hubspot: properties.closedate, external: closed_at, transform: datetime}
  - hubspot: properties.tier
    external: tier
    transform: enum
    values: {gold_tier: gold, silver_tier: silver}
  - {hubspot: properties.lifecyclestage, external: stage, owner: hubspot, default: lead}
  - {hubspot: [properties.firstname, properties.lastname], external: full_name, separator: " "}
"""


@pytest.fixture(scope="module")
def mapping():  # type: ignore[no-untyped-def]
    return compile_mapping(LoadedMapping(parse_mappings(MAPPING, "t.yaml")[0], "t.yaml"))


def test_inbound_converts_every_kind(mapping) -> None:  # type: ignore[no-untyped-def]
    ext_id, out = mapping.to_external(
        {
            "external_id": "c-9",
            "firstname": "Ada",
            "lastname": "Lovelace",
            "city": "London",
            "hs_additional_emails": "a@x.io;b@x.io",
            "hs_email_optout": "false",
            "numberofemployees": "12.5",
            "seats": "3",
            "date_of_birth": "1700006400000",
            "closedate": "2023-11-14T22:13:20Z",
            "tier": "gold_tier",
        }
    )
    assert ext_id == "c-9"
    assert out == {
        "first_name": "Ada",
        "address": {"city": "London", "postal_code": None},
        "emails": ["a@x.io", "b@x.io"],
        "opted_out": False,
        "size": 12.5,
        "seats": 3,
        "born": "2023-11-15",
        "closed_at": "2023-11-14T22:13:20.000Z",
        "tier": "gold",
        "stage": "lead",
        "full_name": "Ada Lovelace",
    }


def test_inbound_passes_unconvertible_values_through(mapping) -> None:  # type: ignore[no-untyped-def]
    _, out = mapping.to_external({"numberofemployees": "lots", "hs_email_optout": ""})
    assert out["size"] == "lots" and out["opted_out"] is None


def test_outbound_ownership_and_clearing(mapping) -> None:  # type: ignore[no-untyped-def]
    fields = {"first_name": None, "stage": "customer", "full_name": "X Y", "born": "2024-02-29"}
    owned = mapping.to_hubspot("c-1", fields, owned_only=True)
    assert owned == {"firstname": "", "date_of_birth": "1709164800000", "external_id": "c-1"}
    assert mapping.to_hubspot("c-1", fields, owned_only=False)["lifecyclestage"] == "customer"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"born": "someday"}, "born"),
        ({"size": "many"}, "size"),
        ({"opted_out": "maybe"}, "opted_out"),
        ({"emails": ["a;b"]}, "emails"),
        ({"emails": "a@x"}, "emails"),
        ({"seats": 1.5}, "seats"),
        ({"size": float("inf")}, "size"),
    ],
)
def test_outbound_errors_name_the_field(mapping, fields: dict[str, Any], field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TransformError) as err:
        mapping.to_hubspot("x", fields, owned_only=False)
    assert err.value.field == field


_text = st.text(st.characters(codec="utf-8", exclude_characters=";"), min_size=1, max_size=20)
_record = st.fixed_dictionaries(
    {},
    optional={
        "first_name": _text,
        "address": st.fixed_dictionaries({}, optional={"city": _text, "postal_code": _text}),
        "emails": st.lists(_text, min_size=1, max_size=4),
        "opted_out": st.booleans(),
        "size": st.one_of(st.integers(-(2**52), 2**52), st.floats(allow_nan=False, allow_infinity=False)),
        "seats": st.integers(-(10**9), 10**9),
        "born": st.dates().map(lambda d: d.isoformat()),
        "closed_at": st.datetimes(
            min_value=__import__("datetime").datetime(1971, 1, 1),
            max_value=__import__("datetime").datetime(2200, 1, 1),
        ).map(lambda d: d.isoformat(timespec="milliseconds") + "Z"),
        "tier": st.sampled_from(["gold", "silver"]),
    },
)


@settings(max_examples=300, deadline=None)
@given(record=_record)
def test_invertible_fields_round_trip(mapping, record: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    props = mapping.to_hubspot("ext-1", record, owned_only=True)
    ext_id, back = mapping.to_external(props)
    assert ext_id == "ext-1"
    for key, value in record.items():
        if key == "address":
            for sub, v in value.items():
                assert back["address"][sub] == v
        elif key == "size" and isinstance(value, float):
            assert back[key] == pytest.approx(value, rel=1e-15, abs=0)
        else:
            assert back[key] == value, key
    # And HubSpot → company → HubSpot gives the same properties back.
    present = {k: v for k, v in back.items() if k in record}
    if "address" in present:
        present["address"] = {k: v for k, v in present["address"].items() if k in record["address"]}
    again = mapping.to_hubspot(ext_id, present, owned_only=True)
    assert again == props
