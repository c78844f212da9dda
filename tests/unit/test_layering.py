"""The import rules that keep the layers apart, checked by walking every module's imports.

The order is engine < runtime < services < api (< cli): a layer imports only the ones below it.
``prompting/`` turns conversations into text and never imports the engine or the scheduler;
``state/`` (stored state in SQLite) imports only the vocabulary, and the services and the API use it; the
shared vocabulary (``protocol``, ``errors``, ``settings``) sits at the top of the package and
imports no layer at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "server"
LAYERS = ("engine", "runtime", "services", "api", "cli")  # lowest first
VOCABULARY = ("protocol", "errors", "settings")


def imports_of(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from server.engine import fake` imports server.engine.fake.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules() -> list[Path]:
    return sorted(SERVER.rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(SERVER.parent))


def importers_of(top: str) -> set[str]:
    return {rel(p) for p in modules() if any(name == top or name.startswith(top + ".") for name in imports_of(p))}


def room_of(path: Path) -> str:
    """The subpackage a module lives in, or its own name for the top-level vocabulary modules."""
    parts = path.relative_to(SERVER).parts
    return parts[0] if len(parts) > 1 else path.stem


def vocabulary_modules(name: str) -> list[Path]:
    """``protocol`` is a package (one module per API family); ``errors`` and ``settings`` are modules."""
    package = SERVER / name
    return sorted(package.rglob("*.py")) if package.is_dir() else [SERVER / f"{name}.py"]


def rooms_imported_by(path: Path) -> set[str]:
    rooms = set()
    for name in imports_of(path):
        parts = name.split(".")
        if parts[0] == "server" and len(parts) > 1:
            rooms.add(parts[1])
    return rooms - {room_of(path), "__init__"}


def test_the_walk_sees_the_whole_package() -> None:
    assert len(modules()) > 40
    assert importers_of("llama_cpp")  # the walk does find imports
    assert {room_of(p) for p in modules()} >= {*LAYERS, "prompting", "ops", "state", *VOCABULARY}


def test_the_walk_would_catch_a_layer_importing_upwards(tmp_path: Path) -> None:
    # The rules below are only as good as the walk: a lazy import inside a function counts.
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from server.api import app\n")
    assert "server.api.app" in imports_of(probe)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    for path in (SERVER / layer).rglob("*.py"):
        bad = rooms_imported_by(path) & above
        assert not bad, f"{rel(path)} imports the layer(s) above it: {sorted(bad)}"


def test_prompting_never_imports_the_engine_or_the_scheduler() -> None:
    for path in (SERVER / "prompting").rglob("*.py"):
        bad = rooms_imported_by(path) & {"engine", "runtime", "services", "api", "cli"}
        assert not bad, f"{rel(path)} imports {sorted(bad)}"


def test_state_imports_only_the_shared_vocabulary() -> None:
    paths = list((SERVER / "state").rglob("*.py"))
    assert paths
    for path in paths:
        bad = rooms_imported_by(path) - {"errors", "settings"}
        assert not bad, f"{rel(path)} imports {sorted(bad)}"


def test_only_the_services_and_the_api_above_them_use_state() -> None:
    # The engine and the scheduler keep no stored state; the CLI opens it only through its checks.
    allowed = ("server/state/", "server/services/", "server/api/", "server/cli/")
    assert {p for p in importers_of("server.state") if not p.startswith(allowed)} == set()


def test_the_engine_and_runtime_speak_no_wire_model_and_no_metrics() -> None:
    for layer in ("engine", "runtime"):
        for path in (SERVER / layer).rglob("*.py"):
            bad = rooms_imported_by(path) & {"protocol", "ops", "prompting", "settings"}
            assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("module", VOCABULARY)
def test_the_shared_vocabulary_imports_no_layer(module: str) -> None:
    for path in vocabulary_modules(module):
        bad = rooms_imported_by(path) - set(VOCABULARY)
        assert not bad, f"{rel(path)} imports {sorted(bad)}"


def test_only_the_llama_engine_package_imports_llama_cpp() -> None:
    assert {p for p in importers_of("llama_cpp") if not p.startswith("server/engine/llama/")} == set()


def test_only_the_ops_metrics_package_imports_prometheus_client() -> None:
    importers = importers_of("prometheus_client")
    assert importers and all(p.startswith("server/ops/metrics/") for p in importers), importers


@pytest.mark.parametrize("framework", ["fastapi", "starlette", "anyio"])
def test_only_the_api_layer_imports_the_web_framework(framework: str) -> None:
    assert {p for p in importers_of(framework) if not p.startswith("server/api/")} == set()
