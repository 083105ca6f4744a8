"""The dead-letter queue: writes HubSpot refused for good, per portal, in a Redis stream.

Each entry keeps the write (the ``Write`` proto), HubSpot's error (status, category, message,
correlation id), the attempts and the trace id. Entries are listed oldest first, inspected,
replayed (queued again on the durable write queue, then removed) or purged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import InvalidArgument, NotFound
from hubsync.core.keys import WRITER_DLQ_PORTALS_KEY, writer_dlq_key
from hubsync.core.portal_metrics import PortalCounter, PortalGauge

__all__ = [
    "DeadLetterEntry",
    "DeadLetterQueue",
    "HubSpotFailure",
]

_meter = metrics.get_meter("hubsync.writer")
_depth = PortalGauge("sum")
_meter.create_observable_gauge(
    "hubsync.dlq.depth", callbacks=[_depth.observe], description="Entries in the portal's dead-letter queue"
)
_dead = PortalCounter(
    _meter.create_counter(
        "hubsync.dlq.entries", description="Writes dead-lettered, by portal and HTTP status"
    )
)


@dataclass
class HubSpotFailure:
    """HubSpot's verdict on a write it refused."""

    http_status: int
    message: str
    category: str = ""
    correlation_id: str = ""


@dataclass
class DeadLetterEntry:
    """One dead letter: the write, HubSpot's error, the attempts and the trace."""

    id: str
    portal_id: int
    write: writer_pb2.Write
    error: HubSpotFailure
    attempts: int
    trace_id: str
    created_ms: int


