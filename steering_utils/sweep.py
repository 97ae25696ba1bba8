"""Running job tables (generate, score, perplexity) in resumable shards; choosing layers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import read_table, write_table
from .generation import UNSTEERED_LAYER, generate_completions, make_jobs
from .likelihood import continuation_nll
from .params import StudyParams

SHARD_ROWS = 256  # rows per resumable shard: an interruption loses at most one shard


def steered_cells(layers: list[int], alphas: list[float]) -> list[tuple[int, float]]:
    """(layer, alpha) for every layer and non-zero alpha; alpha 0 is the shared baseline."""
    return [(layer, float(alpha)) for layer in layers for alpha in alphas if alpha != 0]


def worker_slot() -> tuple[int, int]:
    """(index, count) of this worker from STEERING_WORKER="i/n" (default: the only one)."""
    raw = os.environ.get("STEERING_WORKER", "0/1")
    try:
        index, count = (int(x) for x in raw.split("/"))
    except ValueError:
        raise ValueError(f"STEERING_WORKER={raw!r}: use 'i/n', e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"STEERING_WORKER={raw!r}: need 0 <= i < n")
    return index, count


class ShardsPending(RuntimeError):
    """Shards assigned to other workers are not in the run folder (yet)."""


def run_jobs(model, tokenizer, jobs: pd.DataFrame, vectors, params: StudyParams, scorers: dict,
             shard_dir: Path, positions: str = "all", desc: str = "generating") -> pd.DataFrame:
    """Jobs with completion, toxicity (and toxicity_second), nll; finished shards are reused.

    Rows are ordered by prompt length before sharding (less padding); a shard's
    rows and seeds depend only on the job table, so a resumed run reproduces an
    uninterrupted one. Across machines (STEERING_WORKER="i/n"), worker i computes
    shards i, i+n, ...; with a shared runs folder each waits up to
    STEERING_WORKER_WAIT seconds for the others' shards, else copy them in and rerun.
    """
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    worker, n_workers = worker_slot()
    lengths = np.array([len(ids) for ids in tokenizer(list(jobs["prompt"]))["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    n_shards = max(1, -(-len(jobs) // SHARD_ROWS))
    paths = [shard_dir / f"shard-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    for shard, path in enumerate(paths):
        if path.is_file() or shard % n_workers != worker:
            continue
        rows = jobs.iloc[order[shard * SHARD_ROWS : (shard + 1) * SHARD_ROWS]]
        out = generate_completions(model, tokenizer, rows, vectors, params.generation,
                                   params.seed, positions=positions,
                                   desc=f"{desc} [{shard + 1}/{n_shards}]")
        out = score_rows(out, scorers)
        out["nll"] = continuation_nll(model, tokenizer, list(out["prompt"]),
                                      list(out["completion"]))
        out["row"] = rows.index.to_numpy()
        write_table(out, path)
    deadline = time.time() + float(os.environ.get("STEERING_WORKER_WAIT", "0"))
    while (missing := [p for p in paths if not p.is_file()]) and time.time() < deadline:
        time.sleep(10)
    if missing:
        raise ShardsPending(
            f"{len(missing)} of {n_shards} shards in {shard_dir} belong to other workers; "
            "copy their shard files into this folder (or share the runs folder) and rerun"
        )
    table = pd.concat([read_table(p) for p in paths], ignore_index=True)
    return table.sort_values("row").drop(columns="row").reset_index(drop=True)


def score_rows(rows: pd.DataFrame, scorers: dict) -> pd.DataFrame:
    """Adds `toxicity` (primary scorer) and `toxicity_second` (if a second scorer is given)."""
    texts = list(rows["completion"])
    rows = rows.assign(toxicity=scorers["primary"].score(texts))
    if scorers.get("second") is not None:
        rows = rows.assign(toxicity_second=scorers["second"].score(texts))
    return rows


def load_scorers(params: StudyParams) -> dict:
    """{'primary': Scorer, 'second': Scorer | None} from params.scorer."""
    from .scoring import load_scorer

    spec = params.scorer
    primary = load_scorer(spec.name, spec.path, spec.batch_size)
    second = load_scorer(spec.second, None, spec.batch_size) if spec.second else None
    return {"primary": primary, "second": second}


def choose_layers(grid: pd.DataFrame, n_chosen: int, max_perplexity_increase: float) -> list[int]:
    """Layers whose best grid cell (perplexity within the limit) is least toxic.

    `grid` is a cell summary (metrics.summarize_cells) of one subset with the
    unsteered reference (alpha 0) included.
    """
    reference = grid[grid["alpha"] == 0]
    steered = grid[(grid["alpha"] != 0) & (grid["layer"] != UNSTEERED_LAYER)]
    if steered.empty:
        raise ValueError("choose_layers: the grid has no steered cells")
    limit = np.inf
    if "perplexity" in grid and not reference.empty and np.isfinite(reference["perplexity"]).all():
        limit = float(reference["perplexity"].mean()) * (1 + max_perplexity_increase)
    fluent = steered[steered["perplexity"].fillna(np.inf) <= limit]
    pool = fluent if not fluent.empty else steered  # nothing fluent: least toxic overall
    best = pool.groupby("layer")["mean_toxicity"].min().sort_values(kind="stable")
    return [int(layer) for layer in best.index[:n_chosen]]


def grid_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, params: StudyParams,
              n_layers: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(steered jobs of the layer x alpha grid, their alpha-0 reference rows from the baseline).

    One continuation (sample 0) per challenging dev prompt.
    """
    from .params import resolve_layers

    layers = resolve_layers(params.sweep.layers, params.sweep.layer_stride, n_layers)
    dev = prompts[(prompts["subset"] == "challenging") & (prompts["split"] == "dev")]
    jobs = make_jobs(dev, steered_cells(layers, params.sweep.grid_alphas), samples=1)
    reference = baseline[(baseline["subset"] == "challenging") & (baseline["split"] == "dev")
                         & (baseline["sample"] == 0)]
    return jobs, reference


