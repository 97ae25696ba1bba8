"""The package's import graph: no cycles and no module importing above its layer.

Every `steering_utils` module is read with `ast`, imports inside functions (the package
imports heavy libraries and many of its own modules lazily) and under TYPE_CHECKING
included, so a lazy import that closes a loop or reaches up a layer fails here. A new
module must be given its layer below (docs/architecture.md describes them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "steering_utils"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE

# Bottom-up: a module may import its own layer and the layers below, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"stages", "params", "hashing", "batching", "power", "extras"}),
    ("storage", {"artifacts", "sources", "notebooks", "runlock", "assets"}),
    ("statistics", {"decisions", "metrics", "claims", "outcomes"}),
    ("compute", {"data", "capability", "models", "steering", "interventions", "gating",
                 "generation", "vllm_engine", "vllm_hooks", "vllm_kernel", "engines", "rows",
                 "likelihood", "scoring", "activations", "contrasts", "vectors"}),
    ("execution", {"jobs", "executors", "cluster", "progress", "manifest"}),
    ("study", {"sweep", "comparison", "matched", "conditional", "specificity"}),
    ("records", {"results", "assembly", "goal", "continuations", "plots", "report", "report_text",
                 "report_tables", "reportdir"}),
    ("entry", {"runner", "session", "preflight", "checks", "memory", "workload", "smoke",
               "prune", "explore"}),
]


def imported_modules(source: str, modules: set[str]) -> set[str]:
    """Package modules a module's source imports anywhere: top level, inside functions and
    classes, relative (`from .x import`, `from . import x`) or absolute."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 1:
                inner = [p for p in parts if p]
            elif node.level == 0 and parts[0] == PACKAGE:
                inner = parts[1:]
            else:
                continue
            found.update(inner[:1] or [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    found.add(parts[1])
    return found & modules


def package_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports} for every module of the package."""
    modules = {path.stem for path in PACKAGE_DIR.glob("*.py") if path.stem != "__init__"}
    return {name: imported_modules((PACKAGE_DIR / f"{name}.py").read_text(), modules) - {name}
            for name in sorted(modules)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph has none (depth-first
    search: a cycle is an edge back to a module still on the path)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # diamond
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"y"}}) == ["y", "z", "y"]
    assert find_cycle({"self": {"self"}}) == ["self", "self"]


def test_imports_inside_functions_and_relative_forms_are_read():
    source = ("import os\nfrom . import a\nfrom .b import x\nimport steering_utils.c\n"
              "from steering_utils.d import y\nfrom steering_utils import e\n"
              "def f():\n    from .g import z\n"
              "class K:\n    def m(self):\n        import steering_utils.h as h\n"
              "from other import i\n")
    known = set("abcdefghi")
    assert imported_modules(source, known) == set("abcdegh")  # f is a function, i not ours


def test_the_package_has_no_import_cycle():
    graph = package_graph()
    assert {"jobs", "executors", "cluster", "rows"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_every_module_has_one_layer():
    declared = [m for _, modules in LAYERS for m in modules]
    assert len(declared) == len(set(declared)), "a module is declared in two layers"
    missing = sorted(set(package_graph()) - set(declared))
    assert not missing, f"give {missing} a layer in tests/test_imports.py (docs/architecture.md)"
    assert not sorted(set(declared) - set(package_graph())), "a declared module no longer exists"


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, set[str]]]
                   ) -> list[str]:
    """'module -> other (other's layer)' for each import reaching above the module's layer."""
    rank = {module: r for r, (_, modules) in enumerate(layers) for module in modules}
    return sorted(f"{module} -> {other} ({layers[rank[other]][0]})"
                  for module, others in graph.items() for other in others
                  if rank[other] > rank[module])


def test_the_layer_check_finds_an_import_reaching_up():
    layers = [("low", {"a", "b"}), ("high", {"c"})]
    assert upward_imports({"a": {"b"}, "b": set(), "c": {"a"}}, layers) == []
    assert upward_imports({"a": {"c"}, "b": set(), "c": set()}, layers) == ["a -> c (high)"]


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_no_module_imports_above_its_layer(layer):
    graph = package_graph()
    modules = dict(LAYERS)[layer]
    upward = upward_imports({m: graph[m] for m in modules}, LAYERS)
    assert not upward, f"{layer} modules import above their layer: {upward}"
