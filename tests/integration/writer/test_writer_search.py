"""Search pages with cursor paging, under search's own 5 requests/s."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from hubsync.api.writer.v1 import writer_pb2
from tests.helpers.writer_stack import PORTAL, stack, upsert

SEARCH = "POST /crm/v3/objects/{objectType}/search"


async def test_search_pages_and_never_exceeds_five_per_second(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with stack(redis_url, caller_tokens) as s:
        reply = await s.stub.SubmitWrites(
            writer_pb2.SubmitWritesRequest(
                portal_id=PORTAL,
                writes=[upsert(f"s{i}@example.com", lastname="Find") for i in range(25)],
                wait=True,
            ),
            timeout=30,
        )
        assert all(r.status == writer_pb2.WRITE_STATUS_SUCCEEDED for r in reply.results)
        request = writer_pb2.SearchRecordsRequest(
            portal_id=PORTAL,
            object_type="contacts",
            filter_groups=[
                writer_pb2.FilterGroup(
                    filters=[writer_pb2.Filter(property_name="lastname", operator="EQ", value="Find")]
                )
            ],
            sorts=[writer_pb2.Sort(property_name="hs_object_id")],
            properties=["email"],
            page_size=10,
        )
        seen: list[str] = []
        token = ""
        while True:
            request.page_token = token
            page = await s.cli.SearchRecords(request, timeout=30)
            assert page.total == 25
            seen += [r.properties["email"] for r in page.records]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(f"s{i}@example.com" for i in range(25))
        # Twelve searches at once: writer spreads them over time instead of meeting 429s.
        request.page_token = ""
        await asyncio.gather(*(s.cli.SearchRecords(request, timeout=30) for _ in range(12)))
        assert await s.count(SEARCH, 429) == 0
        assert await s.count(SEARCH, 200) == 15


async def test_search_refuses_too_many_filters(redis_url: str, caller_tokens: dict[str, str]) -> None:
    async with stack(redis_url, caller_tokens) as s:
        group = writer_pb2.FilterGroup(
            filters=[writer_pb2.Filter(property_name="email", operator="HAS_PROPERTY") for _ in range(7)]
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.cli.SearchRecords(
                writer_pb2.SearchRecordsRequest(
                    portal_id=PORTAL, object_type="contacts", filter_groups=[group]
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await s.count(SEARCH) == 0
