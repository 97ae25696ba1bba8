"""Code in the key (issue 20, item 1): which modules each stage runs, why a key moved, and
a finished stage's folder refusing writes. The runs that show a notebook, module or report
edit re-running exactly its dependants are in test_study.py."""

from __future__ import annotations

import json

import pytest

from steering_utils import sources
from steering_utils.artifacts import (
    StageDir,
    StageFinished,
    key_changes,
    key_parts,
    stage_folder,
    stage_key,
)
from steering_utils.params import parse_params
from steering_utils.stages import STAGE_NAMES
from tests.test_params import _default

MODULE = "steering_utils/{}.py"


@pytest.fixture(scope="module")
def closures():
    return {stage: set(sources.stage_code(stage)["modules"]) for stage in STAGE_NAMES}


def test_the_report_code_is_run_by_the_report_stage_only(closures):
    for module in ("report", "reportdir", "results", "plots"):
        assert [s for s in STAGE_NAMES if MODULE.format(module) in closures[s]] == ["06_report"]


def test_the_report_templates_are_keyed_with_the_report_stage_only(closures, tmp_path,
                                                                  monkeypatch):
    # Before: an edit of templates/report.html or browser.js left a finished report standing.
    templates = {"steering_utils/templates/report.html", "steering_utils/templates/browser.js"}
    assert [s for s in STAGE_NAMES if templates <= closures[s]] == ["06_report"]
    before = sources.stage_code("06_report")["modules"]
    copy = tmp_path / "steering_utils"
    (copy / "templates").mkdir(parents=True)
    for path in (sources.PACKAGE_DIR / "templates").iterdir():
        (copy / "templates" / path.name).write_text(path.read_text())
    (copy / "templates" / "browser.js").write_text("// edited\n", encoding="utf-8")
    monkeypatch.setattr(sources, "PACKAGE_DIR", copy)
    after = sources._data_hashes("report")
    assert {k for k in after if after[k] != before[k]} == {"steering_utils/templates/browser.js"}


def test_vectors_code_is_run_by_04_and_its_dependants(closures):
    runs = [s for s in STAGE_NAMES if MODULE.format("vectors") in closures[s]]
    assert runs == ["04_vectors", "05_sweep", "06_report"]
    assert MODULE.format("generation") not in closures["01_data"]
    assert MODULE.format("data") in closures["01_data"]


def test_runtime_modules_and_type_checking_imports_are_not_followed(closures):
    every = set().union(*closures.values())
    for module in sources.RUNTIME_MODULES:
        assert MODULE.format(module) not in every
    # plots imports results under TYPE_CHECKING only; results reaches vectors, report...
    assert "results" not in sources.module_imports("plots")
    assert "cluster" in sources.module_imports("executors")  # lazy imports are read


def test_imports_inside_functions_are_part_of_the_closure():
    assert {"likelihood", "scoring"} <= sources.module_imports("rows")
    assert {"vllm_engine", "generation"} <= sources.module_imports("engines")
    rows = set(sources.rows_code())
    assert {MODULE.format(m) for m in ("jobs", "rows", "engines", "generation", "steering",
                                       "scoring", "likelihood", "models", "vllm_engine")} <= rows
    assert MODULE.format("vectors") not in rows and MODULE.format("report") not in rows


def test_a_notebook_is_hashed_by_its_code_cells_only(tmp_path):
    import shutil

    from steering_utils.notebooks import NOTEBOOKS, notebook_pair, sync_pair

    for path in notebook_pair("04_vectors"):
        shutil.copy2(path, tmp_path / path.name)
    before = sources.stage_code("04_vectors", tmp_path)
    ipynb, source = notebook_pair("04_vectors", tmp_path)
    # A Lab save of the unchanged notebook (the .ipynb becomes the newer side) reads the same.
    text = ipynb.read_text()
    ipynb.write_text(text.replace('"outputs": []', '"outputs": []', 1))
    assert sources.stage_code("04_vectors", tmp_path) == before
    # So does a changed markdown cell; an edited code cell does not.
    source.write_text(source.read_text().replace("# # 04", "# # 04 (edited title)", 1))
    sync_pair(source)
    assert sources.stage_code("04_vectors", tmp_path) == before
    source.write_text(source.read_text().replace("vectors.save(", "vectors.directions *= 0\n"
                                                 "vectors.save(", 1))
    assert sources.stage_code("04_vectors", tmp_path)["notebook"] != before["notebook"]
    assert sources.stage_code("04_vectors", NOTEBOOKS) == before


