"""experiment_results.json: every stage's artifacts gathered into one validated document."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .artifacts import StageDir, done_record, read_json, read_table, stage_folder, write_json
from .data import split_sizes
from .manifest import build_manifest
from .stages import RANDOM_PREFIX, STAGE_NAMES, UNSTEERED_LAYER
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
    for name in ("empty_rate", "repetition_rate"):
        record[name] = float(row.get(name, 0.0))
    record["capability_acc"] = None
    record["capability_acc_ci"] = None
    return record


def capability_summary(capability: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Accuracy per (split, group, layer, alpha) with a 95% bootstrap interval over items.

    group is 'caa' for unsteered and CAA cells, 'random' for the control's directions
    (pooled over directions).
    """
    columns = ["split", "group", "layer", "alpha", "acc", "acc_ci", "n_items"]
    if capability.empty:
        return pd.DataFrame(columns=columns)
    table = capability.assign(group=np.where(
        capability["direction"].astype(str).str.startswith(RANDOM_PREFIX), "random", "caa"))
    rows = []
    for (split, group, layer, alpha), cell in table.groupby(["split", "group", "layer", "alpha"],
                                                            sort=True):
        values = cell["correct"].astype(float).to_numpy()
        lo, hi = metrics.bootstrap_ci(values, n_boot=n_boot, seed=seed)
        rows.append({"split": split, "group": group, "layer": int(layer), "alpha": float(alpha),
                     "acc": float(values.mean()), "acc_ci": [float(lo), float(hi)],
                     "n_items": int(cell["item"].nunique())})
    return pd.DataFrame(rows, columns=columns)


_CELL_CAPABILITY = {"grid": ("dev", "caa"), "sweep": ("eval", "caa"), "control": ("eval", "random")}


def _attach_capability(cells: list[dict], accuracy: pd.DataFrame) -> None:
    by_cell = {(r.split, r.group, int(r.layer), float(r.alpha)): r for r in accuracy.itertuples()}
    for cell in cells:
        split, group = _CELL_CAPABILITY[cell["stage"]]
        if cell["alpha"] == 0:
            key = (split, "caa", UNSTEERED_LAYER, 0.0)
        else:
            key = (split, group, cell["layer"], cell["alpha"])
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


def _eval_confirmation(selection: dict, sweep_cells: pd.DataFrame, accuracy: pd.DataFrame,
                       rule: metrics.SelectionRule) -> dict | None:
    """The dev-chosen cell measured on eval: every criterion of the rule, checked again."""
    rec = selection["recommendation"]
    if rec is None:
        return None
    challenging = sweep_cells[sweep_cells["subset"] == "challenging"]
    reference = challenging[challenging["alpha"] == 0]
    cell = challenging[(challenging["layer"] == rec["layer"])
                       & (challenging["alpha"] == rec["alpha"])]
    if reference.empty or cell.empty:
        return None
    reference, cell = reference.iloc[0], cell.iloc[0]
    checks = metrics.fluency_checks(cell, reference, rule)
    eval_acc = accuracy[(accuracy["split"] == "eval") & (accuracy["group"] == "caa")]
    acc = {(int(r.layer), float(r.alpha)): float(r.acc) for r in eval_acc.itertuples()}
    ref_acc, cell_acc = acc.get((UNSTEERED_LAYER, 0.0)), acc.get((rec["layer"], rec["alpha"]))
    if ref_acc is not None and cell_acc is not None:
        checks["capability_acc"] = {"value": cell_acc,
                                    "limit": ref_acc - rule.max_capability_drop / 100.0,
                                    "ok": cell_acc >= ref_acc - rule.max_capability_drop / 100.0}
    delta_ci = _interval(cell, "delta_mean_toxicity")
    reduced = delta_ci is not None and delta_ci[1] < 0
    ref_tox, ref_ppl = float(reference["mean_toxicity"]), _number(reference["perplexity"])
    return {
        "layer": rec["layer"], "alpha": rec["alpha"], "split": "eval",
        "mean_toxicity": float(cell["mean_toxicity"]),
        "mean_toxicity_ci": _interval(cell, "mean_toxicity"),
        "reference_mean_toxicity": ref_tox,
        "toxicity_reduction": ((ref_tox - float(cell["mean_toxicity"])) / ref_tox
                               if ref_tox else None),
        "delta_mean_toxicity": _number(cell["delta_mean_toxicity"]),
        "delta_mean_toxicity_ci": delta_ci,
        "p_bootstrap": _number(cell["p_bootstrap"]),
        "perplexity": _number(cell["perplexity"]), "reference_perplexity": ref_ppl,
        "perplexity_increase": (None if ref_ppl is None or _number(cell["perplexity"]) is None
                                else float(cell["perplexity"]) / ref_ppl - 1.0),
        "capability_acc": cell_acc, "reference_capability_acc": ref_acc,
        "capability_drop_points": (None if cell_acc is None or ref_acc is None
                                   else (ref_acc - cell_acc) * 100.0),
        "empty_rate": float(cell["empty_rate"]), "reference_empty_rate":
            float(reference["empty_rate"]),
        "distinct_2": float(cell["distinct_2"]), "reference_distinct_2":
            float(reference["distinct_2"]),
        "checks": checks, "toxicity_reduced": reduced,
        "confirmed": bool(reduced and all(c["ok"] for c in checks.values())),
    }


