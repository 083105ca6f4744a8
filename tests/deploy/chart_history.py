"""The chart as released before, from git history, and the digest that ties a chart version to
its content (tests/deploy/chart_versions.json records one per version)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from tests.deploy.chart import CHART_DIR, NAMESPACE, RELEASE, ROOT

VERSIONS_FILE = Path(__file__).with_name("chart_versions.json")
# What the chart renders from: a change to any of these is a chart change (docs and the ci/
# example values are not).
_RENDERED = ("Chart.yaml", "values.yaml", "values.schema.json", "templates", "dashboards")
_VERSION_LINE = re.compile(r"^version:.*$", re.MULTILINE)


def recorded_versions() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads(VERSIONS_FILE.read_text())
    return data


def chart_version(chart_dir: Path) -> str:
    return str(yaml.safe_load((chart_dir / "Chart.yaml").read_text())["version"])


def chart_digest(chart_dir: Path) -> str:
    """sha256 over every rendered file's path and content, Chart.yaml without its version line."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for name in _RENDERED:
        path = chart_dir / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in files:
        if not path.exists():
            continue
        text = path.read_text()
        if path.name == "Chart.yaml" and path.parent == chart_dir:
            text = _VERSION_LINE.sub("", text)
        digest.update(path.relative_to(chart_dir).as_posix().encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


def version_problem(chart_dir: Path, records: dict[str, dict[str, str]]) -> str | None:
    """Why the chart's version does not match its content, or None when it does."""
    version, digest = chart_version(chart_dir), chart_digest(chart_dir)
    if version not in records:
        return f"chart version {version} is not recorded in {VERSIONS_FILE.name}: add it with sha256 {digest}"
    if records[version]["sha256"] != digest:
        return (
            f"the chart changed but its version is still {version}: bump `version` in Chart.yaml, "
            f"record the new version in {VERSIONS_FILE.name} (sha256 {digest}) and describe it in "
            "CHANGELOG.md (and UPGRADING.md if operators must act)"
        )
    return None


def has_commit(commit: str) -> bool:
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], check=False)
    return found.returncode == 0


def chart_at(commit: str, into: Path) -> Path:
    """The chart directory as it was at ``commit`` (git archive), extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "deploy/helm/hubsync"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "deploy" / "helm" / "hubsync"


def render_chart(chart_dir: Path, values: dict[str, Any], *, upgrade: bool) -> dict[tuple[str, str], Any]:
    """``(kind, name) -> manifest`` of one render, as `helm upgrade` (or install) would make it."""
    output = helm.Chart.load(chart_dir).render(
        values, name=RELEASE, namespace=NAMESPACE, is_install=not upgrade, is_upgrade=upgrade
    )
    manifests: dict[tuple[str, str], Any] = {}
    for template, text in output.items():
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                manifests[(doc["kind"], doc["metadata"]["name"])] = doc
    return manifests


def current_chart() -> Path:
    return CHART_DIR
