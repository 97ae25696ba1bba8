"""Two runs' effect side by side: toxicity against alpha at the chosen layer, with CIs.

    .venv/bin/python benchmarks/compare_runs.py reports/default reports/default-vllm

Reads each run's `experiment_results.json` (schema-validated) and prints each run's dev
decision and eval confirmation, then for every cell both runs have (the dev grid: every
grid layer x alpha; the eval sweep: the alphas at the chosen layer, when both chose it)
both runs' mean toxicity with its 95% CI, and whether the two intervals overlap.
Made for the engines (HF vs vLLM: the same study sampled by two samplers, so rows
differ and the distributions should not), it reads any two runs of one study.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from steering_utils.results import load_results


def _cell(row) -> str:
    return f"{row.mean_toxicity:.3f} [{row.mean_toxicity_ci_lo:.3f}, {row.mean_toxicity_ci_hi:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a report folder (or its results file)")
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    paths = [p / "experiment_results.json" if p.is_dir() else p for p in (args.first, args.second)]
    runs = [load_results(p) for p in paths]
    names = [p.parent.name for p in paths]
    for name, run in zip(names, runs):
        rec = run.recommendation
        conf = run.confirmation
        print(f"{name}: engine {run.manifest.params['generation'].get('engine', 'hf')}, "
              f"chosen layers {run.chosen_layers}; dev pick "
              + (f"layer {rec.layer} alpha {rec.alpha}" if rec else "none")
              + (f"; eval {conf.mean_toxicity:.3f} vs {conf.reference_mean_toxicity:.3f} "
                 f"unsteered, {'confirmed' if conf.confirmed else 'not confirmed'}"
                 if conf else ""))
    for experiment in ("grid", "sweep"):
        _side_by_side(experiment, [run.cells_table(experiment) for run in runs], names)


def _side_by_side(experiment: str, cells: list, names: list[str]) -> None:
    """Each cell both runs have, with both CIs and whether they overlap."""
    tables = [t.set_index(["subset", "layer", "alpha"]) for t in cells]
    common = tables[0].index.intersection(tables[1].index)
    overlap = 0
    print(f"\n{experiment}\n{'subset':<12}{'layer':>6}{'alpha':>7}  {names[0]:>24}  "
          f"{names[1]:>24}  overlap")
    for key in common:
        a, b = (t.loc[key] for t in tables)
        same = a.mean_toxicity_ci_lo <= b.mean_toxicity_ci_hi and (
            b.mean_toxicity_ci_lo <= a.mean_toxicity_ci_hi)
        overlap += same
        print(f"{key[0]:<12}{key[1]:>6}{key[2]:>7}  {_cell(a):>24}  {_cell(b):>24}  "
              f"{'yes' if same else 'NO'}")
    print(f"{overlap} of {len(common)} shared {experiment} cells have overlapping 95% CIs "
          f"({len(tables[0]) - len(common)} and {len(tables[1]) - len(common)} cells "
          "only in one run)")


if __name__ == "__main__":
    main()
