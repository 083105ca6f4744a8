"""Writes hubsync's Grafana dashboards (an overview and one per service) and their panel table.

Usage: python scripts/dashboards.py [--check]

The dashboards are built in code with Grafana's grafana-foundation-sdk (a development tool, not a
runtime dependency) and written as JSON into deploy/helm/hubsync/dashboards/, which the chart
ships as ConfigMaps for Grafana's dashboard sidecar (``dashboards.enabled``). The panel table of
docs/operations.md ("Dashboards") is written from the same definitions. Every panel links to its
runbook section in docs/operations.md. --check fails when a committed file differs from what the
code builds, so the JSON cannot drift from its definition.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    CustomVariable,
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "helm" / "hubsync" / "dashboards"
DOC = ROOT / "docs" / "operations.md"
# The chart swaps this for `dashboards.runbookUrl` when it ships the dashboards.
RUNBOOK = "https://github.com/hubsync/hubsync/blob/main/docs/operations.md"
BEGIN = "<!-- dashboard-table: written by scripts/dashboards.py from its panels; do not edit by hand -->"
END = "<!-- /dashboard-table -->"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace="$namespace"'
PORTAL = 'portal=~"$portal"'
OBJECT_TYPE = 'object_type=~"$object_type"'
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    """One panel: its queries, how it is drawn, its runbook section and when it looks wrong."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str
    runbook: str  # the heading's anchor in docs/operations.md
    wrong: str  # what "looks wrong" means, for the table in docs/operations.md
    kind: str = "timeseries"  # or "stat"
    exemplars: bool = False  # latency histograms: exemplars link a slow bucket to its trace


def _q(expr: str, legend: str) -> Query:
    return Query(" ".join(expr.split()), legend)


def _p99(metric: str, by: str, selector: str) -> tuple[Query, ...]:
    group = f"le, {by}" if by else "le"
    return tuple(
        _q(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}{RATE})))",
            f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in (0.5, 0.99)
    )


# --- panels --------------------------------------------------------------------------------

