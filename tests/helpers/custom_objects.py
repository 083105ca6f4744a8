"""The custom object the tests define in the sandbox through HubSpot's schemas API."""

from __future__ import annotations

from typing import Any


def subscription_schema(*extra_properties: dict[str, Any]) -> dict[str, Any]:
    """The ``subscription`` object's schema (plan, seats, then ``extra_properties``), associated
    with contacts."""
    return {
        "name": "subscription",
        "labels": {"singular": "Subscription", "plural": "Subscriptions"},
        "primaryDisplayProperty": "plan",
        "requiredProperties": ["plan"],
        "properties": [
            {"name": "plan", "label": "Plan", "type": "string", "fieldType": "text"},
            {"name": "seats", "label": "Seats", "type": "number", "fieldType": "number"},
            *extra_properties,
        ],
        "associatedObjects": ["CONTACT"],
    }
