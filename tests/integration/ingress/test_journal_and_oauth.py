"""The journal gRPC API (read, replay once per request id, reconcile through writer) and the
OAuth redirect (through the real auth service), against the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.api.ingress.v1 import ingress_pb2, ingress_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.devredis import free_port
from hubsync.core.errors import error_info
from hubsync.core.event_entries import decode_entry
from hubsync.core.telemetry import setup_tracing
from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, PortalConfig, SandboxConfig, SandboxServer
from tests.helpers.auth import register_sandbox_private_app, running_auth
from tests.helpers.auth_oauth import browse_start_link, consent
from tests.helpers.ingress import PORTAL, TEST_SECRET, event, running_ingress, v3_headers
from tests.helpers.writer import running_writer

STREAM = f"hubsync:{{{PORTAL}}}:events"


def sandbox_config() -> SandboxConfig:
    return SandboxConfig.model_validate(
        {"portals": [PortalConfig(burst_per_10s=100_000, search_per_second=1_000)], "search_index_lag_ms": 0}
    )


async def deliver(base: str, events: list[dict[str, Any]]) -> None:
    url = f"{base}/webhooks/hubspot"
    body = json.dumps(events).encode()
    async with httpx.AsyncClient() as client:
        reply = await client.post(url, content=body, headers=v3_headers(TEST_SECRET, url, body))
    assert reply.status_code == 200, reply.text


async def test_read_journal_by_time_and_pages_then_replay_once(
    redis_url, caller_tokens, redis: Redis
) -> None:  # type: ignore[no-untyped-def]
    setup_tracing("hubsync-ingress")  # what `python -m hubsync.ingress` does: spans are recorded
    async with running_ingress(redis_url=redis_url, caller_tokens=caller_tokens) as (base, address):
        await deliver(base, [event(object_id=i) for i in range(5)])
        middle = int(time.time() * 1000) + 1
        time.sleep(0.005)
        await deliver(base, [event(object_id=i) for i in range(5, 8)])
        async with open_channel(address, caller_tokens["cli"]) as channel:
            stub = ingress_pb2_grpc.IngressServiceStub(channel)
            seen: list[int] = []
            token = ""
            while True:
                page = await stub.ReadJournal(
                    ingress_pb2.ReadJournalRequest(portal_id=PORTAL, page_size=3, page_token=token)
                )
                seen += [e.object_id for e in page.events]
                token = page.next_page_token
                if not token:
                    break
            assert seen == list(range(8))
            start = timestamp_pb2.Timestamp()
            start.FromMilliseconds(middle)
            later = await stub.ReadJournal(ingress_pb2.ReadJournalRequest(portal_id=PORTAL, start_time=start))
            assert [e.object_id for e in later.events] == [5, 6, 7]
            first = later.events[0]
            assert first.subscription_type == "contact.propertyChange" and first.property_value == "Ada"
            assert first.traceparent.startswith("00-") and first.raw["portalId"] == PORTAL

            request = ingress_pb2.ReplayJournalRequest(
                portal_id=PORTAL,
                start_offset=first.offset,
                end_offset=later.events[-1].offset,
                request_id="r-1",
            )
            assert (await stub.ReplayJournal(request)).replayed_count == 3
            assert (await stub.ReplayJournal(request)).replayed_count == 3  # same id: not replayed again
            async with open_channel(address, caller_tokens["mapper"]) as other:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ingress_pb2_grpc.IngressServiceStub(other).ReplayJournal(request)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            entries: Any = await redis.xrange(STREAM)
            origins = [decode_entry(i, f).origin for i, f in entries]
            assert origins.count("replay") == 3 and len(entries) == 11

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReadJournal(
                    ingress_pb2.ReadJournalRequest(portal_id=PORTAL, page_token="not an offset")
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReadJournal(ingress_pb2.ReadJournalRequest(portal_id=0))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info = error_info(err.value)
            assert info is not None and info.reason == "INVALID_ARGUMENT"


@contextlib.asynccontextmanager
async def reconciling(
    redis_url: str, caller_tokens: dict[str, str]
) -> AsyncIterator[tuple[str, str, httpx.AsyncClient]]:
    """The sandbox, auth, writer and an ingress that reconciles through it (10 min back, no
    settling); yields ingress's base URL and gRPC address, and a client of the sandbox's API."""
    async with (
        SandboxServer(sandbox_config()) as sb,
        running_auth(redis_url=redis_url, caller_tokens=caller_tokens, hubspot_api_base=sb.base_url) as auth,
    ):
        await register_sandbox_private_app(auth, caller_tokens)
        async with (
            running_writer(
                redis_url=redis_url,
                caller_tokens=caller_tokens,
                hubspot_api_base=sb.base_url,
                auth_address=auth,
            ) as writer,
            running_ingress(
                redis_url=redis_url,
                caller_tokens=caller_tokens,
                hubspot_api_base=sb.base_url,
                writer_address=writer,
                settings={"reconcile_lookback_s": 600, "reconcile_settle_ms": 0},
            ) as (base, address),
            httpx.AsyncClient(
                base_url=sb.base_url, headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"}
            ) as hs,
        ):
            yield base, address, hs


async def test_reconcile_enqueues_only_what_no_webhook_reported(
    redis_url, caller_tokens, redis: Redis
) -> None:  # type: ignore[no-untyped-def]
    async with reconciling(redis_url, caller_tokens) as (base, address, hs):
        # two contacts changed in HubSpot; only the first one's webhook reached ingress
        ids = []
        for email in ("a@x.com", "b@x.com"):
            created = await hs.post("/crm/v3/objects/contacts", json={"properties": {"email": email}})
            assert created.status_code == 201, created.text
            ids.append(int(created.json()["id"]))
        params = {"properties": "hs_lastmodifieddate"}
        record = (await hs.get(f"/crm/v3/objects/contacts/{ids[0]}", params=params)).json()
        modified = record["properties"]["hs_lastmodifieddate"]
        modified_ms = (
            int(modified)
            if modified.isdigit()
            else int(datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp() * 1000)
        )
        await deliver(
            base, [event(object_id=ids[0], subscription_type="contact.creation", occurred_at=modified_ms)]
        )
        time.sleep(0.01)
        async with open_channel(address, caller_tokens["cli"]) as channel:
            stub = ingress_pb2_grpc.IngressServiceStub(channel)
            await asyncio.sleep(0.01)  # the window ends before now: let the clock pass the writes
            first = await stub.Reconcile(
                ingress_pb2.ReconcileRequest(portal_id=PORTAL, object_types=["contacts"])
            )
            assert (first.scanned_count, first.found_count) == (2, 1)
            again = await stub.Reconcile(
                ingress_pb2.ReconcileRequest(portal_id=PORTAL, object_types=["contacts"])
            )
            assert again.found_count == 0
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Reconcile(ingress_pb2.ReconcileRequest(portal_id=PORTAL, object_types=["widgets"]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "object_types" in str(err.value.trailing_metadata())
        entries: Any = await redis.xrange(STREAM)
        records = [decode_entry(i, f) for i, f in entries]
        found = [r.event for r in records if r.origin == "reconcile" and r.event is not None]
        assert [e["objectId"] for e in found] == [ids[1]]
        assert found[0]["subscriptionType"] == "contact.propertyChange"


# One record of each standard type the sandbox creates, and the event HubSpot sends for it.
STANDARD_RECORDS = {
    "tickets": ({"subject": "s", "hs_pipeline_stage": "1"}, "ticket.propertyChange", None),
    "products": ({"name": "p"}, "product.propertyChange", None),
    "line_items": ({"name": "l"}, "line_item.propertyChange", None),
    "quotes": ({"hs_title": "q", "hs_expiration_date": "1900000000000"}, "object.propertyChange", "0-14"),
    "notes": ({"hs_timestamp": "1700000000000"}, "object.propertyChange", "0-46"),
    "calls": ({"hs_timestamp": "1700000000000"}, "object.propertyChange", "0-48"),
    "emails": ({"hs_timestamp": "1700000000000"}, "object.propertyChange", "0-49"),
    "meetings": ({"hs_timestamp": "1700000000000"}, "object.propertyChange", "0-47"),
    "tasks": ({"hs_timestamp": "1700000000000"}, "object.propertyChange", "0-27"),
}


async def test_reconcile_takes_every_standard_type_by_name_or_id(
    redis_url, caller_tokens, redis: Redis
) -> None:  # type: ignore[no-untyped-def]
    async with reconciling(redis_url, caller_tokens) as (_base, address, hs):
        # One record of each type, and no webhook for any of them.
        ids = {}
        for object_type, (properties, _s, _t) in STANDARD_RECORDS.items():
            created = await hs.post(f"/crm/v3/objects/{object_type}", json={"properties": properties})
            assert created.status_code == 201, created.text
            ids[object_type] = int(created.json()["id"])
        await asyncio.sleep(0.01)  # the window ends before now: let the clock pass the writes
        # Names and 0-… ids alike (notes by its id), each type once.
        asked = [t for t in STANDARD_RECORDS if t != "notes"] + ["0-46", "notes"]
        async with open_channel(address, caller_tokens["cli"]) as channel:
            reply = await ingress_pb2_grpc.IngressServiceStub(channel).Reconcile(
                ingress_pb2.ReconcileRequest(portal_id=PORTAL, object_types=asked)
            )
        assert (reply.scanned_count, reply.found_count) == (len(ids), len(ids))
        entries: Any = await redis.xrange(STREAM)
        found = {
            r.event["objectId"]: r.event
            for r in (decode_entry(i, f) for i, f in entries)
            if r.origin == "reconcile" and r.event
        }
        for object_type, (_p, subscription_type, type_id) in STANDARD_RECORDS.items():
            synthetic = found[ids[object_type]]
            assert synthetic["subscriptionType"] == subscription_type, object_type
            assert synthetic.get("objectTypeId") == type_id, object_type


@contextlib.asynccontextmanager
async def oauth_begun(
    redis_url: str, caller_tokens: dict[str, str], public: str, ingress: dict[str, object]
) -> AsyncIterator[tuple[str, auth_pb2.BeginAuthorizationResponse]]:
    """The sandbox, auth (redirect URI ``public``/oauth/callback), ingress, and a begun flow;
    yields ingress's base URL and the BeginAuthorization reply."""
    async with (
        SandboxServer(sandbox_config()) as sb,
        running_auth(
            redis_url=redis_url,
            caller_tokens=caller_tokens,
            hubspot_api_base=sb.base_url,
            env={"HUBSYNC_AUTH_REDIRECT_URI": f"{public}/oauth/callback"},
        ) as auth,
        running_ingress(
            redis_url=redis_url,
            caller_tokens=caller_tokens,
            hubspot_api_base=sb.base_url,
            auth_address=auth,
            settings=ingress,
        ) as (base, _),
        open_channel(auth, caller_tokens["cli"]) as channel,
    ):
        begun = await auth_pb2_grpc.AuthServiceStub(channel).BeginAuthorization(
            auth_pb2.BeginAuthorizationRequest(tenant="acme")
        )
        yield base, begun


