"""Schemas for the custom resources the overlays use, written from their published CRDs.

Not the CRDs themselves (those are large and change with each release): the fields these manifests
rely on, their types, what the CRD requires, and the set of fields each ``spec`` allows, so that a
misspelt or misplaced field fails here. Checked once against the published CRDs' own
openAPIV3Schema (KEDA keda.sh_scaledobjects, LWS leaderworkerset.x-k8s.io_leaderworkersets,
gateway-api-inference-extension inference.networking.k8s.io_inferencepools); see the README.
"""

from __future__ import annotations

from typing import Any

_OBJECT_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _OBJECT_META,
            "spec": spec,
        },
    }


_POD_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object"}}}

SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "envSourceContainerName": {"type": "string"},
                },
            },
            "pollingInterval": {"type": "integer"},
            "cooldownPeriod": {"type": "integer"},
            "initialCooldownPeriod": {"type": "integer"},
            "idleReplicaCount": {"type": "integer"},
            "minReplicaCount": {"type": "integer"},
            "maxReplicaCount": {"type": "integer"},
            "fallback": {"type": "object"},
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                    },
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "scalingModifiers": {"type": "object"},
                },
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                        "authenticationRef": {"type": "object"},
                        # KEDA reads every trigger's metadata as strings: a bare number fails there.
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
            },
        },
    },
)

LEADER_WORKER_SET = _resource(
    "leaderworkerset.x-k8s.io/v1",
    "LeaderWorkerSet",
    {
        "type": "object",
        "required": ["leaderWorkerTemplate"],
        "additionalProperties": False,
        "properties": {
            "replicas": {"type": "integer"},
            "startupPolicy": {"enum": ["LeaderCreated", "LeaderReady"]},
            "rolloutStrategy": {"type": "object"},
            "networkConfig": {"type": "object"},
            "leaderWorkerTemplate": {
                "type": "object",
                "required": ["workerTemplate"],
                "additionalProperties": False,
                "properties": {
                    "size": {"type": "integer", "minimum": 1},
                    "restartPolicy": {
                        "enum": ["Default", "RecreateGroupOnPodRestart", "RecreateGroupAfterStart", "None"]
                    },
                    "leaderTemplate": _POD_TEMPLATE,
                    "workerTemplate": _POD_TEMPLATE,
                    "subGroupPolicy": {"type": "object"},
                    "volumeClaimTemplates": {"type": "array"},
                    "persistentVolumeClaimRetentionPolicy": {"type": "object"},
                },
            },
        },
    },
)

INFERENCE_POOL = _resource(
    "inference.networking.k8s.io/v1",
    "InferencePool",
    {
        "type": "object",
        "required": ["selector", "targetPorts"],
        "additionalProperties": False,
        "properties": {
            "selector": {
                "type": "object",
                "required": ["matchLabels"],
                "additionalProperties": False,
                "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
            },
            "targetPorts": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["number"],
                    "additionalProperties": False,
                    "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}},
                },
            },
            "appProtocol": {"type": "string"},
            "endpointPickerRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "group": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "port": {
                        "type": "object",
                        "required": ["number"],
                        "properties": {"number": {"type": "integer"}},
                    },
                    "failureMode": {"enum": ["FailOpen", "FailClose"]},
                },
            },
        },
    },
)

# Kinds of CRDs these overlays need but whose objects are plain enough for required fields only.
SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {"type": "object", "required": ["selector", "endpoints"]},
)
HTTP_ROUTE = _resource(
    "gateway.networking.k8s.io/v1",
    "HTTPRoute",
    {"type": "object", "required": ["parentRefs", "rules"]},
)

BY_KIND = {
    "ScaledObject": SCALED_OBJECT,
    "LeaderWorkerSet": LEADER_WORKER_SET,
    "InferencePool": INFERENCE_POOL,
    "ServiceMonitor": SERVICE_MONITOR,
    "HTTPRoute": HTTP_ROUTE,
}
