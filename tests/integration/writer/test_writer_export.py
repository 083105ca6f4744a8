"""Backfill export past the 10,000-result search cap, with writes landing during the export."""

from __future__ import annotations

from typing import Any

from hubsync.api.writer.v1 import writer_pb2
from tests.helpers.writer import writer_env
from tests.helpers.writer_stack import PORTAL, Stack, sandbox_config, stack, upsert

SEARCH = "POST /crm/v3/objects/{objectType}/search"


async def seed(s: Stack, total: int) -> None:
    for start in range(0, total, 100):
        r = await s.hubspot.post(
            "/crm/v3/objects/contacts/batch/create",
            json={
                "inputs": [
                    {"properties": {"email": f"seed{n}@example.com", "external_id": f"e{n}"}}
                    for n in range(start, min(total, start + 100))
                ]
            },
        )
        assert r.status_code == 201, r.text


def export_request(**kw: Any) -> writer_pb2.ExportRecordsRequest:
    return writer_pb2.ExportRecordsRequest(
        portal_id=PORTAL, object_type="contacts", properties=["email"], **kw
    )


async def test_export_of_25000_contacts_returns_each_once_while_writes_land(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    config = sandbox_config(portal={"search_per_second": 1000}, search_index_lag_ms=200)
    env = writer_env(search_per_second=1000, export_lookback_s=0.5)
    async with stack(redis_url, caller_tokens, config, writer_env=env) as s:
        await seed(s, 25_000)
        seeded = {o["id"] for o in await s.objects()}
        exported: list[str] = []
        pages = 0
        last: writer_pb2.ExportRecordsResponse | None = None
        async for page in s.cli.ExportRecords(export_request(), timeout=120):
            pages += 1
            exported += [r.id for r in page.records]
            last = page
            if pages == 3:
                # Writes land mid-export: updates of records behind and ahead of the cursor,
                # and new records.
                behind, ahead = sorted(seeded, key=int)[10], sorted(seeded, key=int)[20_000]
                for hs_id in (behind, ahead):
                    r = await s.hubspot.patch(
                        f"/crm/v3/objects/contacts/{hs_id}", json={"properties": {"lastname": "changed"}}
                    )
                    assert r.status_code == 200
                reply = await s.stub.SubmitWrites(
                    writer_pb2.SubmitWritesRequest(
                        portal_id=PORTAL, writes=[upsert(f"new{i}@example.com") for i in range(5)], wait=True
                    ),
                    timeout=30,
                )
                assert all(r.status == writer_pb2.WRITE_STATUS_SUCCEEDED for r in reply.results)
        everything = {o["id"] for o in await s.objects()}
        assert len(everything) == 25_005
        assert len(exported) == len(set(exported)), "a record was exported twice"
        assert set(exported) == everything
        assert last is not None and last.exported_count == 25_005 and last.estimated_total >= 25_000
        # Never paged into the cap: no search was refused.
        assert await s.count(SEARCH, 400) == 0


async def test_export_resumes_from_a_checkpoint(redis_url: str, caller_tokens: dict[str, str]) -> None:
    config = sandbox_config(portal={"search_per_second": 1000})
    async with stack(redis_url, caller_tokens, config, writer_env=writer_env(search_per_second=1000)) as s:
        await seed(s, 1_000)
        first: list[str] = []
        checkpoint = ""
        call = s.cli.ExportRecords(export_request(page_size=100), timeout=60)
        async for page in call:
            first += [r.id for r in page.records]
            checkpoint = page.checkpoint
            if len(first) >= 300:
                break
        call.cancel()
        rest: list[str] = []
        async for page in s.cli.ExportRecords(
            export_request(checkpoint=checkpoint, page_size=100), timeout=60
        ):
            rest += [r.id for r in page.records]
            last = page
        assert len(first) == 300 and len(rest) == 700
        assert set(first).isdisjoint(rest)
        assert set(first) | set(rest) == {o["id"] for o in await s.objects()}
        assert last.exported_count == 1000
