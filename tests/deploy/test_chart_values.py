"""values.schema.json and the chart's own checks turn a broken value into a failed install."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.chart import CHART_DIR, NAMESPACE, load_values, render_values

MINIMAL = load_values(CHART_DIR / "ci" / "minimal-values.yaml")


def _write(tmp_path: Path, name: str, values: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _rejected(tmp_path: Path, name: str, patch: dict[str, Any]) -> str:
    """Writes minimal values + patch to a file, as an operator would, and expects lint and render to fail."""
    path = _write(tmp_path, name, _merge(MINIMAL, patch))
    values = helm.values_from_yaml(path.read_text())
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"], f"lint accepted {patch}"
    with pytest.raises(helm.HelmValuesError) as caught:
        render_values(values)
    return str(caught.value)


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-top-level-key": ({"replicaCount": 3}, "replicaCount"),
    "unknown-component-key": ({"components": {"writer": {"replicaz": 3}}}, "replicaz"),
    "misspelt-default-key": ({"default": {"podAntiAfinity": "hard"}}, "podAntiAfinity"),
    "keda-lag-on-ingress": (
        {"components": {"ingress": {"autoscaling": {"lagPerReplica": 10}}}},
        "lagPerReplica",
    ),
    "wrong-type-replicas": ({"components": {"writer": {"replicas": "two"}}}, "want integer"),
    "wrong-type-flag": ({"keda": {"enabled": "yes"}}, "want boolean"),
    "wrong-enum": ({"writer": {"rateLimitPreset": "unlimited"}}, "rateLimitPreset"),
    "wrong-webhook-spans": ({"ingress": {"webhookSpans": "per_request"}}, "webhookSpans"),
    "bad-time-zone": ({"writer": {"dailyResetTimezone": "New York"}}, "dailyResetTimezone"),
    "bad-redis-url": ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
    "bad-keyring-key": ({"auth": {"keyring": {"keys": {"k1": "not-32-bytes"}}}}, "/auth/keyring/keys/k1"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects(tmp_path: Path, case: str) -> None:
    patch, mention = BAD_VALUES[case]
    message = _rejected(tmp_path, f"{case}.yaml", patch)
    assert mention in message


def test_schema_is_strict_everywhere_it_makes_sense() -> None:
    """Every object in the schema closes its keys, except free-form Kubernetes fragments."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    free_form = {
        "global",
        "podAnnotations",
        "podLabels",
        "podSecurityContext",
        "securityContext",
        "nodeSelector",
        "affinity",
        "annotations",
        "commonLabels",
        "labels",
        "behavior",
        "namespaceSelector",
        "podSelector",
        "tokens",
        "keys",
        "files",
        "resourceAttributes",
        "valueFrom",
        "workload",
    }

    def walk(node: Any, name: str) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" and "properties" in node and name not in free_form:
            closed = node.get("additionalProperties") is False or node.get("unevaluatedProperties") is False
            assert closed, f"{name}: additionalProperties false missing"
        for key, child in node.get("properties", {}).items():
            walk(child, key)
        for key in ("items", "additionalProperties"):
            walk(node.get(key), name)
        for key, child in node.get("$defs", {}).items():
            walk(child, key)

    walk(schema, "values")


REQUIRED: dict[str, tuple[dict[str, Any], str]] = {
    "no-redis": ({"redis": {"evaluation": {"enabled": False}}}, "redis.url"),
    "no-keyring": ({"auth": {"keyring": {"keys": None}}}, "auth.keyring"),
    "active-key-missing": ({"auth": {"keyring": {"active": "k9"}}}, "auth.keyring.active"),
    "no-webhook-secrets": ({"ingress": {"webhookSecrets": {"secrets": []}}}, "ingress.webhookSecrets"),
    "production-without-public-url": ({"environment": "production"}, "ingress.publicBaseUrl"),
    "two-redis": ({"redis": {"url": "redis://elsewhere:6379/0"}}, "exclusive"),
    "keda-without-prometheus": ({"keda": {"enabled": True}}, "keda.prometheus.serverAddress"),
}


@pytest.mark.parametrize("case", sorted(REQUIRED))
def test_missing_required_setting_fails_with_its_name(case: str) -> None:
    patch, mention = REQUIRED[case]
    with pytest.raises(helm.HelmError) as caught:
        render_values(_merge(MINIMAL, patch))
    assert mention in str(caught.value)


def test_component_can_switch_off_a_default() -> None:
    """A component sets false over a true default (sprig's mergeOverwrite would keep true)."""
    rendered = render_values(_merge(MINIMAL, {"components": {"auth": {"pdb": {"enabled": False}}}}))
    names = {p["metadata"]["name"] for p in rendered.of_kind("PodDisruptionBudget")}
    assert "hs-hubsync-auth" not in names and "hs-hubsync-writer" in names


def test_values_yaml_is_commented_and_says_writers_keep_the_rate() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    comments = [line for line in lines if line.lstrip().startswith("#")]
    assert len(comments) / len(lines) > 0.3
    writer = text[text.index("  writer:\n    enabled:") :]
    prose = " ".join(word for word in writer.split() if word != "#")
    assert "NEVER raise a portal's request rate" in prose
