"""Parsing and coalescing event-stream entries: what becomes a change, what is dead-lettered."""

from __future__ import annotations

import time
from typing import Any

import grpc
import orjson
import pytest

from hubsync.api.mapper.v1 import mapper_pb2
from hubsync.core.errors import ResourceExhausted
from hubsync.mapper.hydrate import BLOCKED, COUNTED, PERMANENT, TRANSIENT, classify_error
from hubsync.mapper.inbound_events import coalesce, parse_entry
from hubsync.mapper.mappings import load_directory
from hubsync.mapper.settings import PACKAGED_MAPPINGS
from hubsync.mapper.transforms import MappingSet


def _entry(n: int, event: Any) -> Any:
    raw = event if isinstance(event, bytes) else orjson.dumps(event)
    return parse_entry(f"{n}-0".encode(), {b"event": raw})


def _mappings(*types: str) -> MappingSet:
    loaded = [m for m in load_directory(PACKAGED_MAPPINGS) if not types or m.mapping.object_type in types]
    return MappingSet(loaded)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (b"{nope", "MALFORMED_ENTRY"),
        ([1, 2], "MALFORMED_ENTRY"),
        ({"subscriptionType": "contact.creation"}, "MALFORMED_ENTRY"),  # no objectId
        ({"subscriptionType": "contact", "objectId": 1}, "MALFORMED_ENTRY"),  # no kind
        ({"subscriptionType": "gizmo.creation", "objectId": 1}, "UNKNOWN_OBJECT_TYPE"),
        # A custom object: classified here; whether it is mapped is decided when coalescing.
        ({"subscriptionType": "object.creation", "objectTypeId": "2-99", "objectId": 1}, ""),
        (
            {"subscriptionType": "object.creation", "objectTypeId": "9-99", "objectId": 1},
            "UNKNOWN_OBJECT_TYPE",
        ),
        ({"subscriptionType": "ticket.creation", "objectId": 1}, ""),  # not synced: simply done
        ({"subscriptionType": "contact.creation", "objectId": 1}, ""),
    ],
)
def test_an_entry_that_can_never_become_a_change_says_why(event: Any, reason: str) -> None:
    assert _entry(1, event).reason == reason


def test_coalesce_groups_per_record_and_sets_the_rest_aside() -> None:
    entries = [
        _entry(1, {"subscriptionType": "contact.creation", "objectId": 7}),
        _entry(2, {"subscriptionType": "contact.propertyChange", "objectId": 7, "propertyName": "firstname"}),
        _entry(3, {"subscriptionType": "contact.associationChange", "fromObjectId": 7, "toObjectId": 9}),
        _entry(4, {"subscriptionType": "deal.creation", "objectId": 3}),
        _entry(5, {"subscriptionType": "ticket.creation", "objectId": 4}),
        _entry(6, b"garbage"),
    ]
    batch = coalesce(entries, _mappings("contacts"))
    record, assoc = batch.changes
    assert (record.kind, record.entry_ids, record.properties) == (
        mapper_pb2.CHANGE_KIND_CREATED,
        [b"1-0", b"2-0"],
        {"firstname"},
    )
    assert assoc.kind == mapper_pb2.CHANGE_KIND_ASSOCIATION_CHANGED and assoc.related == ["9"]
    assert [(d.id, d.reason) for d in batch.dead] == [
        (b"4-0", "UNMAPPED_OBJECT_TYPE"),
        (b"6-0", "MALFORMED_ENTRY"),
    ]
    assert batch.done == [b"5-0"]


class _Failed(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "unusable"),
        (grpc.StatusCode.PERMISSION_DENIED, "unusable"),
        (grpc.StatusCode.FAILED_PRECONDITION, "unusable"),
        (grpc.StatusCode.UNAVAILABLE, TRANSIENT),
        (grpc.StatusCode.DEADLINE_EXCEEDED, TRANSIENT),
        (grpc.StatusCode.NOT_FOUND, PERMANENT),
        (grpc.StatusCode.INVALID_ARGUMENT, PERMANENT),
        (grpc.StatusCode.INTERNAL, COUNTED),
    ],
)
def test_what_a_failed_read_means(code: grpc.StatusCode, kind: str) -> None:
    assert classify_error(_Failed(code)).kind == kind


