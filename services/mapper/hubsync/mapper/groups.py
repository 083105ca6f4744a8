"""How many change-feed consumer groups may exist: each one becomes a Redis consumer group on
every feed stream and a metric label, so any authenticated client could otherwise create them
without bound.

The groups admitted are a Redis set (``hubsync:feed:groups``) shared by every mapper replica; a
new group beyond the limit is refused with RESOURCE_EXHAUSTED, a known one always admitted.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from hubsync.core.errors import ResourceExhausted
from hubsync.core.keys import FEED_GROUPS_KEY

__all__ = ["ConsumerGroupLimit"]

# Admits ARGV[1] when it is known or the set holds fewer than ARGV[2]; 1 admitted, 0 refused.
_ADMIT_LUA = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""


class ConsumerGroupLimit:
    """Admits change-feed consumer groups up to ``max_groups`` across every replica."""

    def __init__(self, redis: Redis, max_groups: int) -> None:
        self.max_groups = max_groups
        self._admit: AsyncScript = redis.register_script(_ADMIT_LUA)

    async def admit(self, group: str) -> None:
        """Raises ResourceExhausted when ``group`` is new and the limit is reached.

        Asks Redis on every subscription, even for a group this replica admitted before: the set
        is also whom mapper's publisher marks changes for, so a group must be back in it after
        Redis lost its data."""
        if not await self._admit(keys=[FEED_GROUPS_KEY], args=[group, self.max_groups]):
            raise ResourceExhausted(
                f"at most {self.max_groups} change-feed consumer groups may exist; reuse one or ask an "
                "operator to remove an unused one (HUBSYNC_MAPPER_MAX_CONSUMER_GROUPS)",
                reason="TOO_MANY_CONSUMER_GROUPS",
                metadata={"max_groups": str(self.max_groups)},
            )
