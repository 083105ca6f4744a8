"""The Grafana dashboards: fresh from their code, every query names metrics the services really
export, every panel links to a runbook section of docs/operations.md that exists, and the chart
ships them as ConfigMaps for Grafana's dashboard sidecar."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.deploy.chart import CHART_DIR, ROOT, load_values, render_values
from tests.deploy.metrics import base_name, named_metrics, unknown_metrics
from tests.deploy.opsdoc import anchor, anchors, sections

DASHBOARDS = CHART_DIR / "dashboards"
NAMES = ("overview", "auth", "ingress", "mapper", "writer")
RUNBOOK = "https://github.com/hubsync/hubsync/blob/main/docs/operations.md"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / f"{name}.json").read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def test_committed_dashboards_are_what_the_code_builds() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dashboards.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.stem for p in DASHBOARDS.glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_query_names_exported_metrics(name: str) -> None:
    dashboard = load(name)
    assert panels(dashboard)
    for panel in panels(dashboard):
        for expr in exprs(panel):
            assert named_metrics(expr), f"{name} / {panel['title']}: no hubsync metric in {expr}"
            unknown = unknown_metrics(expr)
            assert not unknown, f"{name} / {panel['title']} names metrics no service exports: {unknown}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert not unknown_metrics(variable["query"]), variable["name"]


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_links_to_its_runbook_section(name: str) -> None:
    known = anchors()
    for panel in panels(load(name)):
        links = [link["url"] for link in panel.get("links", []) if link["title"] == "Runbook"]
        assert len(links) == 1, f"{name} / {panel['title']}: one runbook link"
        base, _, anchor = links[0].partition("#")
        assert base == RUNBOOK
        assert anchor in known, f"{name} / {panel['title']}: #{anchor} is no heading of docs/operations.md"


@pytest.mark.parametrize("name", NAMES)
def test_variables_and_exemplars(name: str) -> None:
    dashboard = load(name)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "portal", "object_type", "top"} <= set(variables)
    assert "topk($top," in variables["portal"]["query"]
    assert variables["portal"]["includeAll"] and variables["object_type"]["multi"]
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], panel["title"]
            # latency histograms ask for exemplars, which link a slow bucket to its trace
            if "_bucket{" in target["expr"]:
                assert target.get("exemplar") is True, panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_overview_shows_what_the_issue_asks_for() -> None:
    shown = {base_name(m) for p in panels(load("overview")) for e in exprs(p) for m in named_metrics(e)}
    assert {
        "hubsync_webhook_accepted_total",
        "hubsync_webhook_rejected_total",
        "hubsync_webhook_accept_duration_seconds",
        "hubsync_queue_lag",
        "hubsync_sync_total",
        "hubsync_sync_duration_seconds",
        "hubsync_hubspot_requests_total",
        "hubsync_ratelimit_remaining",
        "hubsync_circuit_state",
        "hubsync_dlq_depth",
        "hubsync_mapper_inbound_depth",
        "hubsync_token_refresh_total",
        "hubsync_connections_needing_reauth",
    } <= shown
    assert any('status="429"' in e for p in panels(load("overview")) for e in exprs(p))


def test_every_panel_is_in_the_operations_table() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for name in NAMES:
        for panel in panels(load(name)):
            assert f"| {panel['title']} |" in doc, panel["title"]


def _configmaps(values: dict[str, Any]) -> list[dict[str, Any]]:
    maps = render_values(values).of_kind("ConfigMap")
    return [m for m in maps if m["metadata"]["name"].startswith("hs-hubsync-dashboard-")]


def test_chart_ships_no_dashboards_by_default() -> None:
    assert _configmaps(load_values(CHART_DIR / "ci" / "minimal-values.yaml")) == []


def test_chart_ships_each_dashboard_for_the_sidecar() -> None:
    values = load_values(CHART_DIR / "ci" / "minimal-values.yaml")
    values["dashboards"] = {"enabled": True, "runbookUrl": "https://wiki.example.com/hubsync/operations"}
    maps = {m["metadata"]["name"]: m for m in _configmaps(values)}
    assert set(maps) == {f"hs-hubsync-dashboard-{n}" for n in NAMES}
    for name in NAMES:
        cm = maps[f"hs-hubsync-dashboard-{name}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        shipped = json.loads(cm["data"][f"hubsync-{name}.json"])
        assert shipped["uid"] == f"hubsync-{name}"
        committed = json.dumps(load(name)).replace(RUNBOOK, "https://wiki.example.com/hubsync/operations")
        assert shipped == json.loads(committed)


def test_schema_refuses_unknown_dashboard_settings() -> None:
    values = load_values(CHART_DIR / "ci" / "minimal-values.yaml")
    values["dashboards"] = {"enabled": True, "folder": "x"}
    with pytest.raises(Exception, match="folder"):
        render_values(values)


def documented_labels() -> dict[str, set[str]]:
    """Each metric's labels as docs/operations.md's metrics reference lists them."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    reference = doc[doc.index("## Metrics reference") :]
    labels: dict[str, set[str]] = {}
    for line in reference.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) != 4 or not cells[0].startswith("`hubsync_"):
            continue
        metrics = named_metrics(cells[0])
        groups = [
            {name.strip() for quoted in re.findall(r"`([^`]+)`", group) for name in quoted.split(",")}
            for group in cells[2].split(" / ")
        ]
        names = re.findall(r"hubsync_[a-z_]+", cells[0])
        for i, metric in enumerate(names):
            labels[metric] = groups[i] if len(groups) == len(names) else set().union(*groups)
        assert metrics == set(names)
    return labels


@pytest.mark.parametrize("name", NAMES)
def test_queries_use_only_labels_the_metrics_carry(name: str) -> None:
    """A label a metric does not carry makes a panel silently empty (or one line for all)."""
    known = documented_labels()
    assert "portal" in known["hubsync_dlq_depth"]  # the table is read at all
    for panel in panels(load(name)):
        for expr in exprs(panel):
            (metric,) = {base_name(m) for m in named_metrics(expr)}
            used = set(re.findall(r"([a-z_]+)=~?\"", expr))
            for group in re.findall(r"by \(([^)]*)\)", expr):
                used |= {label.strip() for label in group.split(",")}
            extra = used - known[metric] - {"namespace", "le"}
            assert not extra, f"{name} / {panel['title']}: {metric} has no label {sorted(extra)}"


def test_runbook_sections_say_what_it_means_and_what_to_do() -> None:
    by_anchor = {anchor(heading): body for heading, body in sections().items()}
    linked = {
        link["url"].partition("#")[2]
        for name in NAMES
        for panel in panels(load(name))
        for link in panel.get("links", [])
    }
    procedures = {"parked-and-dead-lettered-inbound-events"}  # a procedure, with its commands
    for target in sorted(linked - procedures):
        body = by_anchor[target]
        assert "**Means.**" in body and "**Do.**" in body, f"#{target}: say what it means and what to do"


@pytest.mark.parametrize("name", NAMES)
def test_json_reads_back_as_the_sdk_dashboard_model(name: str) -> None:
    """The committed JSON parses into grafana-foundation-sdk's typed Dashboard (panels decoded by
    their plugin's model) and writes back the same, so nothing in it is outside Grafana's schema."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    data = load(name)
    back = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    for panel in back["panels"]:
        # decoding fills the time series plugin's empty custom field config
        if panel.get("fieldConfig", {}).get("defaults", {}).get("custom") == {}:
            del panel["fieldConfig"]["defaults"]["custom"]
    assert back == data
