"""The whole chain, executed by papermill on params/smoke.yaml, as `make report` runs it.

Also: re-runs skip complete stages; kill -9 mid-run then resume gives the same
metrics as an uninterrupted run (determinism); a failing stage leaves
failed_experiment_results.json and a resume hint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE, runner_command

from steering_utils.hashing import digest
from steering_utils.params import load_params
from steering_utils.results import validate_results

pytestmark = pytest.mark.slow


def _runner(work: Path, *extra: str) -> list[str]:
    return runner_command(SMOKE, work, *extra)


def _metrics(results: dict) -> list:
    """The numbers that must not change between identical runs (not timings)."""
    keep = {k: results[k] for k in ("cells", "vectors", "capability",
                                    "recommendation", "confirmation", "control",
                                    "chosen_layers", "examples")}
    return json.loads(json.dumps(keep, sort_keys=True))


def _assert_git_commit(recorded: str | None) -> None:
    """In a git checkout the manifest's commit is a commit of this checkout's history (40
    hex, '-dirty' when tracked files differed; HEAD when the run started, so HEAD or an
    ancestor of it now), and None outside one."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True)
    if head.returncode != 0:
        assert recorded is None
        return
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", recorded or ""), recorded
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", recorded.split("-")[0],
                               "HEAD"], cwd=ROOT, capture_output=True)
    assert ancestor.returncode == 0, f"{recorded} is not in this checkout's history"


def test_chain_writes_report_results_and_executed_notebooks(smoke_run):
    work, stdout = smoke_run
    report = work / "reports" / "smoke"
    results = json.loads((report / "experiment_results.json").read_text())
    validate_results(results)
    manifest = results["manifest"]
    assert manifest["params_hash"] == digest(manifest["params"])  # the hash of these params
    assert manifest["params"]["run_name"] == load_params(SMOKE).run_name
    _assert_git_commit(results["manifest"]["git_commit"])
    sweep = [c for c in results["cells"] if c["experiment"] == "sweep"]
    assert {c["alpha"] for c in sweep} == {0.0, 1.0, 2.0}
    assert {c["subset"] for c in sweep} == {"challenging", "benign"}
    assert {c["layer"] for c in results["cells"] if c["experiment"] == "grid"} == {-1, 5, 15}
    # 06_report keeps its own copy beside its done marker (the report folder is replaced).
    kept = next((work / "runs" / "smoke" / "06_report").glob("*/experiment_results.json"))
    assert json.loads(kept.read_text())["cells"] == results["cells"]
    html = (report / "report.html").read_text()
    assert "data:image/png;base64" in html and "<script>alert" not in html
    for stage in ("01_data", "02_baseline", "03_activations", "04_vectors", "05_sweep",
                  "06_report"):
        assert (report / "notebooks" / f"{stage}.ipynb").is_file()
        assert len(list((work / "runs" / "smoke" / stage).glob("*/done.json"))) == 1
        assert len(list((work / "runs" / "smoke" / stage).glob("*/manifest.json"))) == 1
        assert f"{stage}" in stdout
    assert list((report / "figures").glob("*.png")) and list((report / "figures").glob("*.svg"))
    # Our artifacts are parquet, safetensors and JSON: no pickles anywhere in the run.
    assert not [p for p in work.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".bin")]


