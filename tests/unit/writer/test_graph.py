"""The write order of a submission comes from the graph of its associations."""

from __future__ import annotations

from hubsync.api.writer.v1 import writer_pb2
from hubsync.writer._graph import ARCHIVES, ASSOCIATIONS, GDPR, RECORDS, plan, type_levels


def rec(t: str, op: int = writer_pb2.WRITE_OPERATION_UPSERT) -> writer_pb2.Write:
    return writer_pb2.Write(record=writer_pb2.RecordWrite(object_type=t, operation=op))  # type: ignore[arg-type]


def link(a: str, b: str) -> writer_pb2.Write:
    return writer_pb2.Write(association=writer_pb2.AssociationWrite(from_object_type=a, to_object_type=b))


def test_parents_before_children_and_unlinked_types_together() -> None:
    writes = [
        link("line_items", "deals"),
        link("line_items", "products"),
        rec("line_items"),
        rec("deals"),
        rec("products"),
        rec("contacts"),
        rec("tickets", writer_pb2.WRITE_OPERATION_ARCHIVE),
        rec("contacts", writer_pb2.WRITE_OPERATION_GDPR_DELETE),
    ]
    stages = [(s.kind, s.writes) for s in plan(writes)]
    assert stages == [
        (RECORDS, [3, 4, 5]),  # deals, products and the unlinked contacts side by side
        (RECORDS, [2]),  # line items after both parents
        (ASSOCIATIONS, [0, 1]),
        (ARCHIVES, [6]),
        (GDPR, [7]),
    ]


def test_a_chain_of_associations_makes_a_chain_of_levels_whatever_the_direction() -> None:
    levels = type_levels(
        {"companies", "contacts", "deals", "2-100"},
        [("deals", "contacts"), ("companies", "contacts"), ("2-100", "deals")],
    )
    assert levels == {"companies": 0, "contacts": 1, "deals": 2, "2-100": 3}


def test_no_links_means_one_stage() -> None:
    assert [s.kind for s in plan([rec("notes"), rec("tickets")])] == [RECORDS]
