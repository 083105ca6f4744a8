"""The order of one submission's writes, from the graph its associations draw.

Nodes are the object types the submission writes records of; every association write (create,
remove, or a reference such as a line item's product) between two of them is an edge, pointing
from parent to child: the type that ranks higher in HubSpot's hierarchy (companies, contacts,
deals and products, tickets and quotes, line items, custom objects, engagements; ties by name)
is the parent. A type's level is 0 without parents, else one more than its highest parent's, so
parents are written before children, types that no association links are written side by side
(in the same stage), and the graph is acyclic by construction. Then come, in this order: the
associations (both ends exist by then), archives (after the associations that touch them), and
GDPR deletes (never batched).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

from hubsync.api.writer.v1 import writer_pb2
from hubsync.writer.objecttypes import rank

__all__ = [
    "ARCHIVES",
    "ASSOCIATIONS",
    "GDPR",
    "RECORDS",
    "Stage",
    "plan",
    "type_levels",
]

RECORDS = "records"
ASSOCIATIONS = "associations"
ARCHIVES = "archives"
GDPR = "gdpr"


@dataclass
class Stage:
    """Writes sent together (by index into the submission); a stage waits for the one before."""

    kind: str
    writes: list[int] = field(default_factory=list)


def _order(t: str) -> tuple[int, str]:
    return rank(t), t


def type_levels(record_types: set[str], links: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Level of each record type: 0 without a parent among ``record_types``, else 1 + parent's."""
    parents: dict[str, set[str]] = {t: set() for t in record_types}
    for a, b in links:
        if a == b or a not in record_types or b not in record_types:
            continue
        parent, child = sorted((a, b), key=_order)
        parents[child].add(parent)

    @cache
    def level(t: str) -> int:
        return 1 + max((level(p) for p in parents[t]), default=-1)

    return {t: level(t) for t in record_types}


def plan(writes: Sequence[writer_pb2.Write]) -> list[Stage]:
    """Return the stages of a submission, in order; empty stages are left out."""
    records: list[int] = []
    associations: list[int] = []
    archives: list[int] = []
    gdpr: list[int] = []
    for n, w in enumerate(writes):
        if w.WhichOneof("kind") != "record":
            associations.append(n)
        elif w.record.operation == writer_pb2.WRITE_OPERATION_ARCHIVE:
            archives.append(n)
        elif w.record.operation == writer_pb2.WRITE_OPERATION_GDPR_DELETE:
            gdpr.append(n)
        else:
            records.append(n)
    levels = type_levels(
        {writes[n].record.object_type for n in records},
        [
            (writes[n].association.from_object_type, writes[n].association.to_object_type)
            for n in associations
        ],
    )
    by_level: dict[int, list[int]] = {}
    for n in records:
        by_level.setdefault(levels[writes[n].record.object_type], []).append(n)
    stages = [Stage(RECORDS, by_level[lv]) for lv in sorted(by_level)]
    stages += [
        Stage(kind, idx)
        for kind, idx in ((ASSOCIATIONS, associations), (ARCHIVES, archives), (GDPR, gdpr))
        if idx
    ]
    return stages
