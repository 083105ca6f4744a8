"""Per-portal metric attributes stay bounded: with 10,000 portals the exported series of a gauge,
a counter and a histogram number a handful (``none``), n + 1 (``top:n``), or one per portal only
when ``all`` asks for it. Measured on what a metric reader really collects."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from hubsync.core import portal_metrics
from hubsync.core.portal_metrics import OTHER, PortalCounter, PortalGauge, PortalLabels
from hubsync.core.settings import CoreSettings

PORTALS = 10_000
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    yield InMemoryMetricReader()
    portal_metrics.configure(PortalLabels())


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def _fill(reader: InMemoryMetricReader, policy: str, portals: int = PORTALS) -> dict[str, list[Any]]:
    """10,000 portals each measured through a gauge, a counter and a histogram; portal 7 is the
    busiest (largest lag, most requests), portal 9 the closest to its limit."""
    portal_metrics.configure(PortalLabels.parse(policy))
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    lag = PortalGauge("sum")
    meter.create_observable_gauge("lag", callbacks=[lag.observe])
    headroom = PortalGauge("min")
    meter.create_observable_gauge("headroom", callbacks=[headroom.observe])
    requests = PortalCounter(meter.create_counter("requests"))
    latency = PortalCounter(meter.create_histogram("latency"))
    for portal in range(1, portals + 1):
        lag.set(1000 if portal == 7 else 1, portal, {"stream": "events"})
        headroom.set(0 if portal == 9 else 100, portal, {"source": "writer"})
        requests.add(50 if portal == 7 else 1, portal, {"status": "200"})
        latency.record(0.1, portal)
    for _ in range(5):
        requests.add(1, 7, {"status": "200"})
    return _points(reader)


def test_by_default_no_metric_has_a_portal_attribute(reader: InMemoryMetricReader) -> None:
    points = _fill(reader, "none")
    assert {name: len(p) for name, p in points.items()} == {
        "lag": 1,
        "headroom": 1,
        "requests": 1,
        "latency": 1,
    }
    assert all("portal" not in point.attributes for p in points.values() for point in p)
    # the aggregates: total lag, the least headroom, every request
    assert points["lag"][0].value == PORTALS - 1 + 1000
    assert points["headroom"][0].value == 0
    assert points["requests"][0].value == PORTALS - 1 + 50 + 5
    assert points["latency"][0].count == PORTALS


def test_top_n_shows_the_portals_that_matter_and_folds_the_rest(reader: InMemoryMetricReader) -> None:
    points = _fill(reader, "top:3")
    sizes = {name: len(p) for name, p in points.items()}
    # gauges: the current top 3 and other; counters: at most 2 x 3 portals ever ranked, and other
    assert sizes["lag"] == sizes["headroom"] == 4 and sizes["requests"] <= 7 and sizes["latency"] <= 7
    lag = {point.attributes["portal"]: point.value for point in points["lag"]}
    assert lag["7"] == 1000 and lag[OTHER] == PORTALS - 3  # the largest lag first; the rest summed
    headroom = {point.attributes["portal"]: point.value for point in points["headroom"]}
    assert headroom["9"] == 0 and headroom[OTHER] == 100  # the least headroom first; the rest's min
    requests = {point.attributes["portal"]: point.value for point in points["requests"]}
    assert "7" in requests and requests["7"] >= 5  # the busiest portal ranks (from when it did)
    assert sum(requests.values()) == PORTALS - 1 + 50 + 5  # nothing is lost by folding
    assert sum(point.count for point in points["latency"]) == PORTALS


def test_a_gauge_series_follows_the_current_top(reader: InMemoryMetricReader) -> None:
    portal_metrics.configure(PortalLabels.parse("top:1"))
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    lag = PortalGauge("sum")
    meter.create_observable_gauge("lag", callbacks=[lag.observe])
    lag.set(10, 1)
    lag.set(5, 2)
    assert {p.attributes["portal"] for p in _points(reader)["lag"]} == {"1", OTHER}
    lag.set(0, 1)
    # portal 1 caught up: portal 2 is shown now, and portal 1's series is not exported any more
    assert {p.attributes["portal"]: p.value for p in _points(reader)["lag"]} == {"2": 5, OTHER: 0}


def test_a_counter_stops_reranking_after_2n_portals(reader: InMemoryMetricReader) -> None:
    portal_metrics.configure(PortalLabels.parse("top:2"))
    requests = PortalCounter(
        MeterProvider(metric_readers=[reader]).get_meter("test").create_counter("requests")
    )
    for portal in range(1, 1001):  # each portal busier than every one before it
        requests.add(portal, portal)
    labels = {p.attributes["portal"] for p in _points(reader)["requests"]}
    assert len(labels) <= 2 * 2 + 1 and OTHER in labels


def test_all_exports_every_portal(reader: InMemoryMetricReader) -> None:
    # (for small installs: past 2,000 series a metric's further ones fold into the SDK's overflow)
    points = _fill(reader, "all", portals=1500)
    assert {name: len(p) for name, p in points.items()} == {n: 1500 for n in points}


@pytest.mark.parametrize("value", ["top:0", "top:1001", "top:", "top:x", "some", "5"])
def test_a_bad_setting_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="HUBSYNC_METRICS_PORTAL_LABELS"):
        PortalLabels.parse(value)
    with pytest.raises(ValueError, match="HUBSYNC_METRICS_PORTAL_LABELS"):
        CoreSettings(metrics_portal_labels=value)


def test_no_service_measures_with_a_portal_attribute_of_its_own() -> None:
    # every per-portal measurement goes through PortalCounter / PortalGauge, which apply the policy
    direct = re.compile(r"\.(?:add|set|record)\([^()]*\{[^{}]*\"portal\"", re.DOTALL)
    offenders = [
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "services").rglob("*.py"), *(ROOT / "libs").rglob("*.py")]
        if direct.search(path.read_text())
    ]
    assert offenders == []
