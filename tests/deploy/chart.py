"""Renders the hubsync chart offline with Helm's own engine (helm-python-sdk), once per values file."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "hubsync"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "hs"
NAMESPACE = "hubsync"
COMPONENTS = ("auth", "ingress", "mapper", "writer")


@dataclass
class Rendered:
    """The manifests of one render, parsed, plus NOTES.txt."""

    manifests: list[dict[str, Any]]
    notes: str
    by_template: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        return found[0] if found else None


def object_name(component: str) -> str:
    return f"{RELEASE}-hubsync-{component}"


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render_values(values: dict[str, Any]) -> Rendered:
    """Renders the chart as `helm template hs -n hubsync` would; raises helm errors on bad values."""
    output = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[dict[str, Any]] = []
    by_template: dict[str, list[dict[str, Any]]] = {}
    notes = ""
    for template, text in sorted(output.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        by_template[template] = docs
        manifests.extend(docs)
    return Rendered(manifests=manifests, notes=notes, by_template=by_template)


@functools.cache
def render_file(name: str) -> Rendered:
    """Renders with ci/<name>; cached, so each values file renders once per test session."""
    return render_values(load_values(CHART_DIR / "ci" / name))


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(rendered: Rendered, component: str) -> dict[str, Any]:
    deployment = rendered.get("Deployment", object_name(component))
    (only,) = pod_spec(deployment)["containers"]
    return only


def env_of(rendered: Rendered, component: str) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(rendered, component)["env"]}


def alerts(prod: Rendered) -> dict[str, dict[str, Any]]:
    """The PrometheusRule's alerts of a rendered chart, by name."""
    (rule,) = prod.of_kind("PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}
