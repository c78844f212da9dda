"""The metrics contract: every PromQL expression in the manifests, config/alerts.yml and the README
names only metrics a running server exports, with labels those metrics carry, so that a rename can
never silently break an autoscaler, an alert or the endpoint picker.

Expressions are read with a small scanner, not a full PromQL parser: every ``llamaserve_*``
identifier is a metric, and every ``{...}`` matcher and ``by``/``on``/``without`` clause names labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.conftest import ROOT
from tests.deploy.manifests import BUILDS, build, kubectl

# Labels Prometheus adds when it scrapes (the target's), and the ServiceMonitor's Kubernetes ones.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}
METRIC = re.compile(r"\bllamaserve_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(llamaserve_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
# Names that are not series the server exports: what prometheus-adapter publishes a rule as.
ADAPTER_NAMES = {"llamaserve_slots_busy_ratio"}


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Every series name the server exports (with _bucket/_sum/_count/_total), and its labels."""
    app = create_app(Settings(), engine=FakeEngine())
    with TestClient(app) as client:
        # One request, so that every per-model family has a labelled series.
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        text = client.get("/metrics").text
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.setdefault(family.name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
            names[family.name].update(set(sample.labels) - {"le", "quantile"})
    # Families with no series yet (the RPC worker gauges): their names from the HELP lines.
    for name in re.findall(r"^# HELP (\S+)", text, re.MULTILINE):
        names.setdefault(name, set())
    return names


def _expressions_in_manifests() -> Iterator[tuple[str, str]]:
    for path in BUILDS:
        for doc in build(path):
            yield from _expressions_in_object(f"{path}: {doc['kind']}/{doc['metadata']['name']}", doc)


def _expressions_in_object(where: str, doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if doc["kind"] == "ScaledObject":
        for trigger in doc["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                yield f"{where} trigger {trigger.get('name')}", trigger["metadata"]["query"]
    if doc["kind"] == "ConfigMap" and "config.yaml" in doc.get("data", {}):
        for rule in yaml.safe_load(doc["data"]["config.yaml"])["rules"]:
            yield f"{where} seriesQuery", rule["seriesQuery"]
            # The adapter's template for one pod's series.
            series = METRIC.search(rule["seriesQuery"])
            query = rule["metricsQuery"].replace("<<.Series>>", series.group(0) if series else "")
            query = query.replace("<<.LabelMatchers>>", 'namespace="ai",pod="p"').replace("<<.GroupBy>>", "pod")
            yield f"{where} metricsQuery", query
    if doc["kind"] == "Deployment":
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for arg in container.get("args", []):
                if arg.startswith("--") and arg.endswith(tuple(f"-metric={m}" for m in ["", *METRIC.findall(arg)])):
                    yield f"{where} {arg.partition('=')[0]}", arg.partition("=")[2]


def _expressions_in_alerts() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "config" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"config/alerts.yml {rule['alert']}", rule["expr"]


def _expressions_in_readme() -> Iterator[tuple[str, str]]:
    # Every line of the README that names a llamaserve metric: the table, the queries, the prose.
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), start=1):
        if METRIC.search(line):
            yield f"README.md:{number}", line


def _all() -> list[tuple[str, str]]:
    found = [*_expressions_in_alerts(), *_expressions_in_readme()]
    if kubectl() is not None:
        found += list(_expressions_in_manifests())
    return found


def test_the_contract_covers_each_kind_of_source() -> None:
    wheres = " ".join(where for where, _ in _all())
    for source in ["config/alerts.yml", "README.md", "ScaledObject", "seriesQuery", "metricsQuery", "-metric"]:
        assert source in wheres, f"no expression found in {source}"


def test_every_metric_named_is_exported(exported: dict[str, set[str]]) -> None:
    missing = [
        f"{where}: {name}"
        for where, expr in _all()
        for name in METRIC.findall(expr)
        if name not in exported and name not in ADAPTER_NAMES and not _is_a_prefix(name, exported)
    ]
    assert not missing, "metrics named but not exported:\n" + "\n".join(missing)


def _is_a_prefix(name: str, exported: dict[str, set[str]]) -> bool:
    # Prose such as "llamaserve_rpc_worker_*" or "the llamaserve_ prefix".
    return name.endswith("_") and any(n.startswith(name) for n in exported)


def test_every_label_matched_or_grouped_on_exists(exported: dict[str, set[str]]) -> None:
    wrong = []
    for where, expr in _all():
        if where.startswith("README.md"):
            continue  # prose: its queries are checked through config/alerts.yml and the manifests
        for name, matchers in SELECTOR.findall(expr):
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
                if label not in exported.get(name, set()) | TARGET_LABELS:
                    wrong.append(f"{where}: {name} has no label {label!r}")
        names = METRIC.findall(expr)
        labels_of_all = set.union(*(exported.get(n, set()) for n in names)) if names else set()
        for group in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                if label not in labels_of_all | TARGET_LABELS | {"le"}:
                    wrong.append(f"{where}: no metric of {names} has the label {label!r}")
    assert not wrong, "\n".join(wrong)


def test_the_contract_catches_a_renamed_metric(exported: dict[str, set[str]]) -> None:
    # The scanner finds what a rename would break: a name that is not exported, a label that is gone.
    assert "llamaserve_requests_waiting" in exported and "model" in exported["llamaserve_requests_waiting"]
    assert "llamaserve_queue_length" not in exported
    assert METRIC.findall("sum(llamaserve_queue_length{model='x'})") == ["llamaserve_queue_length"]
    assert SELECTOR.findall('sum(llamaserve_slots_busy{service="llamaserve"})') == [
        ("llamaserve_slots_busy", 'service="llamaserve"')
    ]
