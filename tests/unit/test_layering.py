"""The import rules that keep the layers apart, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "server"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules() -> list[Path]:
    return sorted(SERVER.rglob("*.py"))


def importers_of(top: str) -> set[str]:
    return {
        str(p.relative_to(SERVER.parent))
        for p in modules()
        if any(name == top or name.startswith(top + ".") for name in imports_of(p))
    }


def test_the_walk_sees_the_whole_package() -> None:
    assert len(modules()) > 20
    assert importers_of("llama_cpp")  # the walk does find imports


def test_only_the_llama_engine_modules_import_llama_cpp() -> None:
    assert {p for p in importers_of("llama_cpp") if not p.startswith("server/engine/llama")} == set()


def test_only_metrics_imports_prometheus_client() -> None:
    assert importers_of("prometheus_client") == {"server/metrics.py"}


@pytest.mark.parametrize("framework", ["fastapi", "starlette"])
def test_only_routes_and_the_app_import_the_web_framework(framework: str) -> None:
    allowed = {p for p in importers_of(framework) if p == "server/app.py" or p.startswith("server/routes/")}
    assert importers_of(framework) == allowed


def test_the_engine_knows_nothing_of_the_layers_above() -> None:
    above = ("server.scheduler", "server.service", "server.routes", "server.app", "server.protocol", "server.metrics")
    for path in (SERVER / "engine").glob("*.py"):
        bad = {name for name in imports_of(path) if name.startswith(above)}
        assert not bad, f"{path.name} imports {bad}"


def test_the_wire_models_know_nothing_of_llama_cpp_or_the_engine() -> None:
    names = imports_of(SERVER / "protocol.py")
    assert not {n for n in names if n.startswith(("llama_cpp", "server.engine", "server.scheduler"))}
