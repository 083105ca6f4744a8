"""The request log tells injected faults from the sandbox's own decisions, and names OAuth grants.

A chaos test injects 429s and must still prove hubsync never ran into the portal's real limit;
an auth test counts refreshes. Both read this from ``GET /_sandbox/requests``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, PortalConfig, SandboxServer
from tests.helpers.sandbox import fast_config

CONTACTS = "/crm/v3/objects/contacts"
CLIENT = {"client_id": "hubsync-sandbox-client-id", "client_secret": "hubsync-sandbox-client-secret"}
REDIRECT = "http://127.0.0.1:9/callback"


async def _log(client: httpx.AsyncClient) -> dict[str, Any]:
    reply = await client.get("/_sandbox/requests")
    assert reply.status_code == 200
    return dict(reply.json())


async def test_genuine_429_is_the_limiters_and_injected_429_is_a_fault() -> None:
    async with (
        SandboxServer(fast_config(portals=[PortalConfig(burst_per_10s=3)])) as sb,
        httpx.AsyncClient(
            base_url=sb.base_url, headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"}
        ) as client,
    ):
        await client.post("/_sandbox/clock", json={"freeze": True})
        statuses = [(await client.get(CONTACTS)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        await client.post("/_sandbox/clock", json={"advance_s": 11})
        rule = (await client.post("/_sandbox/faults", json={"status": 429, "remaining": 1})).json()
        injected = await client.get(CONTACTS)
        assert injected.status_code == 429
        assert injected.json()["policyName"] == "TEN_SECONDLY_ROLLING"  # looks the same on the wire

        log = await _log(client)
    entries = log["entries"]
    own, fake = entries[3], entries[4]
    assert own["status"] == 429 and own["origin"] == "rate_limit" and own["injected"] is False
    assert own["rateLimitPolicy"] == "TEN_SECONDLY_ROLLING" and "faults" not in own
    assert fake["status"] == 429 and fake["origin"] == "fault" and fake["injected"] is True
    assert fake["faults"] == [{"id": rule["results"][0]["id"], "kind": "status"}]
    assert "rateLimitPolicy" not in fake
    assert all(e["origin"] == "api" for e in entries[:3])
    counts = log["counts"]
    assert counts["byStatus"]["429"] == 2
    assert counts["rateLimitedByPolicy"] == {"TEN_SECONDLY_ROLLING": 1}
    assert counts["byOrigin"] == {"api": 3, "rate_limit": 1, "fault": 1}
    assert counts["faultsByKind"] == {"status": 1}


async def test_search_secondly_limit_is_the_limiters(client: httpx.AsyncClient) -> None:
    await client.put("/_sandbox/portals/12345", json={"search_per_second": 1})
    await client.post("/_sandbox/clock", json={"freeze": True})
    body = {"filterGroups": [], "limit": 10}
    assert (await client.post(f"{CONTACTS}/search", json=body)).status_code == 200
    assert (await client.post(f"{CONTACTS}/search", json=body)).status_code == 429
    last = (await _log(client))["entries"][-1]
    assert last["origin"] == "rate_limit" and last["rateLimitPolicy"] == "SECONDLY"


async def test_each_kind_of_injected_fault(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json={"status": 503, "remaining": 1})
    assert (await client.get(CONTACTS)).status_code == 503
    await client.post("/_sandbox/faults", json={"latency_ms": 20, "remaining": 1})
    assert (await client.get(CONTACTS)).status_code == 200
    await client.post("/_sandbox/faults", json={"timeout_s": 0.05, "remaining": 1})
    assert (await client.get(CONTACTS)).status_code == 504
    await client.post("/_sandbox/faults", json={"batch_limit": 1, "remaining": 1})
    assert (
        await client.post(f"{CONTACTS}/batch/read", json={"inputs": [{"id": "1"}] * 2})
    ).status_code == 502
    assert (await client.get(CONTACTS)).status_code == 200  # no rule left

    log = await _log(client)
    e = log["entries"]
    assert [(x["status"], x["origin"]) for x in e] == [
        (503, "fault"),
        (200, "api"),  # delayed, but the endpoint's own answer
        (504, "fault"),
        (502, "fault"),
        (200, "api"),
    ]
    assert [f["kind"] for x in e[:4] for f in x["faults"]] == ["status", "latency", "timeout", "batch_limit"]
    assert e[1]["faults"][0]["latencyMs"] == 20 and e[1]["injected"] is False
    assert "faults" not in e[4]
    assert log["counts"]["faultsByKind"] == {"status": 1, "latency": 1, "timeout": 1, "batch_limit": 1}
    assert log["counts"]["byOrigin"] == {"fault": 3, "api": 2}
    assert log["counts"]["rateLimitedByPolicy"] == {}


async def test_oauth_token_requests_name_their_grant(sandbox: SandboxServer) -> None:
    async with httpx.AsyncClient(base_url=sandbox.base_url) as client:
        consent = await client.get(
            "/oauth/authorize", params={"client_id": CLIENT["client_id"], "redirect_uri": REDIRECT}
        )
        code = parse_qs(urlsplit(consent.headers["location"]).query)["code"][0]
        exchanged = await client.post(
            "/oauth/v1/token",
            data={**CLIENT, "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        )
        assert exchanged.status_code == 200
        refresh = exchanged.json()["refresh_token"]
        for _ in range(2):
            r = await client.post(
                "/oauth/v1/token", data={**CLIENT, "grant_type": "refresh_token", "refresh_token": refresh}
            )
            assert r.status_code == 200
        bad = await client.post(
            "/oauth/v1/token", data={**CLIENT, "grant_type": "refresh_token", "refresh_token": "nope"}
        )
        assert bad.status_code == 400
        odd = await client.post("/oauth/v1/token", data={**CLIENT, "grant_type": "password"})
        assert odd.status_code == 400
        await client.post("/_sandbox/faults", json={"endpoint": "POST /oauth/v1/token", "status": 503})
        faulted = await client.post(
            "/oauth/v1/token", data={**CLIENT, "grant_type": "refresh_token", "refresh_token": refresh}
        )
        assert faulted.status_code == 503
        log = await _log(client)

    tokens = [e for e in log["entries"] if e["endpoint"] == "POST /oauth/v1/token"]
    assert [(e.get("grantType"), e["status"], e["origin"]) for e in tokens] == [
        ("authorization_code", 200, "api"),
        ("refresh_token", 200, "api"),
        ("refresh_token", 200, "api"),
        ("refresh_token", 400, "api"),
        ("unsupported", 400, "api"),
        (None, 503, "fault"),  # answered by the fault before the form was read
    ]
    assert log["counts"]["byGrantType"] == {
        "authorization_code": {"200": 1},
        "refresh_token": {"200": 2, "400": 1},
        "unsupported": {"400": 1},
    }
    authorize = [e for e in log["entries"] if e["endpoint"] == "GET /oauth/authorize"]
    assert authorize and "grantType" not in authorize[0]
    for e in log["entries"]:  # a grant's secrets never reach the log
        assert refresh not in str(e) and code not in str(e)


async def test_limit_zero_gives_counts_only(client: httpx.AsyncClient) -> None:
    await client.get(CONTACTS)
    body = (await client.get("/_sandbox/requests", params={"limit": 0})).json()
    assert body["entries"] == [] and body["total"] == 1
