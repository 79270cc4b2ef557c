"""The engine's import structure, read from its source with `ast` (nothing is imported).

Floors, top to bottom; an import may only point down or sideways within a floor:
- tools: `scoft_train.cli` (the package), `bench`, `demo`, `client`, `__main__`;
- lab: `scoft_train.biaslab` (the synthetic world that measures the methods);
- methods: `scoft_train.rscorrector`, `scoft_train.sfsl`;
- core: every other module (models, data, training loop, LoRA files, sampling,
  features, shipped-asset paths, ...).

Checked: no import cycle between modules, no core or methods module imports the lab, and
no import points up a floor. The training loop: one loop (`loop`) and the objective contract
(`objective`) reach no objective; each objective (SCoFT's, SFSL's) and its trainer reach
neither the other objective nor the other trainer, directly or through other modules.
A package's own `__init__` is not counted as a dependency of its submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "scoft_train"
TOOLS = {"cli", "bench", "demo", "client", "__main__"}
LAB = "biaslab"
METHODS = {"rscorrector", "sfsl"}
FLOORS = ("core", "methods", "lab", "tools")
# Each objective with the trainer that runs it in the loop.
OBJECTIVES = {"scoft_train.scoft_objective": "scoft_train.trainer",
              "scoft_train.sfsl.objective": "scoft_train.sfsl.trainer"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The engine modules `name` imports (anywhere in the file, lazily or not)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target, *(f"{target}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {t for t in found if t in modules and t != name and not name.startswith(t + ".")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _floor(name: str) -> str:
    first = name.split(".")[1] if "." in name else ""
    if first in TOOLS:
        return "tools"
    if first == LAB:
        return "lab"
    return "methods" if first in METHODS else "core"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_engine():
    graph = _graph()
    expected = {"scoft_train.cli", "scoft_train.features", "scoft_train.biaslab.judge", "scoft_train.sfsl.presets"}
    assert expected <= graph.keys()
    assert "scoft_train.judgenet" in graph["scoft_train.features"]
    assert "scoft_train.cli.common" in graph["scoft_train.cli.sfsl"]
    assert {"scoft_train.cli.bench", "scoft_train.quiet"} <= graph["scoft_train.cli"]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_and_methods_do_not_import_the_lab():
    graph = _graph()
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                    if _floor(target) == "lab" and _floor(name) in ("core", "methods"))
    assert upward == []


def test_imports_only_point_down():
    graph = _graph()
    upward = sorted(f"{name} ({_floor(name)}) -> {target} ({_floor(target)})"
                    for name, targets in graph.items() for target in targets
                    if FLOORS.index(_floor(target)) > FLOORS.index(_floor(name)))
    assert upward == []


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_loop_knows_no_objective_and_objectives_not_each_other():
    graph = _graph()
    pieces = set(OBJECTIVES) | set(OBJECTIVES.values())
    assert pieces | {"scoft_train.loop", "scoft_train.objective"} <= graph.keys()
    for shared in ("scoft_train.loop", "scoft_train.objective"):
        assert not _reach(graph, shared) & pieces, shared
    for objective, trainer in OBJECTIVES.items():
        others = pieces - {objective, trainer}
        for module in (objective, trainer):
            assert not _reach(graph, module) & others, (module, sorted(_reach(graph, module) & others))
        assert {"scoft_train.loop", objective} <= graph[trainer] and "scoft_train.objective" in graph[objective]


def test_reach_follows_imports_through_other_modules():
    assert _reach({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}, "a") == {"b", "c"}