WEBHOOKS = PanelSpec(
    "Webhooks accepted and refused",
    "Events ingress enqueued (by origin) and requests it refused (by reason), per second.",
    (
        _q(f"sum by (origin) (rate(hubsync_webhook_accepted_total{{{NS}}}{RATE}))", "accepted {{origin}}"),
        _q(f"sum by (reason) (rate(hubsync_webhook_rejected_total{{{NS}}}{RATE}))", "refused {{reason}}"),
    ),
    "reqps",
    "webhooks-accepted-and-refused",
    "refusals climb, or accepted drops to 0 while HubSpot shows changes",
)
ACCEPT_LATENCY = PanelSpec(
    "Webhook accept latency",
    "Request body read → Redis commit, p50 and p99; exemplars open the slow requests' traces.",
    _p99("hubsync_webhook_accept_duration_seconds", "", NS),
    "s",
    "hubsyncwebhookacceptslow",
    "p99 above 1 s (the HubsyncWebhookAcceptSlow alert's threshold)",
    exemplars=True,
)
DUPLICATES = PanelSpec(
    "Duplicates and echoes dropped",
    "Events accepted before, and echoes of hubsync's own writes, dropped by ingress.",
    (
        _q(f"sum(rate(hubsync_webhook_duplicates_total{{{NS}}}{RATE}))", "duplicates"),
        _q(f"sum by (kind) (rate(hubsync_webhook_echoes_total{{{NS}}}{RATE}))", "echoes {{kind}}"),
    ),
    "ops",
    "duplicates-and-echoes",
    "echoes near 0 while hubsync writes (an echo loop), or duplicates above accepted",
)
RECONCILE = PanelSpec(
    "Changes found by reconciliation",
    "Changes the delta poll found that no webhook reported, by object type.",
    (
        _q(
            f"sum by (object_type) (increase(hubsync_reconcile_found_total{{{NS}, {OBJECT_TYPE}}}{RATE}))",
            "{{object_type}}",
        ),
    ),
    "short",
    "changes-found-by-reconciliation",
    "steadily above 0: webhooks are being lost before ingress",
)
STREAM_LAG = PanelSpec(
    "Queue lag",
    "Entries not processed yet, summed over the portals with work (inbound events, writes).",
    (_q(f"sum by (queue) (hubsync_queue_lag{{{NS}}})", "{{queue}}"),),
    "short",
    "hubsyncstreamlaggrowing",
    "grows for 10 minutes and more",
)
SYNC_RATE = PanelSpec(
    "Sync rate by direction and outcome",
    "Records synced per second, inbound (HubSpot → your services) and outbound, by outcome.",
    (
        _q(
            f"sum by (direction, outcome) (rate(hubsync_sync_total{{{NS}, {OBJECT_TYPE}}}{RATE}))",
            "{{direction}} {{outcome}}",
        ),
    ),
    "ops",
    "sync-outcomes",
    "an outcome other than success grows, or a direction drops to 0",
)
SYNC_LATENCY = PanelSpec(
    "End-to-end sync latency",
    "Inbound: HubSpot's change → change feed; outbound: push → HubSpot (or queued). p50 and p99.",
    _p99("hubsync_sync_duration_seconds", "direction", f"{NS}, {OBJECT_TYPE}"),
    "s",
    "end-to-end-sync-latency",
    "p99 above a few seconds for minutes",
    exemplars=True,
)
FEED = PanelSpec(
    "Change feed deliveries",
    "Changes delivered to subscribers, and redeliveries after the visibility timeout.",
    (
        _q(
            f"sum by (object_type) (rate(hubsync_feed_deliveries_total{{{NS}, {OBJECT_TYPE}}}{RATE}))",
            "delivered {{object_type}}",
        ),
        _q(f"sum by (group) (rate(hubsync_feed_redeliveries_total{{{NS}}}{RATE}))", "redelivered {{group}}"),
    ),
    "ops",
    "change-feed-deliveries",
    "redeliveries climb: a subscriber does not Ack in time",
)
HYDRATE = PanelSpec(
    "Hydrate calls",
    "ReadRecords calls the mapper makes to fetch the records of inbound events.",
    (
        _q(
            f"sum by (object_type) (rate(hubsync_mapper_hydrate_calls_total{{{NS}, {OBJECT_TYPE}}}{RATE}))",
            "{{object_type}}",
        ),
    ),
    "ops",
    "change-feed-deliveries",
    "calls near the event rate: events are not batched (see the batch size setting)",
)
INBOUND_ENTRIES = PanelSpec(
    "Inbound events parked and dead-lettered",
    "Inbound events parked (unusable connection) and dead-lettered (by reason), per second.",
    (
        _q(f"sum(rate(hubsync_mapper_inbound_parked_total{{{NS}}}{RATE}))", "parked"),
        _q(
            f"sum by (reason) (rate(hubsync_mapper_inbound_dead_letters_total{{{NS}}}{RATE}))",
            "dead-lettered {{reason}}",
        ),
    ),
    "ops",
    "parked-and-dead-lettered-inbound-events",
    "above 0",
)
INBOUND_DEPTH = PanelSpec(
    "Inbound parked and dead-letter depth",
    "Inbound events waiting in the mapper's parked and dead-letter queues.",
    (_q(f"sum by (queue) (hubsync_mapper_inbound_depth{{{NS}}})", "{{queue}}"),),
    "short",
    "parked-and-dead-lettered-inbound-events",
    "above 0: a portal needs re-authorizing, or events need a replay",
)
HUBSPOT_CALLS = PanelSpec(
    "HubSpot calls by status",
    "Calls the writer made to HubSpot's API per second, by HTTP status.",
    (
        _q(
            f"sum by (status) (rate(hubsync_hubspot_requests_total{{{NS}, {PORTAL}}}{RATE}))",
            "{{status}}",
        ),
    ),
    "reqps",
    "hubsynchubspoterrorratehigh",
    "4xx/5xx above 5 % of calls",
)
HUBSPOT_429 = PanelSpec(
    "HubSpot 429s by portal",
    "Rate-limit refusals from HubSpot, top portals (one series for all unless "
    "HUBSYNC_METRICS_PORTAL_LABELS names portals). hubsync's limiter aims for none.",
    (
        _q(
            f"topk($top, sum by (portal) "
            f'(increase(hubsync_hubspot_requests_total{{{NS}, {PORTAL}, status="429"}}{RATE})))',
            "{{portal}}",
        ),
    ),
    "short",
    "hubspot-429s",
    "any 429 that keeps coming back",
)
HUBSPOT_LATENCY = PanelSpec(
    "HubSpot call latency",
    "HubSpot API call latency by endpoint, p50 and p99; exemplars open the calls' traces.",
    _p99("hubsync_hubspot_request_duration_seconds", "endpoint", NS),
    "s",
    "hubspot-call-latency",
    "p99 above a few seconds (HubSpot slow, or timing out)",
    exemplars=True,
)
QUOTA = PanelSpec(
    "Quota headroom",
    "Burst requests left per portal (the least over all portals unless HUBSYNC_METRICS_PORTAL_LABELS "
    "names portals): hubsync's limiter (writer) and HubSpot's headers (hubspot).",
    (
        _q(
            f"bottomk($top, min by (portal, source) (hubsync_ratelimit_remaining{{{NS}, {PORTAL}}}))",
            "{{portal}} {{source}}",
        ),
    ),
    "short",
    "quota-headroom",
    "hubspot's headroom at 0 while writer's is not (another app spends the portal's quota)",
)
CIRCUIT = PanelSpec(
    "Circuit state",
    "Per portal (the highest over all portals unless HUBSYNC_METRICS_PORTAL_LABELS names portals): "
    "1 closed, 2 open (calls to HubSpot held back), 3 half-open.",
    (_q(f"max by (portal) (hubsync_circuit_state{{{NS}, {PORTAL}}})", "{{portal}}"),),
    "short",
    "hubsynccircuitopen",
    "2 (open) for more than 5 minutes",
)
DLQ_DEPTH = PanelSpec(
    "Dead-letter depth",
    "Writes waiting in the writer's dead-letter queue, and inbound events in the mapper's.",
    (
        _q(f"topk($top, sum by (portal) (hubsync_dlq_depth{{{NS}, {PORTAL}}}))", "writer {{portal}}"),
        _q(
            f'sum by (queue) (hubsync_mapper_inbound_depth{{{NS}, queue="dlq"}})',
            "mapper inbound",
        ),
    ),
    "short",
    "hubsyncdlqgrowing",
    "grows: look at the entries' statuses and replay or purge",
)
DLQ_ENTRIES = PanelSpec(
    "Writes dead-lettered by status",
    "Writes the writer gave up on, by HubSpot's HTTP status.",
    (
        _q(
            f"sum by (status) (increase(hubsync_dlq_entries_total{{{NS}, {PORTAL}}}{RATE}))",
            "{{status}}",
        ),
    ),
    "short",
    "hubsyncdlqgrowing",
    "above 0",
)
SUPERSEDED = PanelSpec(
    "Writes superseded",
    "Record properties not sent because a newer version of the record already wrote them.",
    (
        _q(
            "sum by (object_type) "
            f"(rate(hubsync_writes_superseded_total{{{NS}, {PORTAL}, {OBJECT_TYPE}}}{RATE}))",
            "{{object_type}}",
        ),
    ),
    "ops",
    "writes-superseded",
    "a large share of writes: a caller sends old versions (retries, replays)",
)
TOKEN_REFRESHES = PanelSpec(
    "Token refreshes by outcome",
    "OAuth access-token refreshes by outcome (success, transient_failure, invalid_grant, ...).",
    (
        _q(
            f"sum by (outcome) (increase(hubsync_token_refresh_total{{{NS}, {PORTAL}}}{RATE}))",
            "{{outcome}}",
        ),
    ),
    "short",
    "hubsynctokenrefreshfailing",
    "invalid_grant or transient_failure keep coming",
)
REAUTH = PanelSpec(
    "Connections needing re-auth",
    "Connections in NEEDS_REAUTH: a person must connect the portal again.",
    (_q(f"max(hubsync_connections_needing_reauth{{{NS}}})", "needing re-auth"),),
    "short",
    "hubsyncconnectionneedsreauth",
    "above 0",
    kind="stat",
)

