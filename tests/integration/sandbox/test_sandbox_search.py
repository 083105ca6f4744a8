"""Search: every operator, sorts, paging, the free-text query and the index lag."""

from __future__ import annotations

from typing import Any

import httpx

from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, SandboxServer
from tests.helpers.sandbox import DEFAULT_CONTACT_PROPERTIES, fast_config

CONTACTS = "/crm/v3/objects/contacts"


async def _seed(c: httpx.AsyncClient) -> list[str]:
    people = [
        {"email": "ada@math.org", "firstname": "Ada", "lastname": "Lovelace", "date_of_birth": "1815-12-10"},
        {"email": "alan@cs.org", "firstname": "Alan", "lastname": "Turing", "date_of_birth": "1912-06-23"},
        {"email": "grace@navy.mil", "firstname": "Grace", "lastname": "Hopper", "lifecyclestage": "customer"},
        {"email": "edsger@cs.org", "firstname": "Edsger", "lifecyclestage": "lead"},
    ]
    r = await c.post(f"{CONTACTS}/batch/create", json={"inputs": [{"properties": p} for p in people]})
    assert r.status_code == 201
    return [x["id"] for x in r.json()["results"]]


async def _emails(c: httpx.AsyncClient, *filters: dict[str, Any], **extra: Any) -> list[str]:
    body = {"filterGroups": [{"filters": list(filters)}] if filters else [], "properties": ["email"], **extra}
    r = await c.post(f"{CONTACTS}/search", json=body)
    assert r.status_code == 200, r.text
    return [x["properties"]["email"] for x in r.json()["results"]]


async def test_every_operator(client: httpx.AsyncClient) -> None:
    await _seed(client)

    def f(prop: str, op: str, **kw: Any) -> dict[str, Any]:
        return {"propertyName": prop, "operator": op, **kw}

    assert await _emails(client, f("firstname", "EQ", value="ada")) == ["ada@math.org"]  # case-insensitive
    assert len(await _emails(client, f("firstname", "NEQ", value="Ada"))) == 3
    born = "1900-01-01"
    assert await _emails(client, f("date_of_birth", "LT", value=born)) == ["ada@math.org"]
    assert await _emails(client, f("date_of_birth", "LTE", value="1815-12-10")) == ["ada@math.org"]
    assert await _emails(client, f("date_of_birth", "GT", value=born)) == ["alan@cs.org"]
    assert await _emails(client, f("date_of_birth", "GTE", value="-6000000000000")) == [
        "ada@math.org",
        "alan@cs.org",
    ]
    assert await _emails(
        client, f("date_of_birth", "BETWEEN", value="1800-01-01", highValue="1850-01-01")
    ) == ["ada@math.org"]
    assert await _emails(client, f("lifecyclestage", "IN", values=["lead", "customer"])) == [
        "grace@navy.mil",
        "edsger@cs.org",
    ]
    assert await _emails(client, f("lifecyclestage", "NOT_IN", values=["lead"])) == ["grace@navy.mil"]
    assert await _emails(client, f("lastname", "NOT_HAS_PROPERTY")) == ["edsger@cs.org"]
    assert len(await _emails(client, f("lastname", "HAS_PROPERTY"))) == 3
    assert await _emails(client, f("email", "CONTAINS_TOKEN", value="*@cs.org")) == [
        "alan@cs.org",
        "edsger@cs.org",
    ]
    assert await _emails(client, f("email", "NOT_CONTAINS_TOKEN", value="*@cs.org")) == [
        "ada@math.org",
        "grace@navy.mil",
    ]
    # Filters of one group are ANDed, groups are ORed.
    r = await client.post(
        f"{CONTACTS}/search",
        json={
            "filterGroups": [
                {"filters": [f("firstname", "EQ", value="Ada"), f("lastname", "EQ", value="Turing")]},
                {"filters": [f("firstname", "EQ", value="Grace")]},
            ]
        },
    )
    assert [x["properties"]["email"] for x in r.json()["results"]] == ["grace@navy.mil"]