class _Exhausted(grpc.aio.AioRpcError):
    """RESOURCE_EXHAUSTED as writer answers it: the rich status in the trailers."""

    def __init__(self, reason: str, retry_after: float | None) -> None:
        status = ResourceExhausted("spent", reason=reason, retry_after=retry_after).to_status()
        trailers = grpc.aio.Metadata(*status.trailing_metadata)
        super().__init__(status.code, grpc.aio.Metadata(), trailers, details="spent")


def test_a_spent_daily_quota_blocks_the_portal_until_the_time_writer_names() -> None:
    before = int(time.time() * 1000)
    for reason in ("DAILY_LIMIT", "HUBSPOT_DAILY_LIMIT"):
        failure = classify_error(_Exhausted(reason, 120.0))
        assert failure.kind == BLOCKED and failure.reason == reason
        assert failure.until_ms is not None
        assert before + 120_000 <= failure.until_ms <= int(time.time() * 1000) + 120_000
    # Writer named no time: the next UTC midnight (HubSpot's default reset).
    failure = classify_error(_Exhausted("HUBSPOT_DAILY_LIMIT", None))
    assert failure.until_ms is not None and failure.until_ms % 86_400_000 == 0
    assert 0 < failure.until_ms - before <= 86_400_000
    # Any other exhaustion (a burst window) is transient: retried soon.
    assert classify_error(_Exhausted("RATE_LIMITED", 1.0)).kind == TRANSIENT


def test_every_type_is_classified_and_custom_objects_take_their_mappings_name() -> None:
    from hubsync.api.writer.v1 import writer_pb2
    from hubsync.mapper.mappings import LoadedMapping, parse_mappings
    from hubsync.mapper.objecttypes import CUSTOM_TYPES

    text = (
        "mappings:\n"
        "  - {object_type: subscription, id: {external: id, hubspot: sub_key},\n"
        "     fields: [{hubspot: plan, external: plan}]}\n"
        "  - {object_type: ticket, id: {external: id, hubspot: external_id},\n"
        "     fields: [{hubspot: subject, external: s}]}\n"
    )
    mappings = MappingSet([LoadedMapping(m, "m.yaml") for m in parse_mappings(text, "m.yaml")])
    assert mappings.get("tickets") is not None and mappings.get("0-5") is mappings.get("tickets")
    CUSTOM_TYPES.learn(
        [writer_pb2.ObjectType(object_type_id="2-777", schema_name="subscription", custom=True)]
    )
    CUSTOM_TYPES.learn([writer_pb2.ObjectType(object_type_id="2-778", schema_name="unmapped", custom=True)])
    entries = [
        _entry(1, {"subscriptionType": "object.propertyChange", "objectTypeId": "2-777", "objectId": 5}),
        _entry(2, {"subscriptionType": "ticket.creation", "objectId": 6}),
        _entry(
            3, {"subscriptionType": "object.creation", "objectTypeId": "2-778", "objectId": 7}
        ),  # not mapped
        _entry(
            4, {"subscriptionType": "object.creation", "objectTypeId": "2-779", "objectId": 8}
        ),  # not known
        _entry(5, {"subscriptionType": "line_item.creation", "objectId": 9}),  # no mapping: done
        _entry(6, {"subscriptionType": "deal.creation", "objectId": 10}),  # core type, no mapping
    ]
    batch = coalesce(entries, mappings)
    assert sorted(c.key for c in batch.changes) == [("subscription", "5"), ("tickets", "6")]
    assert sorted(batch.done) == [b"3-0", b"5-0"]
    assert {e.id: e.reason for e in batch.dead} == {
        b"4-0": "UNKNOWN_CUSTOM_OBJECT",
        b"6-0": "UNMAPPED_OBJECT_TYPE",
    }
