"""Shard leases: which replica consumes which shard of a queue's ready sets.

Consumers heartbeat into ``hubsync:ready:<queue>:consumers``; each shard's owner is chosen by
rendezvous hashing over the live consumers (so every replica holds about ``S / replicas`` shards)
and held with ``SET NX PX`` renewed at a third of its TTL. One consumer per portal stream at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from hubsync.core.keys import ready_consumers_key, ready_lease_key
from hubsync.core.ready.sets import now_ms
from hubsync.core.redis import as_str

__all__ = ["ShardLeases"]

# KEYS[1] a lease. ARGV: owner, ttl ms. Renews (1) or drops (2: DEL) the lease if ``owner`` holds it.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == 'del' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def _weight(shard: int, member: str) -> bytes:
    return hashlib.blake2b(f"{shard}/{member}".encode(), digest_size=8).digest()


class ShardLeases:
    """The shards of one queue this consumer holds, balanced over the live consumers.

    Every ``renew_s`` a consumer heartbeats into the queue's consumers set and learns the live
    ones; each shard belongs to the consumer with the highest rendezvous weight, so all agree
    without talking, and a consumer joining or leaving moves only its share. A consumer renews
    the leases of its shards, releases those that now belong to another, and takes (``SET NX``)
    its own as soon as their previous holder let go or its lease expired.
    """

    def __init__(self, redis: Any, queue: str, shards: int, owner: str, *, ttl_ms: int = 30_000) -> None:
        self.redis = redis
        self.queue = queue
        self.shards = shards
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.held: set[int] = set()
        self.members: list[str] = []
        self._renew = redis.register_script(_RENEW_LUA)

    @property
    def renew_s(self) -> float:
        """Return how often leases are renewed: a third of their time to live."""
        return self.ttl_ms / 3000

    def mine(self) -> set[int]:
        """Return the shards this replica owns: rendezvous hashing over the live members."""
        members = self.members or [self.owner]
        return {s for s in range(self.shards) if max(members, key=lambda m: _weight(s, m)) == self.owner}

    async def refresh(self) -> set[int]:
        """One heartbeat; returns the shards gained."""
        key = ready_consumers_key(self.queue)
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.owner: now + self.ttl_ms})
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zrange(key, 0, -1)
            *_, members = await pipe.execute()
        self.members = sorted(as_str(m) for m in members)
        wanted = self.mine()
        keep = sorted(self.held & wanted)
        if keep:
            # GETEX: renewed in one command. A lease found in another's hands (ours expired and
            # was taken) is dropped here; extending theirs meanwhile is harmless.
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in keep:
                    pipe.getex(ready_lease_key(self.queue, shard), px=self.ttl_ms)
                holders = await pipe.execute()
            for shard, holder in zip(keep, holders, strict=True):
                if holder is None or as_str(holder) != self.owner:
                    self.held.discard(shard)
        for shard in sorted(self.held - wanted):  # now another consumer's: let go at once
            await self._renew(keys=[ready_lease_key(self.queue, shard)], args=[self.owner, 0, "del"])
            self.held.discard(shard)
        gained = set()
        for shard in sorted(wanted - self.held):
            if await self.redis.set(ready_lease_key(self.queue, shard), self.owner, nx=True, px=self.ttl_ms):
                self.held.add(shard)
                gained.add(shard)
        return gained

    async def release(self) -> None:
        """Lets go of every shard (a clean stop: the others take them at their next heartbeat)."""
        for shard in sorted(self.held):
            with contextlib.suppress(Exception):
                await self._renew(keys=[ready_lease_key(self.queue, shard)], args=[self.owner, 0, "del"])
        self.held.clear()
        with contextlib.suppress(Exception):
            await self.redis.zrem(ready_consumers_key(self.queue), self.owner)
