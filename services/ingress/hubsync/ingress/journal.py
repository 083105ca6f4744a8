"""The event journal: each portal's stream of accepted events, read by time or offset, replayed.

Offsets are Redis stream ids (``<ms>-<seq>``), so a time maps to an offset without an index.
Replays append the chosen entries again with ``origin=replay`` (the stages after ingress are
idempotent); a replay's ``request_id`` is remembered so the same request replays once. Entries of
either stored format are read through :func:`hubsync.core.event_entries.decode_entry`; replayed
copies are written in the compact one, trimmed like the committer's appends.
"""

from __future__ import annotations

import re
import time
from typing import cast

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from hubsync.core.bounds import check_request_id
from hubsync.core.errors import InvalidArgument, Unavailable
from hubsync.core.event_entries import EventRecord, decode_entry, replay_copy
from hubsync.core.keys import events_key, replays_key
from hubsync.core.ready import DEFAULT_SHARDS, EVENTS, ReadySets
from hubsync.core.streams import stream_range

__all__ = ["MAX_PAGE", "EventJournal", "JournalEntry", "check_offset"]

_OFFSET = re.compile(r"^\d{1,20}(-\d{1,20})?$")
MAX_PAGE = 1000
_CHUNK = 500


#: An entry as the journal shows it (``id`` is its offset).
JournalEntry = EventRecord


def check_offset(name: str, value: str) -> None:
    """Raise ``INVALID_ARGUMENT`` unless ``value`` is empty or a stream id (``<ms>-<seq>``)."""
    if value and not _OFFSET.match(value):
        raise InvalidArgument(f"{name} is not a journal offset", violations={name: "expected <ms>-<seq>"})


class EventJournal:
    """Reads and replays ``hubsync:{<portal>}:events``."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention_ms: int,
        replay_request_ttl_s: int,
        entry_format: str = "compact",
        ready_shards: int = DEFAULT_SHARDS,
    ) -> None:
        """Set up the journal over ``redis``; replayed copies are trimmed to ``retention_ms`` like appends."""
        self._ready = ReadySets(redis, EVENTS, ready_shards)
        self._redis = redis
        self.retention_ms = retention_ms
        self.compact = entry_format == "compact"
        self.replay_request_ttl_s = replay_request_ttl_s

    async def read(
        self, portal_id: int, start_ms: int | None, end_ms: int | None, page_size: int, page_token: str
    ) -> tuple[list[JournalEntry], str]:
        """Return a page of entries accepted in ``[start_ms, end_ms)``, oldest first, and the next token."""
        if portal_id <= 0:
            raise InvalidArgument("portal_id must be positive", violations={"portal_id": "must be > 0"})
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument(
                "page_size is out of range", violations={"page_size": f"must be 0..{MAX_PAGE}"}
            )
        if start_ms is not None and end_ms is not None and end_ms < start_ms:
            raise InvalidArgument(
                "end_time is before start_time", violations={"end_time": "before start_time"}
            )
        check_offset("page_token", page_token)
        size = page_size or 100
        low = f"({page_token}" if page_token else (f"{start_ms}-0" if start_ms is not None else "-")
        high = f"{end_ms - 1}-18446744073709551615" if end_ms is not None else "+"
        if end_ms is not None and end_ms <= 0:
            return [], ""
        raw = await stream_range(self._redis, events_key(portal_id), low, high, count=size + 1)
        entries = [decode_entry(i, f) for i, f in raw]
        if len(entries) > size:
            return entries[:size], entries[size - 1].id
        return entries, ""

    async def replay(self, portal_id: int, start_offset: str, end_offset: str, request_id: str) -> int:
        """Append the entries in ``[start_offset, end_offset]`` again; returns how many."""
        if portal_id <= 0:
            raise InvalidArgument("portal_id must be positive", violations={"portal_id": "must be > 0"})
        check_offset("start_offset", start_offset)
        check_offset("end_offset", end_offset)
        check_request_id(request_id, required=False)
        marker = replays_key(portal_id, request_id) if request_id else None
        if marker is not None:
            claimed = await self._redis.set(marker, b"running", nx=True, ex=self.replay_request_ttl_s)
            if not claimed:
                done = await self._redis.get(marker)
                if done is not None and done.isdigit():
                    return int(done)
                raise Unavailable("a replay with this request_id is still running", retry_after=1.0)
        try:
            count = await self._replay(portal_id, start_offset, end_offset)
        except BaseException:
            if marker is not None:
                await self._redis.delete(marker)
            raise
        if marker is not None:
            await self._redis.set(marker, str(count).encode(), ex=self.replay_request_ttl_s)
        return count

    async def _replay(self, portal_id: int, start_offset: str, end_offset: str) -> int:
        stream = events_key(portal_id)
        # The range is fixed before appending, so the replayed copies are not replayed again.
        last = await stream_range(self._redis, stream, "-", "+", count=1, newest_first=True)
        if not last:
            return 0
        newest = last[0][0].decode()
        high = end_offset or newest
        if _after(high, newest):
            high = newest
        low = start_offset or "-"
        count = 0
        while True:
            raw = await stream_range(self._redis, stream, low, high, count=_CHUNK)
            if not raw:
                return count
            pipe = self._redis.pipeline(transaction=False)
            minid = max(int(time.time() * 1000) - self.retention_ms, 0)
            for entry_id, fields in raw:
                # XADD's field type is wider than the copy's: re-typed, not converted.
                copy = cast("dict[FieldT, EncodableT]", replay_copy(entry_id, fields, compact=self.compact))
                pipe.xadd(stream, copy, minid=minid, approximate=True)
            await pipe.execute()
            await self._ready.mark([portal_id])  # after the append: mapper consumes the copies
            count += len(raw)
            low = "(" + raw[-1][0].decode()
            if len(raw) < _CHUNK:
                return count


def _after(a: str, b: str) -> bool:
    """Return whether stream id ``a`` sorts after ``b``."""

    def key(value: str) -> tuple[int, int]:
        ms, _, seq = value.partition("-")
        return int(ms), int(seq or 0)

    return key(a) > key(b)
