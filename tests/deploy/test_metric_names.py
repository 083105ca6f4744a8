"""Every metric the alerts, the autoscalers' docs and the operations guide name is one a service
really exports: the names are derived from the instruments in the code the way OpenTelemetry's
Prometheus exporter derives them (dots → underscores, ``_seconds`` for unit ``s``, ``_total`` for
counters)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.chart import ROOT, render_file
from tests.deploy.test_chart_production import alerts

_INSTRUMENT = re.compile(
    r"create_(?P<kind>counter|histogram|gauge|observable_gauge|up_down_counter|observable_counter)"
    r"\(\s*\"(?P<name>hubsync\.[a-z_.]+)\"(?P<rest>[^)]*)\)",
    re.DOTALL,
)
_SUFFIXES = ("_bucket", "_count", "_sum")


def exported_names() -> set[str]:
    names: set[str] = set()
    for path in [*(ROOT / "libs").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        for m in _INSTRUMENT.finditer(path.read_text()):
            name = m["name"].replace(".", "_")
            if re.search(r"unit=\"s\"", m["rest"]):
                name += "_seconds"
            if m["kind"] in ("counter", "observable_counter"):
                name += "_total"
            names.add(name)
    return names


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and not name.endswith("_total"):
            return name[: -len(suffix)]
    return name


@pytest.fixture(scope="module")
def exported() -> set[str]:
    names = exported_names()
    # the scan finds the instruments at all (guards against a regex that silently matches nothing)
    assert {"hubsync_hubspot_requests_total", "hubsync_webhook_accept_duration_seconds"} <= names
    return names


def test_alerts_name_exported_metrics(exported: set[str]) -> None:
    for name, rule in alerts(render_file("production-values.yaml")).items():
        used = set(re.findall(r"hubsync_[a-z_]+", rule["expr"]))
        assert used, name
        unknown = {u for u in used if _base(u) not in exported}
        assert not unknown, f"alert {name} names metrics no service exports: {sorted(unknown)}"


def test_operations_guide_names_exported_metrics(exported: set[str]) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    used = set(re.findall(r"`(hubsync_[a-z_]+)", text))
    assert len(used) >= 10
    unknown = {u for u in used if _base(u) not in exported}
    assert not unknown, f"docs/operations.md names metrics no service exports: {sorted(unknown)}"


def test_every_exported_metric_is_documented(exported: set[str]) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    missing = {n for n in exported if f"`{n}`" not in text}
    assert not missing, f"docs/operations.md's metrics reference lacks {sorted(missing)}"
