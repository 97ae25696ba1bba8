"""Running job tables (generate, score, measure perplexity) in content-keyed, resumable shards.

A job table has one row per continuation to make: prompt, sample index, layer,
alpha and the steering direction's name. Rows are cut into shards per cell
(direction, layer, alpha), and each shard file is named by a hash of everything
that made it: its rows, the params fields that decide a row's text and scores
(model, generation, scorer, seed), the steering positions, the contents of its
steering direction, and the source of the code that shapes a row (`sources.rows_code`:
`rows.compute_rows` and what it reaches: engines, generation, steering, scoring,
likelihood, models, the vLLM engine...).
A shard made under other params or other code is therefore never read back, while a
shard whose rows and recipe are unchanged is reused by any stage and any later params
version (changing one alpha recomputes that alpha's shards only).
Several pending shards are generated together (rows of different cells share
batches), then written one file per shard. The engine (`engines.make_engine`, from
`generation.engine`) is who generates: transformers with steering hooks, or vLLM steered
per request; it is part of `generation`, so of every shard's key. The executor
(`executors.make_executor`, from `execution.mode`) is where: in this process, or on a
pool of Ray actors (`cluster`); it is part of no key, since a shard's contents depend
only on its rows and recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import digest, input_files, params_fields, read_table, record_shards
from .executors import ShardWork, make_executor
from .params import StudyParams
from .progress import start_rows
from .rows import RESULT_COLUMNS  # rows.compute_rows makes them (a stage's code reaches it)
from .sources import rows_code
from .stages import ARTIFACT_VERSION, UNSTEERED

SHARD_ROWS = 256  # rows per shard at most: an interruption loses at most one group of work
ROW_KEY = ("direction", "layer", "alpha", "prompt_id", "sample")
RECIPE_FIELDS = ("seed", "model", "generation", "scorer")


def plan_shards(jobs: pd.DataFrame, params: StudyParams, fingerprints: dict[str, str],
                positions: str) -> list[tuple[str, np.ndarray]]:
    """[(shard key, row positions in `jobs`)], cells in sorted order, rows by prompt and sample."""
    missing = [c for c in (*ROW_KEY, "prompt") if c not in jobs.columns]
    if missing:
        raise ValueError(f"run_jobs: job table lacks columns {missing}")
    unknown = sorted(set(jobs["direction"]) - set(fingerprints) - {UNSTEERED})
    if unknown:
        raise ValueError(f"run_jobs: rows steer along {unknown} but no such direction was given")
    recipe = {"version": ARTIFACT_VERSION, "params": params_fields(params, RECIPE_FIELDS),
              "positions": positions, "code": rows_code()}
    files = input_files(params, RECIPE_FIELDS)  # a local model's or scorer's files
    if files:  # none for hub ids and the offline model, whose shard keys stay as they were
        recipe["files"] = files
    order = jobs.reset_index(drop=True).sort_values(list(ROW_KEY), kind="stable")
    plan = []
    for (direction, layer, alpha), cell in order.groupby(["direction", "layer", "alpha"],
                                                         sort=True):
        for start in range(0, len(cell), SHARD_ROWS):
            chunk = cell.iloc[start:start + SHARD_ROWS]
            rows = chunk[["prompt_id", "prompt", "sample"]].to_numpy().tolist()
            key = digest({"recipe": recipe, "direction": direction,
                          "vectors": fingerprints.get(direction), "layer": int(layer),
                          "alpha": float(alpha), "rows": rows})
            plan.append((key, chunk.index.to_numpy()))
    return plan


def run_jobs(model, tokenizer, jobs: pd.DataFrame, directions: dict, params: StudyParams,
             scorers: dict, shard_dir: Path, positions: str = "all",
             desc: str = "generating") -> pd.DataFrame:
    """Jobs with completion, toxicity (and toxicity_second) and nll, in the jobs' row order.

    `directions` maps each direction name in `jobs["direction"]` to its SteeringVectors
    (none needed for unsteered rows). Finished shards in `shard_dir` are reused; the missing
    ones are computed by the params' executor (`executors.make_executor`): here, or on a
    pool of Ray actors, each holding its own model and scorers (`model`, `tokenizer` and
    `scorers` are then not used here).
    """
    if jobs.empty:
        raise ValueError(f"run_jobs ({desc}): the job table is empty; check the split sizes")
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    jobs = jobs.reset_index(drop=True)
    fingerprints = {name: vectors.fingerprint for name, vectors in (directions or {}).items()}
    plan = plan_shards(jobs, params, fingerprints, positions)
    record_shards(shard_dir, [key for key, _ in plan])  # in the open stage's shards.json
    paths = {key: shard_dir / f"{key}.parquet" for key, _ in plan}
    todo = [(key, rows) for key, rows in plan if not paths[key].is_file()]
    start_rows(desc, len(jobs), reused=len(jobs) - sum(len(rows) for _, rows in todo))
    if todo:
        make_executor(params).run(ShardWork(jobs, todo, paths, directions, params, positions,
                                            desc, len(plan), model, tokenizer, scorers))
    parts = [_checked(read_table(paths[key]), jobs.iloc[index], paths[key]) for key, index in plan]
    table = pd.concat(parts)
    return table.loc[jobs.index]


def _checked(shard: pd.DataFrame, expected: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The job rows with the shard's results, after checking it holds exactly those rows."""
    got = shard[list(ROW_KEY)].astype(str).to_numpy().tolist()
    want = expected[list(ROW_KEY)].astype(str).to_numpy().tolist()
    if got != want:
        raise RuntimeError(f"shard {path} does not hold the rows its key names; delete it and "
                           "rerun (it was written by other code or edited by hand)")
    results = [c for c in RESULT_COLUMNS if c in shard.columns]
    return expected.assign(**{c: shard[c].to_numpy() for c in results})