class DeadLetterQueue:
    """Each portal's dead letters, in the stream ``hubsync:{<portal>}:dlq``."""

    def __init__(self, redis: Redis, maxlen: int = 1_000_000) -> None:
        """Keep at most about ``maxlen`` entries per portal."""
        self.redis = redis
        self.maxlen = maxlen
        self._shown: set[int] = set()

    async def add(
        self, portal_id: int, write: writer_pb2.Write, error: HubSpotFailure, attempts: int, trace_id: str
    ) -> str:
        """Add a write HubSpot refused for good; return the entry's id."""
        fields: dict[str, bytes | str | int] = {
            "write": write.SerializeToString(),
            "http_status": error.http_status,
            "category": error.category,
            "message": error.message[:4000],
            "correlation_id": error.correlation_id,
            "attempts": attempts,
            "trace_id": trace_id,
            "created_ms": int(time.time() * 1000),
        }
        entry_id = await self.redis.xadd(
            writer_dlq_key(portal_id),
            fields,  # type: ignore[arg-type]
            maxlen=self.maxlen,
            approximate=True,
        )
        _dead.add(1, portal_id, {"status": str(error.http_status)})
        # Known to the depth gauge, which looks at portals with dead letters only.
        await self.redis.sadd(WRITER_DLQ_PORTALS_KEY, str(portal_id))
        await self.depth(portal_id)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def refresh_depths(self, seen: Sequence[int] = ()) -> None:
        """The depth gauge of every portal with dead letters (a portal whose queue is empty again
        leaves the set): the cost follows the portals with dead letters, not every portal. The
        portals in ``seen`` (this process worked for them) not in the set show 0, once, at no
        cost in Redis."""
        members = await self.redis.smembers(WRITER_DLQ_PORTALS_KEY)
        for portal in seen:
            if portal not in self._shown and str(portal).encode() not in members:
                _depth.set(0, portal)
            self._shown.add(portal)
        for raw in sorted(members):
            portal = int(raw)
            if await self.depth(portal) == 0:
                await self.redis.srem(WRITER_DLQ_PORTALS_KEY, str(portal))
                if await self.depth(portal):  # one was added meanwhile
                    await self.redis.sadd(WRITER_DLQ_PORTALS_KEY, str(portal))

    async def depth(self, portal_id: int) -> int:
        """Return how many entries the portal's queue holds (and update the gauge)."""
        n = int(await self.redis.xlen(writer_dlq_key(portal_id)))
        _depth.set(n, portal_id)
        return n

    async def page(
        self, portal_id: int, statuses: Iterable[int] = (), page_size: int = 100, page_token: str = ""
    ) -> tuple[list[DeadLetterEntry], str]:
        """Return one page of entries, oldest first, and the next page's token."""
        if page_size < 0 or page_size > 1000:
            raise InvalidArgument("page_size must be 0..1000", violations={"page_size": "0..1000"})
        size = page_size or 100
        wanted = set(statuses)
        start = f"({page_token}" if page_token else "-"
        out: list[DeadLetterEntry] = []
        last = ""
        while len(out) < size:
            raw: Any = await self.redis.xrange(writer_dlq_key(portal_id), min=start, max="+", count=size)
            if not raw:
                break
            for entry_id, fields in raw:
                last = entry_id.decode()
                entry = _entry(portal_id, last, fields)
                if not wanted or entry.error.http_status in wanted:
                    out.append(entry)
                    if len(out) == size:
                        break
            start = f"({last}"
        more = bool(last) and bool(
            await self.redis.xrange(writer_dlq_key(portal_id), min=f"({last}", max="+", count=1)
        )
        return out, (last if more and len(out) == size else "")

    async def get(self, portal_id: int, entry_id: str) -> DeadLetterEntry:
        """Return one entry (NOT_FOUND when there is none with this id)."""
        _check_id(entry_id)
        raw: Any = await self.redis.xrange(writer_dlq_key(portal_id), min=entry_id, max=entry_id, count=1)
        if not raw:
            raise NotFound(f"no dead letter {entry_id} for portal {portal_id}")
        return _entry(portal_id, entry_id, raw[0][1])

    async def select(
        self, portal_id: int, ids: Sequence[str], statuses: Iterable[int], all_: bool
    ) -> list[DeadLetterEntry]:
        """Return the entries named by ``ids``, else of ``statuses``, or all with ``all_``."""
        if ids:
            out = []
            for entry_id in ids:
                try:
                    out.append(await self.get(portal_id, entry_id))
                except NotFound:
                    continue
            return out
        wanted = set(statuses)
        if not wanted and not all_:
            return []
        everything: Any = await self.redis.xrange(writer_dlq_key(portal_id), min="-", max="+")
        entries = [_entry(portal_id, i.decode(), f) for i, f in everything]
        return [e for e in entries if all_ or e.error.http_status in wanted]

    async def remove(self, portal_id: int, ids: Sequence[str]) -> int:
        """Remove entries by id; return how many there were."""
        if not ids:
            return 0
        n = int(await self.redis.xdel(writer_dlq_key(portal_id), *ids))
        await self.depth(portal_id)
        return n

    async def purge(self, portal_id: int, ids: Sequence[str], all_: bool) -> int:
        """Delete the entries named by ``ids``, or all with ``all_``; return how many."""
        for entry_id in ids:
            _check_id(entry_id)
        if all_:
            n = await self.depth(portal_id)
            await self.redis.delete(writer_dlq_key(portal_id))
            _depth.set(0, portal_id)
            return n
        return await self.remove(portal_id, ids)


def _check_id(entry_id: str) -> None:
    left, _, right = entry_id.partition("-")
    if not (left.isdigit() and right.isdigit()):
        raise InvalidArgument(
            f"{entry_id!r} is not a dead-letter id", violations={"id": "must look like 1700000000000-0"}
        )


def _entry(portal_id: int, entry_id: str, fields: dict[bytes, bytes]) -> DeadLetterEntry:
    def s(name: str) -> str:
        return fields.get(name.encode(), b"").decode()

    write = writer_pb2.Write.FromString(fields.get(b"write", b""))
    return DeadLetterEntry(
        id=entry_id,
        portal_id=portal_id,
        write=write,
        error=HubSpotFailure(int(s("http_status") or 0), s("message"), s("category"), s("correlation_id")),
        attempts=int(s("attempts") or 0),
        trace_id=s("trace_id"),
        created_ms=int(s("created_ms") or 0),
    )
