"""The sandbox's core over HTTP: auth, contacts CRUD, batch read/upsert, request log, webhooks."""

from __future__ import annotations

import hashlib

import httpx

from hubsync.sandbox import DEFAULT_CLIENT_SECRET, SandboxServer
from hubsync.sandbox.testing import WebhookReceiver
from tests.helpers.sandbox import DEFAULT_CONTACT_PROPERTIES

CONTACTS = "/crm/v3/objects/contacts"


async def test_unknown_bearer_gets_hubspot_401(sandbox: SandboxServer) -> None:
    async with httpx.AsyncClient(base_url=sandbox.base_url) as c:
        for headers in ({}, {"Authorization": "Bearer pat-na1-nope"}):
            r = await c.get(CONTACTS, headers=headers)
            assert r.status_code == 401
            body = r.json()
            assert body["status"] == "error"
            assert body["category"] == "INVALID_AUTHENTICATION"
            assert body["message"].startswith("Authentication credentials not found.")
            assert body["correlationId"]


async def test_contact_crud(client: httpx.AsyncClient) -> None:
    r = await client.post(CONTACTS, json={"properties": {"email": "Ada@Example.com", "firstname": "Ada"}})
    assert r.status_code == 201
    created = r.json()
    cid = created["id"]
    assert created["properties"]["email"] == "ada@example.com"  # HubSpot lowercases emails
    assert created["properties"]["hs_object_id"] == cid
    assert created["archived"] is False

    r = await client.get(f"{CONTACTS}/{cid}", params={"properties": "firstname,email"})
    assert r.status_code == 200
    assert r.json()["properties"]["firstname"] == "Ada"

    r = await client.get(f"{CONTACTS}/ada@example.com", params={"idProperty": "email"})
    assert r.json()["id"] == cid

    r = await client.patch(f"{CONTACTS}/{cid}", json={"properties": {"lastname": "Lovelace", "numberx": "1"}})
    assert r.status_code == 400
    assert r.json()["category"] == "VALIDATION_ERROR"
    assert "PROPERTY_DOESNT_EXIST" in r.json()["message"]

    r = await client.patch(f"{CONTACTS}/{cid}", json={"properties": {"lastname": "Lovelace"}})
    assert r.status_code == 200
    assert r.json()["properties"]["lastname"] == "Lovelace"

    r = await client.delete(f"{CONTACTS}/{cid}")
    assert r.status_code == 204
    r = await client.get(f"{CONTACTS}/{cid}")
    assert r.status_code == 404
    assert r.json()["category"] == "OBJECT_NOT_FOUND"
    r = await client.get(f"{CONTACTS}/{cid}", params={"archived": "true"})
    assert r.status_code == 200 and r.json()["archived"] is True


async def test_values_are_strings_on_the_wire(client: httpx.AsyncClient) -> None:
    r = await client.post("/crm/v3/objects/deals", json={"properties": {"dealname": "D", "amount": 12}})
    assert r.status_code == 201
    assert r.json()["properties"]["amount"] == "12"


async def test_create_with_existing_email_is_409_naming_the_id(client: httpx.AsyncClient) -> None:
    r = await client.post(CONTACTS, json={"properties": {"email": "a@x.com"}})
    cid = r.json()["id"]
    r = await client.post(CONTACTS, json={"properties": {"email": "A@x.com"}})
    assert r.status_code == 409
    assert r.json()["category"] == "CONFLICT"
    assert r.json()["message"] == f"Contact already exists. Existing ID: {cid}"


async def test_batch_read_partial_is_207(client: httpx.AsyncClient) -> None:
    ids = []
    for n in range(3):
        r = await client.post(CONTACTS, json={"properties": {"email": f"c{n}@x.com"}})
        ids.append(r.json()["id"])
    r = await client.post(
        f"{CONTACTS}/batch/read",
        json={"inputs": [{"id": i} for i in ids] + [{"id": "999999"}], "properties": ["email"]},
    )
    assert r.status_code == 207
    body = r.json()
    assert body["status"] == "COMPLETE"
    assert sorted(x["id"] for x in body["results"]) == sorted(ids)
    assert body["numErrors"] == 1
    err = body["errors"][0]
    assert err["status"] == "error" and err["category"] == "OBJECT_NOT_FOUND"
    assert err["context"] == {"ids": ["999999"]}

    r = await client.post(f"{CONTACTS}/batch/read", json={"inputs": [{"id": i} for i in ids]})
    assert r.status_code == 200
    assert set(r.json()["results"][0]["properties"]) == DEFAULT_CONTACT_PROPERTIES

    r = await client.post(
        f"{CONTACTS}/batch/read", json={"inputs": [{"id": "c1@x.com"}], "idProperty": "email"}
    )
    assert r.status_code == 200 and r.json()["results"][0]["id"] == ids[1]


