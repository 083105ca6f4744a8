"""Fair share by work: a portal with a backlog yields to the flowing portals while they are late.

Turns make the consumer fair by *turns*: a portal that filled its quantum goes to the back of the
line. But turn slots are rarely what runs out; CPU is (the consumer's and its dependencies'), and
a backlog's turn of a full quantum costs a hundred times a flowing portal's turn of an entry or
two. Given a turn whenever it is due, a backlog took 3x the work of 999 other portals together on
a saturated machine, and their latency exploded (docs/design/tenancy.md, "Fair share by work").

The rule, per consumer (so per replica, over the shards it leases):

- **Contention** is what the flowing portals see, not a guess at capacity: a turn that did *not*
  fill its quantum and finished more than ``late_ms`` after its first entry was appended (the
  entry id's milliseconds) means a flowing portal is late; after ``LATE_TURNS`` (3) such turns
  within ``hold_s`` the consumer counts as contended, until ``hold_s`` after the last one (one
  slow turn, its own portal's slow read, does not throttle anyone). Blocked turns do not count
  (their delay is their own).
- **Work clock**: the entries of the flowing turns, summed.
- A portal whose turn **filled its quantum while contended rests**: its mark stays due in Redis
  (nothing is lost if the replica dies), but this consumer gives it no turn until the flowing
  portals have processed ``n * (1 - share) / share`` entries since (``n`` its turn's entries), so
  under contention it takes at most ``share`` of the entries of it and the flowing portals. The
  rest ends at once when contention ends or no other portal is in a turn (work-conserving: alone,
  or beside portals that are on time, a backlog drains at full speed, as before), and after
  ``max_rest_s`` at the latest (a backlog is never starved, whatever holds the others up).

Only a consumer's own view is used: no Redis command, no state shared between replicas (a shard
moving to another replica takes no rest with it, which costs at most one turn of unfairness).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["LATE_TURNS", "FairShare", "WorkShares"]

#: Late flowing turns within ``hold_s`` that make a consumer contended.
LATE_TURNS = 3


@dataclass(frozen=True)
class FairShare:
    """The rule's settings (module doc). ``share`` 1 turns it off."""

    share: float = 0.5
    late_ms: int = 250
    hold_s: float = 5.0
    max_rest_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError("the fair share must be in (0, 1]")
        if self.late_ms < 0 or self.hold_s < 0 or self.max_rest_s < 0:
            raise ValueError("late_ms, hold_s and max_rest_s must not be negative")


@dataclass
class _Rest:
    until_work: int  # the work clock's value that ends the rest
    deadline: float  # monotonic seconds: the rest ends then at the latest


class WorkShares:
    """One consumer's accounting of the rule: the work clock, contention, the resting portals."""

    def __init__(self, policy: FairShare) -> None:
        self.policy = policy
        self.work = 0
        self.contended_until = 0.0
        self._late: deque[float] = deque(maxlen=LATE_TURNS)
        self.resting: dict[str, _Rest] = {}
        # What the rule did (tests, and what a profile of a run can be compared with).
        self.rests = 0
        self.late_turns = 0

    def contended(self, now: float | None = None) -> bool:
        """Whether flowing portals are late (``LATE_TURNS`` late turns, the last within ``hold_s``)."""
        return (time.monotonic() if now is None else now) < self.contended_until

    def flowed(self, entries: int, latency_ms: int | None) -> None:
        """A turn that did not fill its quantum: ``entries`` more on the work clock, and its
        latency (None for a blocked turn) tells whether flowing portals are late."""
        self.work += entries
        if latency_ms is not None and latency_ms > self.policy.late_ms:
            self.late_turns += 1
            now = time.monotonic()
            self._late.append(now)
            if len(self._late) == LATE_TURNS and now - self._late[0] <= self.policy.hold_s:
                self.contended_until = now + self.policy.hold_s

    def filled(self, portal: str, entries: int) -> None:
        """A turn that filled its quantum: while contended, the portal rests (module doc)."""
        if self.policy.share >= 1 or not self.contended():
            return
        owed = math.ceil(entries * (1 - self.policy.share) / self.policy.share)
        self.resting[portal] = _Rest(self.work + owed, time.monotonic() + self.policy.max_rest_s)
        self.rests += 1

    def _over(self, rest: _Rest, now: float) -> bool:
        return self.work >= rest.until_work or now >= rest.deadline or not self.contended(now)

    def holds(self, portal: str, *, others_busy: bool) -> bool:
        """Whether ``portal`` still rests (forgotten once its rest is over)."""
        rest = self.resting.get(portal)
        if rest is None:
            return False
        if others_busy and not self._over(rest, time.monotonic()):
            return True
        del self.resting[portal]
        return False

    def worth_a_look(self, *, others_busy: bool) -> list[str]:
        """The resting portals whose rest may be over (their shards are worth a look): those
        whose rest is over are forgotten (also a portal whose mark moved meanwhile, blocked or
        drained); with no other portal in a turn, all of them, for the round to decide."""
        now = time.monotonic()
        over = [p for p, rest in self.resting.items() if self._over(rest, now)]
        for portal in over:
            del self.resting[portal]
        return over if others_busy else over + list(self.resting)

    def next_end(self) -> float | None:
        """When (monotonic) a rest ends by time alone next (None: no one rests, or not by time)."""
        now = time.monotonic()
        ends = [r.deadline for r in self.resting.values()]
        if self.resting:
            ends.append(self.contended_until)
        return min((t for t in ends if t > now), default=None)
