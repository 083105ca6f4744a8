"""Account information: portal details and the private apps' daily API usage."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from .ratelimit import DAY_MS
from .routing import Call, api_route
from .search import ms_to_iso
from .state import SandboxState


async def details(call: Call) -> tuple[int, Any]:
    assert call.token is not None
    return 200, {
        "portalId": call.token.hub_id,
        "accountType": "STANDARD",
        "timeZone": "Etc/UTC",
        "companyCurrency": "USD",
        "additionalCurrencies": [],
        "utcOffset": "+00:00",
        "utcOffsetMilliseconds": 0,
        "uiDomain": "app.hubspot.com",
        "dataHostingLocation": "na1",
    }


async def daily_usage(call: Call) -> tuple[int, Any]:
    assert call.token is not None
    hub_id = call.token.hub_id
    now = call.state.clock.now_ms()
    counter = call.state.limiter.daily.get(hub_id)
    used = counter.used(now) if counter is not None else 0
    return 200, {
        "results": [
            {
                "name": "private-apps-api-calls-daily",
                "usageLimit": call.state.portals[hub_id].daily,
                "currentUsage": used,
                "collectedAt": ms_to_iso(now),
                "fetchStatus": "SUCCESS",
                "resetsAt": ms_to_iso((now // DAY_MS + 1) * DAY_MS),
            }
        ]
    }


def routes(state: SandboxState) -> list[Route]:
    return [
        api_route(state, "GET", "/account-info/v3/details", details),
        api_route(state, "GET", "/account-info/v3/api-usage/daily/private-apps", daily_usage),
    ]
