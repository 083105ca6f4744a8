"""Webhook events as HubSpot sends them, for tests of the code that reads them."""

from __future__ import annotations

from typing import Any


def documented_event() -> dict[str, Any]:
    """A fresh copy of the example delivery in HubSpot's webhook documentation."""
    return {
        "objectId": 1246965,
        "propertyName": "lifecyclestage",
        "propertyValue": "subscriber",
        "changeSource": "CRM_UI",
        "eventId": 3816279340,
        "subscriptionId": 25,
        "portalId": 33,
        "appId": 1160452,
        "occurredAt": 1462216307945,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
    }
