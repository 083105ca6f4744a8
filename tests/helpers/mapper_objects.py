"""Custom objects, tickets and notes through the mapper: mappings, records and sandbox look-ups."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.mapper.settings import PACKAGED_MAPPINGS
from tests.helpers.auth import SANDBOX_PORTAL
from tests.helpers.custom_objects import subscription_schema
from tests.helpers.mapper import Suite, running_mapper

PORTAL = SANDBOX_PORTAL

SCHEMA = subscription_schema(
    {"name": "sub_key", "label": "Key", "type": "string", "fieldType": "text", "hasUniqueValue": True}
)

MAPPINGS = {
    "subscription.yaml": """
object_type: subscription
id: {external: id, hubspot: sub_key}
fields:
  - {hubspot: plan, external: plan}
  - {hubspot: seats, external: seats, transform: integer}
associations:
  - {external: owner_id, to: contacts}
""",
    "tickets.yaml": """
object_type: ticket
id: {external: id, hubspot: external_id}
deletes: any
fields:
  - {hubspot: subject, external: title}
  - {hubspot: hs_pipeline_stage, external: status, transform: enum, pipeline: "0",
     values: {"1": open, "2": waiting, "4": done}}
""",
    "notes.yaml": """
object_type: notes
id: {external: id, hubspot: external_id}
deletes: owned
fields:
  - {hubspot: hs_note_body, external: text}
  - {hubspot: hs_timestamp, external: at, transform: datetime}
associations:
  - {external: contact_id, to: contacts}
""",
}


def fields_struct(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def record(object_type: str, external_id: str, **fields: Any) -> mapper_pb2.ExternalRecord:
    return mapper_pb2.ExternalRecord(
        object_type=object_type, external_id=external_id, fields=fields_struct(**fields)
    )


async def push(stub: mapper_pb2_grpc.MapperServiceStub, *records: mapper_pb2.ExternalRecord) -> Any:
    return await stub.PushRecords(
        mapper_pb2.PushRecordsRequest(
            request_id=str(uuid.uuid4()), portal_id=PORTAL, records=list(records), wait=True
        ),
        timeout=60,
    )


def mappings_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mappings"
    d.mkdir()
    for src in PACKAGED_MAPPINGS.glob("*.yaml"):
        (d / src.name).write_text(src.read_text())
    for name, text in MAPPINGS.items():
        (d / name).write_text(text)
    return d


async def hubspot_object(s: Suite, object_type: str, hs_id: str) -> dict[str, Any]:
    r = await s.hubspot.get(f"/_sandbox/objects/{object_type}/{hs_id}", params={"portal": PORTAL})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def define_subscription(s: Suite) -> str:
    """Defines the subscription custom object and subscribes to its generic events: its type id."""
    made = await s.hubspot.post("/crm/v3/schemas", json=SCHEMA)
    assert made.status_code == 201, made.text
    type_id: str = made.json()["objectTypeId"]
    # Custom objects' events come through the generic subscriptions, by type id.
    sub = s.sandbox.state.webhooks.subs[1001]
    sub.set_types([*sub.types, f"object.creation@{type_id}", f"object.propertyChange@{type_id}"])
    return type_id


@asynccontextmanager
async def objects_mapper(
    s: Suite, redis_url: str, caller_tokens: Mapping[str, str], tmp_path: Path, **options: Any
) -> AsyncIterator[mapper_pb2_grpc.MapperServiceStub]:
    """A mapper writing through ``s``'s writer with these tests' mappings (``options`` go to
    :func:`running_mapper`): a stub on it, called as the client."""
    async with (
        running_mapper(
            redis_url,
            caller_tokens,
            writer_address=s.writer_address,
            mappings_dir=mappings_dir(tmp_path),
            **options,
        ) as mapper,
        open_channel(mapper.address, caller_tokens["client"]) as channel,
    ):
        yield mapper_pb2_grpc.MapperServiceStub(channel)
