"""The chart renders with every ci/*-values.yaml, lints clean, and every manifest is valid.

Built-in kinds are validated by kubernetes-validate against the bundled Kubernetes schemas in
strict mode (unknown fields fail); the custom resources (KEDA, Prometheus Operator) against the
small schemas in crd_schemas.py. A kind that neither knows fails the test rather than pass unseen.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError

from tests.deploy import crd_schemas
from tests.deploy.chart import (
    CHART_DIR,
    CI_VALUES,
    COMPONENTS,
    NAMESPACE,
    container,
    env_of,
    load_values,
    object_name,
    pod_spec,
    render_file,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest bundled schema.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]
CI_NAMES = [path.name for path in CI_VALUES]


def test_ci_values_files_cover_the_main_combinations() -> None:
    assert {"minimal-values.yaml", "production-values.yaml", "external-redis-values.yaml"} <= set(CI_NAMES)


def test_chart_needs_nothing_from_the_network() -> None:
    """No chart dependencies: rendering and installing never reach a chart repository."""
    metadata = helm.Chart.load(CHART_DIR).metadata
    assert not metadata.get("dependencies")
    assert not (CHART_DIR / "charts").exists()


@pytest.mark.parametrize("values_file", CI_NAMES)
def test_lint_is_clean(values_file: str) -> None:
    report = helm.lint(
        CHART_DIR,
        load_values(CHART_DIR / "ci" / values_file),
        strict=True,
        namespace=NAMESPACE,
        kube_version="v1.30.0",
    )
    # Strict lint: warnings count as failures; INFO (e.g. "icon is recommended") does not.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", CI_NAMES)
def test_every_manifest_validates(values_file: str, version: str) -> None:
    rendered = render_file(values_file)
    assert rendered.manifests
    for manifest in rendered.manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        custom = crd_schemas.BY_KIND.get((manifest["apiVersion"], manifest["kind"]))
        if custom is not None:
            try:
                jsonschema.Draft202012Validator(custom).validate(manifest)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{values_file}: {where}: {exc.json_path}: {exc.message}")
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{values_file}: {where} (Kubernetes {version}): {path}: {exc.message}")
        except SchemaNotFoundError:
            pytest.fail(f"{values_file}: {where}: no Kubernetes schema and no CRD schema in crd_schemas.py")


@pytest.mark.parametrize("values_file", CI_NAMES)
def test_every_pod_is_hardened(values_file: str) -> None:
    rendered = render_file(values_file)
    workloads = rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet")
    assert workloads
    for workload in workloads:
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, f"{name}: /tmp must be a writable emptyDir"
            assert c["resources"].get("requests"), f"{name}: resource requests"
            assert c["resources"].get("limits", {}).get("memory"), f"{name}: memory limit"


@pytest.mark.parametrize("values_file", CI_NAMES)
def test_services_find_each_other_and_their_settings(values_file: str) -> None:
    rendered = render_file(values_file)
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    for component in COMPONENTS:
        c = container(rendered, component)
        env = env_of(rendered, component)
        assert c["command"] == ["python", "-m", f"hubsync.{component}"]
        assert env["HUBSYNC_CALLER_NAME"]["value"] == component
        assert env["HUBSYNC_CALLER_TOKENS_FILE"]["value"].startswith("/etc/hubsync/")
        assert env["HUBSYNC_GRPC_HOST"]["value"] == "0.0.0.0"
        assert env["OTEL_SERVICE_NAME"]["value"] == f"hubsync-{component}"
        for peer in COMPONENTS:
            host, port = env[f"HUBSYNC_{peer.upper()}_ADDRESS"]["value"].rsplit(":", 1)
            # the headless Service: DNS gives every pod, the clients' round_robin uses them all
            service = services[f"{object_name(peer)}-grpc"]
            assert service["spec"]["clusterIP"] == "None"
            assert service["spec"]["selector"] == services[object_name(peer)]["spec"]["selector"]
            assert host == f"{object_name(peer)}-grpc.{NAMESPACE}.svc"
            assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}
        # A Redis connection in every combination: a URL, or Sentinel's pair of variables.
        assert "HUBSYNC_REDIS_URL" in env or {
            "HUBSYNC_REDIS_SENTINELS",
            "HUBSYNC_REDIS_SENTINEL_MASTER",
        } <= set(env)
    auth_env = env_of(rendered, "auth")
    assert auth_env["HUBSYNC_AUTH_KEYRING_FILE"]["value"].endswith(".json")
    ingress_env = env_of(rendered, "ingress")
    assert ingress_env["HUBSYNC_INGRESS_WEBHOOK_SECRETS_FILE"]["value"].endswith(".json")
    assert ingress_env["HUBSYNC_INGRESS_WEBHOOK_SPANS"]["value"] == "round_trip"
    assert env_of(rendered, "mapper")["HUBSYNC_MAPPER_MAPPINGS_DIR"]["value"] == "/etc/hubsync/mappings"
    writer_env = env_of(rendered, "writer")
    assert "HUBSYNC_WRITER_RATE_LIMIT_PRESET" in writer_env
    assert writer_env["HUBSYNC_WRITER_DAILY_RESET_TIMEZONE"]["value"] == "UTC"


def _secret_refs(rendered: Any) -> set[tuple[str, str | None]]:
    refs: set[tuple[str, str | None]] = set()
    for workload in rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet"):
        spec = pod_spec(workload)
        for volume in spec["volumes"]:
            if "secret" in volume:
                for item in volume["secret"].get("items", [{"key": None}]):
                    refs.add((volume["secret"]["secretName"], item["key"]))
        for c in spec["containers"]:
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
    return refs


@pytest.mark.parametrize("values_file", CI_NAMES)
def test_every_secret_reference_resolves(values_file: str) -> None:
    """Each Secret a pod reads is rendered by the chart with that key, or named in the values."""
    rendered = render_file(values_file)
    values = load_values(CHART_DIR / "ci" / values_file)
    existing = {
        values.get("callerTokens", {}).get("existingSecret"),
        *values.get("callerTokens", {}).get("existingSecrets", {}).values(),
        *values.get("tls", {}).get("existingSecrets", {}).values(),
        values.get("auth", {}).get("oauth", {}).get("existingSecret"),
        values.get("auth", {}).get("keyring", {}).get("existingSecret"),
        values.get("ingress", {}).get("webhookSecrets", {}).get("existingSecret"),
        values.get("redis", {}).get("password", {}).get("existingSecret"),
        values.get("redis", {}).get("tls", {}).get("existingSecret"),
    } - {None, ""}
    created = {s["metadata"]["name"]: set(s.get("data", {})) for s in rendered.of_kind("Secret")}
    # cert-manager writes each Certificate's Secret (with ca.crt from a CA issuer).
    for certificate in rendered.of_kind("Certificate"):
        created[certificate["spec"]["secretName"]] = {"tls.crt", "tls.key", "ca.crt"}
    for name, key in _secret_refs(rendered):
        if name in existing:
            continue
        assert name in created, f"{values_file}: Secret {name} is neither rendered nor an existingSecret"
        assert key is None or key in created[name], f"{values_file}: Secret {name} has no key {key}"


def test_mappings_change_rolls_the_mapper() -> None:
    from tests.deploy.chart import render_values

    base = load_values(CHART_DIR / "ci" / "minimal-values.yaml")
    before = render_file("minimal-values.yaml")
    changed = render_values(
        {**base, "mapper": {"mappings": {"files": {"deals.yaml": "object_type: deals\n"}}}}
    )

    def checksum(rendered: Any, component: str) -> str | None:
        annotations = rendered.get("Deployment", object_name(component))["spec"]["template"]["metadata"][
            "annotations"
        ]
        return annotations.get("checksum/mappings")

    assert checksum(before, "mapper") and checksum(changed, "mapper")
    assert checksum(before, "mapper") != checksum(changed, "mapper")
    # Only the mapper reads mappings: the others do not roll.
    assert checksum(changed, "writer") is None
    configmap = changed.get("ConfigMap", object_name("mappings"))
    assert configmap["data"] == {"deals.yaml": "object_type: deals\n"}


def test_evaluation_redis_keeps_every_write() -> None:
    rendered = render_file("minimal-values.yaml")
    redis = rendered.get("StatefulSet", object_name("redis"))
    (c,) = pod_spec(redis)["containers"]
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert env_of(rendered, "writer")["HUBSYNC_REDIS_URL"]["value"] == (
        f"redis://{object_name('redis')}.{NAMESPACE}.svc:6379/0"
    )


def test_external_redis_with_tls_and_password() -> None:
    rendered = render_file("external-redis-values.yaml")
    assert not rendered.of_kind("StatefulSet")
    env = env_of(rendered, "writer")
    assert env["HUBSYNC_REDIS_URL"]["value"].startswith("rediss://")
    assert env["HUBSYNC_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == object_name("redis")
    # Without KEDA, mapper and writer fall back to CPU HPAs.
    for component in ("mapper", "writer"):
        assert rendered.get("HorizontalPodAutoscaler", object_name(component))
    assert not rendered.of_kind("ScaledObject")


def test_redis_cluster_url_is_accepted_and_held_to_production_rules() -> None:
    """Redis Cluster (issue 13): a rediss+cluster:// url reaches every service unchanged, KEDA's
    Prometheus trigger is the same as for one Redis; production still refuses a plaintext
    cluster, and a cluster url together with Sentinel is refused."""
    from tests.deploy.chart import render_values

    values = load_values(CHART_DIR / "ci" / "production-values.yaml")
    seeds = "redis-0.redis.data.svc:6379,redis-1.redis.data.svc:6379"
    values["redis"] = {
        **values["redis"],
        "url": f"rediss+cluster://{seeds}/0",
        "sentinel": {"enabled": False},
    }
    rendered = render_values(values)
    for component in COMPONENTS:
        env = env_of(rendered, component)
        assert env["HUBSYNC_REDIS_URL"]["value"] == f"rediss+cluster://{seeds}/0"
        assert "HUBSYNC_REDIS_SENTINELS" not in env
        assert "HUBSYNC_REDIS_PASSWORD" in env
    # KEDA scales on the aggregate queue lag in Prometheus: nothing of it depends on the Redis
    # topology, so a cluster renders the same trigger.
    for component, queue in (("mapper", "events"), ("writer", "writes")):
        (trigger,) = rendered.get("ScaledObject", object_name(component))["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        assert f'queue="{queue}"' in trigger["metadata"]["query"]

    plaintext = {**values, "redis": {**values["redis"], "url": f"redis+cluster://{seeds}"}}
    with pytest.raises(Exception, match="rediss\\+cluster://"):
        render_values(plaintext)
    with_sentinel = {
        **values,
        "redis": {
            **values["redis"],
            "sentinel": {**load_values(CHART_DIR / "ci" / "production-values.yaml")["redis"]["sentinel"]},
        },
    }
    with pytest.raises(Exception, match="exclude each other"):
        render_values(with_sentinel)
    with pytest.raises(Exception, match="url"):
        render_values({**values, "redis": {**values["redis"], "url": "redis-cluster://a:1"}})


def test_the_sentinels_password_comes_from_its_own_secret_key() -> None:
    """redis.sentinel.password sets HUBSYNC_REDIS_SENTINEL_PASSWORD from the operator's Secret,
    beside (not instead of) the master's HUBSYNC_REDIS_PASSWORD; without it, no variable."""
    from tests.deploy.chart import render_values

    values = load_values(CHART_DIR / "ci" / "production-values.yaml")
    rendered = render_values(values)
    for component in COMPONENTS:
        env = env_of(rendered, component)
        assert env["HUBSYNC_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "hubsync-redis",
            "key": "sentinel-password",
        }
        assert env["HUBSYNC_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    sentinel = {k: v for k, v in values["redis"]["sentinel"].items() if k != "password"}
    rendered = render_values({**values, "redis": {**values["redis"], "sentinel": sentinel}})
    for component in COMPONENTS:
        assert "HUBSYNC_REDIS_SENTINEL_PASSWORD" not in env_of(rendered, component)


def test_each_pod_holds_only_its_own_credential() -> None:
    """Chart-created tokens: a component's pods mount its own token and only digests of the
    others, so a compromised mapper pod cannot call auth as writer (and read HubSpot tokens)."""
    import base64
    import hashlib
    import json

    rendered = render_file("external-redis-values.yaml")  # chart-created tokens, plus "billing"
    secrets = {s["metadata"]["name"]: s for s in rendered.of_kind("Secret")}
    everyone = json.loads(base64.b64decode(secrets["hs-hubsync-caller-tokens"]["data"]["caller-tokens.json"]))
    assert {"auth", "ingress", "mapper", "writer", "cli", "billing"} <= set(everyone)
    for component in COMPONENTS:
        (volume,) = [v for v in pod_spec(rendered.get("Deployment", object_name(component)))["volumes"]
                     if v["name"] == "caller-tokens"]  # fmt: skip
        mounted = secrets[volume["secret"]["secretName"]]
        held = json.loads(base64.b64decode(mounted["data"][volume["secret"]["items"][0]["key"]]))
        assert set(held) == set(everyone)
        for caller, token in everyone.items():
            if caller == component:
                assert held[caller] == token
            else:
                assert held[caller] == "sha256:" + hashlib.sha256(token.encode()).hexdigest(), (
                    component,
                    caller,
                )


def test_templates_read_the_component_table_not_component_names() -> None:
    """What differs between components lives in hubsync.componentTable (_components.tpl) alone."""
    table = (CHART_DIR / "templates" / "_components.tpl").read_text()
    for name in COMPONENTS:
        assert f'"name": "{name}"' in table, name
    for template in sorted((CHART_DIR / "templates").iterdir()):
        if template.name == "_components.tpl":
            continue
        text = template.read_text()
        branches = re.findall(r'eq \$?\.?name "\w+"|has \$?\.?name \(list', text)
        assert not branches, f"{template.name} branches on a component's name: {branches}"
        assert 'list "auth" "ingress"' not in text, f"{template.name} lists the components itself"
