"""The layout's rules, checked on the source (README "Layout"): no import cycle, Ray only in the runtime modules,
imports that point one way between engine's rooms, small modules, and a docstring on every package."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
# Where Ray may be imported: the plans (runtime modules), the recipes, ops that set a job up or export its metrics,
# the benchmarks' launcher, and the lazy ray.data.llm config of the vLLM sampler. Stages, models, core, losses and
# metrics never import it.
RAY_ALLOWED = {"engine.dataset.pipeline", "engine.dataset.build", "engine.ops.launch", "engine.ops.monitoring",
               "engine.devkit.benchmarking", "train.data.runtime", "train.preferences.build",
               "train.preferences.vllm_sampling", "train.recipes.sft", "train.recipes.dpo"}
# Rooms of engine and the rooms each may import (besides itself). core.config composes the backends' config
# sections (engine.models.backends.*_config / the config classes), the one arrow from core outwards.
ENGINE_ROOMS = {
    "engine.core": {"engine.models"},
    "engine.models": {"engine.core", "engine.devkit"},  # devkit: tiny:DIR models built on the fly (demo, tests)
    "engine.stages": {"engine.core", "engine.models", "engine.ops"},
    "engine.ops": {"engine.core", "engine.models"},
    "engine.dataset": {"engine.core", "engine.models", "engine.stages", "engine.ops"},
    "engine.devkit": {"engine.core", "engine.models", "engine.stages", "engine.ops", "engine.dataset"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for root in ("engine", "train"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module this one imports, at any depth of the file (a lazy import still ties two modules together)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package
                for _ in range(node.level - 1):
                    prefix = prefix.rpartition(".")[0]
                base = f"{prefix}.{base}" if base else prefix
            out |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
    return out


def _known(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle():
    graph = {}
    for name, targets in IMPORTS.items():
        known = {_known(t) for t in targets} - {None, name}
        # A submodule importing its own package's __init__ (a facade that re-exports it) is no cycle in practice.
        graph[name] = {t for t in known if not name.startswith(f"{t}.")}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    assert len(order) == len(MODULES) > 100


def test_ray_only_in_the_runtime_modules():
    importing = {name for name, targets in IMPORTS.items() if any(t == "ray" or t.startswith("ray.") for t in targets)}
    assert importing <= RAY_ALLOWED, sorted(importing - RAY_ALLOWED)
    assert {"engine.dataset.pipeline", "train.data.runtime"} <= importing  # the checker sees real imports


def test_engine_rooms_import_one_way():
    wrong = sorted(f"{name} -> {target}" for name, targets in IMPORTS.items() if _room(name) in ENGINE_ROOMS
                   for target in map(_known, targets) if target and target.startswith("engine.")
                   and _room(target) != _room(name) and _room(target) not in ENGINE_ROOMS[_room(name)])
    assert wrong == []
    assert not any(t.startswith("train") for n, ts in IMPORTS.items() if n.startswith("engine") for t in ts)


def test_modules_are_small_and_packages_say_what_they_hold():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
    packages = [path for path in MODULES.values() if path.name == "__init__.py"]
    undocumented = [str(p.relative_to(REPO)) for p in packages if not ast.get_docstring(ast.parse(p.read_text()))]
    assert len(packages) >= 15 and undocumented == []
