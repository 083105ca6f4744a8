"""Per-record write order: a property is never written with an older version after a newer one.

Every record write carries a version (``RecordWrite.version``): the caller's (mapper sets the
push's acceptance stamp) or, when it gives none, one writer assigns when it accepts the write
(:meth:`RecordVersions.stamp_now`, or the queue's accept script): Redis's clock in microseconds, strictly
increasing per portal, taken atomically with the enqueue. Right before a batch goes to HubSpot,
:meth:`RecordVersions.claim` compares each input's properties with the highest version already
claimed for that property of that record (``hubsync:{<portal>}:writer:versions:<type>:<id
property>:<id>``, one hash per record, in Redis so every replica sees it): a property whose
record already has a newer version is dropped from the input, the rest is claimed and sent. An
input with nothing left is answered ``SUPERSEDED`` without a call. A retry of the same version
(a split batch, a reclaimed queue entry) is sent again: equal versions pass.

Per property rather than per record: an older write's properties that no newer write touched
still land (an old upsert of {firstname, phone} reclaimed after a new one of {firstname} still
writes phone), so nothing the caller sent is lost, and nothing newer is reverted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from opentelemetry import metrics
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.keys import writer_version_key, writer_versions_key
from hubsync.core.portal_metrics import PortalCounter
from hubsync.core.versions import reserve_versions

__all__ = [
    "RecordRef",
    "RecordVersions",
    "stamp",
    "unique_value",
    "version_counter_key",
]

log = logging.getLogger(__name__)

_superseded = PortalCounter(
    metrics.get_meter("hubsync.writer").create_counter(
        "hubsync.writes.superseded",
        description="Properties of writes dropped because a newer version of the record was written",
    )
)

# KEYS: one version hash per record. ARGV[1]: TTL (s); ARGV[2]: a JSON array with, per key, its
# pairs as one flat array (property, version, ...; versions as decimal strings: Lua's numbers
# print large integers in floating point). Claims each property whose stored version is not
# newer; returns, per key, the properties a newer version already holds. Per record one HMGET,
# and (when anything is claimed) one HSET and one EXPIRE, however many properties it has: the
# commands per record, not per property, were most of writer's Redis load
# (bench/tenants/writer.py). The pairs travel as one JSON argument, not one argument each:
# redis-py packs every argument in Python, which cost writer more CPU than encoding the JSON
# (bench/writer/script_args.py).
_CLAIM = """
local ttl = ARGV[1]
local claims = cjson.decode(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local pairs_in = claims[i]
  local n = #pairs_in / 2
  local stale = {}
  local claim = {}
  local from = 0
  while from < n do
    local take = math.min(n - from, 256)
    local names = {}
    for j = 1, take do names[j] = pairs_in[2 * (from + j) - 1] end
    local have = redis.call('HMGET', key, unpack(names))
    for j = 1, take do
      local at = 2 * (from + j) - 1
      local h = have[j]
      if h and tonumber(h) > tonumber(pairs_in[at + 1]) then
        table.insert(stale, pairs_in[at])
      else
        table.insert(claim, pairs_in[at])
        table.insert(claim, pairs_in[at + 1])
      end
    end
    from = from + take
  end
  local c = 1
  while c <= #claim do
    redis.call('HSET', key, unpack(claim, c, math.min(c + 511, #claim)))
    c = c + 512
  end
  if #claim > 0 then redis.call('EXPIRE', key, ttl) end
  out[i] = stale
end
return out
"""


# The name queue.py's accept script uses for the portal's version counter.
version_counter_key = writer_version_key


def stamp(writes: Sequence[writer_pb2.Write], base: int) -> None:
    """Give every record write without a version ``base + its index`` (reserved for them)."""
    if base <= 0:
        return
    for n, w in enumerate(writes):
        if w.WhichOneof("kind") == "record" and w.record.version == 0:
            w.record.version = base + n


def unique_value(id_property: str, value: str) -> str:
    """Return the form a record's unique value is compared in: HubSpot matches emails ignoring case."""
    return value.lower() if id_property == "email" else value


@dataclasses.dataclass(frozen=True)
class RecordRef:
    """How a batch names a record: object type, the property its id is a value of, the id."""

    object_type: str
    id_property: str
    id: str

    def key(self, portal_id: int) -> str:
        """Return the Redis hash of this record's property versions."""
        return writer_versions_key(portal_id, self.object_type, self.id_property, self.id)


class RecordVersions:
    """The claim made right before a batch is sent (shared by every replica through Redis)."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        """Keep each record's versions in ``redis`` for ``ttl_s``."""
        self.redis = redis
        self.ttl_s = ttl_s
        self._claim = redis.register_script(_CLAIM)

    async def stamp_now(self, portal_id: int, writes: Sequence[writer_pb2.Write]) -> None:
        """Versions for the writes whose caller gave none, in acceptance order (per portal)."""
        if any(w.WhichOneof("kind") == "record" and w.record.version == 0 for w in writes):
            base = await reserve_versions(self.redis, writer_version_key(portal_id), len(writes))
            stamp(writes, base)

    async def claim(
        self,
        portal_id: int,
        object_type: str,
        items: Sequence[tuple[RecordRef | None, dict[str, int]]],
    ) -> list[set[str]]:
        """Claim each item's property versions; return, per item, what a newer version wrote.

        For each (record, property → version): claims what is not older than the record's
        stored versions. Items without a record reference or version are not ordered (nothing
        returned).
        """
        out: list[set[str]] = [set() for _ in items]
        keys: list[str] = []
        claims: list[list[str]] = []
        where: list[int] = []
        for n, (ref, versions) in enumerate(items):
            if ref is None:
                continue
            pairs = [(p, v) for p, v in versions.items() if v > 0]
            if not pairs:
                continue
            keys.append(ref.key(portal_id))
            claims.append([x for p, v in pairs for x in (p, str(v))])
            where.append(n)
        if not keys:
            return out
        replies: Any = await self._claim(keys=keys, args=[self.ttl_s, orjson.dumps(claims)])
        dropped = 0
        for n, raw in zip(where, replies, strict=True):
            if raw:
                stale = {p.decode() for p in raw}
                out[n] = stale
                dropped += len(stale)
        if dropped:
            _superseded.add(dropped, portal_id, {"object_type": object_type})
            log.warning(
                "older writes superseded: properties a newer version of the record already wrote "
                "were not sent",
                extra={
                    "portal": portal_id,
                    "object_type": object_type,
                    "properties_dropped": dropped,
                    "records": sum(1 for s in out if s),
                },
            )
        return out
