"""Shards on a Ray cluster: the `execution: {mode: ray}` executor (`executors.RayExecutor`).

    execution: {mode: ray, address: local, workers: 2, cpus_per_worker: 1}

The driver (the notebook's kernel) connects to Ray on its first job table: `address:
local` starts a cluster on this machine, which stops when the kernel exits; `auto` or
host:port joins a running one. It starts `workers` actors, each loading the model,
tokenizer and scorers once from params (and, for `generation.engine: vllm`, its own
vLLM engine), and keeps them for every later job table of the kernel. Pending shards
go to the actors in groups of whole shards; the driver collects finished groups with
`ray.wait`, writes each shard atomically into the run folder as it lands, and shows one
progress bar over all shards, so an interrupted driver resumes from what finished.

An actor that dies is restarted by Ray (`max_restarts`) and the group it held is run
again (`max_task_retries`), both `execution.max_retries`. A shard's contents depend
only on its rows and recipe (rows are seeded one by one), so a retried or resumed shard
equals the one lost, and a Ray run equals a local one.

Every node needs this project installed (same versions) and the model, data and scorer
files at the same paths. Only the driver writes the run folder, so it need not be shared.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import digest, params_fields, write_table
from .extras import MissingExtra
from .params import ParamsError, StudyParams
from .progress import add_rows

# What an actor loads: a pool is reused by every job table whose params agree on these.
_LOADED_FIELDS = ("hf_hub_offline", "model", "scorer", "generation.engine", "execution")
# A local cluster whose processes start slower than Ray waits for (30 s, on a busy machine)
# fails; it is started again this many times in all.
LOCAL_START_ATTEMPTS = 3


class ShardWorker:
    """A Ray actor's state: one model, tokenizer and scorers, loaded once from params."""

    def __init__(self, params: StudyParams, index: int):
        import ray
        import torch

        from .engines import make_engine
        from .models import load_model
        from .params import apply_environment
        from .scoring import load_scorers

        # Workers of a running cluster do not inherit the driver's environment; their torch
        # threads are the notebook's (execution.torch_threads) where set, so a shard rounds
        # as it would have in the notebook.
        torch.set_num_threads(params.execution.torch_threads or params.execution.cpus_per_worker)
        apply_environment(params)
        self.model, self.tokenizer = load_model(params.model)
        self.scorers = load_scorers(params.scorer)
        make_engine(params).load(self.model)  # vLLM: this worker's engine, kept for its life
        self.index = index
        with warnings.catch_warnings():  # Ray 2.60 warns inside its own property
            warnings.simplefilter("ignore")
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed

    def compute(self, rows: pd.DataFrame, shards: list[np.ndarray], directions: dict,
                params: StudyParams, positions: str, desc: str) -> tuple[pd.DataFrame, dict]:
        """(the rows with their results, which worker incarnation computed them)."""
        from .rows import compute_rows

        out = compute_rows(self.model, self.tokenizer, rows, shards, directions, params,
                           self.scorers, positions, desc)
        return out, {"worker": self.index, "pid": os.getpid(), "restarted": self.restarted}


@dataclass
class _Pool:
    actors: list
    restarts: set = field(default_factory=set)  # (worker, pid) of restarted incarnations


_POOLS: dict[str, _Pool] = {}  # this process's pool (one at a time), by _LOADED_FIELDS


def require_ray(python: str | None = None) -> None:
    """MissingExtra naming the fix when Ray is not installed here (or in `python`'s env)."""
    # Not resolved: a venv's python is a link to the base interpreter, outside the venv.
    if python is None or Path(python).absolute() == Path(sys.executable).absolute():
        found = importlib.util.find_spec("ray") is not None
        python = sys.executable
    else:
        found = subprocess.run([python, "-c", "import ray"], capture_output=True).returncode == 0
    if not found:
        raise MissingExtra(f"execution.mode: ray needs Ray, which is not installed for {python}",
                           "setup-ray", pip="pip install -e '.[ray]'",
                           instead="set execution.mode: local")


def _connect(params: StudyParams) -> None:
    """ray.init once per process: a new local cluster, or the one at `execution.address`."""
    require_ray()
    import ray

    ex = params.execution
    if ray.is_initialized():
        return
    if ex.address == "local":
        _start_local(ex.workers * ex.cpus_per_worker)
    else:
        ray.init(address=ex.address)
    _check_resources(ray.cluster_resources(), params)


def _start_local(cpus: int) -> None:
    """A new Ray cluster on this machine, stopped when this process exits."""
    import ray

    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False)
            return
        except Exception as err:  # Ray raises a bare Exception when its node is too slow
            _stop_ray_children()
            if attempt == LOCAL_START_ATTEMPTS:
                raise
            print(f"Ray did not start ({err}); trying again ({attempt + 1}/"
                  f"{LOCAL_START_ATTEMPTS})")