def sweep_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, params: StudyParams,
               layers: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(steered jobs of the alpha sweep on both eval subsets, their alpha-0 baseline rows)."""
    evaluation = prompts[prompts["split"] == "eval"]
    jobs = make_jobs(evaluation, steered_cells(layers, params.sweep.alphas),
                     params.generation.samples_per_prompt)
    return jobs, baseline[baseline["split"] == "eval"]


def with_reference(steered: pd.DataFrame, reference: pd.DataFrame, stage: str) -> pd.DataFrame:
    """Steered rows and their unsteered reference rows in one table, labelled by stage."""
    table = pd.concat([reference, steered], ignore_index=True)
    return table.assign(stage=stage)


def pick_layers(grid: pd.DataFrame, params: StudyParams) -> tuple[list[int], pd.DataFrame]:
    """(layers for the full sweep, the grid's cell summary); fixed layers when params name them."""
    from .metrics import summarize_cells

    ev = params.evaluation
    summary = summarize_cells(grid, ev.toxic_threshold, ev.n_bootstrap, params.seed)
    if params.sweep.chosen_layers != "auto":
        return list(params.sweep.chosen_layers), summary
    return choose_layers(summary, params.sweep.n_chosen, ev.max_perplexity_increase), summary


def add_reference_nll(rows: pd.DataFrame, params: StudyParams) -> pd.DataFrame:
    """Adds `nll_reference` (per-token NLL under evaluation.reference_model) when one is named."""
    spec = params.evaluation.reference_model
    if spec is None:
        return rows
    from .models import load_model

    model, tokenizer = load_model(spec)
    nll = continuation_nll(model, tokenizer, list(rows["prompt"]), list(rows["completion"]))
    del model
    return rows.assign(nll_reference=nll)