# --- dashboards ----------------------------------------------------------------------------

Rows = tuple[tuple[str, tuple[PanelSpec, ...]], ...]
DASHBOARDS: dict[str, tuple[str, Rows]] = {
    "overview": (
        "hubsync / Overview",
        (
            ("Webhooks (ingress)", (WEBHOOKS, ACCEPT_LATENCY, STREAM_LAG)),
            ("Sync (mapper)", (SYNC_RATE, SYNC_LATENCY)),
            ("HubSpot (writer)", (HUBSPOT_CALLS, HUBSPOT_429, QUOTA, CIRCUIT)),
            ("Dead letters and connections", (DLQ_DEPTH, INBOUND_DEPTH, TOKEN_REFRESHES, REAUTH)),
        ),
    ),
    "ingress": (
        "hubsync / ingress",
        (
            ("Webhooks", (WEBHOOKS, ACCEPT_LATENCY)),
            ("Dropped and found", (DUPLICATES, RECONCILE)),
        ),
    ),
    "mapper": (
        "hubsync / mapper",
        (
            ("Sync", (SYNC_RATE, SYNC_LATENCY, STREAM_LAG)),
            ("Change feed", (FEED, HYDRATE)),
            ("Inbound parking and dead letters", (INBOUND_ENTRIES, INBOUND_DEPTH)),
        ),
    ),
    "writer": (
        "hubsync / writer",
        (
            ("HubSpot", (HUBSPOT_CALLS, HUBSPOT_429, HUBSPOT_LATENCY)),
            ("Quota and circuit", (QUOTA, CIRCUIT, STREAM_LAG)),
            ("Dead letters and order", (DLQ_DEPTH, DLQ_ENTRIES, SUPERSEDED)),
        ),
    ),
    "auth": (
        "hubsync / auth",
        (("Connections", (TOKEN_REFRESHES, REAUTH)),),
    ),
}


