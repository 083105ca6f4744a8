"""Ready sets: consumers touch only members with work (docs/design/tenancy.md, section 3).

One implementation serves every queue-like flow; a *family* says what a member is and which keys
hold it:

- :mod:`hubsync.core.ready.marks` — the scripts, once: mark (``ZADD NX|LT`` and one nudge when a
  member became due), take (lease the longest-due members), settle (requeue or release a taken
  member only if no one marked it since), over any family's keys.
- :mod:`hubsync.core.ready.sets` — the queues' family: portals on mapper's ``events`` and
  writer's ``writes`` queues, in S shards, with pending sets for entries a consumer may have left.
- :mod:`hubsync.core.ready.leases` — which replica consumes which shard (rendezvous hashing).
- :mod:`hubsync.core.ready.consumer` — the queues' loop: turns with a quantum, per-portal fairness,
  blocked portals scored to their retry time, claims of a dead consumer's entries.
- :mod:`hubsync.core.ready.fairshare` — fair share by work: a portal that fills its quantum
  while flowing portals are late rests until they have done their share of the work.
- :mod:`hubsync.core.ready.sweep` — the slow pass that finds work no mark names (a crash between
  append and mark, or an upgrade).

The change feed's family (a portal per subscriber group and object type, leased while read) is
``hubsync.mapper.feed_ready``, on the same scripts. Every command names keys of one slot; idle
members cost nothing but their keys.
"""

from hubsync.core.ready.consumer import Blocked, Entry, Handler, ReadyConsumer
from hubsync.core.ready.fairshare import FairShare, WorkShares
from hubsync.core.ready.leases import ShardLeases
from hubsync.core.ready.marks import MarkSets, Nudge, Took
from hubsync.core.ready.sets import DEFAULT_SHARDS, EVENTS, WRITES, ReadySets, now_ms
from hubsync.core.ready.sweep import Sweeper, group_work

__all__ = [
    "DEFAULT_SHARDS",
    "EVENTS",
    "WRITES",
    "Blocked",
    "Entry",
    "FairShare",
    "Handler",
    "MarkSets",
    "Nudge",
    "ReadyConsumer",
    "ReadySets",
    "ShardLeases",
    "Sweeper",
    "Took",
    "WorkShares",
    "group_work",
    "now_ms",
]
