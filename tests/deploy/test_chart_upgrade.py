"""`helm upgrade` from the previous released chart (0.1.0, commit 2e26fc0): the previous chart and
this one are rendered with the same values and the difference is reviewed. Nothing is renamed or
deleted without a note in UPGRADING.md, the fields Kubernetes cannot change in place (workload
selectors, a StatefulSet's service name and claims, Service cluster IPs) stay the same, and the
values each example used render once the steps UPGRADING.md names are taken."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART_DIR, ROOT
from tests.deploy.chart_history import chart_at, has_commit, recorded_versions, render_chart

PREVIOUS = "0.1.0"
DELETE = object()  # a step that removes a value
Manifests = dict[tuple[str, str], Any]

# What an operator adds to each example's previous values, as UPGRADING.md says (value path ->
# value). Each path must be named in UPGRADING.md.
STEPS: dict[str, dict[str, Any]] = {
    "minimal-values.yaml": {},
    "external-redis-values.yaml": {
        "tls.certManager.enabled": True,
        "tls.certManager.issuerRef": {"kind": "ClusterIssuer", "name": "hubsync-internal-ca"},
    },
    "production-values.yaml": {
        "tls.certManager.enabled": True,
        "tls.certManager.issuerRef": {"kind": "ClusterIssuer", "name": "hubsync-internal-ca"},
        "redis.url": "rediss://hubsync-master:6379/0",
        "redis.tls.existingSecret": "hubsync-redis-ca",
        "components.mapper.autoscaling.streams": DELETE,
        "components.writer.autoscaling.streams": DELETE,
        "keda.prometheus.serverAddress": "http://prometheus-operated.monitoring:9090",
    },
}


def _upgrading_section() -> str:
    """UPGRADING.md's section for the upgrade from the previous release."""
    text = (ROOT / "UPGRADING.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    found = [s for s in sections if s.startswith(f"From {PREVIOUS}")]
    assert len(found) == 1, f"UPGRADING.md needs one '## From {PREVIOUS} ...' section"
    return found[0]


def _set(values: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value


@pytest.fixture(scope="module")
def previous_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    commit = recorded_versions()[PREVIOUS]["commit"]
    if not has_commit(commit):
        pytest.skip(f"{commit} is not in this clone (shallow): cannot render the previous chart")
    return chart_at(commit, tmp_path_factory.mktemp("previous"))


def _previous_values(previous_chart: Path, name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((previous_chart / "ci" / name).read_text()) or {}
    return values


def _renders(previous_chart: Path, name: str, *, steps: bool = True) -> tuple[Manifests, Manifests]:
    values = _previous_values(previous_chart, name)
    before = render_chart(previous_chart, values, upgrade=False)
    upgraded = copy.deepcopy(values)
    for path, value in (STEPS[name] if steps else {}).items():
        _set(upgraded, path, value)
    after = render_chart(CHART_DIR, upgraded, upgrade=True)
    return before, after


def test_every_step_is_in_upgrading() -> None:
    section = _upgrading_section()
    for name, steps in STEPS.items():
        for path in steps:
            named = path.removesuffix(".enabled").removesuffix(".issuerRef").removesuffix(".serverAddress")
            assert f"`{named}" in section, f"{name}: UPGRADING.md does not name {path}"


@pytest.mark.parametrize("name", list(STEPS))
def test_nothing_is_renamed_or_deleted_without_a_note(previous_chart: Path, name: str) -> None:
    before, after = _renders(previous_chart, name)
    section = _upgrading_section()
    for kind, object_name in sorted(set(before) - set(after)):
        generic = object_name.removeprefix("hs-hubsync-")
        assert generic in section and kind in section, (
            f"{kind}/{object_name} disappears on upgrade: UPGRADING.md must say so (and what to do)"
        )


@pytest.mark.parametrize("name", list(STEPS))
def test_workloads_upgrade_in_place(previous_chart: Path, name: str) -> None:
    before, after = _renders(previous_chart, name)
    for key in sorted(set(before) & set(after)):
        kind = key[0]
        old, new = before[key], after[key]
        if kind in ("Deployment", "StatefulSet", "DaemonSet"):
            assert old["spec"]["selector"] == new["spec"]["selector"], f"{key}: selector is immutable"
            # the new pods still match the (unchanged) selector
            labels = new["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in new["spec"]["selector"]["matchLabels"].items())
        if kind == "StatefulSet":
            for field in ("serviceName", "volumeClaimTemplates", "podManagementPolicy"):
                assert old["spec"].get(field) == new["spec"].get(field), f"{key}: {field} is immutable"
        if kind == "Service":
            for field in ("clusterIP", "type"):
                assert old["spec"].get(field) == new["spec"].get(field), f"{key}: {field} changed"
            assert old["spec"].get("selector") == new["spec"].get("selector"), f"{key}: selector changed"


@pytest.mark.parametrize("name", list(STEPS))
def test_objects_the_upgrade_adds_are_expected(previous_chart: Path, name: str) -> None:
    before, after = _renders(previous_chart, name)
    added = {kind for kind, _ in set(after) - set(before)}
    # NetworkPolicies are on by default now, cert-manager Certificates come with tls.certManager
    assert added <= {"NetworkPolicy", "Certificate", "Secret"}, sorted(set(after) - set(before))
    if name == "minimal-values.yaml":
        assert "NetworkPolicy" in added
        assert "NetworkPolicy" in _upgrading_section()


def test_production_values_need_the_steps(previous_chart: Path) -> None:
    """Without the steps, the previous production values are refused with the value to set."""
    with pytest.raises(Exception, match=r"tls\.certManager|streams"):
        _renders(previous_chart, "production-values.yaml", steps=False)