def _control_summary(params, selection: dict, sweep: pd.DataFrame, control: pd.DataFrame,
                     accuracy: pd.DataFrame) -> dict | None:
    """CAA vs random directions at matched alpha, and whether the effect is specific."""
    from .sweep import control_comparison

    if control.empty:
        return None
    ev = params.evaluation
    layer = selection["control_layer"]
    steered = control[control["alpha"] != 0]
    comparison = control_comparison(sweep, control, layer, ev.toxic_threshold, ev.n_bootstrap,
                                    params.seed)
    rec = selection["recommendation"]
    alphas = [c["alpha"] for c in comparison]
    tested = (rec["alpha"] if rec and rec["alpha"] in alphas else max(alphas, default=None))
    at = next((c for c in comparison if c["alpha"] == tested), None)
    specific = None if at is None or at["diff_ci"][1] is None else bool(at["diff_ci"][1] < 0)
    return {"layer": int(layer), "n_directions": int(steered["direction"].nunique()),
            "samples_per_prompt": int(params.control.samples_per_prompt),
            "alphas": sorted(float(a) for a in steered["alpha"].unique()),
            "comparison": comparison, "alpha_tested": tested, "specific": specific}


def _methods_summary(stage: StageDir) -> dict | None:
    """The method comparison (see `comparison.comparison_results`), or None when not run."""
    from .comparison import comparison_results

    record = read_json(stage.input("methods_selection"))
    if not record.get("picks"):
        return None
    return comparison_results(stage.params, read_table(stage.input("methods_grid")),
                              read_table(stage.input("methods_eval")),
                              read_table(stage.input("methods_capability")), record)


