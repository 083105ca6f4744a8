"""The /_sandbox/ admin API: faults, revocation, objects, reset, paging."""

from __future__ import annotations

import time

import httpx

from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, PortalConfig, PrivateAppConfig, SandboxServer
from tests.helpers.sandbox import fast_config

CONTACTS = "/crm/v3/objects/contacts"


async def test_fault_error_rate_by_endpoint_and_portal(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/_sandbox/faults",
        json={"endpoint": "POST /crm/v3/objects/{objectType}/batch/read", "status": 503, "portal": 12345},
    )
    assert r.status_code == 200
    fid = r.json()["results"][0]["id"]
    r = await client.post(f"{CONTACTS}/batch/read", json={"inputs": []})
    assert r.status_code == 503 and r.json()["status"] == "error"
    assert (await client.get(CONTACTS)).status_code == 200  # other endpoints unaffected
    await client.post(
        "/_sandbox/faults", json={"endpoint": "GET /crm/v3/objects/{objectType}", "status": 500, "portal": 99}
    )
    assert (await client.get(CONTACTS)).status_code == 200  # other portal's fault
    assert len((await client.get("/_sandbox/faults")).json()["results"]) == 2
    await client.delete(f"/_sandbox/faults/{fid}")
    assert (await client.post(f"{CONTACTS}/batch/read", json={"inputs": []})).status_code == 200
    await client.delete("/_sandbox/faults")
    assert (await client.get("/_sandbox/faults")).json()["results"] == []


async def test_every_fault_status(client: httpx.AsyncClient) -> None:
    for status in (423, 429, 477, 500, 502, 503, 504, 521, 522, 523, 524, 525, 526):
        await client.post("/_sandbox/faults", json={"status": status, "remaining": 1})
        r = await client.get(CONTACTS)
        assert r.status_code == status
        if status == 429:
            assert r.json()["policyName"] == "TEN_SECONDLY_ROLLING"
        else:
            assert r.json()["status"] == "error" and r.json()["category"]
        if status in (423, 477):
            assert r.headers["retry-after"] == "2"
        assert (await client.get(CONTACTS)).status_code == 200  # fired once only


async def test_fault_error_rate_is_a_fraction(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json={"status": 500, "error_rate": 0.5})
    statuses = [(await client.get(CONTACTS)).status_code for _ in range(60)]
    assert 10 < statuses.count(500) < 50
    assert statuses.count(200) + statuses.count(500) == 60


async def test_502_when_batch_exceeds_n(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json={"batch_limit": 10})
    assert (
        await client.post(f"{CONTACTS}/batch/read", json={"inputs": [{"id": "1"}] * 10})
    ).status_code == 207
    r = await client.post(f"{CONTACTS}/batch/read", json={"inputs": [{"id": "1"}] * 11})
    assert r.status_code == 502


async def test_latency_and_timeout(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json={"latency_ms": 150, "remaining": 1})
    t0 = time.perf_counter()
    assert (await client.get(CONTACTS)).status_code == 200
    assert time.perf_counter() - t0 >= 0.15
    await client.post("/_sandbox/faults", json={"timeout_s": 0.5, "remaining": 1})
    try:
        await client.get(CONTACTS, timeout=0.1)
        raise AssertionError("expected a client timeout")
    except httpx.ReadTimeout:
        pass


