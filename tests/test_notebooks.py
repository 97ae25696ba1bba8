"""The stage notebooks: jupytext pairs in sync, committed clean, declaring what the runner
injects; an edit on either side of a pair (Lab writes the .ipynb, an editor the .py) syncs
into the other, and is what the runner executes."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess

import jupytext
import nbformat
import papermill
import pytest

from steering_utils.notebooks import (
    NOTEBOOKS,
    PARAMETERS,
    notebook_pair,
    read_stage_notebook,
    source_text,
    sync_pair,
)
from steering_utils.stages import STAGES

# Notebooks that are no stage, with the parameters each declares: the runner runs only the
# stage table's notebooks, so `make report` never runs these (07_explore: the steering form).
TOOLS = {"07_explore": ("params_file", "runs_root")}
ALL = [*STAGES, *TOOLS]


def test_one_pair_per_stage_and_tool():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(ALL)
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == sorted(ALL)
    assert not set(TOOLS) & set(STAGES)  # the runner executes STAGES only


@pytest.mark.parametrize("stage", ALL)
def test_pair_is_in_sync(stage):
    """Compared as the .py text, so outputs a user saved from Lab do not count."""
    ipynb, source = notebook_pair(stage)
    assert source_text(jupytext.read(ipynb)) == source.read_text(), (
        f"{ipynb.name} and {source.name} differ: run `jupytext --sync notebooks/{stage}.py` "
        "(the newer side wins), or save the notebook in `make lab`")


def _committed(path) -> dict | None:
    """The notebook as git's index holds it (None outside a git checkout)."""
    relative = path.relative_to(NOTEBOOKS.parent).as_posix()
    try:
        shown = subprocess.run(["git", "show", f":{relative}"], cwd=NOTEBOOKS.parent,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return json.loads(shown.stdout)


@pytest.mark.parametrize("stage", ALL)
def test_committed_notebook_has_no_outputs_a_kernel_and_stable_cell_ids(stage):
    """Checked on what git holds: a working copy with saved outputs is the user's business."""
    ipynb, _ = notebook_pair(stage)
    nb = _committed(ipynb)
    if nb is None:
        pytest.skip("not a git checkout")
    assert nb["metadata"]["kernelspec"]["name"]
    ids = [cell["id"] for cell in nb["cells"]]
    assert len(set(ids)) == len(ids) and all(ids)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, ipynb.name


@pytest.mark.parametrize("stage", ALL)
def test_every_notebook_declares_what_the_runner_injects(stage):
    nb = read_stage_notebook(stage)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{stage}: one cell tagged `parameters`"
    # papermill only warns on an undeclared parameter: check both ways here.
    assert set(papermill.inspect_notebook(nb)) == set(TOOLS.get(stage, PARAMETERS)), stage


@pytest.mark.parametrize("stage", ALL)
def test_notebooks_hold_no_function_definitions(stage):
    _, source = notebook_pair(stage)
    tree = ast.parse(source.read_text())
    defined = [node.name for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    assert defined == [], f"{stage}: move {defined} into steering_utils"


def _copy_pair(tmp_path, stage):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(NOTEBOOKS / "jupytext.toml", folder)
    for path in notebook_pair(stage):
        shutil.copy(path, folder)
    return folder, *notebook_pair(stage, folder)


def _later(path) -> None:
    """Mark a file as just edited (a second after its pair, whatever the clock's grain)."""
    stamp = max(p.stat().st_mtime for p in path.parent.iterdir()) + 1
    os.utime(path, (stamp, stamp))


def test_a_lab_edit_of_the_ipynb_syncs_into_its_source(tmp_path):
    folder, ipynb, source = _copy_pair(tmp_path, "02_baseline")
    nb = nbformat.read(ipynb, as_version=4)
    ids = [cell.id for cell in nb.cells]
    cell = next(c for c in nb.cells if "summarize_cells" in c.source)
    cell.source = cell.source.replace("summary[", "summary.head(8)[")
    # Lab saves what the session printed too: outputs stay in the .ipynb, never in the .py.
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="seen in Lab\n")]
    cell.execution_count = 7
    nbformat.write(nb, ipynb)
    _later(ipynb)
    assert "summary.head(8)[" in read_stage_notebook("02_baseline", folder).cells[
        nb.cells.index(cell)].source  # the runner runs the edit before anyone syncs
    sync_pair(ipynb)
    assert "summary.head(8)[" in source.read_text()
    assert "seen in Lab" not in source.read_text()
    synced = nbformat.read(ipynb, as_version=4)
    assert [c.id for c in synced.cells] == ids
    assert synced.cells[nb.cells.index(cell)].outputs  # the user's outputs are kept
    assert source_text(jupytext.read(ipynb), folder) == source.read_text()  # in sync


def test_an_editor_edit_of_the_source_syncs_into_the_ipynb(tmp_path):
    folder, ipynb, source = _copy_pair(tmp_path, "04_vectors")
    ids = [cell.id for cell in nbformat.read(ipynb, as_version=4).cells]
    text = source.read_text()
    assert "stats.round(3)" in text
    source.write_text(text.replace("stats.round(3)", "stats.round(4)"))
    _later(source)
    runs = read_stage_notebook("04_vectors", folder)
    assert any("stats.round(4)" in c.source for c in runs.cells)
    sync_pair(source)
    synced = nbformat.read(ipynb, as_version=4)
    assert any("stats.round(4)" in c.source for c in synced.cells)
    assert [c.id for c in synced.cells] == ids  # cell ids survive the edit
    assert source_text(jupytext.read(ipynb), folder) == source.read_text()
