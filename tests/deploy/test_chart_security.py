"""Least privilege in the chart: each pod holds only its own caller token (also with Secrets of the
operator's), mutual TLS on every gRPC hop, NetworkPolicies on by default with gRPC and Redis open
only to the components that use them, and a production install that misses any of it refused."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart import (
    CHART_DIR,
    COMPONENTS,
    Rendered,
    container,
    env_of,
    load_values,
    object_name,
    pod_spec,
    render_file,
    render_values,
)

PRODUCTION = load_values(CHART_DIR / "ci" / "production-values.yaml")
MINIMAL = load_values(CHART_DIR / "ci" / "minimal-values.yaml")
# Who calls whom over gRPC (the services' own channels), and the CLI's pods (writer by default).
CALLS = {"ingress": {"auth", "writer"}, "mapper": {"writer"}, "writer": {"auth"}, "auth": set()}
CLI_COMPONENT = "writer"


def _merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _volume(rendered: Rendered, component: str, name: str) -> dict[str, Any] | None:
    volumes = pod_spec(rendered.get("Deployment", object_name(component)))["volumes"]
    found = [v for v in volumes if v["name"] == name]
    return found[0] if found else None


def _credentials(rendered: Rendered, component: str) -> tuple[str, list[str]]:
    volume = _volume(rendered, component, "caller-tokens")
    assert volume is not None
    return volume["secret"]["secretName"], [item["key"] for item in volume["secret"]["items"]]


# --- caller tokens -----------------------------------------------------------------------------


def test_one_existing_secret_is_projected_one_key_per_component() -> None:
    """callerTokens.existingSecret: every pod projects only its own component's key of it, so the
    internet-facing ingress never holds writer's (or anyone else's) token."""
    rendered = render_file("production-values.yaml")
    keys = {}
    for component in COMPONENTS:
        secret, items = _credentials(rendered, component)
        assert secret == "hubsync-caller-tokens"
        (keys[component],) = items
        assert keys[component] == f"{component}.json"
    assert len(set(keys.values())) == len(COMPONENTS)
    # The chart renders no token Secret of its own then.
    assert not [s for s in rendered.of_kind("Secret") if "caller-tokens" in s["metadata"]["name"]]


def test_one_existing_secret_per_component() -> None:
    secrets = {c: f"hubsync-{c}-caller-view" for c in COMPONENTS}
    values = _merged(PRODUCTION, {"callerTokens": {"existingSecret": "", "existingSecrets": secrets}})
    rendered = render_values(values)
    for component in COMPONENTS:
        assert _credentials(rendered, component) == (secrets[component], ["caller-tokens.json"])


def test_existing_secrets_must_name_every_component() -> None:
    values = _merged(MINIMAL, {"callerTokens": {"existingSecrets": {"auth": "a", "writer": "w"}}})
    with pytest.raises(helm.HelmRenderError, match=r"callerTokens.existingSecrets.ingress"):
        render_values(values)


def test_chart_created_tokens_give_each_pod_its_own_secret() -> None:
    rendered = render_file("minimal-values.yaml")
    names = {_credentials(rendered, c)[0] for c in COMPONENTS}
    assert names == {f"{object_name(c)}-credentials" for c in COMPONENTS}
    # (what each holds is checked in test_chart_render.test_each_pod_holds_only_its_own_credential)


# --- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", COMPONENTS)
def test_cert_manager_certificate_per_component_wired_to_tls_settings(component: str) -> None:
    rendered = render_file("production-values.yaml")
    certificate = rendered.get("Certificate", object_name(component))
    spec = certificate["spec"]
    assert spec["issuerRef"] == {
        "name": "hubsync-internal-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert {"server auth", "client auth"} <= set(spec["usages"])
    # The name every other component dials is in the certificate.
    for peer in COMPONENTS:
        host = env_of(rendered, peer)[f"HUBSYNC_{component.upper()}_ADDRESS"]["value"].rsplit(":", 1)[0]
        assert host in spec["dnsNames"]
    volume = _volume(rendered, component, "tls")
    assert volume is not None and volume["secret"]["secretName"] == spec["secretName"]
    mount = next(m for m in container(rendered, component)["volumeMounts"] if m["name"] == "tls")
    env = env_of(rendered, component)
    for variable, key in (("CERT", "tls.crt"), ("KEY", "tls.key"), ("CA", "ca.crt")):
        assert env[f"HUBSYNC_TLS_{variable}_FILE"]["value"] == f"{mount['mountPath']}/{key}"
    assert "HUBSYNC_GRPC_TLS_BY_MESH" not in env
    # Redis over TLS, checked against the CA of the operator's Secret.
    assert env["HUBSYNC_REDIS_URL"]["value"].startswith("rediss://")
    assert env["HUBSYNC_REDIS_TLS_CA_FILE"]["value"] == "/etc/hubsync/redis-tls/ca.crt"


def test_existing_tls_secrets_need_no_cert_manager() -> None:
    rendered = render_file("external-redis-values.yaml")
    assert not rendered.of_kind("Certificate")
    for component in COMPONENTS:
        volume = _volume(rendered, component, "tls")
        assert volume is not None and volume["secret"]["secretName"] == f"hubsync-{component}-tls"
        assert env_of(rendered, component)["HUBSYNC_TLS_CA_FILE"]["value"].endswith("/ca.crt")


def test_tls_for_some_components_only_is_refused() -> None:
    values = _merged(MINIMAL, {"tls": {"existingSecrets": {"auth": "a-tls", "writer": "w-tls"}}})
    with pytest.raises(helm.HelmRenderError, match=r"tls.existingSecrets.ingress"):
        render_values(values)


def test_development_without_tls_mounts_no_certificate() -> None:
    rendered = render_file("minimal-values.yaml")
    for component in COMPONENTS:
        assert _volume(rendered, component, "tls") is None
        assert "HUBSYNC_TLS_CERT_FILE" not in env_of(rendered, component)


# --- production refusals -------------------------------------------------------------------------

REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "no-tls": ({"tls": {"certManager": {"enabled": False}}}, "has no TLS certificate"),
    "cert-manager-without-issuer": ({"tls": {"certManager": {"issuerRef": {"name": ""}}}}, "issuerRef.name"),
    "plaintext-redis": ({"redis": {"url": "redis://hubsync-master:6379/0"}}, "redis.url must be rediss://"),
    "redis-without-password": ({"redis": {"password": {"existingSecret": ""}}}, "Redis needs AUTH"),
    "network-policies-off": ({"networkPolicy": {"enabled": False}}, "networkPolicy.enabled must stay true"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_production_install_missing_a_protection_is_refused(case: str) -> None:
    patch, message = REFUSED[case]
    with pytest.raises(helm.HelmRenderError, match=message):
        render_values(_merged(PRODUCTION, patch))


def test_production_refuses_the_evaluation_redis() -> None:
    values = _merged(
        MINIMAL, {"environment": "production", "ingress": {"publicBaseUrl": "https://h.example"}}
    )
    values["tls"] = {"mesh": True}
    with pytest.raises(helm.HelmRenderError, match="evaluation Redis has no TLS"):
        render_values(values)


def test_explicit_mesh_opt_outs_are_accepted_and_passed_on() -> None:
    values = _merged(
        PRODUCTION,
        {
            "tls": {"certManager": {"enabled": False}, "mesh": True},
            "redis": {"url": "redis://hubsync-master:6379/0", "tlsByMesh": True},
        },
    )
    rendered = render_values(values)
    assert not rendered.of_kind("Certificate")
    for component in COMPONENTS:
        env = env_of(rendered, component)
        assert env["HUBSYNC_GRPC_TLS_BY_MESH"]["value"] == "true"
        assert env["HUBSYNC_REDIS_TLS_BY_MESH"]["value"] == "true"
        assert "HUBSYNC_TLS_CERT_FILE" not in env


# --- NetworkPolicies -----------------------------------------------------------------------------


def _components_in(peer: dict[str, Any]) -> set[str]:
    """The components a hubsync podSelector peer selects (matchExpressions on the component label)."""
    selector = peer["podSelector"]
    assert selector["matchLabels"]["app.kubernetes.io/instance"] == "hs"
    (expression,) = selector["matchExpressions"]
    assert expression["key"] == "app.kubernetes.io/component" and expression["operator"] == "In"
    return set(expression["values"])


def _grpc_rules(rules: list[dict[str, Any]], port: Any) -> list[dict[str, Any]]:
    return [r for r in rules if any(p["port"] == port for p in r.get("ports", []))]


@pytest.mark.parametrize("component", COMPONENTS)
def test_grpc_reachable_only_from_its_callers(component: str) -> None:
    """Default values: NetworkPolicies are on; a component's gRPC port takes the components that
    call it, the CLI's pods and (for the APIs internal services use) `clients`, nobody else."""
    rendered = render_file("minimal-values.yaml")
    policy = rendered.get("NetworkPolicy", object_name(component))["spec"]
    rules = _grpc_rules(policy["ingress"], "grpc")
    callers = {c for c, callees in CALLS.items() if component in callees} | {CLI_COMPONENT}
    hubsync_peers = [p for r in rules for p in r["from"] if "matchExpressions" in p.get("podSelector", {})]
    (peer,) = hubsync_peers
    assert _components_in(peer) == callers
    others = [p for r in rules for p in r["from"] if p not in hubsync_peers]
    if component == "auth":
        assert not others, "no internal client calls auth"
    else:
        assert others == [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"hubsync.io/client": "true"}}}
        ]
    # Egress over gRPC only towards what the component calls (everything, from the CLI's pods).
    out = _grpc_rules(policy["egress"], 50051)
    callees = set(COMPONENTS) if component == CLI_COMPONENT else CALLS[component]
    if callees:
        (rule,) = out
        (to,) = rule["to"]
        assert _components_in(to) == callees
    else:
        assert not out


