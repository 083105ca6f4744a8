"""SuggestMapping's matching: names, labels, synonyms and types; the proposal is a valid mapping."""

from __future__ import annotations

from hubsync.api.writer.v1 import writer_pb2
from hubsync.mapper.mappings import parse_mappings
from hubsync.mapper.suggest import suggest

P = writer_pb2.Property
PROPS = {
    p.name: p
    for p in [
        P(name="firstname", label="First Name", type="string"),
        P(name="lastname", label="Last Name", type="string"),
        P(name="email", label="Email", type="string"),
        P(name="zip", label="Postal Code", type="string"),
        P(name="hs_email_optout", label="Unsubscribed from all email", type="bool"),
        P(name="date_of_birth", label="Date of birth", type="date"),
        P(name="numberofemployees", label="Number of Employees", type="number"),
        P(name="hs_additional_emails", label="Additional email addresses", type="enumeration"),
        P(name="external_id", label="External ID", type="string", has_unique_value=True),
    ]
}


def test_suggest_matches_names_labels_and_types() -> None:
    schema = {
        "id": {"type": "string"},
        "first_name": {"type": "string"},
        "surname": {"type": "string"},
        "postal_code": {"type": "string"},
        "unsubscribed": {"type": "boolean", "title": "Unsubscribed from all email"},
        "birthDate": {"type": "string", "format": "date"},
        "employees": {"type": "integer"},
        "additional_email_addresses": {"type": "array"},
        "email": {"type": "number"},
        "favourite_colour": {"type": "string"},
    }
    text, unmatched = suggest("contacts", schema, PROPS)
    (mapping,) = parse_mappings(text, "suggested.yaml")
    got = {f.external: (f.hubspot, f.transform) for f in mapping.fields}
    assert got == {
        "first_name": ("firstname", "string"),
        "surname": ("lastname", "string"),
        "postal_code": ("zip", "string"),
        "unsubscribed": ("hs_email_optout", "bool"),
        "birthDate": ("date_of_birth", "date"),
        "employees": ("numberofemployees", "integer"),
        "additional_email_addresses": ("hs_additional_emails", "split"),
    }
    assert mapping.id.external == "id" and mapping.id.hubspot == "external_id"
    # A number cannot feed a string-typed email property without a deliberate choice; no match.
    assert sorted(unmatched) == ["email", "favourite_colour"]
