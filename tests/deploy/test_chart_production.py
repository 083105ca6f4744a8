"""The production combination (ci/production-values.yaml): every component has probes, a scaler,
a PDB and a NetworkPolicy, and the policies, Ingress, KEDA triggers and alerts say what they should."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hubsync.core.grpcserver import LIVENESS_SERVICE
from tests.deploy.chart import (
    COMPONENTS,
    NAMESPACE,
    RELEASE,
    Rendered,
    alerts,
    container,
    object_name,
    pod_spec,
    render_file,
)

PRODUCTION = "production-values.yaml"


@pytest.fixture(scope="module")
def prod() -> Rendered:
    return render_file(PRODUCTION)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _pod_labels(prod: Rendered, component: str) -> dict[str, str]:
    labels: dict[str, str] = prod.get("Deployment", object_name(component))["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


@pytest.mark.parametrize("component", COMPONENTS)
def test_native_grpc_probes(prod: Rendered, component: str) -> None:
    c = container(prod, component)
    # The API port requires mTLS, which the kubelet's gRPC probes cannot speak: they ask the
    # plaintext health-only port the service opens (HUBSYNC_GRPC_HEALTH_PORT).
    health_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "health")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HUBSYNC_GRPC_HEALTH_PORT"] == str(health_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == health_port, f"{component}: {probe}"
    # readiness follows Redis (the overall status); liveness asks for the process only, so a
    # Redis outage takes pods out of service without restarting them
    assert "service" not in c["readinessProbe"]["grpc"]
    assert c["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE


@pytest.mark.parametrize("component", COMPONENTS)
def test_scaled_by_hpa_or_scaled_object(prod: Rendered, component: str) -> None:
    deployment = prod.get("Deployment", object_name(component))
    hpa = prod.find("HorizontalPodAutoscaler", object_name(component))
    scaled = prod.find("ScaledObject", object_name(component))
    assert (hpa is None) != (scaled is None), f"{component}: exactly one of HPA and ScaledObject"
    scaler = hpa or scaled
    assert scaler is not None
    assert scaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # The scaler owns the replica count: a fixed one in the Deployment would fight it on every upgrade.
    assert "replicas" not in deployment["spec"]


def test_ingress_hpa_scales_on_cpu_and_requests(prod: Rendered) -> None:
    hpa = prod.get("HorizontalPodAutoscaler", object_name("ingress"))
    assert hpa["apiVersion"] == "autoscaling/v2"
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == "hubsync_webhook_requests_per_second"


@pytest.mark.parametrize(
    ("component", "queue", "per_replica"), [("mapper", "events", "1000"), ("writer", "writes", "200")]
)
def test_keda_scales_workers_on_their_queues_total_lag(
    prod: Rendered, component: str, queue: str, per_replica: str
) -> None:
    scaled = prod.get("ScaledObject", object_name(component))
    # One aggregate signal, whatever the number of portals: no per-portal stream in values.
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == "http://prometheus-operated.monitoring:9090"
    assert re.fullmatch(
        r'sum\(hubsync_queue_lag\{namespace="[a-z-]+", queue="' + queue + r'"\}\)', meta["query"]
    )
    assert meta["threshold"] == per_replica
    # KEDA no longer reads Redis: no credentials for it.
    assert prod.find("TriggerAuthentication", object_name("redis-keda")) is None


@pytest.mark.parametrize("component", COMPONENTS)
def test_pod_disruption_budget(prod: Rendered, component: str) -> None:
    pdb = prod.get("PodDisruptionBudget", object_name(component))
    assert _selects(pdb["spec"]["selector"], _pod_labels(prod, component))
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_spread_over_nodes_and_zones(prod: Rendered, component: str) -> None:
    spec = pod_spec(prod.get("Deployment", object_name(component)))
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(term["labelSelector"], _pod_labels(prod, component))
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"


def _policy(prod: Rendered, component: str) -> dict[str, Any]:
    policy = prod.get("NetworkPolicy", object_name(component))
    assert _selects(policy["spec"]["podSelector"], _pod_labels(prod, component))
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    return policy


def _egress_to_internet(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        rule
        for rule in policy["spec"]["egress"]
        if any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for peer in rule.get("to", []))
    ]


@pytest.mark.parametrize("component", COMPONENTS)
def test_network_policy_per_component(prod: Rendered, component: str) -> None:
    policy = _policy(prod, component)
    # Only writer and auth reach HubSpot (443 on the internet).
    internet = _egress_to_internet(policy)
    if component in {"auth", "writer"}:
        (rule,) = internet
        assert [p["port"] for p in rule["ports"]] == [443]
    else:
        assert not internet, f"{component} must not reach HubSpot"
    # Everyone reaches Redis (and its sentinels).
    redis_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {6379, 26379} <= redis_ports
    # Only ingress takes traffic from the ingress controller, and only on its HTTP port.
    from_controller = [
        rule
        for rule in policy["spec"]["ingress"]
        if any("ingress-nginx" in str(peer.get("namespaceSelector")) for peer in rule["from"])
    ]
    if component == "ingress":
        (rule,) = from_controller
        assert [p["port"] for p in rule["ports"]] == ["http"]
    else:
        assert not from_controller
    # Prometheus may scrape the metrics port.
    assert any(p["port"] == "metrics" for rule in policy["spec"]["ingress"] for p in rule["ports"])


def test_public_ingress_exposes_three_paths_with_tls(prod: Rendered) -> None:
    (ingress,) = prod.of_kind("Ingress")
    (rule,) = ingress["spec"]["rules"]
    paths = {p["path"]: p for p in rule["http"]["paths"]}
    assert set(paths) == {"/webhooks/hubspot", "/oauth/start", "/oauth/callback"}
    for path in paths.values():
        assert path["pathType"] == "Exact"
        assert path["backend"]["service"] == {"name": object_name("ingress"), "port": {"name": "http"}}
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"]


def test_otel_endpoint_and_sampling(prod: Rendered) -> None:
    for component in COMPONENTS:
        env = {e["name"]: e.get("value") for e in container(prod, component)["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        assert "deployment.environment=production" in env["OTEL_RESOURCE_ATTRIBUTES"]


def test_service_monitor_scrapes_every_component(prod: Rendered) -> None:
    (monitor,) = prod.of_kind("ServiceMonitor")
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    selected = [
        s for s in prod.of_kind("Service") if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in selected} == {object_name(c) for c in COMPONENTS}
    for service in selected:
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


# Metric names the services export (issue 8); an alert on any other name would never fire.
def test_alerts_cover_the_issue(prod: Rendered) -> None:
    found = alerts(prod)
    expected = {
        "HubsyncHubSpotErrorRateHigh": ("hubsync_hubspot_requests_total", "[1d]", "> 0.05"),
        "HubsyncDLQGrowing": ("hubsync_dlq_depth", "delta(", "> 0"),
        "HubsyncCircuitOpen": ("hubsync_circuit_state", "== 2", ""),
        "HubsyncTokenRefreshFailing": ("hubsync_token_refresh_total", "invalid_grant", "transient_failure"),
        "HubsyncConnectionNeedsReauth": ("hubsync_connections_needing_reauth", "> 0", ""),
        "HubsyncWebhookAcceptSlow": (
            "hubsync_webhook_accept_duration_seconds_bucket",
            "histogram_quantile(0.99",
            "> 1",
        ),
        "HubsyncStreamLagGrowing": ("hubsync_queue_lag", "delta(", "> 0"),
    }
    assert set(expected) <= set(found)
    for name, fragments in expected.items():
        expr = " ".join(found[name]["expr"].split())
        for fragment in fragments:
            assert fragment in expr, f"{name}: {fragment!r} not in {expr!r}"
        assert f'namespace="{NAMESPACE}"' in expr, f"{name} must stay within its release's namespace"
        assert found[name]["labels"]["severity"] in {"warning", "critical"}
        assert found[name]["annotations"]["runbook_url"].endswith("#" + name.lower())
    assert found["HubsyncCircuitOpen"]["for"] == "5m"


def test_alert_expressions_are_balanced(prod: Rendered) -> None:
    # that every metric they name is exported: tests/deploy/test_metric_names.py
    for name, rule in alerts(prod).items():
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
