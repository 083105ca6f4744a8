"""The fair share's accounting (hubsync.core.ready.fairshare), without a clock: rests end by work."""

from __future__ import annotations

import pytest

from hubsync.core.ready import FairShare, WorkShares
from hubsync.core.ready.fairshare import LATE_TURNS

# Nothing ends by time in these tests: contention holds and rests last far beyond them.
LONG = FairShare(share=0.5, late_ms=250, hold_s=3600, max_rest_s=3600)


def test_a_full_turn_rests_only_while_flowing_portals_are_late() -> None:
    shares = WorkShares(LONG)
    shares.flowed(2, latency_ms=100)  # on time: no contention
    shares.filled("big", 100)
    assert not shares.holds("big", others_busy=True) and shares.rests == 0
    shares.flowed(1, latency_ms=900)  # one late turn: its own portal's slow read, maybe
    shares.filled("big", 100)
    assert not shares.holds("big", others_busy=True)
    for _ in range(LATE_TURNS - 1):
        shares.flowed(1, latency_ms=900)
    shares.filled("big", 100)
    assert shares.holds("big", others_busy=True)


def test_a_rest_lasts_until_the_others_did_their_share_of_the_work() -> None:
    shares = WorkShares(FairShare(share=0.25, late_ms=0, hold_s=3600, max_rest_s=3600))
    for _ in range(LATE_TURNS):
        shares.flowed(1, latency_ms=1)
    shares.filled("big", 100)  # share 0.25: the others owe 300 entries
    shares.flowed(299, latency_ms=1)
    assert shares.holds("big", others_busy=True)
    shares.flowed(1, latency_ms=1)
    assert not shares.holds("big", others_busy=True)
    assert "big" not in shares.resting


def test_a_rest_ends_when_no_other_portal_is_in_a_turn_and_blocked_turns_are_not_late() -> None:
    shares = WorkShares(LONG)
    shares.flowed(1, latency_ms=None)  # blocked: its delay is its own
    assert not shares.contended()
    for _ in range(LATE_TURNS):
        shares.flowed(1, latency_ms=10_000)
    shares.filled("big", 100)
    assert shares.worth_a_look(others_busy=True) == []
    assert shares.worth_a_look(others_busy=False) == ["big"]
    assert not shares.holds("big", others_busy=False)


def test_share_one_turns_the_rule_off_and_bad_settings_are_refused() -> None:
    shares = WorkShares(FairShare(share=1.0, late_ms=0))
    shares.flowed(1, latency_ms=10_000)
    shares.filled("big", 100)
    assert shares.resting == {} and shares.next_end() is None
    for bad in ({"share": 0.0}, {"share": 1.5}, {"late_ms": -1}):
        with pytest.raises(ValueError):
            FairShare(**bad)  # type: ignore[arg-type]
