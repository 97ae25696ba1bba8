"""The code a stage runs: its notebook's code cells and the package modules they reach.

A stage's key hashes its code as well as its params (`artifacts.stage_key`), so an edit of
a notebook cell or of a module re-runs exactly the stages that run that code. Which
modules a stage runs is read statically (`ast`) from the notebook's imports of
`steering_utils.*`, then from each module's own imports, top-level and inside functions
(the package imports lazily), never from `if TYPE_CHECKING:` blocks. Two cuts keep the
closure honest, each for a stated reason:

- `RUNTIME_MODULES` decide whether, where and when a stage runs, never what it writes
  (validation, the Ray pool, locks, the runner, the run manifest, progress reports): they
  are neither hashed nor followed, as `execution.mode` is part of no key.
- `DISPLAY_MODULES` draw the figures a notebook shows its reader (kept in the executed
  notebook, not in the stage's folder): a notebook's own import of one does not count, while
  the same module reached through package code (the report stage's figures) does.

Generation shards are keyed by `rows_code()`: `jobs`, which plans the shards, `rows`, whose
`compute_rows` makes a row, and the modules they reach.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

from .notebooks import NOTEBOOKS, read_stage_notebook

PACKAGE = "steering_utils"
PACKAGE_DIR = Path(__file__).resolve().parent
RUNTIME_MODULES = frozenset({"runner", "preflight", "checks", "smoke", "memory", "workload",
                             "cluster", "executors", "vllm_kernel", "runlock", "manifest",
                             "notebooks", "sources", "progress"})
DISPLAY_MODULES = frozenset({"plots"})
# jobs plans and checks shards; rows.compute_rows (imported by jobs) shapes a generated row.
ROWS_MODULE = "jobs"
# Package data a module renders into what its stage writes: hashed with the module's source,
# so a template edit re-runs the report as a module edit would.
MODULE_DATA = {"report": "templates"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _module_file(name: str) -> Path:
    return PACKAGE_DIR / f"{name}.py"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, relative_ok: bool) -> set[str]:
    """Package modules a tree imports anywhere (functions too), less TYPE_CHECKING blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            absolute = node.level == 0 and (node.module or "").split(".")[0] == PACKAGE
            relative = relative_ok and node.level == 1
            if absolute or relative:
                parts = (node.module or "").split(".")
                inner = parts[1:] if absolute else [p for p in parts if p]
                if inner:  # from .x import y / from steering_utils.x import y
                    found.add(inner[0])
                else:  # from . import x / from steering_utils import x
                    found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if _module_file(name).is_file()}


@lru_cache(maxsize=256)
def _module_info(name: str, mtime_ns: int, size: int) -> tuple[str, frozenset[str]]:
    """(source hash, package modules it imports) of a module file, cached by its stat."""
    text = _module_file(name).read_text(encoding="utf-8")
    return _sha(text), frozenset(_imported(ast.parse(text), relative_ok=True))


def _info(name: str) -> tuple[str, frozenset[str]]:
    stat = _module_file(name).stat()
    return _module_info(name, stat.st_mtime_ns, stat.st_size)


def module_imports(name: str) -> frozenset[str]:
    """Package modules that module `name` imports, at the top or inside functions."""
    return _info(name)[1]


def closure(roots) -> list[str]:
    """Sorted package modules reachable from `roots` through imports, less the runtime ones."""
    seen: set[str] = set()
    pending = [name for name in roots if name not in RUNTIME_MODULES]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(m for m in module_imports(name) if m not in RUNTIME_MODULES)
    return sorted(seen)


def _data_hashes(name: str) -> dict[str, str]:
    """{`steering_utils/<folder>/<file>`: content hash} of the package data module `name` reads."""
    folder = MODULE_DATA.get(name)
    if folder is None:
        return {}
    return {f"{PACKAGE}/{folder}/{path.name}": _sha(path.read_text(encoding="utf-8"))
            for path in sorted((PACKAGE_DIR / folder).iterdir()) if path.is_file()}


def module_hashes(names) -> dict[str, str]:
    """{`steering_utils/<name>.py`: source hash} of package modules, plus the package data
    files (templates) that a module among them renders."""
    hashes = {f"{PACKAGE}/{name}.py": _info(name)[0] for name in names}
    for name in names:
        hashes.update(_data_hashes(name))
    return hashes


def notebook_cells(stage: str, folder: Path = NOTEBOOKS) -> list[str]:
    """The code cells the runner executes for a stage (the newer side of its pair),
    normalized: trailing spaces and blank edge lines dropped, empty cells skipped, so a Lab
    save of an unchanged notebook reads the same."""
    nb = read_stage_notebook(stage, folder)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            text = "\n".join(line.rstrip() for line in cell.source.splitlines()).strip("\n")
            if text:
                cells.append(text)
    return cells


def notebook_modules(cells: list[str]) -> set[str]:
    """Package modules a notebook's cells import (magics and other non-Python lines skipped)."""
    found: set[str] = set()
    for text in cells:
        try:
            tree = ast.parse(text)
        except SyntaxError:  # a cell magic: read its Python lines one by one
            tree = ast.Module(body=[], type_ignores=[])
            for line in text.splitlines():
                try:
                    tree.body.extend(ast.parse(line.strip()).body)
                except SyntaxError:
                    continue
        found |= _imported(tree, relative_ok=False)
    return found


def stage_modules(cells: list[str]) -> list[str]:
    """The package modules a stage runs: the closure of its notebook's imports, where a
    display module counts only when package code (not the notebook) reaches it."""
    return closure(notebook_modules(cells) - DISPLAY_MODULES)


def stage_code(stage: str, folder: Path = NOTEBOOKS) -> dict:
    """{"notebook": hash of the code cells, "modules": {path: source hash}} of a stage."""
    cells = notebook_cells(stage, folder)
    return {"notebook": _sha("\n\n# %%\n".join(cells)),
            "modules": module_hashes(stage_modules(cells))}


def rows_code() -> dict[str, str]:
    """{path: source hash} of the modules that shape a generated row: `jobs`, `rows` (whose
    `compute_rows` makes rows) and what they import, the code part of every shard's key."""
    return module_hashes(closure([ROWS_MODULE]))
