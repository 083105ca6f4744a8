"""Webhook deliveries: event kinds, sources, batching, concurrency, retries, timeouts, duplicates."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from hubsync.sandbox import DEFAULT_CLIENT_SECRET, DEFAULT_PRIVATE_TOKEN, SandboxServer, sign_v3
from hubsync.sandbox.testing import ReceiverBehaviour, WebhookReceiver
from tests.helpers.sandbox import fast_config

CONTACTS = "/crm/v3/objects/contacts"
AUTH = {"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"}


@asynccontextmanager
async def wired(
    behaviour: ReceiverBehaviour | None = None, path: str = "/webhooks/hubspot", **cfg: Any
) -> AsyncIterator[tuple[SandboxServer, httpx.AsyncClient, WebhookReceiver]]:
    async with (
        WebhookReceiver(path, behaviour) as rx,
        SandboxServer(fast_config(**cfg)) as sb,
        httpx.AsyncClient(base_url=sb.base_url, headers=AUTH, timeout=15) as c,
    ):
        r = await c.put("/_sandbox/webhooks/1001", json={"target_url": rx.url})
        assert r.status_code == 200
        yield sb, c, rx


async def _idle(c: httpx.AsyncClient) -> None:
    r = await c.post("/_sandbox/webhooks/wait-idle", params={"timeout": 10})
    assert r.json()["idle"] is True


async def test_event_kinds_and_sources() -> None:
    async with wired() as (_, c, rx):
        a = (await c.post(CONTACTS, json={"properties": {"email": "a@x.com"}})).json()["id"]
        b = (await c.post(CONTACTS, json={"properties": {"email": "b@x.com", "firstname": "B"}})).json()["id"]
        co = (await c.post("/crm/v3/objects/companies", json={"properties": {"name": "Acme"}})).json()["id"]
        await c.put(f"/crm/v4/objects/contacts/{a}/associations/default/companies/{co}")
        await _idle(c)
        rx.requests.clear()
        r = await c.post(
            f"/_sandbox/ui/contacts/{a}", json={"properties": {"firstname": "Ui", "lastname": "L"}}
        )
        assert r.status_code == 200
        await c.post(f"{CONTACTS}/merge", json={"primaryObjectId": a, "objectIdToMerge": b})
        await c.delete(f"{CONTACTS}/{a}")
        await c.post(f"/_sandbox/ui/contacts/{a}/restore")
        await _idle(c)
        events = rx.events()
        ui = [e for e in events if e["changeSource"] == "CRM_UI"]
        assert sorted((e["subscriptionType"], e.get("propertyName")) for e in ui) == [
            ("contact.propertyChange", "firstname"),
            ("contact.propertyChange", "lastname"),
            ("contact.restore", None),
        ]
        assert all(e["sourceId"] == "userId:1" for e in ui)
        merge = next(e for e in events if e["subscriptionType"] == "contact.merge")
        assert merge["primaryObjectId"] == int(a) and merge["mergedObjectIds"] == [int(b)]
        assert merge["newObjectId"] == int(a) and merge["changeSource"] == "INTEGRATION"
        assert "numberOfPropertiesMoved" in merge
        deletion = next(e for e in events if e["subscriptionType"] == "contact.deletion")
        assert deletion["objectId"] == int(a)
        # The merged-away contact's association moved to the primary: no new association event for it.
        ids = [e["eventId"] for e in events]
        assert len(set(ids)) == len(ids)


async def test_association_change_events_both_directions() -> None:
    async with wired() as (_, c, rx):
        a = (await c.post(CONTACTS, json={"properties": {"email": "a@x.com"}})).json()["id"]
        co = (await c.post("/crm/v3/objects/companies", json={"properties": {"name": "Acme"}})).json()["id"]
        await _idle(c)
        rx.requests.clear()
        await c.put(f"/crm/v4/objects/contacts/{a}/associations/default/companies/{co}")
        await c.delete(f"/crm/v4/objects/contacts/{a}/associations/companies/{co}")
        await _idle(c)
        got = sorted(
            (
                e["subscriptionType"],
                e["associationType"],
                e["fromObjectId"],
                e["toObjectId"],
                e["associationRemoved"],
            )
            for e in rx.events()
        )
        assert got == [
            ("company.associationChange", "COMPANY_TO_CONTACT", int(co), int(a), False),
            ("company.associationChange", "COMPANY_TO_CONTACT", int(co), int(a), True),
            ("contact.associationChange", "CONTACT_TO_COMPANY", int(a), int(co), False),
            ("contact.associationChange", "CONTACT_TO_COMPANY", int(a), int(co), True),
        ]


async def test_batches_of_at_most_100_events_and_10_in_flight() -> None:
    async with wired(ReceiverBehaviour(delay_s=0.05)) as (sb, c, rx):
        for chunk in range(5):
            r = await c.post(
                f"{CONTACTS}/batch/create",
                json={
                    "inputs": [
                        {"properties": {"email": f"c{chunk}-{n}@x.com", "firstname": "F"}} for n in range(100)
                    ]
                },
            )
            assert r.status_code == 201
        await _idle(c)
        sizes = [len(r.json()) for r in rx.requests]
        assert max(sizes) == 100
        # 500 creations + 1000 propertyChange events (email, firstname), each delivered once.
        assert sum(sizes) == 1500
        assert 1 < rx.max_in_flight <= 10
        assert sb.state.webhooks.stats()["maxInFlightByPortal"]["12345"] <= 10


async def test_retries_on_non_2xx_with_increasing_attempt_number() -> None:
    async with wired(ReceiverBehaviour(statuses=[500, 404])) as (_, c, rx):
        await c.post(CONTACTS, json={"properties": {"email": "r@x.com"}, "objectWriteTraceId": "ignored"})
        await _idle(c)
        attempts = [r.json()[0]["attemptNumber"] for r in rx.requests]
        assert attempts == [0, 1, 2]
        log = (await c.get("/_sandbox/webhooks/deliveries")).json()["results"]
        assert [d["status"] for d in log] == [500, 404, 200]
        assert [d["attemptNumber"] for d in log] == [0, 1, 2]
        # The same events were retried.
        assert log[0]["eventIds"] == log[2]["eventIds"]


async def test_gives_up_after_ten_retries() -> None:
    async with wired(ReceiverBehaviour(default_status=503)) as (_, c, rx):
        await c.post("/_sandbox/ui/contacts", json={"properties": {"email": "g@x.com"}})
        await _idle(c)
        # One creation request and one propertyChange (email) per attempt, batched together.
        assert [r.json()[0]["attemptNumber"] for r in rx.requests] == list(range(11))


async def test_timeout_is_retried() -> None:
    async with wired(ReceiverBehaviour(delay_s=0.4), webhook_timeout_s=0.1) as (_, c, rx):
        rx.behaviour.statuses = []
        await c.post(CONTACTS, json={"properties": {"email": "t@x.com"}})
        # Let the first attempts time out, then answer fast.
        import asyncio

        await asyncio.sleep(0.15)
        rx.behaviour.delay_s = 0.0
        await _idle(c)
        log = (await c.get("/_sandbox/webhooks/deliveries", params={"body": "false"})).json()["results"]
        assert log[0]["error"] == "timeout" and log[0]["ok"] is False
        assert log[-1]["ok"] is True and log[-1]["attemptNumber"] >= 1


async def test_duplicates_when_configured() -> None:
    async with wired(webhook_duplicate_probability=1.0) as (_, c, rx):
        await c.post(CONTACTS, json={"properties": {"email": "d@x.com"}})
        await _idle(c)
        counts = Counter(e["eventId"] for e in rx.events())
        assert counts and all(n == 2 for n in counts.values())


async def test_write_trace_ids_are_recorded() -> None:
    async with wired() as (_, c, _rx):
        r = await c.post(
            f"{CONTACTS}/batch/upsert",
            json={
                "inputs": [
                    {
                        "id": "e1",
                        "idProperty": "external_id",
                        "properties": {},
                        "objectWriteTraceId": "trace-1",
                    },
                    {
                        "id": "e2",
                        "idProperty": "external_id",
                        "properties": {},
                        "objectWriteTraceId": "trace-2",
                    },
                ]
            },
        )
        assert r.status_code == 200
        await _idle(c)
        log = (await c.get("/_sandbox/webhooks/deliveries")).json()["results"]
        assert sorted({t for d in log for t in d["objectWriteTraceIds"]}) == ["trace-1", "trace-2"]
        reqs = (await c.get("/_sandbox/requests")).json()["entries"]
        upsert = next(e for e in reqs if e["endpoint"].endswith("batch/upsert"))
        assert upsert["objectWriteTraceIds"] == ["trace-1", "trace-2"]


async def test_v3_signature_covers_the_exact_url_with_query() -> None:
    async with wired(path="/hooks/hubspot") as (_, c, rx):
        url = rx.url + "?tenant=a%20b&x=%3A"
        await c.put("/_sandbox/webhooks/1001", json={"target_url": url})
        await c.post(CONTACTS, json={"properties": {"email": "s@x.com"}})
        await _idle(c)
        req = rx.requests[0]
        ts = req.headers["x-hubspot-request-timestamp"]
        # HubSpot decodes %3A but keeps %20 before hashing.
        decoded = rx.url + "?tenant=a%20b&x=:"
        assert req.headers["x-hubspot-signature-v3"] == sign_v3(
            DEFAULT_CLIENT_SECRET, "POST", decoded, req.body.decode(), ts
        )


async def test_subscription_filters_and_generic_object_subscriptions() -> None:
    async with wired() as (_, c, rx):
        r = await c.put(
            "/_sandbox/webhooks/1001",
            json={"subscription_types": ["contact.propertyChange:firstname", "object.creation"]},
        )
        assert r.status_code == 200
        a = (await c.post(CONTACTS, json={"properties": {"email": "f@x.com", "firstname": "F"}})).json()["id"]
        await c.post("/crm/v3/objects/deals", json={"properties": {"dealname": "D"}})
        await _idle(c)
        got = sorted(
            (e["subscriptionType"], e.get("propertyName"), e.get("objectTypeId")) for e in rx.events()
        )
        assert got == [
            ("contact.propertyChange", "firstname", None),
            ("object.creation", None, "0-1"),
            ("object.creation", None, "0-3"),
        ]
        assert a


async def test_no_target_url_means_no_delivery(sandbox: SandboxServer, client: httpx.AsyncClient) -> None:
    await client.put("/_sandbox/webhooks/1001", json={"target_url": None})
    await client.post(CONTACTS, json={"properties": {"email": "n@x.com"}})
    await _idle(client)
    assert (await client.get("/_sandbox/webhooks/deliveries")).json()["results"] == []


async def test_out_of_order_when_configured() -> None:
    async with wired(webhook_out_of_order_probability=1.0, webhook_max_batch=5) as (_, c, rx):
        await c.post(
            f"{CONTACTS}/batch/create",
            json={"inputs": [{"properties": {"email": f"o{n}@x.com"}} for n in range(20)]},
        )
        await _idle(c)
        ids = [e["eventId"] for e in rx.events()]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 40  # each event once
        assert ids != sorted(ids)


async def test_pause_and_resume_deliveries() -> None:
    async with wired() as (_, c, rx):
        await c.post("/_sandbox/webhooks/pause")
        await c.post(CONTACTS, json={"properties": {"email": "p@x.com"}})
        r = await c.post("/_sandbox/webhooks/wait-idle", params={"timeout": 0.2})
        assert r.json()["idle"] is False and rx.requests == []
        await c.post("/_sandbox/webhooks/resume")
        await _idle(c)
        assert len(rx.events()) == 2


async def test_timestamp_offset_and_clock_independence() -> None:
    async with wired(webhook_timestamp_offset_ms=-600_000) as (sb, c, rx):
        sb.state.clock.advance(7200)  # the sandbox clock does not leak into signatures
        await c.post(CONTACTS, json={"properties": {"email": "ts@x.com"}})
        await _idle(c)
        import time

        ts = int(rx.requests[0].headers["x-hubspot-request-timestamp"])
        assert abs((time.time() * 1000 - 600_000) - ts) < 5_000
        req = rx.requests[0]
        assert req.headers["x-hubspot-signature-v3"] == sign_v3(
            DEFAULT_CLIENT_SECRET, "POST", rx.url, req.body.decode(), ts
        )


async def test_churn_makes_ui_edits_that_reach_webhooks() -> None:
    async with wired() as (_, c, rx):
        ids = [
            (await c.post(CONTACTS, json={"properties": {"email": f"c{i}@x.com"}})).json()["id"]
            for i in range(3)
        ]
        await _idle(c)
        rx.requests.clear()
        r = await c.post(
            "/_sandbox/ui/contacts/churn",
            json={"ids": ids, "property": "lastname", "rate": 200, "seconds": 0.05},
        )
        assert r.status_code == 200 and r.json()["made"] == 10
        await _idle(c)
        edits = [e for e in rx.events() if e["changeSource"] == "CRM_UI"]
        assert sorted(e["propertyValue"] for e in edits) == sorted(f"churn-{n}" for n in range(10))
        assert {str(e["objectId"]) for e in edits} == set(ids)
        bad = await c.post("/_sandbox/ui/contacts/churn", json={"ids": ["999999"], "rate": 1, "seconds": 1})
        assert bad.status_code == 400


async def test_churn_portals_edits_many_portals_in_the_given_order() -> None:
    portals = [{"hub_id": 501}, {"hub_id": 502}]
    async with wired(portals=portals) as (_, c, rx):
        ids = {
            p: (await c.post("/_sandbox/ui/contacts", params={"portal": p}, json={"properties": {}})).json()[
                "id"
            ]
            for p in (501, 502)
        }
        await _idle(c)
        rx.requests.clear()
        order = [501, 502, 502, 501, 502]
        r = await c.post(
            "/_sandbox/ui/contacts/churn-portals",
            json={"edits": [[p, ids[p]] for p in order], "property": "lastname", "rate": 200},
        )
        assert r.status_code == 200 and r.json()["made"] == 5
        await _idle(c)
        edits = sorted(
            (e for e in rx.events() if e["changeSource"] == "CRM_UI"), key=lambda e: e["propertyValue"]
        )
        assert [(e["portalId"], e["propertyValue"]) for e in edits] == [
            (p, f"churn-{n}") for n, p in enumerate(order)
        ]
        unknown = await c.post("/_sandbox/ui/contacts/churn-portals", json={"edits": [[999, "1"]], "rate": 1})
        assert unknown.status_code == 400
        empty = await c.post("/_sandbox/ui/contacts/churn-portals", json={"edits": [], "rate": 1})
        assert empty.status_code == 400


async def test_many_portals_deliver_at_once_without_a_shared_connection_cap() -> None:
    """HubSpot delivers to every installing portal at once (up to 10 requests each); the sandbox
    used to share 200 pooled connections among all portals, so beyond 200 portals a delivery
    waited inside the sandbox for a connection (inside its 5 s) and its timeout looked like the
    receiver's. 250 portals' batches, each held by the receiver until all 250 are in flight."""
    count = 250
    portals = [{"hub_id": 700 + i} for i in range(count)]
    all_in = asyncio.Event()
    async with wired(portals=portals, webhook_timeout_s=120.0) as (sb, c, rx):

        async def hold(_req: object) -> None:
            if rx.in_flight >= count:
                all_in.set()
            # A generous fallback, so the old code fails the assert below instead of hanging.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 30)

        await c.post("/_sandbox/webhooks/pause")
        for p in portals:
            r = await c.post("/_sandbox/ui/contacts", params={"portal": p["hub_id"]}, json={"properties": {}})
            assert r.status_code == 200
        rx.on_request = hold
        await c.post("/_sandbox/webhooks/resume")
        r = await c.post("/_sandbox/webhooks/wait-idle", params={"timeout": 100}, timeout=120)
        assert r.json()["idle"] is True
        assert rx.max_in_flight == count
        assert {e["portalId"] for e in rx.events()} == {p["hub_id"] for p in portals}
        assert all(d["ok"] and d["attemptNumber"] == 0 for d in sb.state.webhooks.log)


async def test_a_kept_alive_connection_closed_by_the_receiver_is_not_a_failed_delivery() -> None:
    """The receiver closes idle kept-alive connections (uvicorn after 5 s; here after each
    answer): the next delivery opens a new connection instead of failing on the closed one."""
    async with wired() as (sb, c, rx):
        for n in range(3):
            r = await c.post("/_sandbox/ui/contacts", json={"properties": {"email": f"k{n}@x.com"}})
            assert r.status_code == 200
            await _idle(c)
            # Every connection the receiver holds is closed under the sandbox's pooled one.
            assert rx._server is not None
            for conn in list(rx._server.server_state.connections):
                conn.shutdown()
            await asyncio.sleep(0.05)
        assert len(rx.requests) == 3
        assert all(d["ok"] and d["attemptNumber"] == 0 for d in sb.state.webhooks.log)