def test_key_changes_name_each_part_that_moved():
    raw = _default()
    params = parse_params(raw)
    old = key_parts(params, "05_sweep")
    assert key_changes(None, old) == ["new"]
    assert key_changes(old, old) == ["key scheme changed"]
    raw["generation"]["temperature"] = 0.5
    raw["sweep"]["alphas"] = [0, 1.5]
    new = json.loads(json.dumps(key_parts(parse_params(raw), "05_sweep")))
    new["notebook"] = "0" * 16
    new["modules"][MODULE.format("vectors")] = "0" * 16
    del new["modules"][MODULE.format("sweep")]
    assert key_changes(old, new) == [
        "params changed (generation.temperature, sweep.alphas)", "notebook changed",
        "module steering_utils/sweep.py no longer run", "module steering_utils/vectors.py "
        "changed", "input 02_baseline changed", "input 03_activations changed",
        "input 04_vectors changed"]


def test_a_key_holds_its_inputs_contents_read_once_at_finish(tmp_path):
    params = parse_params(_default())
    assert key_parts(params, "02_baseline", tmp_path)["inputs"]["01_data"]["contents"] == \
        "pending"
    first = StageDir(tmp_path, params, "01_data")
    (first.out("prompts")).write_text("one")
    first.finish()
    key = stage_key(params, "02_baseline", tmp_path)
    record = json.loads((first.path / "done.json").read_text())
    assert key_parts(params, "02_baseline", tmp_path)["inputs"]["01_data"] == {
        "key": first.hash, "contents": record["contents"]}
    # Other contents under the same key (a rerun after --force, say) rekey the dependant.
    (first.path / "done.json").unlink()
    again = StageDir(tmp_path, params, "01_data")
    again.out("prompts").write_text("two")
    again.finish()
    assert stage_key(params, "02_baseline", tmp_path) != key
    assert set(record) == {"stage", "hash", "seconds", "finished_utc", "contents", "key_parts"}


def test_writing_into_a_finished_stage_raises_and_says_how_to_rerun(tmp_path):
    params = parse_params(_default())
    stage = StageDir(tmp_path, params, "01_data")
    stage.out("prompts").write_text("prompts")
    stage.finish()
    reopened = StageDir(tmp_path, params, "01_data")  # Lab: re-running the notebook's cells
    assert reopened.complete and "finished" in repr(reopened)
    with pytest.raises(StageFinished, match=r"01_data is finished .*delete .*--force"):
        reopened.out("prompts")
    with pytest.raises(StageFinished):
        reopened.finish()
    # Reading it from a later stage is what finished artifacts are for.
    later = StageDir(tmp_path, params, "02_baseline")
    assert later.input("prompts").read_text() == "prompts"
    assert later.input("prompts").parent == stage_folder(tmp_path, params, "01_data")


def test_a_stage_with_unfinished_inputs_makes_no_folder_and_cannot_write(tmp_path):
    params = parse_params(_default())
    stage = StageDir(tmp_path, params, "04_vectors")
    assert stage.pending == ["03_activations"] and not stage.path.exists()
    with pytest.raises(RuntimeError, match="before its inputs finish: 03_activations"):
        stage.out("vectors")


def test_a_notebook_opening_its_stage_makes_the_runners_checks(tmp_path):
    """Before: a notebook opened in Lab skipped preflight.validate_run (a layer out of range
    failed deep inside the sweep instead of at the first cell)."""
    from steering_utils.params import ParamsError
    from steering_utils.session import open_stage
    from tests.test_params import PARAMS

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"inherits: {PARAMS / 'smoke.yaml'}\nsweep: {{layers: [5, 99]}}\n")
    with pytest.raises(ParamsError, match="99"):
        open_stage(bad, tmp_path / "runs", "01_data", tmp_path / "reports")
    assert not (tmp_path / "runs").exists()


_SHARD_KEYS = """
import json, pandas as pd
from steering_utils.generation import make_jobs
from steering_utils.jobs import plan_shards
from steering_utils.params import load_params
params = load_params({params!r})
prompts = pd.DataFrame({{"prompt_id": ["p0", "p1"], "text": ["the cat", "a dog"]}})
jobs = make_jobs(prompts, [(-1, 0.0)], params.generation.samples_per_prompt)
print(json.dumps([key for key, _ in plan_shards(jobs, params, {{}}, "all")]))
"""


def test_shards_are_keyed_by_the_code_that_shapes_a_row(tmp_path):
    """Before: an edit of generation code read back the shards the old code made. Keys are
    computed by the package's own plan_shards on an edited copy (no model needed)."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.test_params import PARAMS

    def keys(edit: str | None) -> list[str]:
        project = tmp_path / (edit or "unedited")
        shutil.copytree(sources.PACKAGE_DIR, project / "steering_utils",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(sources.PACKAGE_DIR.parent / "notebooks", project / "notebooks")
        if edit:
            path = project / "steering_utils" / f"{edit}.py"
            path.write_text(path.read_text() + "\n# edited\n")
        code = _SHARD_KEYS.format(params=str(PARAMS / "smoke.yaml"))
        done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(project)},
                              check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    base = keys(None)
    assert base and keys("report") == base and keys("vectors") == base
    assert set(keys("generation")).isdisjoint(base)
    assert set(keys("scoring")).isdisjoint(base)
