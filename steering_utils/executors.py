"""Where pending shards are computed: the executor, chosen once from `execution.mode`.

    make_executor(params).run(work)      # LocalExecutor or RayExecutor

`local` computes each group of shards in this process (`rows.compute_rows`); `ray` hands
the groups to a pool of Ray actors, each holding its own model (`cluster`). Either writes
each shard atomically as its group lands. The executor is part of no key: a shard's
contents depend only on its rows and recipe, never on who computed it. `shutdown` lets go
of what the executor holds (the Ray pool) at the end of a stage; `check` is preflight's line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .params import ParamsError, StudyParams


@dataclass
class ShardWork:
    """The pending shards of one job table and what computing them needs."""

    jobs: pd.DataFrame  # the whole job table (shards index into it)
    todo: list[tuple[str, np.ndarray]]  # (shard key, row positions) not yet on disk
    paths: dict[str, Path]  # shard key -> its file
    directions: dict
    params: StudyParams
    positions: str
    desc: str
    n_shards: int  # every shard of the table, finished ones included (the bar's total)
    model: object = None  # local only: the notebook's model, tokenizer and scorers
    tokenizer: object = None
    scorers: dict | None = None


class Executor:
    name = ""
    extra = ""  # the optional install it needs: `make setup-<extra>`

    def __init__(self, params: StudyParams):
        self.params = params

    def run(self, work: ShardWork) -> None:
        """Compute and write every shard of `work.todo`."""
        raise NotImplementedError

    def check(self) -> str:
        """Preflight's line; ParamsError when this executor cannot run here."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Let go of what this process holds for the executor (end of a stage)."""


class LocalExecutor(Executor):
    name = "local"

    def run(self, work):
        from . import rows
        from .artifacts import write_table
        from .engines import make_engine
        from .progress import add_rows

        groups = rows.group_shards(work.todo, make_engine(work.params).group_rows)
        for number, group in enumerate(groups, start=1):
            part = work.jobs.iloc[np.concatenate([index for _, index in group])]
            out = rows.compute_rows(work.model, work.tokenizer, part,
                                    [index for _, index in group], work.directions,
                                    work.params, work.scorers, work.positions,
                                    f"{work.desc} [{number}/{len(groups)}]")
            for key, index in group:
                write_table(out.loc[index], work.paths[key])
            add_rows(len(part))

    def check(self):
        return "local: shards computed in each notebook's process"


class RayExecutor(Executor):
    name = "ray"
    extra = "ray"

    def run(self, work):
        from .cluster import run_on_cluster

        run_on_cluster(work.jobs, work.todo, work.paths, work.directions, work.params,
                       work.positions, work.desc, work.n_shards)

    def check(self):
        """Ray where the notebooks run, and GPUs the workers can have."""
        from .cluster import require_ray
        from .engines import make_engine
        from .models import pick_device

        params, ex = self.params, self.params.execution
        if ex.gpus_per_worker == 0 and pick_device(params.model.device).startswith("cuda"):
            raise ParamsError(f"execution.gpus_per_worker: 0 leaves the Ray workers without a "
                              f"GPU, while model.device: {params.model.device} uses one here; "
                              "set execution.gpus_per_worker: 1 (or model.device: cpu)")
        if ex.address == "local" and ex.gpus_per_worker:
            import torch

            have = torch.cuda.device_count()
            if have < ex.gpus_per_worker:
                raise ParamsError(f"execution.gpus_per_worker: {ex.gpus_per_worker:g} GPU a "
                                  f"worker, this machine has {have}; lower it, or join a "
                                  "cluster with execution.address: auto")
        # The notebooks' python: this one, or the vLLM environment's.
        require_ray(make_engine(params).python())
        return (f"ray at {ex.address}: {ex.workers} workers x ({ex.cpus_per_worker} CPU, "
                f"{ex.gpus_per_worker:g} GPU), each loading the model once")

    def shutdown(self):
        from .cluster import shutdown

        shutdown()


EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(params: StudyParams) -> Executor:
    """The executor `execution.mode` names (the one place that reads it)."""
    return EXECUTORS[params.execution.mode](params)


def setup_targets(params: StudyParams) -> list[str]:
    """The make targets that install what these params' engine and executor need (the
    Makefile's `report` runs them first): setup-vllm, setup-ray and, for both, the vLLM
    environment's Ray (setup-vllm-ray)."""
    from .engines import make_engine

    extras = [e for e in (make_engine(params).extra, make_executor(params).extra) if e]
    return [f"setup-{e}" for e in extras] + (["setup-" + "-".join(extras)]
                                             if len(extras) > 1 else [])
