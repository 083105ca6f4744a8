"""JSON Schemas for the custom resources the chart renders, which kubernetes-validate has none for.

They are deliberately small: the fields the chart writes (and their neighbours the operators'
CRDs define), with ``additionalProperties: false`` so a misspelt field fails like it would in a
cluster with the CRD installed. Sources: KEDA v2 ``keda.sh/v1alpha1`` (ScaledObject,
TriggerAuthentication), prometheus-operator ``monitoring.coreos.com/v1`` (ServiceMonitor,
PrometheusRule) and cert-manager ``cert-manager.io/v1`` (Certificate).
"""

from __future__ import annotations

from typing import Any

_STR: dict[str, Any] = {"type": "string", "minLength": 1}
_STRMAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
# prometheus-operator's Duration pattern.
_DURATION: dict[str, Any] = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STR, "namespace": _STR, "labels": _STRMAP, "annotations": _STRMAP},
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


_TRIGGER = _obj(
    {
        "type": _STR,
        "name": _STR,
        # KEDA reads trigger metadata as map[string]string: a number here is rejected.
        "metadata": _STRMAP,
        "authenticationRef": _obj(
            {"name": _STR, "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}},
            ["name"],
        ),
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
    },
    ["type", "metadata"],
)

SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    _obj(
        {
            "scaleTargetRef": _obj(
                {"apiVersion": _STR, "kind": _STR, "name": _STR, "envSourceContainerName": _STR}, ["name"]
            ),
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {"type": "object"},
            "advanced": _obj(
                {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": _obj({"name": _STR, "behavior": {"type": "object"}}),
                    "scalingModifiers": {"type": "object"},
                }
            ),
            "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
        },
        ["scaleTargetRef", "triggers"],
    ),
)

TRIGGER_AUTHENTICATION = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    _obj(
        {
            "secretTargetRef": {
                "type": "array",
                "items": _obj({"parameter": _STR, "name": _STR, "key": _STR}, ["parameter", "name", "key"]),
            },
            "env": {"type": "array"},
        }
    ),
)

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _obj(
        {
            "jobLabel": _STR,
            "selector": _obj({"matchLabels": _STRMAP, "matchExpressions": {"type": "array"}}),
            "namespaceSelector": _obj(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}
            ),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "port": _STR,
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                    }
                ),
            },
        },
        ["selector", "endpoints"],
    ),
)

_RULE = {
    "type": "object",
    "properties": {
        "alert": _STR,
        "record": _STR,
        "expr": _STR,
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRMAP,
        "annotations": _STRMAP,
    },
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "additionalProperties": False,
}

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _obj(
        {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "name": _STR,
                        "interval": _DURATION,
                        "rules": {"type": "array", "minItems": 1, "items": _RULE},
                    },
                    ["name", "rules"],
                ),
            }
        },
        ["groups"],
    ),
)

# cert-manager's Go duration (e.g. 2160h, 90m30s) and its KeyUsage enum (the values the chart uses
# and their common neighbours).
_GO_DURATION: dict[str, Any] = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "server auth", "client auth",
]  # fmt: skip
CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    _obj(
        {
            "secretName": _STR,
            "commonName": _STR,
            "dnsNames": {"type": "array", "items": _STR, "minItems": 1},
            "duration": _GO_DURATION,
            "renewBefore": _GO_DURATION,
            "privateKey": _obj(
                {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "size": {"type": "integer"},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                    "encoding": {"enum": ["PKCS1", "PKCS8"]},
                }
            ),
            "usages": {"type": "array", "items": {"enum": _USAGES}},
            "issuerRef": _obj({"name": _STR, "kind": _STR, "group": _STR}, ["name"]),
        },
        ["secretName", "issuerRef"],
    ),
)

BY_KIND: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}