async def test_faults_at_startup() -> None:
    cfg = fast_config(faults=[{"endpoint": "/crm/v3/objects/*", "status": 423}])
    async with SandboxServer(cfg) as sb, httpx.AsyncClient(base_url=sb.base_url) as c:
        r = await c.get(CONTACTS, headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"})
        assert r.status_code == 423 and r.headers["retry-after"] == "2"


async def test_revoke_private_token(client: httpx.AsyncClient) -> None:
    assert (
        await client.post("/_sandbox/tokens/revoke", json={"token": DEFAULT_PRIVATE_TOKEN})
    ).status_code == 200
    assert (await client.get(CONTACTS)).status_code == 401


async def test_list_paging_and_objects_view(client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"{CONTACTS}/batch/create",
        json={"inputs": [{"properties": {"email": f"p{n}@x.com"}} for n in range(25)]},
    )
    ids = [x["id"] for x in r.json()["results"]]
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 10, **({"after": after} if after else {})}
        page = (await client.get(CONTACTS, params=params)).json()
        seen += [x["id"] for x in page["results"]]
        if "paging" not in page:
            break
        after = page["paging"]["next"]["after"]
        assert page["paging"]["next"]["link"].endswith(f"after={after}&limit=10")
    assert seen == sorted(ids, key=int)
    assert (await client.get(CONTACTS, params={"limit": 101})).status_code == 400
    objs = (await client.get("/_sandbox/objects/contacts")).json()["results"]
    assert len(objs) == 25 and objs[0]["properties"]["email"] == "p0@x.com"
    await client.post("/_sandbox/reset")
    assert (await client.get("/_sandbox/objects/contacts")).json()["results"] == []
    assert (await client.get("/_sandbox/requests")).json()["total"] == 0
    await client.get(CONTACTS)
    counts = (await client.get("/_sandbox/requests")).json()["counts"]
    assert counts["byEndpoint"] == {"GET /crm/v3/objects/{objectType}": 1}


async def test_two_portals_are_isolated() -> None:
    cfg = fast_config(
        portals=[
            PortalConfig(hub_id=1, private_apps=[PrivateAppConfig(token="pat-na1-one")]),
            PortalConfig(hub_id=2, private_apps=[PrivateAppConfig(token="pat-na1-two")]),
        ]
    )
    async with SandboxServer(cfg) as sb, httpx.AsyncClient(base_url=sb.base_url) as c:
        await c.post(
            CONTACTS,
            json={"properties": {"email": "a@x.com"}},
            headers={"Authorization": "Bearer pat-na1-one"},
        )
        r = await c.get(CONTACTS, headers={"Authorization": "Bearer pat-na1-two"})
        assert r.json()["results"] == []
        counts = (await c.get("/_sandbox/requests")).json()["counts"]["byPortal"]
        assert counts == {"1": 1, "2": 1}
        assert len((await c.get("/_sandbox/objects/contacts", params={"portal": 1})).json()["results"]) == 1


async def test_uri_too_long_is_414(client: httpx.AsyncClient) -> None:
    props = ",".join(f"prop_{n}" for n in range(1000))
    r = await client.get(CONTACTS, params={"properties": props})
    assert r.status_code == 414 and r.json()["category"] == "URI_TOO_LONG"
    assert (await client.get(CONTACTS, params={"properties": "email"})).status_code == 200


async def test_portal_limits_change_at_runtime(client: httpx.AsyncClient) -> None:
    r = await client.put("/_sandbox/portals/12345", json={"burst_per_10s": 2})
    assert r.status_code == 200 and r.json()["burstPer10s"] == 2
    assert (await client.get(CONTACTS)).headers["x-hubspot-ratelimit-max"] == "2"
    await client.get(CONTACTS)
    assert (await client.get(CONTACTS)).status_code == 429
    r = await client.put("/_sandbox/portals/12345", json={"plan": "enterprise", "burst_per_10s": None})
    assert r.json()["burstPer10s"] == 190 and r.json()["dailyLimit"] == 1_000_000
    assert (await client.put("/_sandbox/portals/12345", json={"hub_id": 1})).status_code == 400
    assert (await client.put("/_sandbox/portals/12345", json={"plan": "gold"})).status_code == 400
    await client.post("/_sandbox/reset")
    assert (await client.get("/_sandbox/portals")).json()["results"][0]["burstPer10s"] == 100_000


async def test_admin_bad_input_is_400(client: httpx.AsyncClient) -> None:
    assert (await client.get("/_sandbox/objects/contacts", params={"portal": "x"})).status_code == 400
    assert (await client.post("/_sandbox/faults", json={"status": 418})).status_code == 400
    assert (await client.post("/_sandbox/ui/associations", json={})).status_code == 400
    assert (await client.get("/_sandbox/objects/widgets")).status_code == 400
