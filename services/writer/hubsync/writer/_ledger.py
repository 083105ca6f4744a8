"""The ledger of a queued submission: what earlier attempts of it finished.

A queued entry is processed at least once: a writer that dies mid-way leaves it pending and
another reclaims it. The ledger (``hubsync:{<portal>}:writes:ledger:<entry>``, a hash) keeps
each write's outcome once its stage is done, so a retry sends only what is left, and whether an
attempt was cut off while its calls may have been out (creates are then dead-lettered for a
person to check rather than sent twice).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.keys import write_ledger_key
from hubsync.writer._results import outcome_from_pb, result_pb
from hubsync.writer.batches import Outcome

__all__ = [
    "Ledger",
]


class Ledger:
    """What earlier attempts of one queued request finished.

    Each write's outcome once its stage is done, and whether an attempt was cut off mid-flight
    (started, neither finished nor stopped cleanly before sending).
    """

    TTL_S = 7 * 86_400

    def __init__(self, redis: Redis, key: str) -> None:
        """Use the ledger stored at ``key`` (see :meth:`of_entry`)."""
        self.redis = redis
        self.key = key
        self.finished: dict[int, Outcome] = {}
        self.interrupted = False

    @classmethod
    def of_entry(cls, redis: Redis, portal_id: int, entry_id: str) -> Ledger:
        """Return the ledger of one entry of the portal's durable queue."""
        return cls(redis, write_ledger_key(portal_id, entry_id))

    async def begin(self) -> Ledger:
        """Load what earlier attempts finished and mark this attempt in flight."""
        stored: Any = await self.redis.hgetall(self.key)
        self.interrupted = stored.get(b"inflight") == b"1"
        for field_name, raw in stored.items():
            if field_name.startswith(b"w:"):
                self.finished[int(field_name[2:])] = outcome_from_pb(writer_pb2.WriteResult.FromString(raw))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, "inflight", "1")
            pipe.expire(self.key, self.TTL_S)
            await pipe.execute()
        return self

    async def record(self, outcomes: dict[int, Outcome]) -> None:
        """Keep the outcomes of writes this attempt finished (by index in the submission)."""
        if outcomes:
            await self.redis.hset(
                self.key, mapping={f"w:{n}": result_pb(o).SerializeToString() for n, o in outcomes.items()}
            )

    async def stopped_before_sending(self) -> None:
        """Mark the attempt as given up before its calls went out.

        A refusal raised before sending (circuit open, no quota): nothing of it is in flight.
        """
        await self.redis.hset(self.key, "inflight", "0")

    async def close(self) -> None:
        """Forgets the ledger (its entry is done)."""
        await self.redis.delete(self.key)
