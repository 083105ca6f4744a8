"""Writer and every object type: tickets, products and line items ordered by the association
graph, notes, custom objects by name (schemas API), labelled associations created and removed,
archives by unique value, GDPR deletes (audited), and a custom object's export past 10,000."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.keys import writer_gdpr_audit_key
from hubsync.core.redis import redis_from_url
from tests.helpers.custom_objects import subscription_schema
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import PORTAL, Stack, record, sandbox_config, stack

UPSERT = writer_pb2.WRITE_OPERATION_UPSERT
ARCHIVE = writer_pb2.WRITE_OPERATION_ARCHIVE
GDPR = writer_pb2.WRITE_OPERATION_GDPR_DELETE
SUCCEEDED = writer_pb2.WRITE_STATUS_SUCCEEDED
EXT = "external_id"

SCHEMA = subscription_schema()


def link(f: str, fid: str, t: str, tid: str, *, label: str = "", remove: bool = False) -> writer_pb2.Write:
    return writer_pb2.Write(
        association=writer_pb2.AssociationWrite(
            from_object_type=f,
            from_id=fid,
            from_id_property=EXT,
            to_object_type=t,
            to_id=tid,
            to_id_property=EXT,
            association_label=label,
            remove=remove,
        )
    )


async def submit(s: Stack, writes: list[writer_pb2.Write]) -> list[writer_pb2.WriteResult]:
    reply = await s.stub.SubmitWrites(
        writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=writes, wait=True), timeout=60
    )
    return list(reply.results)


async def write_paths(s: Stack) -> list[str]:
    log = (await s.admin.get("/_sandbox/requests", params={"limit": 500})).json()["entries"]
    return [
        e["path"]
        for e in log
        if e["endpoint"].startswith("POST") and "batch/read" not in e["path"] and "/search" not in e["path"]
    ]


async def assocs(s: Stack, t: str, hs_id: str, to: str) -> list[dict[str, Any]]:
    r = await s.hubspot.get(f"/crm/v4/objects/{t}/{hs_id}/associations/{to}")
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


async def test_line_items_with_deals_and_products_in_one_push_follow_the_graph(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        writes = [
            link("line_items", "li-1", "deals", "d-1"),
            link("line_items", "li-1", "products", "p-1"),
            record("line_items", UPSERT, "li-1", EXT, name="Widget x3", quantity="3", price="10"),
            record("deals", UPSERT, "d-1", EXT, dealname="Big"),
            record("products", UPSERT, "p-1", EXT, name="Widget", price="10"),
            record("contacts", UPSERT, "c-1", EXT, email="c1@example.com"),  # linked to nothing
        ]
        results = await submit(s, writes)
        assert [r.status for r in results] == [SUCCEEDED] * 6, results
        paths = await write_paths(s)
        li_at = paths.index("/crm/v3/objects/line_items/batch/upsert")
        # Parents (deals, products) before the child (line items); associations after both.
        assert paths.index("/crm/v3/objects/deals/batch/upsert") < li_at
        assert paths.index("/crm/v3/objects/products/batch/upsert") < li_at
        assert paths.index("/crm/v4/associations/line_items/deals/batch/create") > li_at
        li_id, deal_id, product_id = results[2].hubspot_id, results[3].hubspot_id, results[4].hubspot_id
        li = (await s.admin.get(f"/_sandbox/objects/line_items/{li_id}", params={"portal": PORTAL})).json()
        assert li["properties"]["hs_product_id"] == product_id
        assert [a["toObjectId"] for a in await assocs(s, "deals", deal_id, "line_items")] == [li_id]


async def test_tickets_notes_and_a_labelled_association_created_and_removed(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        made = await s.hubspot.post(
            "/crm/v4/associations/contacts/companies/labels",
            json={"label": "Billing contact", "name": "billing_contact"},
        )
        assert made.status_code == 200, made.text
        results = await submit(
            s,
            [
                record("tickets", UPSERT, "t-1", EXT, subject="Printer", hs_pipeline_stage="1"),
                record("contact", UPSERT, "c-1", EXT, email="c1@example.com"),  # singular name
                record("0-2", UPSERT, "co-1", EXT, name="Acme"),  # type id
                record("notes", UPSERT, "n-1", EXT, hs_note_body="Called", hs_timestamp="1700000000000"),
                link("notes", "n-1", "contacts", "c-1"),
                link("tickets", "t-1", "contacts", "c-1"),
                link("contacts", "c-1", "companies", "co-1", label="Billing contact"),
            ],
        )
        assert [r.status for r in results] == [SUCCEEDED] * 7, results
        contact_id, company_id = results[1].hubspot_id, results[2].hubspot_id
        notes = await assocs(s, "contacts", contact_id, "notes")
        assert [n["toObjectId"] for n in notes] == [results[3].hubspot_id]
        assert [t["toObjectId"] for t in await assocs(s, "contacts", contact_id, "tickets")] == [
            results[0].hubspot_id
        ]
        labels = [
            t.get("label")
            for t in (await assocs(s, "contacts", contact_id, "companies"))[0]["associationTypes"]
        ]
        assert labels == ["Billing contact"]

        removed = await submit(
            s, [link("contacts", "c-1", "companies", "co-1", label="Billing contact", remove=True)]
        )
        assert removed[0].status == SUCCEEDED
        assert await assocs(s, "contacts", contact_id, "companies") == []
        assert (
            await s.count("POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/labels/archive")
            == 1
        )
        assert company_id

        unknown = await submit(s, [link("contacts", "c-1", "companies", "co-1", label="No such label")])
        assert unknown[0].status == writer_pb2.WRITE_STATUS_DEAD_LETTERED
        assert "No such label" in unknown[0].error.message


async def test_custom_object_by_name_read_search_and_quotes_read_only(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        schema = (await s.hubspot.post("/crm/v3/schemas", json=SCHEMA)).json()
        await s.hubspot.post(
            f"/crm/v3/properties/{schema['objectTypeId']}",
            json={
                "name": "sub_key",
                "label": "Key",
                "type": "string",
                "fieldType": "text",
                "groupName": "subscription_information",
                "hasUniqueValue": True,
            },
        )
        results = await submit(
            s,
            [
                record("subscription", UPSERT, "s-1", "sub_key", plan="pro", seats="5"),
                record("contacts", UPSERT, "c-1", EXT, email="c1@example.com"),
                writer_pb2.Write(
                    association=writer_pb2.AssociationWrite(
                        from_object_type="p_subscription",
                        from_id="s-1",
                        from_id_property="sub_key",
                        to_object_type="contacts",
                        to_id="c-1",
                        to_id_property=EXT,
                    )
                ),
            ],
        )
        assert [r.status for r in results] == [SUCCEEDED] * 3, results
        rec = (await s.objects(schema["objectTypeId"]))[0]
        assert rec["properties"]["plan"] == "pro"
        read = await s.stub.ReadRecords(
            writer_pb2.ReadRecordsRequest(
                portal_id=PORTAL,
                object_type=schema["fullyQualifiedName"],
                ids=["s-1"],
                id_property="sub_key",
                properties=["seats"],
            )
        )
        assert [r.properties["seats"] for r in read.records] == ["5"]
        found = await s.cli.SearchRecords(
            writer_pb2.SearchRecordsRequest(
                portal_id=PORTAL, object_type="subscription", query="pro", page_size=10
            )
        )
        assert found.total == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(s, [record("quotes", UPSERT, "q", EXT, hs_title="x")])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "read-only" in str(err.value.trailing_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(s, [record("spaceships", UPSERT, "q", EXT, name="x")])
        assert "writes[0].record.object_type" in str(err.value.trailing_metadata())


async def test_archive_by_unique_value_and_gdpr_delete_are_in_the_request_log(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        results = await submit(
            s,
            [
                record("tickets", UPSERT, "t-1", EXT, subject="Old", hs_pipeline_stage="1"),
                record("contacts", UPSERT, "gone@example.com", "email", firstname="Gone"),
            ],
        )
        ticket_id, contact_id = results[0].hubspot_id, results[1].hubspot_id
        deleted = await submit(
            s,
            [
                record("tickets", ARCHIVE, "t-1", EXT),
                record("tickets", ARCHIVE, "never-was", EXT),
                record("contacts", GDPR, "Gone@example.com", "email"),
            ],
        )
        assert [r.status for r in deleted] == [SUCCEEDED] * 3, deleted
        assert await s.count("POST /crm/v3/objects/{objectType}/batch/archive", 204) == 1
        assert await s.count("POST /crm/v3/objects/{objectType}/gdpr-delete", 204) == 1
        ticket = (
            await s.admin.get(f"/_sandbox/objects/tickets/{ticket_id}", params={"portal": PORTAL})
        ).json()
        assert ticket["archived"] is True
        gone = await s.admin.get(f"/_sandbox/objects/contacts/{contact_id}", params={"portal": PORTAL})
        assert gone.status_code == 404
        redis = redis_from_url(s.redis_url)
        try:
            audit: Any = await redis.xrange(writer_gdpr_audit_key(PORTAL))
        finally:
            await redis.aclose()
        assert len(audit) == 1
        entry = {k.decode(): v.decode() for k, v in audit[0][1].items()}
        assert entry["result"] == "deleted" and entry["id_property"] == "email"
        assert "gone@example.com" not in str(entry).lower()  # no personal data in the audit
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(s, [record("companies", GDPR, "1")])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_custom_object_export_past_the_search_cap(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    config = sandbox_config(portal={"search_per_second": 1000})
    async with stack(redis_url, caller_tokens, config, writer_env=writer_env(search_per_second=1000)) as s:
        schema = (await s.hubspot.post("/crm/v3/schemas", json=SCHEMA)).json()
        total = 10_250
        for start in range(0, total, 100):
            r = await s.hubspot.post(
                f"/crm/v3/objects/{schema['objectTypeId']}/batch/create",
                json={
                    "inputs": [
                        {"properties": {"plan": f"p{n}"}} for n in range(start, min(total, start + 100))
                    ]
                },
            )
            assert r.status_code == 201, r.text
        exported: list[str] = []
        async for page in s.cli.ExportRecords(
            writer_pb2.ExportRecordsRequest(
                portal_id=PORTAL, object_type="subscription", properties=["plan"]
            ),
            timeout=120,
        ):
            exported += [r.id for r in page.records]
        assert len(exported) == len(set(exported)) == total
        assert await s.count("POST /crm/v3/objects/{objectType}/search", 400) == 0