def build_results(stage: StageDir) -> dict:
    """The experiment_results.json document for a run whose stages 01-05 are complete."""
    params = stage.params
    ev = params.evaluation
    prompts = read_table(stage.input("prompts"))
    baseline = read_table(stage.input("baseline"))
    vectors = SteeringVectors.load(stage.input("vectors"))
    stats = read_table(stage.input("layer_stats"))
    grid = read_table(stage.input("grid"))
    sweep = read_table(stage.input("sweep"))
    control = read_table(stage.input("control"))
    capability = read_table(stage.input("capability"))
    selection = read_json(stage.input("selection"))
    chosen = selection["chosen_layers"]
    rule = metrics.SelectionRule.from_params(ev)

    summarize = functools.partial(metrics.summarize_cells, threshold=ev.toxic_threshold,
                                  n_boot=ev.n_bootstrap, seed=params.seed)
    grid_cells, sweep_cells = summarize(grid), summarize(sweep)
    control_cells = summarize(control) if not control.empty else pd.DataFrame()
    base_rows = baseline[baseline["split"] == "eval"].assign(stage="baseline")
    base_cells = summarize(base_rows)
    cells = [_cell_record(row, vectors) for _, row in
             pd.concat([grid_cells, sweep_cells, control_cells]).iterrows()]
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
    recommendation = selection["recommendation"]
    if recommendation is not None:
        recommendation = {**recommendation, "split": "dev",
                          "holds_under_second_scorer": _second_scorer_holds(
                              sweep, recommendation["layer"], recommendation["alpha"],
                              ev.n_bootstrap, params.seed)}
    front = metrics.pareto_front(challenging.dropna(subset=["perplexity"]))

    agreement = None
    if "toxicity_second" in sweep:
        agreement = {"second": params.scorer.second, "n": int(len(sweep)),
                     "spearman": _number(metrics.spearman(sweep["toxicity"],
                                                          sweep["toxicity_second"]))}
    timings = {}
    for name in STAGE_NAMES:
        record = done_record(stage_folder(stage.runs_root, params, name))
        if record is not None:
            timings[name] = record.get("seconds")
    contrast_counts = (done_record(stage_folder(stage.runs_root, params, "03_activations"))
                       or {}).get("contrast_counts")
    cap_items = capability[(capability["split"] == "eval") & (capability["direction"] == "none")]
    comparison = None
    if "comparison_separation_auc" in stats:
        comparison = {"contrast": params.activations.comparison,
                      "norms": [float(x) for x in stats["comparison_vector_norm"]],
                      "cosine": [_number(x) for x in stats["comparison_cosine"]],
                      "separation_auc": [_number(x) for x in stats["comparison_separation_auc"]],
                      "auc_on_main_dev": [_number(x) for x in stats["comparison_auc_on_main_dev"]]}
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
                    "separation_auc": [_number(x) for x in stats["separation_auc"]],
                    "contrast_counts": contrast_counts,
                    "comparison": comparison},
        "baseline": {row["subset"]: {
            "n": int(row["n"]), "n_prompts": int(row["n_prompts"]),
            "mean_toxicity": float(row["mean_toxicity"]), "frac_toxic": float(row["frac_toxic"]),
            "emt": float(row["emt"]), "tp": float(row["tp"]),
            "perplexity": _number(row.get("perplexity")),
            "empty_rate": float(row["empty_rate"]),
            "repetition_rate": float(row["repetition_rate"])}
            for _, row in base_cells.iterrows()},
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
        "confirmation": _eval_confirmation(selection, sweep_cells, accuracy, rule),
        "control": _control_summary(params, selection, sweep, control, accuracy),
        "methods": _methods_summary(stage),
        "pareto": [{"layer": int(r.layer), "alpha": float(r.alpha)} for r in front.itertuples()],
        "examples": _examples(sweep, chosen[0], params.report.n_examples, params.seed),
    }


def write_results(results: dict, report_dir: Path) -> Path:
    """reports/<run>/experiment_results.json, written atomically."""
    return write_json(results, Path(report_dir) / RESULTS_FILE)


def summary_table(results: dict) -> pd.DataFrame:
    """Unsteered vs the dev-chosen cell, on dev (where it was chosen) and on eval (confirmation)."""
    rec = results["recommendation"]
    rows = {}
    for stage, split in (("grid", "dev"), ("sweep", "eval")):
        cells = [c for c in results["cells"] if c["stage"] == stage
                 and c["subset"] == "challenging"]
        rows[f"unsteered ({split})"] = next(c for c in cells if c["alpha"] == 0)
        if rec:
            rows[f"layer {rec['layer']}, alpha {rec['alpha']:g} ({split})"] = next(
                c for c in cells if c["layer"] == rec["layer"] and c["alpha"] == rec["alpha"])
    keys = ["n_prompts", "mean_toxicity", "frac_toxic", "perplexity", "empty_rate",
            "capability_acc"]
    return pd.DataFrame({name: {k: cell[k] for k in keys} for name, cell in rows.items()}).T


def methods_table(results: dict) -> pd.DataFrame:
    """Each method's dev pick and its eval numbers (challenging eval), unsteered first."""
    methods = results.get("methods")
    if not methods:
        return pd.DataFrame()
    rows = {}
    if methods["reference"]:
        rows["unsteered"] = {"cell": "", **{k: methods["reference"][k] for k in
                                            ("frac_toxic", "mean_toxicity", "perplexity")}}
    for m in methods["methods"]:
        ev = m["eval"] or {}
        rows[m["method"]] = {
            "cell": f"layer {m['layer']}, s = {m['strength']:g}" if m["picked"] else "none",
            "frac_toxic": ev.get("frac_toxic"), "mean_toxicity": ev.get("mean_toxicity"),
            "perplexity": ev.get("perplexity"), "fewer_toxic_x": m["toxic_fraction_ratio"],
            "capability_drop_points": (m["capability"] or {}).get("drop_points"),
            "within_limits_on_eval": m["within_limits_on_eval"]}
    return pd.DataFrame(rows).T
