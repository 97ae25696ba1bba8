"""`make prune` keeps exactly what the kept params reach; `--force` removes only its own
params version's artifacts (issue 20, items 7 and 8). The slow tests share one run folder
holding two params versions of smoke (the second moves one alpha: only 05 and 06 rerun)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE, runner_command
from test_runlock import _holder

from steering_utils.artifacts import shards_record, stage_folder, stage_key
from steering_utils.params import load_params
from steering_utils.prune import main as prune_main
from steering_utils.stages import STAGE_NAMES


def _prune(work: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steering_utils.prune", "--runs-root",
                           str(work / "runs"), "--reports-root", str(work / "reports"), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _files(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _records(runs: Path, params, stages=STAGE_NAMES) -> set[str]:
    found: set[str] = set()
    for stage in stages:
        found |= shards_record(stage_folder(runs, params, stage)) or set()
    return found


@pytest.fixture(scope="module")
def two_versions(smoke_run, tmp_path_factory):
    """(work, second params file): smoke's run, then a second version with alpha 1.5."""
    work, _ = smoke_run
    out = tmp_path_factory.mktemp("two-versions")
    shutil.copytree(work / "runs", out / "runs")
    shutil.copytree(work / "reports", out / "reports")
    second = out / "second.yaml"
    second.write_text(f"inherits: {SMOKE}\nsweep: {{alphas: [0, 1.5, 2.0]}}\n")
    done = subprocess.run(runner_command(second, out), cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("skipped: complete") == 4
    return out, second


def _copy(two_versions, tmp_path: Path) -> tuple[Path, Path, object, object]:
    out, second = two_versions
    shutil.copytree(out / "runs", tmp_path / "runs")
    shutil.copytree(out / "reports", tmp_path / "reports")
    return tmp_path, second, load_params(SMOKE), load_params(second)


@pytest.mark.slow
def test_prune_keeps_exactly_what_the_kept_params_reach(two_versions, tmp_path):
    # Before: no prune; `make clean` removed the current version too.
    work, second, first, kept = _copy(two_versions, tmp_path)
    runs = work / "runs"
    run = runs / "smoke"
    failed = run / "05_sweep" / ("f" * 16)  # a failed stage folder: no done.json
    failed.mkdir()
    (failed / "grid.parquet").write_bytes(b"x" * 1000)
    partial = run / "shards" / ".abc.parquet.999999999.partial"  # a dead process's
    partial.write_bytes(b"x" * 500)
    stale = work / "reports" / f"smoke.stale-{first.params_hash}"
    assert stale.is_dir()  # the first version's report, moved aside by the second run
    only_first = [s for s in STAGE_NAMES if stage_key(first, s, runs) != stage_key(kept, s, runs)]
    assert only_first == ["05_sweep", "06_report"]
    expected_dirs = [run / s / stage_key(first, s, runs) for s in only_first] + [failed, stale]
    gone_shards = _records(work / "runs", first) - _records(work / "runs", kept)
    assert gone_shards  # the alpha-1.0 cell
    expected = {*(str(run / "shards" / f"{k}.parquet") for k in gone_shards), str(partial),
                *(str(run / "notebooks" / f"{s}-{stage_key(first, s, runs)}.ipynb")
                  for s in only_first)}
    for folder in expected_dirs:
        expected |= set(_files(folder))
    before = _files(work)
    assert expected <= set(before)

    dry = _prune(work, "--params", str(second), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert _files(work) == before  # nothing deleted
    for folder in expected_dirs:
        assert f"would remove {folder} (" in dry.stdout

    pruned = _prune(work, "--params", str(second))
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    after = _files(work)
    assert set(before) - set(after) == expected  # exactly these, nothing else
    freed = sum(before[path] for path in expected)
    assert f"MB ({freed} bytes) freed" in pruned.stdout.splitlines()[-1], pruned.stdout
    assert "removed 3 stage folders, " in pruned.stdout  # two of the first version, one failed
    assert "1 stale reports, 1 partial files" in pruned.stdout
    print(f"\nprune freed {freed} bytes: {pruned.stdout.splitlines()[-1]}")
    # What the kept version needs is all there: its run skips every stage.
    again = subprocess.run(runner_command(second, work), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("skipped: complete") == 6


@pytest.mark.slow
def test_force_removes_only_this_versions_folders_and_shards(two_versions, tmp_path):
    # Before: --force deleted runs/<run>/shards/ whole, every params version's shards.
    from test_study import _kernels_of, _wait_for, _wait_gone

    work, second, first, kept = _copy(two_versions, tmp_path)
    runs = work / "runs"
    run = runs / "smoke"
    first_only = [run / s / stage_key(first, s, runs) for s in ("05_sweep", "06_report")]
    first_files = {p: s for p, s in _files(work / "runs").items()
                   if any(p.startswith(str(f)) for f in first_only)}
    first_shards = _records(work / "runs", first, ("05_sweep", "06_report"))
    mine = _records(work / "runs", kept)
    assert mine - first_shards  # the alpha-1.5 cell: this version's alone
    process = subprocess.Popen(runner_command(second, work, "--force"), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Stop the forced run once it has removed what it removes and a stage runs (SIGTERM).
    _wait_for(lambda: bool(_kernels_of(process.pid)), process)
    kernels = _kernels_of(process.pid)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    _wait_gone(kernels, seconds=30)
    assert process.returncode == 143, stdout + stderr
    assert f"--force: removed 6 stage folder(s) and {len(mine - first_shards)} shard(s)" in stdout
    shards = {p.stem for p in (run / "shards").glob("*.parquet")}
    assert first_shards <= shards and not (mine - first_shards) & shards
    assert {p: s for p, s in _files(work / "runs").items()
            if any(p.startswith(str(f)) for f in first_only)} == first_files
    for stage in ("05_sweep", "06_report"):
        assert not stage_folder(work / "runs", kept, stage).exists()


def test_prune_refuses_a_run_a_live_runner_holds(tmp_path, capsys):
    run = tmp_path / "runs" / "smoke"
    doomed = run / "05_sweep" / ("0" * 16)
    doomed.mkdir(parents=True)
    holder = _holder(run, 30)
    try:
        code = prune_main(["--params", str(SMOKE), "--runs-root", str(tmp_path / "runs"),
                           "--reports-root", str(tmp_path / "reports")])
    finally:
        holder.kill()
        holder.wait()
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("not pruned (nothing deleted): ") and f"pid {holder.pid}" in err
    assert doomed.is_dir()
    # Once the runner is gone, the unfinished folder goes and the bytes freed are counted.
    time.sleep(0.1)
    assert prune_main(["--params", str(SMOKE), "--runs-root", str(tmp_path / "runs"),
                       "--reports-root", str(tmp_path / "reports")]) == 0
    assert not doomed.exists()
    assert "1 stage folders" in capsys.readouterr().out
