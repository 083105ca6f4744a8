"""Every CRM object type in the sandbox: tickets and pipelines, products and line items,
engagements, custom objects through the schemas API, association labels, property groups,
webhooks of the new types, and the response headers HubSpot sends."""

from __future__ import annotations

from typing import Any

import httpx

from hubsync.sandbox import SandboxServer
from hubsync.sandbox.testing import WebhookReceiver

SCHEMA = {
    "name": "subscription",
    "labels": {"singular": "Subscription", "plural": "Subscriptions"},
    "primaryDisplayProperty": "plan",
    "requiredProperties": ["plan"],
    "searchableProperties": ["plan"],
    "properties": [
        {"name": "plan", "label": "Plan", "type": "string", "fieldType": "text"},
        {"name": "seats", "label": "Seats", "type": "number", "fieldType": "number"},
        {"name": "sub_key", "label": "Key", "type": "string", "fieldType": "text", "hasUniqueValue": True},
    ],
    "associatedObjects": ["CONTACT", "COMPANY"],
}


async def _create(client: httpx.AsyncClient, t: str, **props: Any) -> dict[str, Any]:
    r = await client.post(f"/crm/v3/objects/{t}", json={"properties": props})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_tickets_live_in_pipelines_and_bad_stages_name_pipeline_and_stage(
    client: httpx.AsyncClient,
) -> None:
    t = await _create(client, "tickets", subject="Printer on fire", hs_pipeline_stage="1")
    assert t["properties"]["hs_pipeline"] == "0"
    pipes = (await client.get("/crm/v3/pipelines/tickets")).json()["results"]
    assert [s["id"] for s in pipes[0]["stages"]] == ["1", "2", "3", "4"]
    r = await client.patch(
        f"/crm/v3/objects/tickets/{t['id']}", json={"properties": {"hs_pipeline_stage": "9"}}
    )
    assert r.status_code == 400
    assert "9" in r.json()["message"] and "pipeline 0" in r.json()["message"]
    # Required properties: a ticket needs a stage.
    r = await client.post("/crm/v3/objects/tickets", json={"properties": {"subject": "x"}})
    assert r.status_code == 400 and "hs_pipeline_stage" in r.json()["message"]
    # A new pipeline with its own stages; the stage must belong to the pipeline named.
    r = await client.post(
        "/crm/v3/pipelines/tickets",
        json={
            "label": "Escalations",
            "displayOrder": 1,
            "stages": [{"label": "Open", "displayOrder": 0, "metadata": {"ticketState": "OPEN"}}],
        },
    )
    assert r.status_code == 201, r.text
    pid, sid = r.json()["id"], r.json()["stages"][0]["id"]
    ok = await client.patch(
        f"/crm/v3/objects/tickets/{t['id']}",
        json={"properties": {"hs_pipeline": pid, "hs_pipeline_stage": sid}},
    )
    assert ok.status_code == 200
    bad = await client.patch(
        f"/crm/v3/objects/tickets/{t['id']}",
        json={"properties": {"hs_pipeline": pid, "hs_pipeline_stage": "1"}},
    )
    assert bad.status_code == 400 and pid in bad.json()["message"]
    deal = await client.post(
        "/crm/v3/objects/deals", json={"properties": {"dealname": "d", "dealstage": "nope"}}
    )
    assert deal.status_code == 400 and "pipeline default" in deal.json()["message"]


async def test_line_items_products_and_notes_with_default_associations(client: httpx.AsyncClient) -> None:
    product = await _create(client, "products", name="Widget", price="9.5")
    deal = await _create(client, "deals", dealname="Big")
    li = await _create(client, "line_items", name="Widget x3", quantity="3", hs_product_id=product["id"])
    r = await client.put(f"/crm/v4/objects/line_items/{li['id']}/associations/default/deals/{deal['id']}")
    assert r.status_code == 200
    assert r.json()["results"][0]["associationSpec"]["associationTypeId"] == 20
    got = (await client.get(f"/crm/v4/objects/deals/{deal['id']}/associations/line_items")).json()
    assert got["results"] == [
        {
            "toObjectId": li["id"],
            "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 19}],
        }
    ]
    contact = await _create(client, "contacts", email="n@x.com")
    r = await client.post(
        "/crm/v3/objects/notes",
        json={
            "properties": {"hs_note_body": "Called", "hs_timestamp": "2024-01-02T03:04:05Z"},
            "associations": [
                {
                    "to": {"id": contact["id"]},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}],
                }
            ],
        },
    )
    assert r.status_code == 201, r.text
    assert "hs_createdate" in r.json()["properties"]
    notes = (await client.get(f"/crm/v4/objects/contacts/{contact['id']}/associations/notes")).json()[
        "results"
    ]
    assert notes[0]["toObjectId"] == r.json()["id"] and notes[0]["associationTypes"][0]["typeId"] == 201
    missing = await client.post("/crm/v3/objects/notes", json={"properties": {"hs_note_body": "x"}})
    assert missing.status_code == 400 and "hs_timestamp" in missing.json()["message"]
    for t in ("tasks", "calls", "emails", "meetings", "quotes"):
        assert (await client.get(f"/crm/v3/objects/{t}")).status_code == 200


