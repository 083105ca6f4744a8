"""The demo ``hubsync run`` shows: one record each way through the running suite.

- outbound: an internal client pushes ``{external_id, email, first_name, last_name}`` to mapper;
  writer upserts it into the sandbox by the unique property ``external_id``.
- inbound: a person edits the contact in the sandbox's "UI"; the sandbox posts a signed webhook
  to ingress; mapper hydrates it through writer and hands it, mapped, to a subscriber.

With the suite's local trace store on, it ends with the commands that open each change's trace.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from google.protobuf import duration_pb2, json_format, struct_pb2

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.cli.suite import SANDBOX_PORTAL, SANDBOX_PRIVATE_TOKEN, Suite


@dataclass
class DemoResult:
    """What happened, for the person watching and for the end-to-end test."""

    external_id: str
    hubspot_id: str = ""
    outbound_outcome: str = ""
    sandbox_properties: dict[str, str] = field(default_factory=dict)
    inbound_change: dict[str, Any] = field(default_factory=dict)
    inbound_trace_id: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


async def connect_sandbox_portal(suite: Suite) -> None:
    """Stores the sandbox's private-app token as portal 12345's connection."""
    async with suite.channel("auth") as channel:
        await auth_pb2_grpc.AuthServiceStub(channel).CreatePrivateAppConnection(
            auth_pb2.CreatePrivateAppConnectionRequest(
                portal_id=SANDBOX_PORTAL, tenant="demo", access_token=SANDBOX_PRIVATE_TOKEN
            ),
            timeout=10,
        )


async def push_contact(suite: Suite, external_id: str, fields: dict[str, Any]) -> mapper_pb2.PushResult:
    """Pushes one contact in the company's shape through mapper and returns its result."""
    record = mapper_pb2.ExternalRecord(object_type="contacts", external_id=external_id)
    record.fields.update(fields)
    async with suite.channel("mapper", "demo-client") as channel:
        reply: mapper_pb2.PushRecordsResponse = await mapper_pb2_grpc.MapperServiceStub(channel).PushRecords(
            mapper_pb2.PushRecordsRequest(
                request_id=secrets.token_hex(8), portal_id=SANDBOX_PORTAL, records=[record], wait=True
            ),
            timeout=30,
        )
    return reply.results[0]


async def sandbox_contact(suite: Suite, external_id: str) -> dict[str, Any]:
    """The contact as the sandbox (HubSpot) holds it, found by its external_id."""
    async with httpx.AsyncClient(base_url=suite.sandbox_url, timeout=10) as client:
        reply = await client.get("/_sandbox/objects/contacts")
        reply.raise_for_status()
        body = reply.json()
    objects = body.get("results", body) if isinstance(body, dict) else body
    for obj in objects:
        if obj.get("properties", {}).get("external_id") == external_id:
            return dict(obj)
    return {}


async def ui_edit(suite: Suite, hubspot_id: str, properties: dict[str, str]) -> None:
    """Edits a contact as a person in HubSpot's UI would (changeSource CRM_UI)."""
    async with httpx.AsyncClient(base_url=suite.sandbox_url, timeout=10) as client:
        reply = await client.post(
            f"/_sandbox/ui/contacts/{hubspot_id}",
            params={"portal": SANDBOX_PORTAL},
            json={"properties": properties},
        )
        reply.raise_for_status()


async def next_change(
    suite: Suite, group: str, predicate: Callable[[mapper_pb2.Change], bool], timeout: float = 30.0
) -> mapper_pb2.Change:
    """Subscribes as ``group`` and returns (and acks) the first change matching ``predicate``."""
    async with suite.channel("mapper", "demo-client") as channel:
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        call = stub.Subscribe(
            mapper_pb2.SubscribeRequest(
                consumer_group=group,
                consumer="demo",
                visibility_timeout=duration_pb2.Duration(seconds=30),
            ),
            timeout=timeout,
        )
        try:
            async for message in call:
                change: mapper_pb2.Change = message.change
                await stub.Ack(mapper_pb2.AckRequest(consumer_group=group, ack_ids=[change.ack_id]))
                if predicate(change):
                    return change
        finally:
            call.cancel()
    raise TimeoutError("no matching change arrived")


def change_dict(change: mapper_pb2.Change) -> dict[str, Any]:
    """A change as a plain dict, proto field names kept (for printing)."""
    return json_format.MessageToDict(change, preserving_proto_field_name=True)


async def run_demo(suite: Suite, say: Any = print, trace_opener: str | None = None) -> DemoResult:
    """Runs both directions; ``trace_opener`` (``hubsync trace``, with the run's ``--workdir``)
    makes it print the commands that open each change's trace."""
    external_id = f"ext-{secrets.token_hex(3)}"
    result = DemoResult(external_id=external_id)
    await connect_sandbox_portal(suite)

    say(f"[bold]outbound[/]: pushing contact {external_id} to mapper")
    started = time.monotonic()
    pushed = await push_contact(
        suite,
        external_id,
        {
            "external_id": external_id,
            "email": f"{external_id}@example.com",
            "first_name": "Ada",
            "last_name": "Lovelace",
        },
    )
    result.seconds["outbound"] = time.monotonic() - started
    result.outbound_outcome = mapper_pb2.PushOutcome.Name(pushed.outcome)
    stored = await sandbox_contact(suite, external_id)
    result.hubspot_id = str(stored.get("id", pushed.hubspot_id))
    result.sandbox_properties = dict(stored.get("properties", {}))
    say(
        f"  -> {result.outbound_outcome}; the sandbox now holds contact {result.hubspot_id}: "
        f"firstname={result.sandbox_properties.get('firstname')!r} "
        f"email={result.sandbox_properties.get('email')!r}"
    )

    say(f"[bold]inbound[/]: editing contact {result.hubspot_id} in the sandbox UI (firstname → Grace)")
    group = f"demo-{secrets.token_hex(3)}"
    waiter = asyncio.create_task(
        next_change(
            suite,
            group,
            lambda c: c.hubspot_id == result.hubspot_id and _field(c.fields, "first_name") == "Grace",
        )
    )
    await asyncio.sleep(0.3)  # let the subscription register its consumer group first
    started = time.monotonic()
    await ui_edit(suite, result.hubspot_id, {"firstname": "Grace"})
    change = await waiter
    result.seconds["inbound"] = time.monotonic() - started
    result.inbound_change = change_dict(change)
    result.inbound_trace_id = change.trace_id
    say(
        f"  -> subscriber got {mapper_pb2.ChangeKind.Name(change.kind)} for {change.object_type} "
        f"{change.hubspot_id}: first_name={_field(change.fields, 'first_name')!r} "
        f"(trace {change.trace_id or 'n/a'})"
    )
    if trace_opener:
        say("open each change's trace (a waterfall of its spans; add --html FILE for a browser):")
        say(f"  outbound: {trace_opener} {external_id}", markup=False, highlight=False)
        if change.trace_id:
            say(f"  inbound:  {trace_opener} {change.trace_id}", markup=False, highlight=False)
    return result


def _field(fields: struct_pb2.Struct, name: str) -> Any:
    return json_format.MessageToDict(fields).get(name)
