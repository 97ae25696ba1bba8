"""Progress and ETA (issue 24): the kernel-to-runner progress file, the arithmetic of the
whole-run estimate, the runner's lines, and on the real smoke run: one line per stage with
its rows, an ETA, and no kernel transport warning."""

from __future__ import annotations

import json
import re
import threading
import time

import pandas as pd
import pytest

from steering_utils import progress
from steering_utils.progress import (
    PROGRESS_ENV,
    Rows,
    RunClock,
    StageProgress,
    add_rows,
    progress_line,
    read_rows,
    start_rows,
)


@pytest.fixture
def progress_file(tmp_path, monkeypatch):
    """The file a runner would name for a stage, set for this process (a 'kernel')."""
    path = tmp_path / "02_baseline.json"
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    monkeypatch.setattr(progress, "_tables", [])
    return path


def test_tables_add_up_and_reused_rows_are_not_computed(progress_file):
    start_rows("grid", 12, reused=4)
    add_rows(8)
    start_rows("sweep", 40)
    add_rows(16)
    rows = read_rows(progress_file)
    assert (rows.done, rows.total, rows.computed) == (28, 52, 24)
    assert rows.tables == ["grid", "sweep"]
    assert not list(progress_file.parent.glob(".*.tmp"))  # replaced atomically


def test_outside_a_run_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.setattr(progress, "_tables", [])
    monkeypatch.chdir(tmp_path)
    start_rows("grid", 12)
    add_rows(12)
    assert progress._tables == [] and not list(tmp_path.iterdir())


@pytest.mark.parametrize("text", [None, "", "{not json", '{"tables": [{"done": 1}]}'])
def test_a_missing_or_broken_file_reads_as_nothing(tmp_path, text):
    path = tmp_path / "05_sweep.json"
    if text is not None:
        path.write_text(text)
    assert read_rows(path) is None


def test_the_rate_counts_only_computed_rows_over_the_time_spent_computing(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"tables": [
        {"table": "grid", "total": 10, "reused": 10, "done": 10, "started": 0, "updated": 0},
        {"table": "sweep", "total": 40, "reused": 0, "done": 20, "started": 100,
         "updated": 110},
        {"table": "control", "total": 30, "reused": 0, "done": 0, "started": 200,
         "updated": 200}]}))
    rows = read_rows(path)
    assert rows.rate == pytest.approx(2.0) and rows.done == 30 and rows.total == 80
    assert progress_line("05_sweep", rows, expected=100) == \
        "  05_sweep        30/100 rows  2.00 rows/s  stage ETA 35 s"
    assert progress_line("05_sweep", Rows(done=0, total=5)) == "  05_sweep        0/5 rows"


def test_eta_durations_read_back():
    assert [_seconds(t) for t in ("2.7 min", "40 s", "1 h 05 min")] == \
        pytest.approx([162, 40, 3900])


def test_the_eta_is_rows_left_times_the_measured_rate_plus_fixed_costs():
    work = {"02_baseline": 56, "03_activations": 1.6, "05_sweep": 200.0}
    clock = RunClock(work)
    clock.record("01_data", 10.0, None)
    assert clock.eta(["02_baseline"]) is None  # no rate measured yet
    assert clock.eta_line(["02_baseline"]) is None
    clock.record("02_baseline", 50.0, Rows(done=56, total=56, computed=56, seconds=28.0))
    assert clock.seconds_per_row == pytest.approx(0.5)
    assert clock.fixed_cost("03_activations") == pytest.approx(22.0)  # 50 s - 28 s of rows
    assert clock.fixed_cost("04_vectors") == pytest.approx(10.0)  # as 01: no model to load
    rest = ["03_activations", "04_vectors", "05_sweep", "06_report"]
    assert clock.eta(rest) == pytest.approx(22 + 0.8 + 10 + 22 + 100 + 10)
    line = clock.eta_line(rest)
    assert line.startswith("  ETA             ~2.7 min for the 4 stage(s) left: ~202 rows at "
                           "0.50 s/row")
    assert clock.eta_line([]) is None


