"""The chart's version moves with every chart change: tests/deploy/chart_versions.json records the
digest of what each version renders from, and a chart whose content no longer matches its
version's digest fails until the version is bumped (and the change described in CHANGELOG.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.deploy.chart import CHART_DIR, ROOT
from tests.deploy.chart_history import (
    chart_at,
    chart_digest,
    chart_version,
    has_commit,
    recorded_versions,
    version_problem,
)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_the_chart_version_matches_its_content() -> None:
    problem = version_problem(CHART_DIR, recorded_versions())
    assert problem is None, problem


def test_a_chart_change_without_a_version_bump_fails(tmp_path: Path) -> None:
    copy = tmp_path / "hubsync"
    shutil.copytree(CHART_DIR, copy)
    values = copy / "values.yaml"
    values.write_text(values.read_text().replace("maxBodyBytes: 262144", "maxBodyBytes: 131072"))
    problem = version_problem(copy, recorded_versions())
    assert problem is not None and "bump `version`" in problem
    # docs and example values are not chart changes
    shutil.copytree(CHART_DIR, tmp_path / "docs-only")
    (tmp_path / "docs-only" / "README.md").write_text("rewritten")
    assert version_problem(tmp_path / "docs-only", recorded_versions()) is None


def test_a_bump_needs_a_record(tmp_path: Path) -> None:
    copy = tmp_path / "hubsync"
    shutil.copytree(CHART_DIR, copy)
    chart = copy / "Chart.yaml"
    chart.write_text(chart.read_text().replace(f"version: {chart_version(CHART_DIR)}", "version: 9.9.9"))
    problem = version_problem(copy, recorded_versions())
    assert problem is not None and "9.9.9 is not recorded" in problem


def test_versions_only_go_up_and_the_changelog_names_the_current_one() -> None:
    records = recorded_versions()
    versions = list(records)
    assert versions == sorted(versions, key=_key)
    assert chart_version(CHART_DIR) == versions[-1]
    assert len({r["sha256"] for r in records.values()}) == len(records), "two versions, one content"
    assert f"chart {versions[-1]}" in (ROOT / "CHANGELOG.md").read_text()


@pytest.mark.parametrize("version", [v for v, r in recorded_versions().items() if "commit" in r])
def test_recorded_digests_are_those_of_history(version: str, tmp_path: Path) -> None:
    record = recorded_versions()[version]
    if not has_commit(record["commit"]):
        pytest.skip(f"{record['commit']} is not in this clone (shallow)")
    old = chart_at(record["commit"], tmp_path)
    assert chart_version(old) == version
    assert chart_digest(old) == record["sha256"]
