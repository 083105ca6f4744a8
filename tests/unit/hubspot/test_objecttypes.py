"""The one table of HubSpot's standard object types that ingress, the mapper and writer share."""

from __future__ import annotations

from hubsync.hubspot.objecttypes import (
    SINGULAR,
    STANDARD_IDS,
    STANDARD_NAMES,
    TYPES_BY_ID,
    WEBHOOK_PREFIXES,
)


def test_every_spelling_names_the_plural() -> None:
    assert STANDARD_NAMES["ticket"] == STANDARD_NAMES["0-5"] == STANDARD_NAMES["tickets"] == "tickets"
    assert STANDARD_NAMES["company"] == "companies"
    assert STANDARD_NAMES["line_item"] == STANDARD_NAMES["0-8"] == "line_items"
    assert len(STANDARD_NAMES) == 3 * len(STANDARD_IDS)


def test_ids_and_prefixes_agree_with_the_names() -> None:
    assert {TYPES_BY_ID[tid] for tid in STANDARD_IDS.values()} == set(STANDARD_IDS)
    assert SINGULAR["emails"] == "email"
    assert WEBHOOK_PREFIXES == {
        "contact": "contacts",
        "company": "companies",
        "deal": "deals",
        "ticket": "tickets",
        "product": "products",
        "line_item": "line_items",
    }
