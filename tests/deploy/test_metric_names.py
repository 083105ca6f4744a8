"""Every metric the alerts, the autoscalers' docs and the operations guide name is one a service
really exports (the names come from the instruments in the code: tests/deploy/metrics.py)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.chart import ROOT, alerts, render_file
from tests.deploy.metrics import exported_names, named_metrics, unknown_metrics


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    names = exported_names()
    # the scan finds the instruments at all (guards against a regex that silently matches nothing)
    assert {"hubsync_hubspot_requests_total", "hubsync_webhook_accept_duration_seconds"} <= names
    return names


def test_alerts_name_exported_metrics(exported: frozenset[str]) -> None:
    for name, rule in alerts(render_file("production-values.yaml")).items():
        assert named_metrics(rule["expr"]), name
        unknown = unknown_metrics(rule["expr"])
        assert not unknown, f"alert {name} names metrics no service exports: {sorted(unknown)}"


def test_operations_guide_names_exported_metrics(exported: frozenset[str]) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    used = set(re.findall(r"`(hubsync_[a-z_]+)", text))
    assert len(used) >= 10
    unknown = unknown_metrics(" ".join(used))
    assert not unknown, f"docs/operations.md names metrics no service exports: {sorted(unknown)}"


def test_every_exported_metric_is_documented(exported: frozenset[str]) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    missing = {n for n in exported if f"`{n}`" not in text}
    assert not missing, f"docs/operations.md's metrics reference lacks {sorted(missing)}"