async def test_sorts_query_and_default_properties(client: httpx.AsyncClient) -> None:
    await _seed(client)
    desc = await _emails(client, sorts=[{"propertyName": "email", "direction": "DESCENDING"}])
    assert desc == ["grace@navy.mil", "edsger@cs.org", "alan@cs.org", "ada@math.org"]
    assert await _emails(client, sorts=["-email"]) == desc
    assert await _emails(client, query="hopp") == ["grace@navy.mil"]
    r = await client.post(f"{CONTACTS}/search", json={})
    body = r.json()
    assert body["total"] == 4 and "paging" not in body
    assert set(body["results"][0]["properties"]) == DEFAULT_CONTACT_PROPERTIES


async def test_backfill_pattern_by_modified_date_and_object_id(client: httpx.AsyncClient) -> None:
    ids = await _seed(client)
    r = await client.post(
        f"{CONTACTS}/search",
        json={
            "filterGroups": [
                {
                    "filters": [
                        {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": "0"},
                        {"propertyName": "hs_object_id", "operator": "GT", "value": ids[1]},
                    ]
                }
            ],
            "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
        },
    )
    assert [x["id"] for x in r.json()["results"]] == ids[2:]


async def test_index_lag() -> None:
    cfg = fast_config(search_index_lag_ms=3_000)
    async with (
        SandboxServer(cfg) as sb,
        httpx.AsyncClient(
            base_url=sb.base_url, headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"}
        ) as c,
    ):
        clock = sb.state.clock
        clock.freeze()
        cid = (
            await c.post(CONTACTS, json={"properties": {"email": "lag@x.com", "firstname": "Old"}})
        ).json()["id"]
        assert await _emails(c) == []  # written, not yet searchable
        assert (await c.get(f"{CONTACTS}/{cid}")).status_code == 200  # but readable at once
        clock.advance(2.999)
        assert await _emails(c) == []
        clock.advance(0.001)
        assert await _emails(c) == ["lag@x.com"]
        await c.patch(f"{CONTACTS}/{cid}", json={"properties": {"firstname": "New"}})
        f = {"propertyName": "firstname", "operator": "EQ", "value": "New"}
        assert await _emails(c, f) == []  # the index still holds the old value
        assert await _emails(c, {**f, "value": "Old"}) == ["lag@x.com"]
        clock.advance(3)
        assert await _emails(c, f) == ["lag@x.com"]
        await c.delete(f"{CONTACTS}/{cid}")
        assert await _emails(c) == ["lag@x.com"]
        clock.advance(3)
        assert await _emails(c) == []


async def test_10k_cap_and_the_restart_from_last_id_backfill(client: httpx.AsyncClient) -> None:
    total = 10_050
    for start in range(0, total, 100):
        r = await client.post(
            f"{CONTACTS}/batch/create",
            json={
                "inputs": [
                    {"properties": {"external_id": f"e{n}"}} for n in range(start, min(total, start + 100))
                ]
            },
        )
        assert r.status_code == 201
    body: dict[str, Any] = {
        "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
        "properties": ["hs_object_id"],
        "limit": 200,
    }
    seen: list[str] = []
    after: str | None = None
    while True:
        r = await client.post(f"{CONTACTS}/search", json={**body, **({"after": after} if after else {})})
        if r.status_code == 400:
            break
        page = r.json()
        assert page["total"] == total
        seen += [x["id"] for x in page["results"]]
        after = page["paging"]["next"]["after"]
    assert len(seen) == 10_000 and after == "10000"
    assert "10000" in r.json()["message"]
    # The documented way past the cap: filter on the last id seen and start paging again.
    r = await client.post(
        f"{CONTACTS}/search",
        json={
            **body,
            "filterGroups": [
                {"filters": [{"propertyName": "hs_object_id", "operator": "GT", "value": seen[-1]}]}
            ],
        },
    )
    rest = [x["id"] for x in r.json()["results"]]
    assert r.json()["total"] == 50 and len(set(seen + rest)) == total