async def test_oauth_callback_completes_through_auth(redis_url, caller_tokens) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oauth/callback"
    async with (
        oauth_begun(redis_url, caller_tokens, f"http://127.0.0.1:{port}", {"http_port": port}) as (
            base,
            begun,
        ),
        httpx.AsyncClient() as browser,
        httpx.AsyncClient() as attacker,
    ):
        assert begun.start_url.startswith(f"{base}/oauth/start?ticket=")
        # A link preview (a chat app fetching the link) shows the page and uses nothing up.
        preview = await attacker.get(begun.start_url)
        assert preview.status_code == 200 and "Continue" in preview.text
        assert preview.headers["cache-control"] == "no-store" and "set-cookie" not in preview.headers
        start = await browse_start_link(browser, begun.start_url)
        assert start.status_code == 303 and start.headers["location"] == begun.authorize_url
        cookie = start.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert "secure" not in cookie  # development over http; see the https case below
        # The start link works once.
        assert (await browse_start_link(attacker, begun.start_url)).status_code == 400
        code, state = await consent(begun.authorize_url)
        # The callback from a browser that did not open the start link (a stolen authorize URL,
        # an attacker's consent sent to a victim) is refused, and spends nothing.
        stolen = await attacker.get(redirect, params={"code": code, "state": state})
        assert stolen.status_code == 400 and "did not start" in stolen.text
        page = await browser.get(redirect, params={"code": code, "state": state})
        assert page.status_code == 200, page.text
        assert "connected" in page.text and "text/html" in page.headers["content-type"]
        assert code not in page.text
        assert "max-age=0" in page.headers["set-cookie"].lower()  # the binding cookie is cleared
        # the same state again (a replayed link) and a forged one: 400 with a readable page
        browser.cookies.set(f"hubsync-oauth-{hashlib.sha256(state.encode()).hexdigest()[:16]}", "b" * 43)
        again = await browser.get(redirect, params={"code": code, "state": state})
        assert again.status_code == 400 and "not valid" in again.text
        forged = await browser.get(redirect, params={"code": "x", "state": "forged"})
        assert forged.status_code == 400
        missing = await browser.get(redirect, params={"code": "x"})
        assert missing.status_code == 400 and "state" in missing.text
        declined = await browser.get(
            redirect, params={"error": "access_denied", "error_description": "<b>no</b>"}
        )
        assert declined.status_code == 400 and "<b>" not in declined.text


async def test_oauth_start_cookie_is_host_only_and_secure_behind_https(redis_url, caller_tokens) -> None:  # type: ignore[no-untyped-def]
    public = "https://hubsync.example.com"
    async with (
        oauth_begun(redis_url, caller_tokens, public, {"public_base_url": public}) as (
            base,
            begun,
        ),
        httpx.AsyncClient() as browser,
    ):
        assert begun.start_url.startswith(f"{public}/oauth/start?ticket=")
        # The proxy in front would forward this request to ingress as it is.
        start = await browse_start_link(browser, begun.start_url.replace(public, base))
        assert start.status_code == 303
        cookie = start.headers["set-cookie"]
        assert cookie.startswith("__Host-hubsync-oauth-")
        assert "; secure" in cookie.lower() and "domain=" not in cookie.lower()
