"""Shards on Ray (`execution: {mode: ray}`): the smoke chain on a local Ray cluster of 2
one-CPU workers equals the in-process run, shard for shard, also when a worker is killed
during the sweep (Ray restarts it and retries its group) and when the driver is killed
(the rerun keeps every shard that had landed). The slow tests need the `ray` extra
(`make setup-ray`; `make test` installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, runner_command

from steering_utils.artifacts import stage_key
from steering_utils.checks import check_execution
from steering_utils.extras import MissingExtra
from steering_utils.params import ParamsError, load_params, parse_params
from steering_utils.stages import STAGE_NAMES
from tests.test_params import _default

SMOKE_RAY = ROOT / "params" / "smoke-ray.yaml"
RAY_RUN = "smoke-ray"
_TABLES = ("02_baseline", "05_sweep")  # the stages whose tables come from shards


def _ray(**execution):
    raw = _default()
    raw["execution"] = {"mode": "ray", **execution}
    return parse_params(raw)


# --- params and preflight: before any work ------------------------------------------------

def test_execution_is_part_of_no_artifact_key():
    local, ray = load_params(ROOT / "params" / "smoke.yaml"), load_params(SMOKE_RAY)
    assert ray.execution.mode == "ray" and local.execution.mode == "local"
    assert [stage_key(local, s, ROOT) for s in STAGE_NAMES] == [stage_key(ray, s, ROOT)
                                                            for s in STAGE_NAMES]


@pytest.mark.parametrize("execution, message", [
    ({"address": "my laptop"}, r"execution.address: 'my laptop' is not a Ray address: use "
                               r"local, auto, or host:port"),
    ({"workers": 0}, r"execution.workers: Input should be greater than or equal to 1"),
    ({"mode": "slurm"}, r"execution.mode: Input should be 'local' or 'ray'"),
    ({"gpu_per_worker": 1}, r"execution.gpu_per_worker: unknown key"),
])
def test_bad_execution_fields_are_named(execution, message):
    raw = _default()
    raw["execution"] = {"mode": "ray", **execution}
    with pytest.raises(ParamsError, match=message):
        parse_params(raw, "p.yaml")


def test_ray_missing_is_named_with_its_fix_before_any_stage(tmp_path):
    from steering_utils.cluster import require_ray

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")],
                   check=True)
    python = str(tmp_path / "bare" / "bin" / "python")
    with pytest.raises(MissingExtra, match=r"execution.mode: ray needs Ray, which is not "
                                          r"installed for .*bare/bin/python; run `make setup-ray`"):
        require_ray(python)


def test_preflight_refuses_gpus_this_machine_lacks():
    with pytest.raises(ParamsError, match=r"execution.gpus_per_worker: 64 GPU a worker, this "
                                          r"machine has \d+"):
        check_execution(_ray(gpus_per_worker=64))


def test_a_cluster_too_small_for_one_worker_is_named():
    from steering_utils.cluster import _check_resources

    with pytest.raises(ParamsError, match=r"one worker asks for 4 CPU and 0 GPU, the Ray cluster "
                                          r"at 'auto' has 2 CPU and 0 GPU"):
        _check_resources({"CPU": 2.0}, _ray(address="auto", cpus_per_worker=4))
    assert _check_resources({"CPU": 8.0, "GPU": 2.0}, _ray(workers=4, gpus_per_worker=1)) == 2


# --- the smoke chain on a local Ray cluster ---------------------------------------------

def _family(runner_pid: int) -> list[int]:
    """Pids of the processes a runner started: its kernels and their Ray cluster (they carry
    the kernel's JPY_PARENT_PID), so only our own processes are ever killed or awaited."""
    from test_study import _kernels_of

    return _kernels_of(runner_pid)


def _computing_worker(runner_pid: int) -> int | None:
    """A Ray worker of this runner that is inside ShardWorker.compute (Ray's process title)."""
    for pid in _family(runner_pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if title.startswith(b"ray::ShardWorker.compute"):
            return pid
    return None


def _wait_gone(pids: list[int], seconds: float = 90) -> list[int]:
    """The pids still alive after waiting (zombies count as gone)."""
    deadline = time.time() + seconds
    alive = list(pids)
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in alive if _alive(p)]
    return alive


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _ray_lines(work: Path) -> list[str]:
    """The Ray summary lines the run's executed notebooks printed."""
    lines = []
    for notebook in sorted((work / "runs" / RAY_RUN / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", ""))
                lines += [line for line in text.splitlines() if "shards computed on Ray" in line]
    return lines


def _shards(work: Path, run: str) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_parquet(p) for p in (work / "runs" / run / "shards").glob("*.parquet")}


def _assert_same_results(work: Path, reference: Path) -> None:
    """Every shard and every table of 02 and 05, and the report's numbers, equal the
    in-process run's (same stage keys: execution is in none)."""
    from test_study import _metrics

    ours, theirs = _shards(work, RAY_RUN), _shards(reference, "smoke")
    assert sorted(ours) == sorted(theirs) and ours
    for name, table in ours.items():
        pd.testing.assert_frame_equal(table, theirs[name], check_exact=True)
    for stage in _TABLES:
        [folder] = (work / "runs" / RAY_RUN / stage).glob("*/done.json")
        tables = sorted(folder.parent.glob("*.parquet"))
        assert tables
        for table in tables:
            other = reference / "runs" / "smoke" / stage / folder.parent.name / table.name
            pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(other),
                                          check_exact=True)
    results = [json.loads((w / "reports" / run / "experiment_results.json").read_text())
               for w, run in ((work, RAY_RUN), (reference, "smoke"))]
    assert _metrics(results[0]) == _metrics(results[1])


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    """The smoke chain on Ray from an empty runs folder; one worker is killed (SIGKILL) in
    the middle of a shard group of the sweep. Returns (work, stdout, killed pid, seconds)."""
    pytest.importorskip("ray", reason="the ray extra is not installed (make setup-ray)")
    work = tmp_path_factory.mktemp("ray")
    started = time.time()
    process = subprocess.Popen(runner_command(SMOKE_RAY, work), cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed: list[int] = []

    def kill_one_worker_in_the_sweep() -> None:
        sweep = work / "runs" / RAY_RUN / "05_sweep"
        while process.poll() is None and not killed:
            pid = _computing_worker(process.pid) if sweep.is_dir() else None
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_one_worker_in_the_sweep, daemon=True)
    watcher.start()
    try:
        stdout, stderr = process.communicate(timeout=2400)
    finally:
        process.kill()
        watcher.join(timeout=5)
    seconds = time.time() - started
    assert process.returncode == 0, stdout + stderr
    print(f"\nsmoke chain on Ray: {seconds:.0f} s; killed worker {killed}")
    return work, stdout, killed, seconds


@pytest.mark.slow
def test_the_chain_on_ray_equals_the_local_run_though_a_worker_died(ray_run, smoke_run):
    work, stdout, killed, _ = ray_run
    assert len(killed) == 1, "no Ray worker was caught computing during the sweep"
    lines = _ray_lines(work)
    print("\n".join(lines))
    # Every shard came from Ray (the baseline, and each job table of the sweep) ...
    computed = [re.search(r"(\d+) of (\d+) shards computed on Ray \((\d+) groups, (\d+) "
                          r"workers, (\d+) worker restarts\)", line).groups() for line in lines]
    counts = [tuple(map(int, c)) for c in computed]
    assert len(counts) >= 2 and all(workers == 2 for *_, workers, _ in counts)
    assert sum(n for n, *_ in counts) == len(_shards(work, RAY_RUN))
    # ... the killed worker was restarted and its group retried ...
    assert sum(restarts for *_, restarts in counts) == 1
    # ... and the results are the in-process run's, shard for shard.
    _assert_same_results(work, smoke_run[0])


@pytest.mark.slow
def test_a_killed_driver_resumes_from_the_shards_that_landed(ray_run, smoke_run, tmp_path):
    """Stages 01-04 and the baseline's shard from the local run (keys hold no `execution`),
    then the sweep on Ray: the runner, its kernel and its Ray cluster are killed once some
    of the sweep's shards have landed; the rerun keeps them untouched and computes only
    the others."""
    from steering_utils.stages import UNSTEERED

    reference = smoke_run[0]
    runs = tmp_path / "runs" / RAY_RUN
    shutil.copytree(reference / "runs" / "smoke", runs)
    for leftover in ("05_sweep", "06_report", "notebooks"):
        shutil.rmtree(runs / leftover)
    shards = runs / "shards"
    for shard in shards.glob("*.parquet"):  # keep the baseline's: 02 is complete
        if set(pd.read_parquet(shard)["direction"]) != {UNSTEERED}:
            shard.unlink()
    kept = len(list(shards.glob("*.parquet")))
    process = subprocess.Popen(runner_command(SMOKE_RAY, tmp_path), cwd=ROOT, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 1200
    while len(list(shards.glob("*.parquet"))) < kept + 3:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.1)
    family = _family(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    outlived = _wait_gone(family)  # the kernel and its Ray cluster stop with the runner
    for pid in outlived:
        os.kill(pid, signal.SIGKILL)  # never left running for the next test
    assert not outlived, f"{len(outlived)} processes of the killed run outlived it"
    landed = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.parquet")}
    assert not list(runs.glob("05_sweep/*/done.json"))
    resumed = subprocess.run(runner_command(SMOKE_RAY, tmp_path), cwd=ROOT, capture_output=True,
                             text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("skipped: complete") == 4
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.parquet")}
    assert {name: after[name] for name in landed} == landed  # reused, not written again
    computed = sum(int(line.split(" of ")[0].split()[-1]) for line in _ray_lines(tmp_path))
    assert computed == len(after) - len(landed) > 0
    print(f"\ndriver killed with {len(landed) - kept} of the sweep's {len(after) - kept} shards "
          f"landed; the rerun computed the other {computed}")
    _assert_same_results(tmp_path, reference)
