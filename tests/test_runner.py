"""The runner fails loudly (one line: cause and next step), never silently, and keeps its
records and report folder straight (issue 15, findings 1-5). Papermill is replaced by a
fake that plays each stage, so these run in seconds; test_study.py runs the real chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from papermill.exceptions import PapermillExecutionError
from results_fixture import make_results
from test_reportdir import report_state

from steering_utils import runner
from steering_utils.artifacts import STAGES, stage_folder, stage_key, write_json
from steering_utils.params import load_params
from steering_utils.reportdir import publish_report
from steering_utils.results import validate_results
from steering_utils.runlock import RunLock

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"


def _papermill_error(ename: str, evalue: str) -> PapermillExecutionError:
    return PapermillExecutionError(4, 4, "write_table(...)", ename, evalue,
                                   ["Traceback", f"{ename}: {evalue}"])


@pytest.fixture
def fake_chain(monkeypatch, tmp_path):
    """Runs the runner on smoke params with stages played by a fake papermill.

    Returns run(plan) -> (exit code, stdout, stderr); plan maps a stage to an exception
    it raises (stages not named finish, and 06_report publishes a report).
    """
    import papermill

    from steering_utils import checks

    monkeypatch.setattr(checks, "validate_run", lambda params: None)
    params = load_params(SMOKE)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    plan: dict[str, BaseException] = {}
    played: list[str] = []

    def execute_notebook(source, output, parameters, **kwargs):
        stage = Path(output).stem.rsplit("-", 1)[0]  # runs/<run>/notebooks/<stage>-<key>
        assert [c for c in source.cells if "parameters" in c.metadata.get("tags", [])]
        played.append(stage)
        Path(output).write_text('{"cells": [], "metadata": {}}')
        if stage in plan:
            raise plan[stage]
        if stage == "06_report":
            results = make_results()
            results["manifest"].update(params_hash=params.params_hash, run_name="smoke")
            publish_report(validate_results(results), reports / "smoke")
        write_json({"stage": stage, "hash": stage_key(params, stage, runs), "seconds": 1},
                   stage_folder(runs, params, stage) / "done.json")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)

    def run(stages_plan=None, *extra):
        plan.clear()
        plan.update(stages_plan or {})
        played.clear()
        return runner.main(["--params", str(SMOKE), "--runs-root", str(runs),
                            "--reports-root", str(reports), *extra])

    run.params, run.runs, run.reports, run.played = params, runs, reports, played
    return run


def test_a_failure_prints_the_notebooks_own_error_and_the_resume_command(fake_chain, capsys):
    # Before: "05_sweep FAILED after 3.1 s: PapermillExecutionError", the cause only in JSON.
    error = _papermill_error("OSError", "[Errno 28] No space left on device: '/x/shard.parquet'")
    assert fake_chain({"05_sweep": error}) == 1
    out, err = capsys.readouterr()
    cause = "OSError: [Errno 28] No space left on device: '/x/shard.parquet'"
    assert "05_sweep        FAILED after" in out and cause in out
    [line] = err.strip().splitlines()  # one line
    executed = fake_chain.runs / "smoke" / "notebooks" / \
        f"05_sweep-{stage_key(fake_chain.params, '05_sweep', fake_chain.runs)}.ipynb"
    assert line.startswith(f"05_sweep failed: {cause}")
    assert str(executed) in line and executed.is_file()
    assert f"resume with: python -m steering_utils.runner --params {SMOKE}" in line
    assert f"--runs-root {fake_chain.runs}" in line
    report = fake_chain.reports / "smoke"
    failed = json.loads((report / "failed_experiment_results.json").read_text())
    assert failed["error"] == cause and failed["failed_stage"] == "05_sweep"
    partial = json.loads((report / "partial_experiment_results.json").read_text())
    assert partial["reason"] == "failed"
    assert partial["completed_stages"] == {s: stage_key(fake_chain.params, s, fake_chain.runs)
                                           for s in list(STAGES)[:4]}


@pytest.mark.parametrize("how", ["runner", "kernel"])
def test_ctrl_c_says_where_it_stopped_and_how_to_resume(fake_chain, capsys, how):
    # Ctrl-C reaches the runner (KeyboardInterrupt) or only the kernel (the cell's error).
    stop = KeyboardInterrupt() if how == "runner" else _papermill_error("KeyboardInterrupt", "")
    assert fake_chain({"03_activations": stop}) == 130
    out, err = capsys.readouterr()
    assert "03_activations  INTERRUPTED after" in out
    [line] = err.strip().splitlines()
    assert line.startswith("interrupted during 03_activations: kept: 2 finished stage(s)")
    assert "partial_experiment_results.json" in line and "resume with: python -m" in line
    partial = json.loads((fake_chain.reports / "smoke" / "partial_experiment_results.json")
                         .read_text())
    assert partial["reason"] == "interrupted" and partial["stopped_stage"] == "03_activations"
    assert list(partial["completed_stages"]) == ["01_data", "02_baseline"]
    assert not (fake_chain.reports / "smoke" / "failed_experiment_results.json").exists()
    assert not (fake_chain.runs / "smoke" / ".lock").exists()  # released on the way out


def test_a_later_success_clears_the_records_and_attaches_this_runs_notebooks(fake_chain,
                                                                          capsys):
    assert fake_chain({"05_sweep": _papermill_error("ValueError", "bad")}) == 1
    assert fake_chain() == 0
    assert fake_chain.played == ["05_sweep", "06_report"]  # the rest was complete
    report = fake_chain.reports / "smoke"
    assert not (report / "failed_experiment_results.json").exists()
    assert not (report / "partial_experiment_results.json").exists()
    assert sorted(p.name for p in (report / "notebooks").iterdir()) == \
        [f"{s}.ipynb" for s in STAGES]
    report_state(report)


def test_a_report_from_other_params_is_moved_aside_when_the_run_starts(fake_chain, capsys):
    old = make_results()
    old["manifest"].update(params_hash="0" * 16, run_name="smoke")
    publish_report(validate_results(old), fake_chain.reports / "smoke")
    # Before: the old report stayed in place, unmarked, while the new run failed.
    assert fake_chain({"01_data": _papermill_error("ValueError", "bad")}) == 1
    out = capsys.readouterr().out
    aside = fake_chain.reports / f"smoke.stale-{'0' * 16}"
    assert f"moved aside to {aside}" in out
    assert report_state(aside) != "missing"
    assert not (fake_chain.reports / "smoke" / "experiment_results.json").exists()


def test_a_missing_report_is_made_again_even_when_every_stage_is_complete(fake_chain, capsys):
    import shutil

    assert fake_chain() == 0
    shutil.rmtree(fake_chain.reports / "smoke")
    assert fake_chain() == 0
    assert fake_chain.played == ["06_report"]
    report_state(fake_chain.reports / "smoke")


def test_a_second_runner_stops_with_the_holder_named(fake_chain, capsys):
    with RunLock(fake_chain.runs / "smoke") as lock:
        assert fake_chain() == 1
        err = capsys.readouterr().err
        holder = json.loads(lock.path.read_text())
    assert err.startswith("not started: ") and f"pid {holder['pid']}" in err
    assert fake_chain.played == []


def test_any_other_error_is_one_line_never_a_silent_exit(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise OSError(30, "Read-only file system", "/reports/smoke")

    monkeypatch.setattr(runner, "run_study", fail)
    assert runner.main(["--params", str(SMOKE)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("run failed: OSError: [Errno 30] Read-only file system: "
                           "'/reports/smoke'; fix that, then run again: python -m")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_study", interrupt)
    assert runner.main(["--params", str(SMOKE)]) == 130
    assert "resume with: python -m steering_utils.runner" in capsys.readouterr().err


def test_failure_cause_is_one_line_and_bounded():
    cause = runner.failure_cause(_papermill_error("OSError", "[Errno 30] Read-only file "
                                                            "system:\n '/r'"))
    assert cause == "OSError: [Errno 30] Read-only file system: '/r'"
    assert len(runner.failure_cause(RuntimeError("x" * 5000))) <= 400
    assert runner.failure_cause(KeyboardInterrupt()) == "KeyboardInterrupt"


@pytest.mark.parametrize("field, value, message", [
    ("run_name", "..", "run_name: '..' is not a plain folder name"),
    ("seed", -5, "seed: Input should be greater than or equal to 0"),
])
def test_bad_run_name_or_seed_stop_before_anything_is_written(tmp_path, capsys, field, value,
                                                              message):
    # Before: run_name '..' wrote a stage folder at the repository root and overwrote
    # notebooks/01_data.ipynb; seed -5 passed validation and failed inside a stage.
    params = tmp_path / "p.yaml"
    params.write_text(f"inherits: {SMOKE}\n{field}: '{value}'\n" if field == "run_name"
                      else f"inherits: {SMOKE}\n{field}: {value}\n")
    work = tmp_path / "work"
    code = runner.main(["--params", str(params), "--runs-root", str(work / "runs"),
                        "--reports-root", str(work / "reports")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not work.exists()


def test_a_read_only_reports_folder_is_named(fake_chain, capsys, read_only_dir):
    # Before: `main()` returned 1 with no message at all.
    read_only_dir(fake_chain.reports)
    assert fake_chain() == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"reports folder {fake_chain.reports} is not writable" in line
    assert "choose another with --reports-root" in line and "run again: python -m" in line
    assert fake_chain.played == []


# --- issue 20, item 2: roots that cannot collide, a user's folder left alone --------------

@pytest.mark.parametrize("reports", ["runs", "runs/reports", "."])
def test_overlapping_roots_stop_before_any_work(fake_chain, capsys, reports):
    assert fake_chain() == 0  # a finished run to lose
    fake_chain.played.clear()
    before = sorted((p, p.stat().st_mtime_ns) for p in fake_chain.runs.rglob("*"))
    root = fake_chain.runs.parent / reports
    code = runner.main(["--params", str(SMOKE), "--runs-root", str(fake_chain.runs),
                        "--reports-root", str(root)])
    assert code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"not started: the runs root {fake_chain.runs} ")
    assert "pass --runs-root and --reports-root that are side by side" in line
    assert sorted((p, p.stat().st_mtime_ns) for p in fake_chain.runs.rglob("*")) == before
    assert fake_chain.played == []


def test_a_user_folder_at_the_report_path_stops_the_run_naming_it(fake_chain, capsys):
    # Before: the report swap deleted reports/smoke/ with the user's file, exit 0.
    folder = fake_chain.reports / "smoke"
    folder.mkdir(parents=True)
    (folder / "important.txt").write_text("mine")
    assert fake_chain() == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"not started: {folder} exists and is not a report of this study")
    assert "move or rename it" in line
    assert fake_chain.played == [] and not fake_chain.runs.exists()
    assert [p.name for p in folder.iterdir()] == ["important.txt"]


def test_sigterm_between_stages_is_one_line_and_exit_143(monkeypatch, capsys):
    import os
    import signal

    def terminate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(runner, "run_study", terminate)
    assert runner.main(["--params", str(SMOKE)]) == 143
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("terminated (SIGTERM) before or between stages")
    assert "resume with: python -m steering_utils.runner" in line
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the caller's handler is back


def test_the_runner_prints_rows_and_the_eta_and_asks_for_ipc_kernels(fake_chain, capsys,
                                                                     monkeypatch):
    import os
    import re
    import time

    import papermill

    from steering_utils import progress
    from steering_utils.progress import PROGRESS_ENV, add_rows, start_rows

    played = papermill.execute_notebook
    configs = []

    def with_rows(source, output, parameters, **kwargs):
        configs.append(kwargs["config"])
        stage = output.rsplit("/", 1)[1].rsplit("-", 1)[0]
        if stage in ("02_baseline", "05_sweep"):  # the kernel's run_jobs, in miniature
            monkeypatch.setattr(progress, "_tables", [])
            start_rows("grid", 10, reused=2)
            time.sleep(0.05)
            add_rows(8)
        return played(source, output, parameters, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", with_rows)
    assert fake_chain() == 0
    out = capsys.readouterr().out
    assert re.search(r"  02_baseline     done in [\d.]+ s: 10 rows \(2 reused\), [\d.]+ rows/s",
                     out), out
    from steering_utils.params import load_params
    from steering_utils.workload import job_counts
    counts = job_counts(load_params(SMOKE), 30)  # the work line: the projected job counts
    assert (f"generated rows (02_baseline {counts['baseline']}, "
            f"05_sweep {counts['generated'] - counts['baseline']})") in out
    etas = re.findall(r"^  ETA  .* stage\(s\) left", out, re.M)
    assert len(etas) == 4  # after 02 (the first rate measured), 03, 04 and 05
    assert all(c.KernelManager.transport == "ipc" for c in configs) and len(configs) == 6
    assert PROGRESS_ENV not in os.environ  # the runner cleans up after itself
