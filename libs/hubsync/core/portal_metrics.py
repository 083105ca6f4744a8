"""Per-portal metric attributes, bounded: ``HUBSYNC_METRICS_PORTAL_LABELS``.

A ``portal`` attribute on every series gives each metric one series per portal: at 10,000
portals, a lag gauge alone is 10,000 series per replica. So the attribute is opt-in:

- ``none`` (default): no ``portal`` attribute. A gauge exports its aggregate over the portals
  (:class:`PortalGauge`: the sum of lags and depths, the least headroom, the worst circuit state),
  a counter or histogram its total.
- ``top:<n>``: the n portals that matter most have a series of their own; the others fold into
  ``portal="other"``. Gauges: recomputed at every export, the n portals with the largest value
  (the smallest, for headroom). Counters and histograms: the n portals with the most increments
  in this process; a portal that once ranked keeps its series (frozen) until the process restarts,
  since a cumulative series cannot be taken back, and after 2n portals have ranked the ranking
  stops changing: at most 2n + 1 series per combination of the other attributes.
- ``all``: every portal (small installs).

Services call :func:`configure` once at start-up (``hubsync.core.service`` does, from
``CoreSettings.metrics_portal_labels``); until then the policy is ``none``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation

__all__ = [
    "ENV",
    "OTHER",
    "PortalCounter",
    "PortalGauge",
    "PortalLabels",
    "configure",
    "current",
]

ENV = "HUBSYNC_METRICS_PORTAL_LABELS"
#: The ``portal`` value of every portal outside the top n.
OTHER = "other"
MAX_TOP = 1000

Attributes = Mapping[str, str]


@dataclass(frozen=True)
class PortalLabels:
    """Which portals get a ``portal`` attribute: ``none``, the ``top`` n, or ``all``."""

    mode: Literal["none", "top", "all"] = "none"
    top: int = 0

    @classmethod
    def parse(cls, value: str) -> PortalLabels:
        """``none`` | ``top:<n>`` (1..1000) | ``all``; raises ValueError naming the variable."""
        text = value.strip().lower()
        if text in ("", "none"):
            return cls("none")
        if text == "all":
            return cls("all")
        count = text.removeprefix("top:")
        if text.startswith("top:") and count.isdigit() and 1 <= int(count) <= MAX_TOP:
            return cls("top", int(count))
        raise ValueError(f"{ENV} must be none, top:<n> (n from 1 to {MAX_TOP}) or all, not {value!r}")

    def __str__(self) -> str:
        return f"top:{self.top}" if self.mode == "top" else self.mode


_policy = [PortalLabels()]


def configure(policy: PortalLabels) -> None:
    """Sets the process's policy (before the first measurement, so series do not change kind)."""
    _policy[0] = policy


def current() -> PortalLabels:
    """The portal-label policy in force."""
    return _policy[0]


class PortalCounter:
    """A counter or histogram whose ``portal`` attribute follows the policy.

    ``top:n`` ranks portals by the amounts added through this instrument in this process.
    """

    def __init__(self, instrument: Counter | Histogram) -> None:
        self._instrument = instrument
        self._lock = threading.Lock()
        self._totals: dict[str, float] = {}
        self._ranked: set[str] = set()
        self._ever_ranked = 0
        # No ranked portal's total is below this (ranked totals only grow: it may be stale low).
        self._floor = 0.0

    def add(self, amount: float, portal: int | str, attributes: Attributes | None = None) -> None:
        """Adds to a counter (records into a histogram) for ``portal``."""
        attrs = self.attributes(portal, attributes, amount if isinstance(self._instrument, Counter) else 1)
        if isinstance(self._instrument, Counter):
            self._instrument.add(amount, attrs)
        else:
            self._instrument.record(amount, attrs)

    record = add

    def attributes(
        self, portal: int | str, attributes: Attributes | None, weight: float = 1
    ) -> dict[str, str]:
        """The attributes to measure ``portal`` with (``weight`` counts towards its rank)."""
        attrs = dict(attributes or {})
        policy = _policy[0]
        if policy.mode == "none":
            return attrs
        name = str(portal)
        if policy.mode == "all":
            attrs["portal"] = name
            return attrs
        attrs["portal"] = name if self._rank(name, weight, policy.top) else OTHER
        return attrs

    def _rank(self, portal: str, weight: float, top: int) -> bool:
        with self._lock:
            total = self._totals[portal] = self._totals.get(portal, 0) + weight
            if portal in self._ranked:
                return True
            if len(self._ranked) < top:
                self._ranked.add(portal)
                self._ever_ranked += 1
                return True
            if total <= self._floor or self._ever_ranked >= 2 * top:
                return False
            # A portal takes the place of the least busy ranked one once it is busier.
            least = min(self._ranked, key=self._totals.__getitem__)
            self._floor = self._totals[least]
            if total <= self._floor:
                return False
            self._ranked.discard(least)
            self._ranked.add(portal)
            self._ever_ranked += 1
            self._floor = min(self._totals[p] for p in self._ranked)
            return True


class PortalGauge:
    """Per-portal gauge values, exported by an observable gauge as the policy says.

    Create the instrument with :meth:`observe` as its callback::

        lag = PortalGauge("sum")
        meter.create_observable_gauge(name, callbacks=[lag.observe])

    ``aggregate`` folds portals together (``none``, and ``other`` under ``top:n``): ``sum``
    (lags, depths), ``min`` (headroom: the worst portal is the one with the least) or ``max``
    (states where higher is worse). Under ``top:n`` the n portals shown are the largest values
    (the smallest for ``min``), per combination of the other attributes.
    """

    def __init__(self, aggregate: Literal["sum", "min", "max"]) -> None:
        self.aggregate = aggregate
        self._lock = threading.Lock()
        # other attributes (sorted items) -> portal -> value
        self._values: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}

    def set(self, value: float, portal: int | str, attributes: Attributes | None = None) -> None:
        """Sets the gauge for ``portal`` (and ``attributes``) to ``value``."""
        key = tuple(sorted((attributes or {}).items()))
        with self._lock:
            self._values.setdefault(key, {})[str(portal)] = value

    def forget(self, portal: int | str) -> None:
        """Drops a portal's values (it has no keys any more)."""
        name = str(portal)
        with self._lock:
            for values in self._values.values():
                values.pop(name, None)

    def observe(self, _options: CallbackOptions | None = None) -> Iterable[Observation]:
        """The observations to export now (the observable gauge's callback)."""
        with self._lock:
            groups = [(dict(key), dict(values)) for key, values in self._values.items() if values]
        policy = _policy[0]
        out: list[Observation] = []
        for attrs, values in groups:
            if policy.mode == "all":
                out.extend(Observation(v, attrs | {"portal": p}) for p, v in values.items())
                continue
            if policy.mode == "none":
                out.append(Observation(self._fold(values.values()), attrs))
                continue
            ranked = sorted(values.items(), key=lambda item: item[1], reverse=self.aggregate != "min")
            shown, rest = ranked[: policy.top], ranked[policy.top :]
            out.extend(Observation(v, attrs | {"portal": p}) for p, v in shown)
            if rest:
                out.append(Observation(self._fold(v for _p, v in rest), attrs | {"portal": OTHER}))
        return out

    def _fold(self, values: Iterable[float]) -> float:
        items: Sequence[float] = list(values)
        if self.aggregate == "sum":
            return sum(items)
        return min(items) if self.aggregate == "min" else max(items)
