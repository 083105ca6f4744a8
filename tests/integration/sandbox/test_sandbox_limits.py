"""Every limit and error of the facts file: exact status, headers and body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from hubsync.sandbox import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PRIVATE_TOKEN,
    PortalConfig,
    PrivateAppConfig,
    SandboxServer,
)
from tests.helpers.sandbox import fast_config

CONTACTS = "/crm/v3/objects/contacts"
AUTH = {"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"}


@asynccontextmanager
async def running(**cfg: Any) -> AsyncIterator[tuple[SandboxServer, httpx.AsyncClient]]:
    async with (
        SandboxServer(fast_config(**cfg)) as sb,
        httpx.AsyncClient(base_url=sb.base_url, headers=AUTH) as c,
    ):
        # Time moves only when a test advances it: no flakiness on a loaded machine.
        r = await c.post("/_sandbox/clock", json={"freeze": True})
        assert r.json()["frozen"] is True
        yield sb, c


def _rate_headers(r: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("x-hubspot-ratelimit")}


async def test_ten_secondly_rolling_limit() -> None:
    async with running(portals=[PortalConfig(burst_per_10s=3, daily_limit=1000)]) as (sb, c):
        seen = []
        for _ in range(3):
            r = await c.get(CONTACTS)
            assert r.status_code == 200
            seen.append(_rate_headers(r))
        assert [h["x-hubspot-ratelimit-remaining"] for h in seen] == ["2", "1", "0"]
        assert seen[0] == {
            "x-hubspot-ratelimit-interval-milliseconds": "10000",
            "x-hubspot-ratelimit-max": "3",
            "x-hubspot-ratelimit-remaining": "2",
            "x-hubspot-ratelimit-secondly": "1",
            "x-hubspot-ratelimit-secondly-remaining": "0",
            "x-hubspot-ratelimit-daily": "1000",
            "x-hubspot-ratelimit-daily-remaining": "999",
        }
        r = await c.get(CONTACTS)
        assert r.status_code == 429
        body = r.json()
        assert set(body) == {"status", "message", "errorType", "correlationId", "policyName", "requestId"}
        assert body["status"] == "error"
        assert body["message"] == "You have reached your ten_secondly_rolling limit."
        assert body["errorType"] == "RATE_LIMIT" and body["policyName"] == "TEN_SECONDLY_ROLLING"
        assert _rate_headers(r)["x-hubspot-ratelimit-remaining"] == "0"
        # The window rolls: 10 s later the calls are allowed again.
        sb.state.clock.advance(10.001)
        assert (await c.get(CONTACTS)).status_code == 200


async def test_daily_limit() -> None:
    async with running(portals=[PortalConfig(burst_per_10s=100, daily_limit=2)]) as (sb, c):
        assert (await c.get(CONTACTS)).status_code == 200
        r = await c.get(CONTACTS)
        assert _rate_headers(r)["x-hubspot-ratelimit-daily-remaining"] == "0"
        r = await c.get(CONTACTS)
        assert r.status_code == 429
        assert r.json()["policyName"] == "DAILY"
        assert r.json()["message"] == "You have reached your daily limit."
        sb.state.clock.advance(86_400)
        assert (await c.get(CONTACTS)).status_code == 200


async def test_plan_presets() -> None:
    for plan, burst, daily in (
        ("starter", 100, 250_000),
        ("professional", 190, 625_000),
        ("enterprise", 190, 1_000_000),
        ("api_add_on", 250, 2_000_000),
    ):
        async with running(portals=[PortalConfig.model_validate({"plan": plan})]) as (_, c):
            h = _rate_headers(await c.get(CONTACTS))
            assert h["x-hubspot-ratelimit-max"] == str(burst)
            assert h["x-hubspot-ratelimit-daily"] == str(daily)


async def _oauth_token(c: httpx.AsyncClient, scope: str = "crm.objects.contacts.read") -> dict[str, Any]:
    r = await c.get(
        "/oauth/authorize",
        params={"client_id": DEFAULT_CLIENT_ID, "redirect_uri": "http://127.0.0.1:9/cb", "scope": scope},
    )
    code = r.headers["location"].split("code=")[1].split("&")[0]
    r = await c.post(
        "/oauth/v1/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://127.0.0.1:9/cb",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_oauth_apps_get_110_and_no_daily_headers() -> None:
    async with running(portals=[PortalConfig()]) as (_, c):
        tok = await _oauth_token(c)
        r = await c.get(CONTACTS, headers={"Authorization": f"Bearer {tok['access_token']}"})
        assert r.status_code == 200
        h = _rate_headers(r)
        assert h["x-hubspot-ratelimit-max"] == "110"
        assert "x-hubspot-ratelimit-daily" not in h and "x-hubspot-ratelimit-daily-remaining" not in h


async def test_search_is_5_per_second_with_no_rate_headers() -> None:
    async with running(portals=[PortalConfig(burst_per_10s=2)]) as (sb, c):
        for _ in range(5):
            r = await c.post(f"{CONTACTS}/search", json={})
            assert r.status_code == 200
            assert _rate_headers(r) == {}
        r = await c.post(f"{CONTACTS}/search", json={})
        assert r.status_code == 429
        assert r.json()["message"] == "You have reached your secondly limit."
        assert r.json()["errorType"] == "RATE_LIMIT"
        # Search is counted separately: the burst of 2 is untouched.
        assert _rate_headers(await c.get(CONTACTS))["x-hubspot-ratelimit-remaining"] == "1"
        sb.state.clock.advance(1.001)
        assert (await c.post(f"{CONTACTS}/search", json={})).status_code == 200


async def test_batch_of_101_is_400(client: httpx.AsyncClient) -> None:
    for action in ("read", "create", "update", "upsert", "archive"):
        r = await client.post(
            f"{CONTACTS}/batch/{action}", json={"inputs": [{"id": str(i)} for i in range(101)]}
        )
        assert r.status_code == 400, action
        assert r.json()["category"] == "VALIDATION_ERROR"
    r = await client.post(
        "/crm/v4/associations/contacts/companies/batch/read", json={"inputs": [{"id": "1"}] * 101}
    )
    assert r.status_code == 400


async def test_search_request_limits(client: httpx.AsyncClient) -> None:
    s = f"{CONTACTS}/search"
    r = await client.post(s, json={"limit": 201})
    assert r.status_code == 400 and r.json()["category"] == "VALIDATION_ERROR"
    assert (await client.post(s, json={"limit": 200})).status_code == 200
    r = await client.post(s, json={"limit": 100, "after": "9950"})
    assert r.status_code == 400
    assert (await client.post(s, json={"limit": 100, "after": "9900"})).status_code == 200
    big = {"query": "x" * 3001}
    r = await client.post(s, json=big)
    assert r.status_code == 400 and "3000" in r.json()["message"]
    f = {"propertyName": "email", "operator": "HAS_PROPERTY"}
    r = await client.post(s, json={"filterGroups": [{"filters": [f]}] * 6})
    assert r.status_code == 400
    r = await client.post(s, json={"filterGroups": [{"filters": [f] * 7}]})
    assert r.status_code == 400
    r = await client.post(s, json={"filterGroups": [{"filters": [f] * 6}] * 3 + [{"filters": [f]}]})
    assert r.status_code == 400  # 19 filters > 18
    r = await client.post(
        s, json={"filterGroups": [{"filters": [{"propertyName": "email", "operator": "LIKE"}]}]}
    )
    assert r.status_code == 400


async def test_oauth_token_endpoint_wants_a_form_body(client: httpx.AsyncClient) -> None:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": "na1-unknown",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
    }
    for path in ("/oauth/v1/token", "/oauth/v3/token", "/oauth/2026-03/token"):
        r = await client.post(path, json=form)
        assert r.status_code == 400
        assert r.json()["status"] == "BAD_GRANT_TYPE"
        r = await client.post(path, params=form)
        assert r.status_code == 400
        r = await client.post(path, data=form)
        assert r.status_code == 400
        body = r.json()
        assert body["error"] == "invalid_grant"
        assert body["error_description"] == "refresh token is invalid, expired or revoked"
        assert body["status"] == "BAD_REFRESH_TOKEN"
        assert body["message"]
    r = await client.post("/oauth/v1/token", data={**form, "client_secret": "nope"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"


async def test_access_tokens_expire_after_ttl() -> None:
    async with running(token_ttl_s=60) as (sb, c):
        tok = await _oauth_token(c)
        assert tok["expires_in"] == 60
        bearer = {"Authorization": f"Bearer {tok['access_token']}"}
        assert (await c.get(CONTACTS, headers=bearer)).status_code == 200
        info = await c.get(f"/oauth/v1/access-tokens/{tok['access_token']}")
        assert info.json()["expires_in"] <= 60
        sb.state.clock.advance(61)
        r = await c.get(CONTACTS, headers=bearer)
        assert r.status_code == 401
        assert r.json()["category"] == "EXPIRED_AUTHENTICATION"
        assert r.json()["message"] == "The OAuth token used to make this call expired 0 minute(s) ago."
        # A refresh gives a working token again.
        r = await c.post(
            "/oauth/v3/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tok["refresh_token"],
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
            },
        )
        fresh = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert (await c.get(CONTACTS, headers=fresh)).status_code == 200


async def test_missing_scope_is_403() -> None:
    portal = PortalConfig(
        private_apps=[PrivateAppConfig(token="pat-na1-ro", scopes=["crm.objects.contacts.read"])]
    )
    async with running(portals=[portal]) as (_, c):
        h = {"Authorization": "Bearer pat-na1-ro"}
        assert (await c.get(CONTACTS, headers=h)).status_code == 200
        r = await c.post(CONTACTS, headers=h, json={"properties": {}})
        assert r.status_code == 403
        assert r.json()["category"] == "MISSING_SCOPES"
        assert r.json()["errors"][0]["context"] == {"requiredGranularScopes": ["crm.objects.contacts.write"]}


async def test_unique_value_conflict_on_update_is_409(client: httpx.AsyncClient) -> None:
    a = (await client.post(CONTACTS, json={"properties": {"external_id": "X1"}})).json()["id"]
    b = (await client.post(CONTACTS, json={"properties": {"external_id": "X2"}})).json()["id"]
    r = await client.patch(f"{CONTACTS}/{b}", json={"properties": {"external_id": "X1"}})
    assert r.status_code == 409
    assert r.json()["category"] == "CONFLICT"
    assert f"Existing ID: {a}" in r.json()["message"]
    r = await client.post(
        f"{CONTACTS}/batch/create",
        json={"inputs": [{"properties": {"external_id": "X3"}}, {"properties": {"external_id": "X1"}}]},
    )
    assert r.status_code == 409 and f"Existing ID: {a}" in r.json()["message"]
    # Nothing of the rejected batch was written.
    r = await client.get(f"{CONTACTS}/X3", params={"idProperty": "external_id"})
    assert r.status_code == 404


async def test_partial_batch_create_conflict_mode() -> None:
    async with running(batch_create_conflict="partial") as (_, c):
        a = (await c.post(CONTACTS, json={"properties": {"external_id": "P1"}})).json()["id"]
        r = await c.post(
            f"{CONTACTS}/batch/create",
            json={
                "inputs": [
                    {"properties": {"external_id": "P2"}},
                    {"properties": {"external_id": "P1"}, "objectWriteTraceId": "t-1"},
                ]
            },
        )
        assert r.status_code == 207
        body = r.json()
        assert len(body["results"]) == 1 and body["numErrors"] == 1
        assert body["errors"][0]["category"] == "CONFLICT"
        assert f"Existing ID: {a}" in body["errors"][0]["message"]
        assert body["errors"][0]["context"] == {"objectWriteTraceId": ["t-1"]}


async def test_batch_update_with_missing_ids_is_207(client: httpx.AsyncClient) -> None:
    a = (await client.post(CONTACTS, json={"properties": {"email": "u@x.com"}})).json()["id"]
    r = await client.post(
        f"{CONTACTS}/batch/update",
        json={"inputs": [{"id": a, "properties": {"firstname": "F"}}, {"id": "777777", "properties": {}}]},
    )
    assert r.status_code == 207
    assert r.json()["errors"][0]["context"] == {"ids": ["777777"]}
    assert r.json()["results"][0]["properties"]["firstname"] == "F"


async def test_invalid_property_values_are_400(client: httpx.AsyncClient) -> None:
    for props in (
        {"lifecyclestage": "nonsense"},
        {"date_of_birth": "1700000000123"},
        {"hs_email_optout": "maybe"},
    ):
        r = await client.post(CONTACTS, json={"properties": props})
        assert r.status_code == 400, props
        assert r.json()["message"].startswith("Property values were not valid")
    r = await client.post(CONTACTS, json={"properties": {"date_of_birth": "1990-05-17"}})
    assert r.status_code == 201 and r.json()["properties"]["date_of_birth"] == "1990-05-17"


async def test_retry_after_on_429_is_configurable() -> None:
    async with running(portals=[PortalConfig(burst_per_10s=1)]) as (_, c):
        await c.get(CONTACTS)
        r = await c.get(CONTACTS)
        assert r.status_code == 429 and "retry-after" not in r.headers
    async with running(portals=[PortalConfig(burst_per_10s=1)], rate_limit_retry_after_s=10) as (_, c):
        await c.get(CONTACTS)
        r = await c.get(CONTACTS)
        assert r.status_code == 429 and r.headers["retry-after"] == "10"


async def test_token_introspect_and_revoke(client: httpx.AsyncClient) -> None:
    tok = await _oauth_token(client)
    creds = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    r = await client.post("/oauth/v3/token/introspect", data={**creds, "token": tok["access_token"]})
    assert r.status_code == 200 and r.json()["active"] is True and r.json()["hub_id"] == 12345
    r = await client.post("/oauth/v3/token/revoke", data={**creds, "token": tok["refresh_token"]})
    assert r.status_code == 200
    r = await client.post("/oauth/v3/token/introspect", data={**creds, "token": tok["access_token"]})
    assert r.json() == {"active": False}
    bearer = {"Authorization": f"Bearer {tok['access_token']}"}
    assert (await client.get(CONTACTS, headers=bearer)).status_code == 401
    r = await client.post("/oauth/v3/token/introspect", json={**creds, "token": "x"})
    assert r.status_code == 400


async def test_account_details_and_daily_usage() -> None:
    async with running(portals=[PortalConfig(hub_id=4242, daily_limit=500)]) as (_, c):
        r = await c.get("/account-info/v3/details")
        assert r.status_code == 200 and r.json()["portalId"] == 4242
        await c.get(CONTACTS)
        usage = (await c.get("/account-info/v3/api-usage/daily/private-apps")).json()["results"][0]
        assert usage["usageLimit"] == 500 and usage["currentUsage"] == 3  # the call itself counts
