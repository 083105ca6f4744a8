"""Ordering and associations, pilot mode, unchanged detection, span links."""

from __future__ import annotations

import pytest

from hubsync.api.writer.v1 import writer_pb2
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import PORTAL, UPSERT_ROUTE, record, stack, upsert

UPSERT = writer_pb2.WRITE_OPERATION_UPSERT
SUCCEEDED = writer_pb2.WRITE_STATUS_SUCCEEDED


def assoc(f: str, fid: str, t: str, tid: str) -> writer_pb2.Write:
    return writer_pb2.Write(
        association=writer_pb2.AssociationWrite(
            from_object_type=f,
            from_id=fid,
            from_id_property="external_id",
            to_object_type=t,
            to_id=tid,
            to_id_property="external_id",
        )
    )


@pytest.mark.on_cluster
async def test_companies_then_contacts_then_deals_then_associations(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        # Submitted in the worst order: associations first, deals before companies.
        writes = [
            assoc("contacts", "p-1", "companies", "c-1"),
            assoc("deals", "d-1", "contacts", "p-1"),
            assoc("contacts", "p-1", "companies", "c-missing"),
            record("deals", UPSERT, "d-1", "external_id", dealname="Big deal"),
            record("contacts", UPSERT, "p-1", "external_id", email="ada@example.com"),
            record("companies", UPSERT, "c-1", "external_id", name="Acme"),
        ]
        reply = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=writes, wait=True), timeout=30
        )
        statuses = [r.status for r in reply.results]
        assert statuses == [SUCCEEDED, SUCCEEDED, writer_pb2.WRITE_STATUS_DEAD_LETTERED, *[SUCCEEDED] * 3]
        assert reply.results[2].error.http_status == 404
        log = (await s.admin.get("/_sandbox/requests", params={"limit": 100})).json()["entries"]
        writes_in_order = [
            e["path"] for e in log if e["endpoint"].startswith("POST") and "read" not in e["path"]
        ]
        assert writes_in_order[:3] == [
            "/crm/v3/objects/companies/batch/upsert",
            "/crm/v3/objects/contacts/batch/upsert",
            "/crm/v3/objects/deals/batch/upsert",
        ]
        assert all("/crm/v4/associations/" in p for p in writes_in_order[3:]) and len(writes_in_order) == 5
        contact_id = reply.results[4].hubspot_id
        contact = (
            await s.admin.get(f"/_sandbox/objects/contacts/{contact_id}", params={"portal": PORTAL})
        ).json()
        assert [a["id"] for a in contact["associations"]["companies"]] == [reply.results[5].hubspot_id]
        assert [a["id"] for a in contact["associations"]["deals"]] == [reply.results[3].hubspot_id]


async def test_pilot_mode_logs_and_sends_nothing(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with stack(redis_url, caller_tokens, writer_env=writer_env(pilot_mode="true")) as s:
        reply = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(
                portal_id=PORTAL,
                writes=[upsert("a@example.com"), assoc("contacts", "1", "companies", "2")],
                wait=True,
            ),
            timeout=30,
        )
        assert [r.status for r in reply.results] == [writer_pb2.WRITE_STATUS_SKIPPED_PILOT] * 2
        status = await s.cli.GetQuotaStatus(writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL))
        assert status.pilot_mode
        assert (await s.requests())["total"] == 0


async def test_unchanged_upserts_are_not_sent_again(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with stack(redis_url, caller_tokens, writer_env=writer_env(skip_unchanged="true")) as s:
        writes = [upsert(f"u{i}@example.com", lastname="Same") for i in range(10)]

        async def send(ws: list[writer_pb2.Write]) -> writer_pb2.SubmitWritesResponse:
            return await s.stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(portal_id=PORTAL, writes=ws, wait=True), timeout=30
            )

        first = await send(writes)
        second = await send(writes)
        assert [r.status for r in second.results] == [writer_pb2.WRITE_STATUS_UNCHANGED] * 10
        assert [r.hubspot_id for r in second.results] == [r.hubspot_id for r in first.results]
        assert await s.count(UPSERT_ROUTE) == 1
        changed = await send([upsert("u1@example.com", lastname="Different")])
        assert changed.results[0].status == SUCCEEDED
        assert await s.count(UPSERT_ROUTE) == 2
