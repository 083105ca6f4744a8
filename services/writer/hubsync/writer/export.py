"""Backfill export: every record of a type, past the 10,000-result search cap, resumable.

Each page is a fresh search sorted by ``hs_object_id`` for ids above the last one exported
(optionally within a ``hs_lastmodifieddate`` window), so no query ever pages deep enough to
meet the cap, and a record is visited once however its modification date moves during the
export. Without an upper bound, records created or changed while the export runs are included
(once). At the end the exporter waits ``lookback_s`` for search's index lag and looks once more
for ids it has not yet seen. The checkpoint (opaque, base64 JSON) resumes after the last page.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hubsync.core.errors import InvalidArgument
from hubsync.writer.reads import Record, RecordReader, SearchQuery

__all__ = [
    "ExportPage",
    "RecordExporter",
    "decode_checkpoint",
    "encode_checkpoint",
]


@dataclass
class ExportPage:
    """One page of an export and the checkpoint that resumes after it."""

    records: list[Record]
    checkpoint: str
    exported: int
    estimated_total: int


def encode_checkpoint(state: dict[str, Any]) -> str:
    """Return the opaque checkpoint of an export's state."""
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode()


def decode_checkpoint(token: str) -> dict[str, Any]:
    """Return the state of a checkpoint; InvalidArgument when it is not one of ours."""
    try:
        state = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(state, dict) or state.get("v") != 1:
            raise ValueError("unknown checkpoint version")
        int(state["last_id"])
        return state
    except Exception:
        raise InvalidArgument(
            "checkpoint is not one this writer streamed", violations={"checkpoint": "unreadable"}
        ) from None


class RecordExporter:
    """Every record of a type, page by page, resumable (see the module docstring)."""

    def __init__(self, reader: RecordReader, lookback_s: float = 2.0) -> None:
        """Read through ``reader``; wait ``lookback_s`` at the end for search's index lag."""
        self.reader = reader
        self.lookback_s = lookback_s

    async def export(
        self,
        portal_id: int,
        object_type: str,
        properties: Sequence[str],
        *,
        modified_after_ms: int | None = None,
        modified_before_ms: int | None = None,
        checkpoint: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[ExportPage]:
        """Yield the export's pages, each with the checkpoint that resumes after it."""
        object_type = await self.reader.types.resolve(portal_id, object_type)
        if page_size < 0 or page_size > 200:
            raise InvalidArgument("page_size must be 0..200", violations={"page_size": "0..200"})
        if checkpoint:
            state = decode_checkpoint(checkpoint)
        else:
            state = {
                "v": 1,
                "after": modified_after_ms,
                "before": modified_before_ms,
                "last_id": 0,
                "exported": 0,
                "total": -1,
            }
        limit = page_size or 200
        looked_back = False
        while True:
            filters: list[dict[str, Any]] = [
                {"propertyName": "hs_object_id", "operator": "GT", "value": str(state["last_id"])}
            ]
            if state.get("after") is not None:
                filters.append(
                    {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": str(state["after"])}
                )
            if state.get("before") is not None:
                filters.append(
                    {"propertyName": "hs_lastmodifieddate", "operator": "LT", "value": str(state["before"])}
                )
            page = await self.reader.search(
                portal_id,
                object_type,
                SearchQuery(
                    filter_groups=[filters],
                    sorts=[{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                    properties=list(properties),
                    limit=limit,
                ),
            )
            if state["total"] < 0:
                state["total"] = page.total
            if not page.records:
                if looked_back or self.lookback_s <= 0:
                    return
                # Search sees writes only after its index caught up: look once more, a bit later.
                looked_back = True
                await asyncio.sleep(self.lookback_s)
                continue
            looked_back = False
            state["last_id"] = max(int(r.id) for r in page.records)
            state["exported"] += len(page.records)
            yield ExportPage(
                page.records,
                encode_checkpoint(state),
                state["exported"],
                max(state["total"], state["exported"]),
            )