async def test_batch_upsert_by_email_and_external_id(client: httpx.AsyncClient) -> None:
    r = await client.post(CONTACTS, json={"properties": {"email": "old@x.com"}})
    old_id = r.json()["id"]
    r = await client.post(
        f"{CONTACTS}/batch/upsert",
        json={
            "inputs": [
                {"id": "old@x.com", "idProperty": "email", "properties": {"firstname": "Old"}},
                {"id": "ext-1", "idProperty": "external_id", "properties": {"firstname": "New"}},
            ]
        },
    )
    assert r.status_code == 200
    res = {x["properties"].get("firstname"): x for x in r.json()["results"]}
    assert res["Old"]["id"] == old_id and res["Old"]["new"] is False
    assert res["New"]["new"] is True and res["New"]["properties"]["external_id"] == "ext-1"

    # Same key again: updates, does not create.
    r = await client.post(
        f"{CONTACTS}/batch/upsert",
        json={"inputs": [{"id": "ext-1", "idProperty": "external_id", "properties": {"lastname": "L"}}]},
    )
    assert r.json()["results"][0]["new"] is False
    assert r.json()["results"][0]["id"] == res["New"]["id"]

    r = await client.post(
        f"{CONTACTS}/batch/upsert",
        json={"inputs": [{"id": "Ada", "idProperty": "firstname", "properties": {}}]},
    )
    assert r.status_code == 400
    assert "not a unique identifier property" in r.json()["message"]


async def test_request_log_counts_by_endpoint_status_and_portal(
    sandbox: SandboxServer, client: httpx.AsyncClient
) -> None:
    await client.post(CONTACTS, json={"properties": {"email": "l@x.com"}})
    await client.post(CONTACTS, json={"properties": {"email": "l@x.com"}})
    await client.post(f"{CONTACTS}/batch/read", json={"inputs": [{"id": "1"}], "properties": []})
    r = await client.get("/_sandbox/requests")
    counts = r.json()["counts"]
    assert counts["byEndpointAndStatus"]["POST /crm/v3/objects/{objectType}"] == {"201": 1, "409": 1}
    assert counts["byEndpoint"]["POST /crm/v3/objects/{objectType}/batch/read"] == 1
    assert counts["byPortal"] == {"12345": 3}
    entry = r.json()["entries"][-1]
    assert entry["batchSize"] == 1 and entry["status"] == 207


