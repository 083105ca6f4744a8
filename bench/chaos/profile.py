"""Sizes and the fault schedule of a soak: the full run and the short one CI runs.

Every time is in seconds from the start of the load (t = 0, after the suite is up and the
inbound records exist). The schedule is the same shape in both profiles; only sizes and gaps
shrink, so a short run provokes the same defects as a full one, with smaller numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: ``kill`` (a service, ``kill -9``), ``redis`` (stopped by ``signal``,
    restarted after ``down_s``), ``inject`` (the sandbox's error rates for ``down_s``), ``hang``
    (one ``batch/read`` held ``down_s``, then 504) or ``slow`` (every ``batch/upsert`` answered
    1 s late for ``down_s``: a writer killed then is surely holding writes)."""

    at_s: float
    kind: str
    target: str = ""
    down_s: float = 0.0


@dataclass(frozen=True)
class Profile:
    name: str
    # outbound: contacts created through mapper's PushRecords, then some of them updated
    creates: int
    updates: int
    create_window_s: tuple[float, float]
    update_window_s: tuple[float, float]
    push_batch: int
    # the updates go to every k-th of the first this many creates (0: all of them)
    update_among_first: int
    # inbound: contacts made in the sandbox "UI", then edited (firstname) at a steady rate
    inbound_records: int
    edit_rate: float
    load_s: float
    faults: tuple[Fault, ...]
    error_rate_429: float = 0.10
    error_rate_5xx: float = 0.02
    # the sandbox's webhook retry schedule (HubSpot: 60 s first) is multiplied by this
    webhook_retry_scale: float = 1.0
    drain_timeout_s: float = 150.0
    # the longest wait for what the reconciliation pass enqueued to reach the feed
    reconcile_timeout_s: float = 240.0
    quiet_s: float = 8.0
    push_retry_s: float = 120.0
    extra: dict[str, Any] = field(default_factory=dict)

    def fault_window(self) -> tuple[float, float] | None:
        """When injected errors are on (the "fault minute")."""
        for f in self.faults:
            if f.kind == "inject":
                return (f.at_s, f.at_s + f.down_s)
        return None

    def with_redis_signal(self, sig: str) -> Profile:
        faults = tuple(replace(f, target=sig) if f.kind == "redis" else f for f in self.faults)
        return replace(self, faults=faults)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Profile(
    name="full",
    creates=5000,
    updates=1000,
    create_window_s=(0, 20),
    update_window_s=(25, 35),
    push_batch=100,
    update_among_first=0,
    inbound_records=500,
    edit_rate=75,
    load_s=190,
    faults=(
        Fault(11, "slow", down_s=5),
        Fault(15, "kill", "writer", 2),
        Fault(40, "kill", "ingress", 2),
        Fault(70, "inject", down_s=60),
        Fault(75, "hang", down_s=35),
        Fault(140, "kill", "mapper", 2),
        Fault(160, "redis", "sigterm", 10),
    ),
)

SHORT = Profile(
    name="short",
    creates=400,
    updates=130,
    create_window_s=(0, 10),
    update_window_s=(16, 19),
    push_batch=50,
    update_among_first=0,
    inbound_records=150,
    edit_rate=30,
    load_s=76,
    faults=(
        Fault(3, "slow", down_s=4),
        Fault(6, "kill", "writer", 2),
        Fault(12, "kill", "ingress", 2),
        Fault(20, "inject", down_s=30),
        Fault(22, "hang", down_s=35),
        Fault(56, "kill", "mapper", 2),
        Fault(62, "redis", "sigterm", 10),
    ),
    webhook_retry_scale=0.1,
    drain_timeout_s=120.0,
    reconcile_timeout_s=120.0,
    quiet_s=6.0,
    push_retry_s=60.0,
)

PROFILES = {"full": FULL, "short": SHORT}