def _variables(dashboard: Dashboard) -> Dashboard:
    """datasource, namespace, top (N), portal (the top N by HubSpot calls) and object type."""
    return (
        dashboard.with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(hubsync_queue_lag, namespace)")
            .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            CustomVariable("top")
            .label("Top N portals")
            .values("5,10,25,50")
            .current(VariableOption(selected=True, text="10", value="10"))
        )
        .with_variable(
            QueryVariable("portal")
            .label("Portal (top N by HubSpot calls; with HUBSYNC_METRICS_PORTAL_LABELS)")
            .datasource(DATASOURCE)
            .query(
                "query_result(topk($top, sum by (portal) "
                f"(increase(hubsync_hubspot_requests_total{{{NS}}}[$__range]))))"
            )
            .regex('/portal="([^"]+)"/')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            QueryVariable("object_type")
            .label("Object type")
            .datasource(DATASOURCE)
            .query(f"label_values(hubsync_sync_total{{{NS}}}, object_type)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )


def _panel(spec: PanelSpec, panel_id: int) -> timeseries.Panel | stat.Panel:
    panel: timeseries.Panel | stat.Panel
    if spec.kind == "timeseries":
        legend = (
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        panel = timeseries.Panel().legend(legend)
    else:
        panel = stat.Panel().reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    panel = (
        panel.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .height(8)
        .span(12 if spec.kind == "timeseries" else 6)
        .links(
            [
                DashboardLink("Runbook")
                .type(DashboardLinkType.LINK)
                .url(f"{RUNBOOK}#{spec.runbook}")
                .target_blank(True)
            ]
        )
    )
    for ref, query in zip("ABCDEFGH", spec.queries, strict=False):
        target = prometheus.Dataquery().ref_id(ref).expr(query.expr).legend_format(query.legend).range()
        if spec.exemplars:
            target = target.exemplar(True)
        panel = panel.with_target(target)
    return panel


def build(name: str) -> dict[str, object]:
    """One dashboard as the JSON object Grafana imports."""
    title, rows = DASHBOARDS[name]
    dashboard = (
        Dashboard(title)
        .uid(f"hubsync-{name}")
        .tags(["hubsync"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .link(
            DashboardLink("hubsync dashboards")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(["hubsync"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    dashboard = _variables(dashboard)
    panel_id = 0
    for row_title, panels in rows:
        panel_id += 1
        dashboard = dashboard.with_row(Row(row_title).id(panel_id))
        for spec in panels:
            panel_id += 1
            dashboard = dashboard.with_panel(_panel(spec, panel_id))
    encoded: dict[str, object] = json.loads(json.dumps(dashboard.build(), cls=JSONEncoder))
    return encoded


def render(name: str) -> str:
    return json.dumps(build(name), indent=2, sort_keys=True) + "\n"


def table() -> str:
    """The markdown table of docs/operations.md: every panel, its dashboards, queries, runbook."""
    used: dict[PanelSpec, list[str]] = {}
    for name, (_title, rows) in DASHBOARDS.items():
        for _row, panels in rows:
            for spec in panels:
                used.setdefault(spec, []).append(name)
    lines = ["| panel | dashboards | query | looks wrong when | runbook |", "|---|---|---|---|---|"]
    for spec, names in used.items():
        queries = "<br>".join("`" + q.expr.replace("|", "\\|") + "`" for q in spec.queries)
        lines.append(
            f"| {spec.title} | {', '.join(names)} | {queries} | {spec.wrong} | [runbook](#{spec.runbook}) |"
        )
    return "\n".join(lines)


def render_doc(doc: str) -> str:
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + table() + "\n" + doc[end:]


def wanted() -> dict[Path, str]:
    """Every file this script writes, with its content."""
    files = {OUT / f"{name}.json": render(name) for name in DASHBOARDS}
    files[DOC] = render_doc(DOC.read_text())
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a committed file is stale")
    args = parser.parse_args()
    files = wanted()
    if args.check:
        stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
        extra = sorted(set(OUT.glob("*.json")) - set(files))
        for path in [*stale, *extra]:
            print(f"{path.relative_to(ROOT)}: differs from what the code builds; run {sys.argv[0]}")
        return 1 if stale or extra else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path in set(OUT.glob("*.json")) - set(files):
        path.unlink()
    for path, text in files.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
