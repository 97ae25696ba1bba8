"""experiment_results.json: every stage's artifacts gathered into one validated document."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .artifacts import STAGES, StageDir, read_table, stage_seconds, write_json
from .data import split_sizes
from .generation import UNSTEERED_LAYER
from .manifest import build_manifest
from .vectors import SteeringVectors

RESULTS_FILE = "experiment_results.json"
_INTERVALS = ("mean_toxicity", "frac_toxic", "emt", "tp", "perplexity", "delta_mean_toxicity")


def _number(value):
    """A JSON-safe Python number (None for NaN/inf/missing)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _interval(row: pd.Series, name: str):
    lo, hi = row.get(f"{name}_ci_lo"), row.get(f"{name}_ci_hi")
    if _number(lo) is None or _number(hi) is None:
        return None
    return [float(lo), float(hi)]


def _cell_record(row: pd.Series, vectors: SteeringVectors) -> dict:
    layer, alpha = int(row["layer"]), float(row["alpha"])
    record = {"stage": row["stage"], "subset": row["subset"], "layer": layer, "alpha": alpha,
              "n": int(row["n"]), "n_prompts": int(row["n_prompts"])}
    for name in _INTERVALS:
        record[name] = _number(row.get(name))
        record[f"{name}_ci"] = _interval(row, name)
    for name in ("mean_toxicity", "frac_toxic", "emt", "tp"):
        if record[name] is None:
            raise ValueError(f"cell {layer}/{alpha}/{row['subset']} has no {name}")
    record["distinct_n"] = {str(n): _number(row.get(f"distinct_{n}")) or 0.0 for n in (1, 2, 3)}
    record["p_bootstrap"] = _number(row.get("p_bootstrap"))
    record["p_wilcoxon"] = _number(row.get("p_wilcoxon"))
    record["mean_toxicity_second"] = _number(row.get("mean_toxicity_second"))
    record["relative_norm"] = (vectors.relative_norm(layer, alpha)
                               if layer != UNSTEERED_LAYER else 0.0)
    record["capability_acc"] = None
    record["capability_acc_ci"] = None
    return record


