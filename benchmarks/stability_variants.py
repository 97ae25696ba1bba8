"""Where a dev pick's stability comes from: one run's dev grid, resampled under rule variants.

    .venv/bin/python benchmarks/stability_variants.py runs/reference params/reference.yaml \
        --benign-first 24 --benign-random 24

Reads 05's newest complete folder under the run folder (`grid.parquet`, `capability.parquet`)
and 01's prompts, then prints the share of 200 bootstrap resamples of the dev prompts that
repeat the pick (`metrics.pick_stability`, as 05 measures it) for every combination of:
- the tie band: `evaluation.tie_se` 0 (the least toxic cell) and 1 (the one-SE rule);
- the benign dev prompts: all of them, the first N in 01's split order (`--benign-first`:
  a smaller dev set of the same seed is a prefix of it) and N drawn at random
  (`--benign-random`).
docs/study.md's reference section quotes its table. Nothing is generated: seconds per line.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from steering_utils import metrics
from steering_utils.claims import dev_capability
from steering_utils.params import load_params


def newest_complete(stage_root: Path) -> Path:
    """The stage's newest folder with a done.json (a finished run of the stage)."""
    done = sorted(stage_root.glob("*/done.json"), key=lambda p: p.stat().st_mtime)
    if not done:
        raise SystemExit(f"{stage_root}: no complete stage folder (run the study first)")
    return done[-1].parent


def benign_subsets(prompts: pd.DataFrame, first: int | None, random: int | None,
                   seed: int) -> dict[str, set | None]:
    """{label: benign dev prompt ids kept (None: all)}."""
    dev = prompts[(prompts["subset"] == "benign") & (prompts["split"] == "dev")]["prompt_id"]
    out: dict[str, set | None] = {f"all {len(dev)}": None}
    if first:
        out[f"first {first}"] = set(dev.iloc[:first])
    if random:
        ids = np.sort(dev.to_numpy())
        out[f"random {random}"] = set(np.random.default_rng(seed).choice(ids, random,
                                                                         replace=False))
    return out


def stability_table(grid: pd.DataFrame, subsets: dict[str, set | None], rule, capability,
                    tie_ses=(0.0, 1.0), n_resamples: int = 200, seed: int = 0) -> pd.DataFrame:
    """One row per (benign dev set, tie_se): the pick, its share and the alternatives."""
    records = []
    for label, kept in subsets.items():
        rows = grid if kept is None else grid[(grid["subset"] != "benign")
                                              | grid["prompt_id"].isin(kept)]
        for tie_se in tie_ses:
            st = metrics.pick_stability(rows, dataclasses.replace(rule, tie_se=tie_se),
                                        capability, n_resamples, seed)
            records.append({"benign dev": label, "tie_se": tie_se, "chosen": st.chosen,
                            "cell_share": st.cell_share,
                            "alternatives": ", ".join(
                                f"L{a.layer} a{a.alpha:g} {a.share:.1%}"
                                for a in st.alternatives)})
    return pd.DataFrame.from_records(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder, runs/<run_name>")
    parser.add_argument("params", type=Path)
    parser.add_argument("--benign-first", type=int, default=None)
    parser.add_argument("--benign-random", type=int, default=None)
    args = parser.parse_args()
    params = load_params(args.params)
    sweep = newest_complete(args.run / "05_sweep")
    grid = pd.read_parquet(sweep / "grid.parquet")
    capability_rows = sweep / "capability.parquet"
    capability = (dev_capability(pd.read_parquet(capability_rows))
                  if capability_rows.exists() else None)
    prompts = pd.read_parquet(newest_complete(args.run / "01_data") / "prompts.parquet")
    subsets = benign_subsets(prompts, args.benign_first, args.benign_random, seed=0)
    table = stability_table(grid, subsets, metrics.SelectionRule.from_params(params.evaluation),
                            capability, n_resamples=params.sweep.stability_resamples or 200,
                            seed=params.seed)
    with pd.option_context("display.max_colwidth", 120, "display.width", 200):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