async def test_changes_are_delivered_signed(
    sandbox: SandboxServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    r = await client.post(CONTACTS, json={"properties": {"email": "w@x.com"}})
    cid = int(r.json()["id"])
    await client.patch(f"{CONTACTS}/{cid}", json={"properties": {"firstname": "W"}})
    assert await sandbox.state.webhooks.wait_idle(5)
    events = receiver.events()
    kinds = [(e["subscriptionType"], e.get("propertyName")) for e in events]
    assert ("contact.creation", None) in kinds
    assert ("contact.propertyChange", "firstname") in kinds
    for e in events:
        assert e["objectId"] == cid and e["portalId"] == 12345 and e["appId"] == 1001
        assert e["changeSource"] == "INTEGRATION" and e["sourceId"] == "2001"
        assert e["attemptNumber"] == 0
    for req in receiver.requests:
        expected = hashlib.sha256((DEFAULT_CLIENT_SECRET + req.body.decode()).encode()).hexdigest()
        assert req.headers["x-hubspot-signature"] == expected
        assert req.headers["x-hubspot-signature-version"] == "v1"
        assert req.headers["x-hubspot-signature-v3"]
        assert req.headers["x-hubspot-request-timestamp"].isdigit()


async def test_v3_read_with_associations(client: httpx.AsyncClient) -> None:
    a = (await client.post(CONTACTS, json={"properties": {"email": "as@x.com"}})).json()["id"]
    co = (await client.post("/crm/v3/objects/companies", json={"properties": {"name": "Acme"}})).json()["id"]
    r = await client.put(
        f"/crm/v4/objects/contacts/{a}/associations/companies/{co}",
        json=[
            {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 1},
            {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279},
        ],
    )
    assert r.status_code == 201 and r.json()["labels"] == ["Primary"]  # 201 per HubSpot's v4 spec
    r = await client.get(f"{CONTACTS}/{a}", params={"associations": "companies,deals"})
    assert r.json()["associations"] == {
        "companies": {
            "results": [
                {"id": co, "type": "contact_to_company"},
                {"id": co, "type": "contact_to_company_unlabeled"},
            ]
        }
    }
    r = await client.put(
        f"/crm/v4/objects/contacts/{a}/associations/companies/{co}",
        json=[{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}],
    )
    assert r.status_code == 400  # 3 is deal→contact, not contact→company


async def test_gdpr_delete_is_permanent_and_fires_privacy_deletion(
    sandbox: SandboxServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    a = (await client.post(CONTACTS, json={"properties": {"email": "gone@x.com"}})).json()["id"]
    r = await client.post(f"{CONTACTS}/gdpr-delete", json={"objectId": "gone@x.com", "idProperty": "email"})
    assert r.status_code == 204
    assert (await client.get(f"{CONTACTS}/{a}", params={"archived": "true"})).status_code == 404
    assert await sandbox.state.webhooks.wait_idle(5)
    assert any(
        e["subscriptionType"] == "contact.privacyDeletion" and e["objectId"] == int(a)
        for e in receiver.events()
    )
    # The email is free again.
    assert (await client.post(CONTACTS, json={"properties": {"email": "gone@x.com"}})).status_code == 201


async def test_malformed_input_is_400_not_a_crash(client: httpx.AsyncClient) -> None:
    for path, body in (
        (f"{CONTACTS}/batch/read", {"inputs": ["x"]}),
        (f"{CONTACTS}/batch/upsert", {"inputs": [{"id": "a", "idProperty": "email", "properties": "oops"}]}),
        (CONTACTS, {"properties": {"email": "m@x.com"}, "associations": ["nope"]}),
        (f"{CONTACTS}/search", {"filterGroups": "nope"}),
        (
            "/crm/v4/associations/contacts/companies/batch/create",
            {"inputs": [{"from": {"id": "1"}, "to": {"id": "2"}, "types": "nope"}]},
        ),
    ):
        r = await client.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["category"] == "VALIDATION_ERROR"
    r = await client.post(CONTACTS, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("Invalid input JSON")


async def test_create_app_works_without_a_server() -> None:
    from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, SandboxConfig, create_app

    app = create_app(SandboxConfig())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sandbox",
        headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"},
    ) as c:
        r = await c.post(CONTACTS, json={"properties": {"email": "asgi@x.com"}})
        assert r.status_code == 201
    store = app.state.sandbox.stores[12345]
    assert [o.props["email"] for o in store.objects["contacts"].values()] == ["asgi@x.com"]


async def test_merged_away_ids_read_as_the_primary(client: httpx.AsyncClient) -> None:
    a = (await client.post(CONTACTS, json={"properties": {"email": "pa@x.com"}})).json()["id"]
    b = (await client.post(CONTACTS, json={"properties": {"email": "pb@x.com"}})).json()["id"]
    r = await client.post(f"{CONTACTS}/merge", json={"primaryObjectId": a, "objectIdToMerge": b})
    assert r.json()["properties"]["hs_merged_object_ids"] == b
    r = await client.get(f"{CONTACTS}/{b}")
    assert r.status_code == 200 and r.json()["id"] == a
    r = await client.post(f"{CONTACTS}/batch/read", json={"inputs": [{"id": b}]})
    assert r.status_code == 200 and [x["id"] for x in r.json()["results"]] == [a]
    r = await client.patch(f"{CONTACTS}/{b}", json={"properties": {"firstname": "Via old id"}})
    assert r.json()["id"] == a
    assert (await client.post(f"/_sandbox/ui/contacts/{b}/restore")).status_code == 404