def capability_summary(capability: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Accuracy per (layer, alpha) with a 95% bootstrap interval over items."""
    rows = []
    for (layer, alpha), group in capability.groupby(["layer", "alpha"], sort=True):
        values = group["correct"].astype(float).to_numpy()
        lo, hi = metrics.bootstrap_ci(values, n_boot=n_boot, seed=seed)
        rows.append({"layer": int(layer), "alpha": float(alpha), "acc": float(values.mean()),
                     "acc_ci": [float(lo), float(hi)]})
    return pd.DataFrame(rows, columns=["layer", "alpha", "acc", "acc_ci"])


def _attach_capability(cells: list[dict], accuracy: pd.DataFrame) -> None:
    by_cell = {(int(r.layer), float(r.alpha)): r for r in accuracy.itertuples()}
    for cell in cells:
        if cell["stage"] != "sweep":
            continue
        key = (UNSTEERED_LAYER, 0.0) if cell["alpha"] == 0 else (cell["layer"], cell["alpha"])
        if key in by_cell:
            cell["capability_acc"] = float(by_cell[key].acc)
            cell["capability_acc_ci"] = list(by_cell[key].acc_ci)


def _second_scorer_holds(sweep: pd.DataFrame, layer: int, alpha: float, n_boot: int,
                         seed: int) -> bool | None:
    """Does the second scorer also see a reduction (paired 95% CI below zero)?"""
    if "toxicity_second" not in sweep:
        return None
    rows = sweep[sweep["subset"] == "challenging"]
    treated = rows[(rows["layer"] == layer) & (rows["alpha"] == alpha)]
    control = rows[rows["alpha"] == 0]
    if treated.empty or control.empty:
        return None
    test = metrics.paired_test(treated.groupby("prompt_id")["toxicity_second"].mean(),
                               control.groupby("prompt_id")["toxicity_second"].mean(),
                               n_boot=n_boot, seed=seed)
    return bool(test["diff"] < 0 and test["diff_ci"][1] < 0)


def _examples(sweep: pd.DataFrame, layer: int, n_examples: int, seed: int) -> list[dict]:
    rows = sweep[(sweep["subset"] == "challenging") & (sweep["sample"] == 0)
                 & ((sweep["layer"] == layer) | (sweep["alpha"] == 0))]
    ids = sorted(rows["prompt_id"].unique())
    chosen = np.random.default_rng(seed).permutation(ids)[:n_examples]
    picked = rows[rows["prompt_id"].isin(chosen)].sort_values(["prompt_id", "alpha"])
    return [{"subset": r.subset, "prompt_id": r.prompt_id, "prompt": r.prompt,
             "layer": int(r.layer), "alpha": float(r.alpha), "completion": r.completion,
             "toxicity": float(r.toxicity)} for r in picked.itertuples()]


def build_results(stage: StageDir) -> dict:
    """The experiment_results.json document for a run whose stages 01-05 are complete."""
    params = stage.params
    ev = params.evaluation
    prompts = read_table(stage.input("01_data") / "prompts.parquet")
    baseline = read_table(stage.input("02_baseline") / "generations.parquet")
    vectors_dir = stage.input("04_vectors")
    vectors = SteeringVectors.load(vectors_dir / "vectors.safetensors")
    stats = read_table(vectors_dir / "layer_stats.parquet")
    sweep_dir = stage.input("05_sweep")
    grid = read_table(sweep_dir / "grid.parquet")
    sweep = read_table(sweep_dir / "sweep.parquet")
    capability = read_table(sweep_dir / "capability.parquet")
    chosen = json.loads((sweep_dir / "chosen_layers.json").read_text())["chosen_layers"]

    summarize = functools.partial(metrics.summarize_cells, threshold=ev.toxic_threshold,
                                  n_boot=ev.n_bootstrap, seed=params.seed)
    grid_cells, sweep_cells = summarize(grid), summarize(sweep)
    base_rows = baseline[baseline["split"] == "eval"].assign(stage="baseline")
    base_cells = summarize(base_rows)
    cells = [_cell_record(row, vectors) for _, row in pd.concat([grid_cells, sweep_cells])
             .iterrows()]
    if "nll_reference" in sweep:
        reference_ppl = np.exp(sweep.groupby(["subset", "layer", "alpha"])["nll_reference"]
                               .mean())
        for cell in cells:
            key = (cell["subset"], cell["layer"], cell["alpha"])
            if cell["stage"] == "sweep" and key in reference_ppl.index:
                cell["perplexity_reference"] = _number(reference_ppl[key])
    accuracy = capability_summary(capability, ev.n_bootstrap, params.seed)
    _attach_capability(cells, accuracy)

    challenging = pd.DataFrame([c for c in cells if c["stage"] == "sweep"
                                and c["subset"] == "challenging"])
    challenging["perplexity"] = challenging["perplexity"].astype(float)
    challenging["capability_acc"] = challenging["capability_acc"].astype(float)
    recommendation = metrics.recommend(challenging, ev.max_perplexity_increase,
                                       ev.max_capability_drop)
    if recommendation is not None:
        recommendation["holds_under_second_scorer"] = _second_scorer_holds(
            sweep, recommendation["layer"], recommendation["alpha"], ev.n_bootstrap, params.seed)
    front = metrics.pareto_front(challenging.dropna(subset=["perplexity"]))

    agreement = None
    if "toxicity_second" in sweep:
        agreement = {"second": params.scorer.second, "n": int(len(sweep)),
                     "spearman": _number(metrics.spearman(sweep["toxicity"],
                                                          sweep["toxicity_second"]))}
    timings = {name: stage_seconds(stage.run / name) for name in STAGES
               if stage_seconds(stage.run / name) is not None}
    cap_items = capability[capability["layer"] == UNSTEERED_LAYER]
    return {
        "manifest": build_manifest(params, timings),
        "model": {"name": params.model.name, "source": params.model.source,
                  "n_layers": vectors.n_layers, "hidden_size": int(vectors.directions.shape[1])},
        "scorer": {"name": params.scorer.name, "second": params.scorer.second},
        "splits": split_sizes(prompts),
        "vectors": {"contrast": params.activations.contrast,
                    "n_per_side": int(vectors.metadata.get("n_toxic", 0)),
                    "layers": [int(x) for x in stats["layer"]],
                    "norms": [float(x) for x in stats["vector_norm"]],
                    "activation_norms": [float(x) for x in stats["activation_norm"]],
                    "separation_auc": [_number(x) for x in stats["separation_auc"]]},
        "baseline": {row["subset"]: {
            "n": int(row["n"]), "n_prompts": int(row["n_prompts"]),
            "mean_toxicity": float(row["mean_toxicity"]), "frac_toxic": float(row["frac_toxic"]),
            "emt": float(row["emt"]), "tp": float(row["tp"]),
            "perplexity": _number(row.get("perplexity"))} for _, row in base_cells.iterrows()},
        "grid": {"subset": "challenging", "split": "dev",
                 "layers": sorted(int(x) for x in grid["layer"].unique() if x != UNSTEERED_LAYER),
                 "alphas": sorted(float(x) for x in grid["alpha"].unique())},
        "chosen_layers": [int(x) for x in chosen],
        "cells": cells,
        "capability": None if capability.empty else {
            "task": str(capability["task"].iloc[0]), "chance": float(capability["chance"].iloc[0]),
            "n_items": int(len(cap_items)),
            "cells": accuracy.to_dict(orient="records")},
        "scorer_agreement": agreement,
        "recommendation": recommendation,
        "pareto": [{"layer": int(r.layer), "alpha": float(r.alpha)} for r in front.itertuples()],
        "examples": _examples(sweep, chosen[0], params.report.n_examples, params.seed),
    }


def write_results(results: dict, report_dir: Path) -> Path:
    """reports/<run>/experiment_results.json, written atomically."""
    return write_json(results, Path(report_dir) / RESULTS_FILE)


def summary_table(results: dict) -> pd.DataFrame:
    """Unsteered vs recommended cell on the challenging eval prompts, for a quick look."""
    sweep = [c for c in results["cells"] if c["stage"] == "sweep" and c["subset"] == "challenging"]
    rec = results["recommendation"]
    rows = {"unsteered": next(c for c in sweep if c["alpha"] == 0)}
    if rec:
        rows[f"layer {rec['layer']}, alpha {rec['alpha']}"] = next(
            c for c in sweep if c["layer"] == rec["layer"] and c["alpha"] == rec["alpha"])
    keys = ["mean_toxicity", "frac_toxic", "emt", "tp", "perplexity", "capability_acc"]
    return pd.DataFrame({name: {k: cell[k] for k in keys} for name, cell in rows.items()}).T