def test_a_stage_whose_rows_were_reused_does_not_set_the_rate():
    clock = RunClock({"05_sweep": 100.0})
    clock.record("02_baseline", 30.0, Rows(done=56, total=56, computed=0, seconds=0.0))
    assert clock.seconds_per_row is None and clock.fixed["model"] == []


def test_stage_work_weighs_forward_passes_by_the_generated_tokens():
    from steering_utils.params import load_params
    from tests.conftest import SMOKE

    params = load_params(SMOKE)  # max_new_tokens 8: a forward pass is a tenth of a row
    counts = {"baseline": 56, "grid": 12, "sweep": 40, "control": 24, "methods": 78,
              "capability": 140, "activations": 20}
    assert progress.stage_work(params, counts) == pytest.approx(
        {"02_baseline": 56, "03_activations": 2.0, "05_sweep": 154 + 14.0})
    assert progress.expected_rows(counts) == {"02_baseline": 56, "05_sweep": 154}
    assert progress.stage_work(params, None) == {}


def _kernel(path, steps, pause):
    """Plays a kernel writing the file from another thread: start, then rows in steps."""
    def play():
        tables = []
        for step in steps:
            time.sleep(pause)
            if step == "crash":
                path.write_text("{half a fi")
                return
            if isinstance(step, tuple):
                tables.append({"table": step[0], "total": step[1], "reused": 0, "done": 0,
                               "started": time.time(), "updated": time.time()})
            else:
                tables[-1]["done"] += step
                tables[-1]["updated"] = time.time()
            path.write_text(json.dumps({"tables": tables}))
    return threading.Thread(target=play)


def test_off_a_terminal_lines_come_at_most_every_interval_and_the_summary_has_the_rows(tmp_path):
    path, lines = tmp_path / "05_sweep.json", []
    kernel = _kernel(path, [("grid", 10), 5, 5, ("sweep", 20), 10, 10], pause=0.15)
    with StageProgress("05_sweep", path, expected=30, echo=lines.append, tty=False,
                       every_s=0.3, poll_s=0.05) as shown:
        kernel.start()
        kernel.join()
    assert 1 <= len(lines) <= 4, lines  # ~0.9 s of rows, a line at most every 0.3 s
    assert all(re.fullmatch(r"  05_sweep        \d+/30 rows( .*)?", line) for line in lines)
    done = [int(line.split()[1].split("/")[0]) for line in lines]
    assert done == sorted(set(done))  # a new line only when rows moved
    assert shown.rows.done == 30 and shown.summary().startswith(": 30 rows, ")


def test_a_kernel_that_crashes_or_never_reports_leaves_no_bar_and_no_hang(tmp_path):
    lines = []
    started = time.time()
    with StageProgress("03_activations", tmp_path / "none.json", 0, lines.append, tty=False,
                       every_s=0.0, poll_s=0.05) as silent:
        time.sleep(0.2)
    assert silent.rows is None and silent.summary() == "" and lines == []
    path = tmp_path / "02_baseline.json"
    kernel = _kernel(path, [("baseline", 8), 4, "crash"], pause=0.1)
    with StageProgress("02_baseline", path, 8, lines.append, tty=False, every_s=10,
                       poll_s=0.05) as crashed:
        kernel.start()
        kernel.join()
    assert crashed.rows.done == 4  # the last whole report stays
    assert time.time() - started < 5


def test_the_kernels_run_on_ipc_sockets(tmp_path):
    from steering_utils.runner import _kernel_config

    config = _kernel_config(tmp_path)
    assert config.KernelManager.transport == "ipc"
    assert config.KernelManager.ip == str(tmp_path / "kernel")


_DONE = re.compile(r"^  (\d\d_\w+)\s+done in ([\d.]+) s(?:: (\d+) rows)?", re.M)
_ETA = re.compile(r"^  ETA\s+~(.+?) for the (\d) stage\(s\) left", re.M)