def test_rerun_with_unchanged_params_skips_every_stage(smoke_run):
    work, _ = smoke_run
    started = time.time()
    again = subprocess.run(_runner(work), cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.time() - started
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped: complete for these params and code") == 6
    print(f"\nsecond runner on a finished smoke run: {seconds:.1f} s")
    assert seconds < 30  # keys (notebooks, module sources, inputs' done records) are cheap


@pytest.mark.parametrize("stage, kept", [("02_baseline", 1), ("05_sweep", 4)])
def test_kill_during_a_stage_then_resume_equals_an_uninterrupted_run(smoke_run, tmp_path,
                                                                     stage, kept):
    work, _ = smoke_run
    expected = json.loads((work / "reports" / "smoke" / "experiment_results.json").read_text())
    process = subprocess.Popen(_runner(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    # Kill -9 (runner and kernel) inside the stage: the baseline as soon as it starts,
    # the sweep once its grid is written.
    target = tmp_path / "runs" / "smoke" / stage
    deadline = time.time() + 600
    while not (target.is_dir() and (stage != "05_sweep" or any(target.rglob("grid.parquet")))):
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not list(target.glob("*/done.json"))
    # Whatever the kill left under a final name is whole (partial files have other names).
    import pandas as pd

    for table in tmp_path.rglob("*.parquet"):
        if not table.name.startswith("."):
            pd.read_parquet(table)
    resumed = subprocess.run(_runner(tmp_path), cwd=ROOT, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("skipped: complete") == kept  # finished stages were kept
    results = json.loads((tmp_path / "reports" / "smoke" / "experiment_results.json").read_text())
    assert _metrics(results) == _metrics(expected)


def test_a_failing_stage_leaves_a_failure_record_and_a_resume_hint(smoke_run, tmp_path):
    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    # Corrupt an artifact behind a done marker, and force the sweep to run again.
    next((tmp_path / "runs" / "smoke" / "04_vectors").glob("*/vectors.safetensors")).write_bytes(
        b"junk")
    next((tmp_path / "runs" / "smoke" / "05_sweep").glob("*/done.json")).unlink()
    failed = subprocess.run(_runner(tmp_path), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert failed.returncode == 1
    assert "05_sweep        FAILED" in failed.stdout and "resume with" in failed.stdout
    record = json.loads((tmp_path / "reports" / "smoke" / "failed_experiment_results.json")
                        .read_text())
    # The notebook's own error, not papermill's wrapper, on the user's (last) line.
    line = failed.stderr.strip().splitlines()[-1]
    assert "PapermillExecutionError" not in failed.stdout + line
    assert line.startswith(f"05_sweep failed: {record['error']}")
    assert "resume with: python -m steering_utils.runner" in line
    assert record["failed_stage"] == "05_sweep"
    # 06_report is not complete: its key holds 05's contents, pending until 05 finishes.
    assert record["completed_stages"] == ["01_data", "02_baseline", "03_activations",
                                          "04_vectors"]
    assert Path(record["executed_notebook"]).is_file()


def test_an_os_error_inside_a_stage_is_named_on_the_failure_line(smoke_run, tmp_path,
                                                               read_only_dir):
    # Before: "05_sweep FAILED after 9.9 s: PapermillExecutionError", and main() said nothing
    # more; the cause (read-only, disk full) was only in the JSON and the notebook.
    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    marker = next((tmp_path / "runs" / "smoke" / "05_sweep").glob("*/done.json"))
    marker.unlink()
    sweep = marker.parent  # the stage's keyed folder: its tables cannot be written
    read_only_dir(sweep)
    failed = subprocess.run(_runner(tmp_path), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert failed.returncode == 1
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("05_sweep failed: PermissionError: [Errno "), line
    assert str(sweep) in line and "fix that, then resume with: python -m" in line
    assert "FAILED after" in failed.stdout and "PermissionError: [Errno " in failed.stdout


def test_the_real_report_renders_in_chromium(smoke_run):
    """Every image renders, no console errors, no dialog; screenshot in the run's report folder.
    The continuation browser holds every row of continuations.parquet."""
    import pandas as pd
    from test_browser import SCREENSHOT, browser_count, load_in_chromium

    work, _ = smoke_run
    folder = work / "reports" / "smoke"
    seen = load_in_chromium(folder / "report.html", folder / SCREENSHOT, then=browser_count)
    assert seen["images"] and all(i["complete"] and i["width"] > 0 for i in seen["images"])
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["dialogs"] == []
    assert (folder / SCREENSHOT).stat().st_size > 50_000
    table = pd.read_parquet(folder / "continuations.parquet")
    assert set(table["experiment"]) == {"sweep", "control", "methods_eval"}
    assert seen["browser_count"] == (f"{table['prompt_id'].nunique()} prompt(s), {len(table)} "
                                     "continuation(s) match")


def _params_file(tmp_path: Path, **sections) -> Path:
    """A params file that inherits smoke.yaml and overrides some sections."""
    import yaml

    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump({"inherits": str(SMOKE), **sections}))
    return path


def test_changing_one_alpha_reruns_only_the_sweep_and_its_new_shards(smoke_run, tmp_path):
    """Same row count, one alpha moved: stages 01-04 and every other shard are reused, and the
    results equal a clean run's with the new params."""
    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "reuse" / "runs")
    changed = _params_file(tmp_path, run_name="smoke", sweep={"alphas": [0, 1.5, 2.0]})
    shards = tmp_path / "reuse" / "runs" / "smoke" / "shards"
    before = {p.name for p in shards.glob("*.parquet")}
    runner = [sys.executable, "-m", "steering_utils.runner", "--params", str(changed)]
    reused = subprocess.run([*runner, "--runs-root", str(tmp_path / "reuse" / "runs"),
                             "--reports-root", str(tmp_path / "reuse" / "reports")],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert reused.returncode == 0, reused.stdout + reused.stderr
    assert reused.stdout.count("skipped: complete") == 4
    assert "05_sweep        done" in reused.stdout and "06_report       done" in reused.stdout
    new = {p.name for p in shards.glob("*.parquet")} - before
    assert len(new) == 1  # the sweep cell at alpha 1.5; grid, baseline and control reused
    clean = subprocess.run([*runner, "--runs-root", str(tmp_path / "clean" / "runs"),
                            "--reports-root", str(tmp_path / "clean" / "reports")],
                           cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    results = [json.loads((tmp_path / side / "reports" / "smoke" / "experiment_results.json")
                          .read_text()) for side in ("reuse", "clean")]
    assert _metrics(results[0]) == _metrics(results[1])
    assert {c["alpha"] for c in results[0]["cells"]
            if c["experiment"] == "sweep"} == {0.0, 1.5, 2.0}


def test_a_lab_session_keeps_finished_work_and_the_runner_reuses_what_it_finished(smoke_run,
                                                                                 tmp_path):
    """What a researcher does in Lab, cell by cell through a kernel (nbclient):

    1. opens 03_activations and runs its first cells: nothing finished is lost;
    2. opens 06_report, sets another params file in the parameters cell and runs every
       cell: `make report` with that params file then reuses all the session finished.
    """
    import nbformat
    from nbclient import NotebookClient

    from steering_utils.notebooks import KERNEL_NAME, NOTEBOOKS, PARAMETERS, read_stage_notebook

    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    shutil.copytree(work / "reports", tmp_path / "reports")

    def lab_session(stage: str, params_file: Path, n_code_cells: int | None = None):
        nb = read_stage_notebook(stage)
        parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        values = (params_file, tmp_path / "runs", tmp_path / "reports")
        parameters.source = "\n".join(f"{name} = {str(value)!r}"
                                       for name, value in zip(PARAMETERS, values))
        code = [c for c in nb.cells if c.cell_type == "code"][:n_code_cells]
        client = NotebookClient(nbformat.v4.new_notebook(cells=code), kernel_name=KERNEL_NAME,
                                timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}})
        with client.setup_kernel():
            for index, cell in enumerate(client.nb.cells):  # Shift-Enter, one cell at a time
                client.execute_cell(cell, index)

    lab_session("03_activations", SMOKE, n_code_cells=2)  # parameters, open the stage
    again = subprocess.run(_runner(tmp_path), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("skipped: complete") == 6

    other = _params_file(tmp_path, report={"n_examples": 1})  # a new 06_report key only
    lab_session("06_report", other)
    results = json.loads((tmp_path / "reports" / "smoke" / "experiment_results.json")
                         .read_text())
    assert len({e["prompt_id"] for e in results["examples"]}) == 1  # the session's params
    reused = subprocess.run(_runner(tmp_path, "--params", str(other)), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert reused.returncode == 0, reused.stdout + reused.stderr
    assert reused.stdout.count("skipped: complete") == 6, reused.stdout


# --- issue 15: an interrupt during 06_report never leaves a mixed report -----------------

def _wait_for(condition, process, seconds=600):
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)


def _kernels_of(runner_pid: int) -> list[int]:
    """Pids of the Jupyter kernels a runner started (their own session: killpg misses them)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"JPY_PARENT_PID={runner_pid}".encode() in environ:
            found.append(int(proc.name))
    return found


def _wait_gone(pids: list[int], seconds: float = 60) -> None:
    """Until each process has exited (a kernel exits within ~1 s of its runner's death)."""
    deadline = time.time() + seconds
    for pid in pids:
        while time.time() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"kernel {pid} still running after its runner was stopped")


@pytest.mark.parametrize("sig, params, when", [
    (signal.SIGINT, "same", "figures"), (signal.SIGKILL, "same", "html"),
    # Ctrl-C while the figures are drawn: the html lives milliseconds before the swap, too
    # short for a poll to aim a Ctrl-C at (kill -9 covers the html moment, after the swap too).
    (signal.SIGKILL, "other", "figures"), (signal.SIGINT, "other", "figures"),
])
def test_interrupting_the_report_stage_leaves_the_old_or_the_new_report_whole(
        smoke_run, tmp_path, sig, params, when):
    from test_reportdir import report_state

    from steering_utils.reportdir import recover

    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    shutil.copytree(work / "reports", tmp_path / "reports")
    report = tmp_path / "reports" / "smoke"
    old = report_state(report)
    if params == "same":  # only 06_report runs again; the old report is for these params
        next((tmp_path / "runs" / "smoke" / "06_report").glob("*/done.json")).unlink()
        extra = []
    else:  # other report params: only 06_report runs again, the old report is stale
        other = tmp_path / "other.yaml"
        other.write_text(f"inherits: {SMOKE}\nreport: {{n_examples: 1}}\n")
        extra = ["--params", str(other)]
    command = _runner(tmp_path, *extra)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    # Interrupt while the new report is drawn beside the old one, or just as its html is
    # written (the swap follows). Ctrl-C and kill -9 reach the runner's process group; the
    # kernel, in its own session, stops with the runner.
    part = "figures/*.png" if when == "figures" else "report.html"
    started = time.time()

    def reached() -> bool:
        if any(tmp_path.glob(f"reports/.smoke.tmp-*/{part}")):
            return True
        # The html is written and swapped in within milliseconds: a poll can miss the
        # temporary folder, so the swapped-in html (the runner still finishing) counts too.
        html = report / "report.html"
        return (when == "html" and sig == signal.SIGKILL and html.is_file()
                and html.stat().st_mtime > started)

    _wait_for(reached, process)
    kernels = _kernels_of(process.pid)
    assert kernels
    os.killpg(process.pid, sig)
    stdout, stderr = process.communicate(timeout=120)
    _wait_gone(kernels)  # the report stage runs in the kernel: look once it has stopped
    if sig == signal.SIGINT:
        assert process.returncode == 130, stdout + stderr
        last = stderr.strip().splitlines()[-1]  # the user's line comes last
        assert last.startswith("interrupted during 06_report") and "resume with: python" in last
        partial = json.loads((report / "partial_experiment_results.json").read_text())
        assert partial["stopped_stage"] == "06_report"
        assert list(partial["completed_stages"])[-1] == "05_sweep"
    recover(report)  # what the next runner does first: undo a kill between two renames
    now = report_state(report)  # raises on any mix of results, html and figures
    if params == "same":  # the old report, or the new one if the swap was done: whole
        assert now != "missing"
    else:  # the old report is never shown as current: it is aside, whole; the new one may be in
        assert now != old
        assert report_state(tmp_path / "reports" / f"smoke.stale-{_hash(work)}") == old
    assert not list(tmp_path.glob("reports/.smoke.*"))
    # Resume: the new report appears, whole, with this run's notebooks beside it.
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    new = report_state(report)
    assert new != "missing" and new != old  # the new run's report (new timings, at least)
    assert not (report / "partial_experiment_results.json").exists()
    assert len(list((report / "notebooks").glob("*.ipynb"))) == 6
    assert not (tmp_path / "runs" / "smoke" / ".lock").exists()


def _hash(work: Path) -> str:
    results = json.loads((work / "reports" / "smoke" / "experiment_results.json").read_text())
    return results["manifest"]["params_hash"]


def test_two_runners_on_one_run_the_second_stops_naming_the_first(smoke_run, tmp_path):
    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    next((tmp_path / "runs" / "smoke" / "06_report").glob("*/done.json")).unlink()
    first = subprocess.Popen(_runner(tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "runs" / "smoke" / ".lock"
    _wait_for(lock.is_file, first)
    second = subprocess.run(_runner(tmp_path), cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 1
    assert f"is in use by pid {first.pid} on host" in second.stderr
    first.communicate(timeout=900)
    assert first.returncode == 0


# --- issue 20, item 1: code in the key ----------------------------------------------------

def _project_copy(tmp_path: Path) -> Path:
    """A copy of what a key hashes (the package and the notebooks), to edit; the runner and
    its kernels import it through PYTHONPATH."""
    project = tmp_path / "project"
    junk = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for folder in ("steering_utils", "notebooks"):
        shutil.copytree(ROOT / folder, project / folder, ignore=junk)
    return project


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _rerun_edited(smoke_run, tmp_path: Path, project: Path) -> dict[str, str]:
    """Run the edited copy on a copy of the finished smoke run: {stage: its line}."""
    work, _ = smoke_run
    for folder in ("runs", "reports"):
        shutil.copytree(work / folder, tmp_path / folder)
    done = subprocess.run(_runner(tmp_path), cwd=project, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(project)})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {}
    for line in done.stdout.splitlines():
        words = line.split(maxsplit=1)
        if words and words[0] in ("01_data", "02_baseline", "03_activations", "04_vectors",
                                  "05_sweep", "06_report") and words[0] not in lines:
            lines[words[0]] = words[1]
    return lines


def test_a_notebook_edit_reruns_that_stage_and_its_dependants_only(smoke_run, tmp_path):
    """Before: every stage "skipped: complete for these params" after a code cell's edit."""
    project = _project_copy(tmp_path)
    source = project / "notebooks" / "04_vectors.py"
    _edit(source, 'vectors.save(stage.out("vectors"))',
          'vectors.metadata["edited"] = "in a code cell"\nvectors.save(stage.out("vectors"))')
    lines = _rerun_edited(smoke_run, tmp_path, project)
    assert all(lines[s].startswith("skipped: complete") for s in ("01_data", "02_baseline",
                                                                    "03_activations"))
    assert lines["04_vectors"] == "runs: notebook changed"
    assert lines["05_sweep"] == "runs: input 04_vectors changed"
    assert lines["06_report"] == "runs: input 04_vectors changed; input 05_sweep changed"
    results = json.loads((tmp_path / "reports" / "smoke" / "experiment_results.json")
                         .read_text())
    [old] = [p.name for p in (smoke_run[0] / "runs" / "smoke" / "04_vectors").iterdir()]
    [vectors] = [p for p in (tmp_path / "runs" / "smoke" / "04_vectors").glob("*/done.json")
                 if p.parent.name != old]
    from safetensors import safe_open

    with safe_open(str(vectors.parent / "vectors.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["json"])["edited"] == "in a code cell"
    assert results["manifest"]["timings"]["04_vectors"] == json.loads(
        vectors.read_text())["seconds"]  # the report reads the new 04


def test_a_module_edit_reruns_the_stages_that_run_it(smoke_run, tmp_path):
    """Before: a change in steering_utils/vectors.py re-ran nothing."""
    project = _project_copy(tmp_path)
    _edit(project / "steering_utils" / "vectors.py",
          'metadata={"json": json.dumps(self.metadata, sort_keys=True)}',
          'metadata={"json": json.dumps({**self.metadata, "edited": 1}, sort_keys=True)}')
    lines = _rerun_edited(smoke_run, tmp_path, project)
    assert all(lines[s].startswith("skipped: complete") for s in ("01_data", "02_baseline",
                                                                    "03_activations"))
    changed = "module steering_utils/vectors.py changed"
    assert lines["04_vectors"] == f"runs: {changed}"
    assert lines["05_sweep"] == f"runs: {changed}; input 04_vectors changed"
    assert lines["06_report"].startswith(f"runs: {changed}; input 04_vectors changed")


def test_a_report_edit_reruns_the_report_only(smoke_run, tmp_path):
    project = _project_copy(tmp_path)
    _edit(project / "steering_utils" / "report.py", '"""', '"""(edited) ')
    lines = _rerun_edited(smoke_run, tmp_path, project)
    assert [s for s, line in lines.items() if not line.startswith("skipped")] == ["06_report"]
    assert lines["06_report"] == "runs: module steering_utils/report.py changed"


def test_writing_into_a_finished_stage_raises_reading_does_not(smoke_run, tmp_path):
    """Before: re-running a cell in Lab after stage.finish() wrote into the done folder."""
    from steering_utils.artifacts import StageFinished
    from steering_utils.session import open_stage

    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    stage = open_stage(SMOKE, tmp_path / "runs", "04_vectors", tmp_path / "reports")
    assert stage.complete
    with pytest.raises(StageFinished, match=r"04_vectors is finished for these params and "
                                            r"code \(key .*\); .*delete .*--force"):
        stage.out("vectors")
    report = open_stage(SMOKE, tmp_path / "runs", "06_report", tmp_path / "reports")
    assert report.input("vectors").is_file()  # a later stage reads it as before


# --- issue 20, item 9: the stage contract closed ------------------------------------------

def test_every_file_in_a_stage_folder_is_declared_and_done_holds_markers_only(smoke_run):
    from steering_utils.stages import RECORDS, RUN_MANIFEST, STAGES

    work, _ = smoke_run
    run = work / "runs" / "smoke"
    for name, stage in STAGES.items():
        [folder] = [p.parent for p in (run / name).glob("*/done.json")]
        files = {p.name for p in folder.iterdir()}
        assert files == set(stage.outputs.values()) | set(RECORDS.values()), name
        done = json.loads((folder / "done.json").read_text())
        assert set(done) == {"stage", "hash", "seconds", "finished_utc", "contents",
                             "key_parts"}
    assert set(json.loads(next((run / "01_data").glob("*/dropped_rows.json")).read_text())) \
        == {"challenging", "benign"}
    # One manifest per run, carried to the report (not one built by 06).
    manifest = json.loads((run / RUN_MANIFEST).read_text())
    results = json.loads((work / "reports" / "smoke" / "experiment_results.json").read_text())
    assert {k: v for k, v in results["manifest"].items() if k != "timings"} == \
        {k: v for k, v in manifest.items() if k != "timings"}
    assert set(results["manifest"]["timings"]) == set(STAGES["06_report"].inputs)


# --- issue 20: SIGTERM (timeout, Slurm's time limit) and overlapping roots, on a real run ---

def test_sigterm_during_a_stage_stops_like_ctrl_c_and_the_run_resumes(smoke_run, tmp_path):
    # Before: SIGTERM killed the runner with no line, no partial record and a stale lock.
    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    shutil.copytree(work / "reports", tmp_path / "reports")
    next((tmp_path / "runs" / "smoke" / "05_sweep").glob("*/done.json")).unlink()
    # `timeout` signals the runner alone (no process group): the kernel is the runner's to stop.
    process = subprocess.Popen(_runner(tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: bool(_kernels_of(process.pid)), process)  # 05_sweep's kernel runs
    kernels = _kernels_of(process.pid)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    stopped = time.time()
    assert process.returncode == 143, stdout + stderr
    [line] = stderr.strip().splitlines()[-1:]  # the user's line comes last
    shards = len(list((tmp_path / "runs" / "smoke" / "shards").glob("*.parquet")))
    # 06_report is not counted: its key holds 05's contents, unknown until 05 finishes again.
    assert line.startswith("terminated (SIGTERM) during 05_sweep: kept: 4 finished stage(s) of "
                           f"these params and {shards} generation shard(s)"), line
    assert "resume with: python -m steering_utils.runner" in line
    assert "05_sweep        TERMINATED (SIGTERM) after" in stdout
    report = tmp_path / "reports" / "smoke"
    partial = json.loads((report / "partial_experiment_results.json").read_text())
    assert partial["reason"] == "terminated" and partial["stopped_stage"] == "05_sweep"
    assert list(partial["completed_stages"]) == ["01_data", "02_baseline", "03_activations",
                                                 "04_vectors"]
    assert not (report / "failed_experiment_results.json").exists()
    assert not (tmp_path / "runs" / "smoke" / ".lock").exists()
    _wait_gone(kernels, seconds=30)
    print(f"\nkernel gone {time.time() - stopped:.1f} s after the runner exited")
    resumed = subprocess.run(_runner(tmp_path), cwd=ROOT, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # 05 re-runs; its files record their own timings, so 06 (keyed by 05's contents) re-runs.
    assert resumed.stdout.count("skipped: complete") == 4 and "05_sweep        done" in \
        resumed.stdout and "06_report       done" in resumed.stdout
    assert not (report / "partial_experiment_results.json").exists()


def _tree(folder: Path) -> list:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("reports", ["runs", "runs/smoke", "."])
def test_overlapping_roots_are_refused_and_a_finished_run_is_untouched(smoke_run, tmp_path,
                                                                       reports):
    # Before: --reports-root equal to --runs-root deleted the finished run's six stage
    # folders, 18 shards and notebooks when the report was swapped in.
    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    next((tmp_path / "runs" / "smoke" / "06_report").glob("*/done.json")).unlink()
    before = _tree(tmp_path / "runs")
    refused = subprocess.run(
        [*_runner(tmp_path)[:-4], "--runs-root", str(tmp_path / "runs"),
         "--reports-root", str(tmp_path / reports)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"not started: the runs root {tmp_path / 'runs'} ")
    assert refused.stdout == ""  # no stage line: nothing started
    assert _tree(tmp_path / "runs") == before


# Limits no steered cell can meet on smoke: no perplexity rise, no distinct-2 or empty-rate
# change, no capability drop. The instruction prompt lowers perplexity (-40% on smoke), so it
# would still qualify: it is left out, and ActAdd keeps only its 0.25 strength (+1.5%
# perplexity); every other method's dev cells raise perplexity.
_NOTHING_QUALIFIES = {
    "evaluation": {"max_perplexity_increase": 0, "max_distinct_drop": 0,
                   "max_empty_increase": 0, "max_capability_drop": 0},
    # extend_alphas off: a grid shrunk to 1/32 of its strength could meet even zero limits.
    "sweep": {"methods": ["actadd", "ablation", "mean_transport", "random"],
              "extend_alphas": False},
    "methods": {"actadd": {"strengths": [0.25]}}}


def test_no_cell_qualifying_for_caa_or_any_method_completes_to_a_report_that_says_so(
        smoke_run, tmp_path):
    """Issue 20, item 4: 05 crashed ('No objects to concatenate') when no method's dev cell
    met the rule. Only 05/06's params change, so 01-04 and the shards are reused; the chain
    completes, resumes, and the report and the results say no cell qualified and why."""
    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    strict = _params_file(tmp_path, run_name="smoke", **_NOTHING_QUALIFIES)
    command = [sys.executable, "-m", "steering_utils.runner", "--params", str(strict),
               "--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("skipped: complete") == 4
    report = tmp_path / "reports" / "smoke"
    results = validate_results(json.loads((report / "experiment_results.json").read_text()))
    assert results.recommendation is None and results.confirmation is None
    assert results.no_recommendation.reason == "limits"
    assert all("perplexity" in c.failed for c in results.no_recommendation.best_cells)
    methods = results.methods.methods
    assert [m.method for m in methods] == ["caa", "actadd", "ablation", "mean_transport",
                                           "random"]
    assert not any(m.picked for m in methods) and results.methods.strongest is None
    assert all(m.no_pick is not None for m in methods)
    # The matched comparison does not need the rule's pick: each method's point at the
    # perplexity budget is on its dev front, whatever the rule's (zero) limits.
    assert all(m.matched is not None and m.search is not None for m in methods)
    assert results.methods.goal is not None
    # The eval sweep still runs at the grid's best layer, for reference.
    assert any(c.experiment == "sweep" and c.alpha != 0 for c in results.cells)
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "No cell qualified." in html
    assert html.count("the rule picked none on dev") == len(methods)
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("skipped: complete") == 6


def test_an_alpha_past_the_relative_push_limit_stops_05_before_any_generation(smoke_run,
                                                                             tmp_path):
    """Issue 20, item 5: |alpha|·||v||/||h|| is checked against 04's norms, by the preflight
    and by 05 before it generates anything; the error names the field, layer, value and limit."""
    from steering_utils.checks import check_push
    from steering_utils.params import ParamsError, load_params

    work, _ = smoke_run
    shutil.copytree(work / "runs", tmp_path / "runs")
    shards = tmp_path / "runs" / "smoke" / "shards"
    before = sorted(p.name for p in shards.glob("*.parquet"))
    wild = _params_file(tmp_path, run_name="smoke", sweep={"alphas": [0, 1.0, 100.0]})
    with pytest.raises(ParamsError, match=r"sweep.alphas: 100 pushes layer \d+ by .* > "
                                          r"sweep.max_relative_push = 4"):
        check_push(load_params(wild), tmp_path / "runs")
    done = subprocess.run([sys.executable, "-m", "steering_utils.runner", "--params", str(wild),
                           "--runs-root", str(tmp_path / "runs"),
                           "--reports-root", str(tmp_path / "reports")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0
    assert re.search(r"sweep.alphas: 100 pushes layer \d+", done.stdout + done.stderr)
    assert sorted(p.name for p in shards.glob("*.parquet")) == before