async def test_custom_object_schema_records_by_every_name(client: httpx.AsyncClient) -> None:
    r = await client.post("/crm/v3/schemas", json=SCHEMA)
    assert r.status_code == 201, r.text
    s = r.json()
    tid, fqn = s["objectTypeId"], s["fullyQualifiedName"]
    assert tid.startswith("2-") and fqn == "p12345_subscription" and s["id"] == tid[2:]
    assert {a["toObjectTypeId"] for a in s["associations"]} == {"0-1", "0-2"}
    assert (await client.post("/crm/v3/schemas", json=SCHEMA)).status_code == 409
    listed = (await client.get("/crm-object-schemas/v3/schemas")).json()["results"]
    assert [x["objectTypeId"] for x in listed] == [tid]
    assert (await client.get(f"/crm/v3/schemas/{fqn}")).json()["objectTypeId"] == tid

    rec = await _create(client, tid, plan="pro", seats="5", sub_key="S-1")
    for name in (tid, fqn, "p_subscription"):
        got = await client.get(f"/crm/v3/objects/{name}/{rec['id']}", params={"properties": "plan"})
        assert got.status_code == 200 and got.json()["properties"]["plan"] == "pro"
    assert (
        await client.post(f"/crm/v3/objects/{tid}", json={"properties": {"seats": "1"}})
    ).status_code == 400
    up = await client.post(
        f"/crm/v3/objects/{fqn}/batch/upsert",
        json={"inputs": [{"id": "S-1", "idProperty": "sub_key", "properties": {"seats": "7"}}]},
    )
    assert up.status_code == 200 and up.json()["results"][0]["new"] is False
    found = await client.post(
        f"/crm/v3/objects/{tid}/search",
        json={"filterGroups": [{"filters": [{"propertyName": "seats", "operator": "GTE", "value": "6"}]}]},
    )
    assert found.json()["total"] == 1
    props = (await client.get(f"/crm/v3/properties/{tid}")).json()["results"]
    assert {"plan", "seats", "sub_key", "hs_object_id"} <= {p["name"] for p in props}
    contact = await _create(client, "contacts", email="c@x.com")
    a = await client.put(f"/crm/v4/objects/{tid}/{rec['id']}/associations/default/contacts/{contact['id']}")
    assert a.status_code == 200, a.text
    unknown = await client.get("/crm/v3/objects/p_nothing")
    assert unknown.status_code == 400