def test_ingress_http_is_open_to_anywhere_by_default() -> None:
    rendered = render_file("minimal-values.yaml")
    policy = rendered.get("NetworkPolicy", object_name("ingress"))["spec"]
    http = [r for r in policy["ingress"] if any(p["port"] == "http" for p in r["ports"])]
    (rule,) = http
    assert "from" not in rule, "HubSpot's webhooks arrive through whatever fronts the Service"


def test_evaluation_redis_only_from_the_four_components() -> None:
    rendered = render_file("minimal-values.yaml")
    policy = rendered.get("NetworkPolicy", object_name("redis"))["spec"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert _components_in(peer) == set(COMPONENTS)
    assert policy["egress"] == []


def test_security_doc_lists_what_production_refuses() -> None:
    """docs/security.md's production checklist names every value whose absence the chart refuses."""
    text = (CHART_DIR.parents[2] / "docs" / "security.md").read_text()
    checklist = text.split("## Production checklist", 1)[1]
    for value in (
        "tls.certManager",
        "tls.existingSecrets",
        "tls.mesh",
        "rediss://",
        "redis.tlsByMesh",
        "redis.password",
        "callerTokens.existingSecret",
        "networkPolicy.enabled",
        "ingress.publicBaseUrl",
    ):
        assert value in checklist, value
    for section in ("## Transport (TLS, mTLS, Redis)", "## Secrets in the chart"):
        assert section in text