def _stop_ray_children() -> None:
    """Stop what a failed ray.init left running: its node's processes, our children that
    run Ray's own programs (Linux; elsewhere they stop when this process exits)."""
    import signal

    import ray

    home = str(Path(ray.__file__).parent)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and home in command:
            os.kill(int(proc.name), signal.SIGKILL)


def _check_resources(total: dict, params: StudyParams) -> int:
    """How many workers the cluster fits at once; ParamsError when not even one."""
    ex = params.execution
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    fits = int(cpus // ex.cpus_per_worker)
    if ex.gpus_per_worker:
        fits = min(fits, int(gpus // ex.gpus_per_worker))
    if fits < 1:
        raise ParamsError(
            f"execution: one worker asks for {ex.cpus_per_worker} CPU and "
            f"{ex.gpus_per_worker:g} GPU, the Ray cluster at {ex.address!r} has {cpus:g} CPU "
            f"and {gpus:g} GPU; lower execution.cpus_per_worker / gpus_per_worker or add nodes")
    if fits < ex.workers:
        print(f"execution.workers: {ex.workers} asked, the cluster fits {fits} at once "
              "(the others wait for resources)")
    return fits


def _pool(params: StudyParams) -> _Pool:
    """This process's actors for these params (started on first use)."""
    import ray

    key = digest(params_fields(params, _LOADED_FIELDS))
    if key not in _POOLS:
        for actor in [a for pool in _POOLS.values() for a in pool.actors]:
            ray.kill(actor)  # another model or scorer asked for in this kernel: free the GPUs
        _POOLS.clear()
        _connect(params)
        ex = params.execution
        remote = ray.remote(ShardWorker).options(
            num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker,
            max_restarts=ex.max_retries, max_task_retries=ex.max_retries,
            # One bar, the driver's: the workers' own bars would interleave in its output.
            runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})
        _POOLS[key] = _Pool([remote.remote(params, i) for i in range(ex.workers)])
    return _POOLS[key]


def shutdown() -> None:
    """Let go of this process's actors, and stop Ray if this process started it (a no-op
    where Ray was never used): at the end of a stage, not while its kernel shuts down."""
    if "ray" not in sys.modules:
        return
    import ray

    _POOLS.clear()
    if ray.is_initialized():
        ray.shutdown()


def _group_rows(todo: list[tuple[str, np.ndarray]], params: StudyParams, workers: int) -> int:
    """Rows a group holds at most: as in a local run, but enough groups to keep every worker
    busy (results do not depend on grouping: rows are seeded one by one)."""
    from .engines import make_engine

    most = make_engine(params).group_rows
    return max(1, min(most, math.ceil(sum(len(rows) for _, rows in todo) / workers)))


def run_on_cluster(jobs: pd.DataFrame, todo: list[tuple[str, np.ndarray]], paths: dict[str, Path],
                   directions: dict, params: StudyParams, positions: str, desc: str,
                   n_shards: int) -> dict:
    """Compute the pending shards `todo` on Ray actors, writing each one as it lands.

    Returns counts for the record: shards computed, groups, workers, worker restarts.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from tqdm.auto import tqdm

    from .rows import group_shards

    pool = _pool(params)
    groups = group_shards(todo, _group_rows(todo, params, len(pool.actors)))
    counts = {"shards": len(todo), "groups": len(groups), "workers": len(pool.actors)}
    shared = ray.put(directions or {})
    idle, running, restarted = list(pool.actors), {}, set()
    with tqdm(total=n_shards, initial=n_shards - len(todo), desc=f"{desc} (ray)",
              unit="shard") as bar:
        while groups or running:
            while idle and groups:
                actor, group = idle.pop(0), groups.pop(0)
                shards = [index for _, index in group]
                call = actor.compute.remote(jobs.iloc[np.concatenate(shards)], shards, shared,
                                            params, positions, desc)
                running[call] = (actor, group)
            [ready], _ = ray.wait(list(running), num_returns=1)
            actor, group = running.pop(ready)
            try:
                out, worker = ray.get(ready)
            except RayTaskError as err:  # the worker's own exception, as if raised here
                raise err.as_instanceof_cause() from None
            except RayActorError as err:
                raise RuntimeError(
                    f"{desc}: a Ray worker is gone (it failed to start, or died more often "
                    f"than execution.max_retries: {params.execution.max_retries}); finished "
                    f"shards are kept, rerun to resume. Ray's reason: {err}") from None
            for key, index in group:
                write_table(out.loc[index], paths[key])
                bar.update(1)
                add_rows(len(index))
            if worker["restarted"]:
                restarted.add((worker["worker"], worker["pid"]))
            idle.append(actor)
            bar.set_postfix(restarts=len(restarted - pool.restarts), refresh=False)
    counts["restarts"] = len(restarted - pool.restarts)
    pool.restarts |= restarted
    print(f"{desc}: {counts['shards']} of {n_shards} shards computed on Ray "
          f"({counts['groups']} groups, {counts['workers']} workers, "
          f"{counts['restarts']} worker restarts)")
    return counts