async def test_association_labels_user_defined_create_use_remove(client: httpx.AsyncClient) -> None:
    base = "/crm/v4/associations/contacts/companies/labels"
    before = (await client.get(base)).json()["results"]
    assert {(x["category"], x["typeId"], x.get("label")) for x in before} == {
        ("HUBSPOT_DEFINED", 1, "Primary"),
        ("HUBSPOT_DEFINED", 279, None),
    }
    r = await client.post(
        base, json={"label": "Billing contact", "name": "billing_contact", "inverseLabel": "Billed company"}
    )
    assert r.status_code == 200, r.text
    fwd = next(x for x in r.json()["results"] if x["label"] == "Billing contact")
    assert fwd["category"] == "USER_DEFINED"
    contact = await _create(client, "contacts", email="l@x.com")
    co = await _create(client, "companies", name="L")
    put = await client.put(
        f"/crm/v4/objects/contacts/{contact['id']}/associations/companies/{co['id']}",
        json=[{"associationCategory": "USER_DEFINED", "associationTypeId": fwd["typeId"]}],
    )
    assert put.status_code == 201 and put.json()["labels"] == ["Billing contact"]
    back = (await client.get(f"/crm/v4/objects/companies/{co['id']}/associations/contacts")).json()["results"]
    assert back[0]["associationTypes"][0]["label"] == "Billed company"
    wrong = await client.put(
        f"/crm/v4/objects/contacts/{contact['id']}/associations/companies/{co['id']}",
        json=[{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": fwd["typeId"]}],
    )
    assert wrong.status_code == 400
    rm = await client.post(
        "/crm/v4/associations/contacts/companies/batch/labels/archive",
        json={
            "inputs": [
                {
                    "from": {"id": contact["id"]},
                    "to": {"id": co["id"]},
                    "types": [{"associationCategory": "USER_DEFINED", "associationTypeId": fwd["typeId"]}],
                }
            ]
        },
    )
    assert rm.status_code == 204
    assert (await client.get(f"/crm/v4/objects/contacts/{contact['id']}/associations/companies")).json()[
        "results"
    ] == []
    assert (await client.delete(f"{base}/{fwd['typeId']}")).status_code == 204
    assert (await client.delete(f"{base}/279")).status_code == 400


async def test_property_groups_and_batch_read(client: httpx.AsyncClient) -> None:
    groups = (await client.get("/crm/v3/properties/tickets/groups")).json()["results"]
    assert "ticketinformation" in {g["name"] for g in groups}
    r = await client.post("/crm/v3/properties/tickets/groups", json={"name": "support", "label": "Support"})
    assert r.status_code == 201
    r = await client.post(
        "/crm/v3/properties/tickets",
        json={
            "name": "desk_id",
            "label": "Desk",
            "type": "string",
            "fieldType": "text",
            "groupName": "support",
        },
    )
    assert r.status_code == 201, r.text
    br = await client.post(
        "/crm/v3/properties/tickets/batch/read",
        json={"archived": False, "inputs": [{"name": "desk_id"}, {"name": "nope"}]},
    )
    assert br.status_code == 207 and [p["name"] for p in br.json()["results"]] == ["desk_id"]
    nogroup = await client.post(
        "/crm/v3/properties/tickets",
        json={"name": "x2", "label": "X", "type": "string", "fieldType": "text", "groupName": "missing"},
    )
    assert nogroup.status_code == 400


async def test_webhooks_classic_for_tickets_and_generic_for_custom_objects(
    sandbox: SandboxServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    s = (await client.post("/crm/v3/schemas", json=SCHEMA)).json()
    sub = sandbox.state.webhooks.subs[1001]
    sub.set_types([*sub.types, "object.creation", "object.propertyChange"])
    await _create(client, "tickets", subject="Hi", hs_pipeline_stage="1")
    rec = await _create(client, s["objectTypeId"], plan="pro")
    await sandbox.state.webhooks.wait_idle(10)
    events = receiver.events()
    types = {(e["subscriptionType"], e.get("objectTypeId")) for e in events}
    assert ("ticket.creation", None) in types
    assert ("object.creation", "0-5") in types  # generic subscriptions cover every type
    custom = [e for e in events if e.get("objectTypeId") == s["objectTypeId"]]
    assert {e["subscriptionType"] for e in custom} == {"object.creation", "object.propertyChange"}
    assert all(e["objectId"] == int(rec["id"]) for e in custom)


async def test_correlation_id_header_and_gdpr_delete_in_request_log(
    sandbox: SandboxServer, client: httpx.AsyncClient
) -> None:
    c = await _create(client, "contacts", email="gdpr@x.com")
    missing = await client.get("/crm/v3/objects/contacts/999999")
    assert missing.headers["X-HubSpot-Correlation-Id"] == missing.json()["correlationId"]
    assert "X-HubSpot-Correlation-Id" in (await client.get("/crm/v3/objects/contacts")).headers
    r = await client.post("/crm/v3/objects/contacts/gdpr-delete", json={"objectId": c["id"]})
    assert r.status_code == 204
    log = (await client.get(f"{sandbox.base_url}/_sandbox/requests")).json()
    assert log["counts"]["byEndpoint"]["POST /crm/v3/objects/{objectType}/gdpr-delete"] == 1
    gone = await client.get(f"/crm/v3/objects/contacts/{c['id']}", params={"archived": "true"})
    assert gone.status_code == 404