def _seconds(text: str) -> float:
    """Seconds of an ETA's duration: '2.7 min', '40 s', '1 h 05 min'."""
    units = {"h": 3600, "min": 60, "s": 1}
    parts = text.split()
    return sum(float(n) * units[u] for n, u in zip(parts[::2], parts[1::2], strict=True))


@pytest.mark.slow
def test_the_smoke_run_prints_one_line_per_stage_its_rows_an_eta_and_no_transport_warning(
        smoke_run):
    from steering_utils.artifacts import STAGES
    from steering_utils.params import load_params
    from steering_utils.workload import job_counts
    from tests.conftest import SMOKE

    work, stdout = smoke_run
    stderr = (work / "runner_stderr.txt").read_text()
    assert "running over TCP" not in stdout + stderr, stderr
    done = {stage: (float(seconds), rows) for stage, seconds, rows in _DONE.findall(stdout)}
    assert list(done) == list(STAGES)  # one done line per stage, in order
    counts = job_counts(load_params(SMOKE), 30)  # SmolLM2-135M: 30 decoder layers
    assert int(done["02_baseline"][1]) == counts["baseline"]
    # A done line counts exactly the rows of the shards its stage recorded using.
    for stage in ("02_baseline", "05_sweep"):
        [used] = (work / "runs" / "smoke" / stage).glob("*/shards.json")
        rows = sum(len(pd.read_parquet(work / "runs" / "smoke" / "shards" / f"{key}.parquet"))
                   for key in json.loads(used.read_text())["shards"])
        assert int(done[stage][1]) == rows, stage
    # The job counts project 05 before its dev decision (the methods' and the extension's
    # rows depend on it, and a method grid that starts too strong shrinks by up to
    # matched.MAX_HALVINGS cells: on the smoke params Arditi ablation and Linear-AcT do,
    # 216 projected and 306 built).
    expected = counts["generated"] - counts["baseline"]
    assert 0.75 * expected <= int(done["05_sweep"][1]) <= 1.6 * expected
    assert f"{counts['generated']:,} generated rows" in stdout  # the work line
    lines = stdout.splitlines()
    for stage, (seconds, _) in done.items():  # interim lines: at most one a minute
        interim = [line for line in lines if re.match(rf"  {stage}\s+\d+/\d+ rows", line)]
        assert len(interim) <= seconds / progress.EVERY_S + 1, interim
    etas = _ETA.findall(stdout)
    assert [int(n) for _, n in etas] == [4, 3, 2, 1]  # after 02, 03, 04 and 05
    predicted = _seconds(etas[0][0])
    actual = sum(seconds for stage, (seconds, _) in done.items()
                 if stage > "02_baseline")
    ratio = predicted / actual
    print(f"\nETA after 02_baseline: {predicted:.0f} s predicted, {actual:.0f} s taken "
          f"(stages 03-06): ratio {ratio:.2f}; run {(work / 'runner_seconds.txt').read_text()} s")
    assert 0.2 < ratio < 5  # the estimate is the right order of magnitude


def test_run_jobs_reports_its_table_and_a_rerun_reports_it_reused(tiny_qwen3, tiny_tokenizer,
                                                                    progress_file, tmp_path):
    from test_jobs import PROMPTS, _params, _run

    from steering_utils.generation import make_jobs
    from steering_utils.scoring import load_scorer

    scorers = {"primary": load_scorer("profanity-check"), "second": None}
    jobs = make_jobs(PROMPTS, [(-1, 0.0), (1, 2.0)], 1)
    _run(tiny_qwen3, tiny_tokenizer, jobs, _params(), scorers, tmp_path / "shards")
    first = read_rows(progress_file)
    assert (first.done, first.total, first.computed) == (10, 10, 10) and first.rate
    _run(tiny_qwen3, tiny_tokenizer, jobs, _params(), scorers, tmp_path / "shards")
    both = read_rows(progress_file)  # one kernel: the second table adds to the first
    assert (both.done, both.total, both.computed) == (20, 20, 10)

