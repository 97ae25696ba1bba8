"""Building `experiment_results.json` from a finished run's artifacts (06_report).

`build_results(stage)` reads the stage folders of 01-05 (prompts, the dev grid and its
decision, the eval sweep, the control, capability, the methods' search, matched points and
eval rows, conditional CAA, the specificity probe), computes what the report states about
them (the eval confirmation with its verdicts, the control comparison, the claims and their
power) and returns the typed document (`results.ExperimentResults`). The models themselves,
their schema and their I/O stay in `results.py`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd

from . import claims, metrics
from .artifacts import StageDir, done_record, read_json, read_table
from .decisions import DevSelection
from .metrics import SelectionRule, finite
from .outcomes import Confirmation, Control, Methods
from .power import Verdict
from .results import (
    CapabilityCell,
    Cell,
    ExperimentResults,
    LayerStats,
    table_records,
    validate_results,
)
from .specificity import Specificity
from .stages import (
    CAA,
    RANDOM_PREFIX,
    UNSTEERED,
    UNSTEERED_LAYER,
)


def capability_summary(capability: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Accuracy per (split, group, layer, alpha) with a 95% bootstrap interval over items.

    group is 'caa' for unsteered and CAA cells, 'random' for the control's directions
    (pooled over directions).
    """
    columns = list(CapabilityCell.model_fields)
    if capability.empty:
        return pd.DataFrame(columns=columns)
    table = capability.assign(group=np.where(
        capability["direction"].astype(str).str.startswith(RANDOM_PREFIX), "random", CAA))
    rows = []
    for (split, group, layer, alpha), cell in table.groupby(["split", "group", "layer", "alpha"],
                                                            sort=True):
        values = cell["correct"].astype(float).to_numpy()
        lo, hi = metrics.bootstrap_ci(values, n_boot=n_boot, seed=seed)
        rows.append({"split": split, "group": group, "layer": int(layer), "alpha": float(alpha),
                     "acc": float(values.mean()), "acc_ci_lo": lo, "acc_ci_hi": hi,
                     "n_items": int(cell["item"].nunique())})
    return pd.DataFrame(rows, columns=columns)


def _with_capability(cells: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Each cell's accuracy on its split's items (the unsteered one for alpha 0)."""
    if accuracy.empty:
        return cells.assign(capability_acc=np.nan, capability_acc_ci_lo=np.nan,
                            capability_acc_ci_hi=np.nan)
    group = np.where(cells["experiment"] == "control", "random", CAA)
    unsteered = cells["alpha"] == 0
    keys = cells.assign(group=np.where(unsteered, CAA, group),
                        layer=np.where(unsteered, UNSTEERED_LAYER, cells["layer"]))
    on = ["split", "group", "layer", "alpha"]
    found = keys[on].merge(accuracy, on=on, how="left")
    return cells.assign(capability_acc=found["acc"].to_numpy(),
                        capability_acc_ci_lo=found["acc_ci_lo"].to_numpy(),
                        capability_acc_ci_hi=found["acc_ci_hi"].to_numpy())


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


def _eval_confirmation(chosen: tuple[int, float] | None, cells: pd.DataFrame,
                       rule: SelectionRule, verdicts: dict[str, Verdict] | None = None
                       ) -> Confirmation | None:
    """The dev-chosen cell, (layer, alpha), measured on eval: every criterion of the rule,
    checked again, each pass / fail / undecidable at this n by its paired verdict
    (`claims.criteria_status`)."""
    if chosen is None:
        return None
    layer, alpha = chosen
    # Benign perplexity is a criterion too (the rule holds dev to it; eval checks it again).
    challenging = metrics.with_benign_fluency(cells[cells["experiment"] == "sweep"])
    reference = challenging[challenging["alpha"] == 0]
    cell = challenging[(challenging["layer"] == layer) & (challenging["alpha"] == alpha)]
    if reference.empty or cell.empty:
        return None
    reference, cell = reference.iloc[0], cell.iloc[0]
    checks = metrics.fluency_checks(cell, reference, rule)
    ref_acc, cell_acc = finite(reference["capability_acc"]), finite(cell["capability_acc"])
    capability = metrics.capability_check(cell_acc, ref_acc, rule)
    if capability is not None:
        checks["capability_acc"] = capability
    degenerate = list(cell.get("degenerate", []))
    reduced = finite(cell["delta_mean_toxicity_ci_hi"]) is not None and \
        cell["delta_mean_toxicity_ci_hi"] < 0 and not degenerate
    ref_tox, ref_ppl, ppl = (float(reference["mean_toxicity"]), finite(reference["perplexity"]),
                             finite(cell["perplexity"]))
    picked = {name: finite(cell[name]) for name in (
        "mean_toxicity_ci_lo", "mean_toxicity_ci_hi", "delta_mean_toxicity",
        "delta_mean_toxicity_ci_lo", "delta_mean_toxicity_ci_hi", "p_bootstrap")}
    criteria = claims.criteria_status(checks, verdicts or {})
    return Confirmation(
        layer=layer, alpha=alpha, mean_toxicity=float(cell["mean_toxicity"]), **picked,
        reference_mean_toxicity=ref_tox,
        toxicity_reduction=((ref_tox - float(cell["mean_toxicity"])) / ref_tox
                            if ref_tox else None),
        perplexity=ppl, reference_perplexity=ref_ppl,
        perplexity_increase=None if ref_ppl is None or ppl is None else ppl / ref_ppl - 1.0,
        capability_acc=cell_acc, reference_capability_acc=ref_acc,
        capability_drop_points=(None if cell_acc is None or ref_acc is None
                                else (ref_acc - cell_acc) * 100.0),
        empty_rate=float(cell["empty_rate"]), reference_empty_rate=float(reference["empty_rate"]),
        distinct_2=float(cell["distinct_2"]),
        reference_distinct_2=float(reference["distinct_2"]),
        checks=checks, criteria=criteria, degenerate=degenerate, toxicity_reduced=bool(reduced),
        confirmed=bool(reduced and all(v == "pass" for v in criteria.values())))


def _degenerate_at(cells: pd.DataFrame, experiment: str, layer: int, alpha: float) -> bool:
    """Is the challenging cell (experiment, layer, alpha) flagged degenerate?"""
    found = cells[(cells["experiment"] == experiment) & (cells["subset"] == "challenging")
                  & (cells["layer"] == layer) & (cells["alpha"] == alpha)]
    return bool(found["degenerate"].map(len).gt(0).any())


def _control_summary(params, selection: DevSelection, sweep: pd.DataFrame,
                     control: pd.DataFrame, cells: pd.DataFrame) -> Control | None:
    """CAA vs random directions at matched alpha, and whether the effect is specific (never
    where CAA's output is degenerate: a broken text's low score is no evidence)."""
    from .sweep import control_comparison

    if control.empty:
        return None
    ev = params.evaluation
    layer = selection.control_layer
    steered = control[control["alpha"] != 0]
    comparison = [c.model_copy(update={
        "caa_degenerate": _degenerate_at(cells, "sweep", layer, c.alpha),
        "random_degenerate": _degenerate_at(cells, "control", layer, c.alpha)})
        for c in control_comparison(sweep, control, layer, ev.toxic_threshold, ev.n_bootstrap,
                                    params.seed)]
    rec = selection.recommendation
    alphas = [c.alpha for c in comparison]
    tested = (rec.alpha if rec and rec.alpha in alphas else max(alphas, default=None))
    at = next((c for c in comparison if c.alpha == tested), None)
    high = None if at is None or at.caa_degenerate else at.diff_ci_hi
    return Control(layer=int(layer), n_directions=int(steered["direction"].nunique()),
                   samples_per_prompt=int(params.control.samples_per_prompt),
                   alphas=sorted(float(a) for a in steered["alpha"].unique()),
                   comparison=comparison, alpha_tested=tested,
                   specific=None if high is None else bool(high < 0))


def _vectors_record(params, vectors, stats: pd.DataFrame, contrast_counts) -> dict:
    comparison = "comparison_separation_auc" in stats
    return {"contrast": params.activations.contrast,
            "comparison_contrast": params.activations.comparison if comparison else None,
            "n_per_side": int(vectors.metadata.get("n_toxic", 0)),
            "contrast_counts": contrast_counts, "layers": table_records(stats, LayerStats)}


def _methods_summary(stage: StageDir) -> Methods | None:
    """The method comparison (see `comparison.comparison_results`), or None when not run."""
    from .comparison import comparison_results
    from .goal import comparison_verdicts

    record = read_json(stage.input("methods_selection"))
    if not record.get("picks"):
        return None
    # The unsteered dev accuracy is measured once, in 05's capability table; it is the
    # yardstick of each method's dev capability check (see why a method had no pick).
    capability = read_table(stage.input("capability"))
    unsteered_dev = capability[(capability["split"] == "dev")
                               & (capability["direction"] == UNSTEERED)]
    methods_capability = read_table(stage.input("methods_capability"))
    methods_eval = read_table(stage.input("methods_eval"))
    out = comparison_results(stage.params, read_table(stage.input("methods_grid")),
                             methods_eval,
                             pd.concat([methods_capability, unsteered_dev], ignore_index=True)
                             if not unsteered_dev.empty else methods_capability, record)
    if out is None:
        return None
    # every pair at the matched points, and the goal (eval only)
    return out.model_copy(update=comparison_verdicts(stage.params, record, methods_eval,
                                                     methods_capability))


def _conditional_summary(stage: StageDir):
    """Conditional CAA beside CAA (`conditional.summarize`: `ConditionalSteering`), or None
    when not run."""
    from .conditional import summarize

    record = read_json(stage.input("conditional"))
    if not record or record.get("cell") is None:
        return None
    capability = read_table(stage.input("conditional_capability"))
    return summarize(read_table(stage.input("conditional_eval")), record, capability,
                     stage.params)


def build_results(stage: StageDir) -> ExperimentResults:
    """The experiment_results.json document for a run whose stages 01-05 are complete."""
    from .data import split_sizes
    from .manifest import run_manifest
    from .vectors import SteeringVectors

    params = stage.params
    ev = params.evaluation
    prompts = read_table(stage.input("prompts"))
    vectors = SteeringVectors.load(stage.input("vectors"))
    stats = read_table(stage.input("layer_stats"))
    grid = read_table(stage.input("grid"))
    sweep = read_table(stage.input("sweep"))
    control = read_table(stage.input("control"))
    capability = read_table(stage.input("capability"))
    selection = DevSelection.model_validate(read_json(stage.input("selection")))
    chosen = selection.chosen_layers
    rule = SelectionRule.from_params(ev)

    summarize = functools.partial(metrics.summarize_cells, threshold=ev.toxic_threshold,
                                  n_boot=ev.n_bootstrap, seed=params.seed)
    cells = pd.concat([summarize(rows) for rows in (grid, sweep, control) if not rows.empty],
                      ignore_index=True)
    norms = vectors.norms.numpy() / vectors.activation_norms.numpy()
    steered = cells["layer"] != UNSTEERED_LAYER
    cells["relative_norm"] = np.where(steered, cells["alpha"].abs()
                                      * norms[cells["layer"].where(steered, 0)], 0.0)
    if "nll_reference" in sweep:
        reference_ppl = np.exp(sweep.groupby(["subset", "layer", "alpha"])["nll_reference"]
                               .mean()).rename("perplexity_reference").reset_index()
        cells = cells.merge(reference_ppl.assign(experiment="sweep"), how="left",
                            on=["experiment", "subset", "layer", "alpha"])
    accuracy = capability_summary(capability, ev.n_bootstrap, params.seed)
    cells = _with_capability(cells, accuracy)
    cells["degenerate"] = metrics.flag_degenerate(cells)

    challenging = cells[(cells["experiment"] == "sweep") & (cells["subset"] == "challenging")]
    recommendation = selection.recommendation
    if recommendation is not None:
        recommendation = recommendation.model_copy(update={
            "holds_under_second_scorer": _second_scorer_holds(
                sweep, recommendation.layer, recommendation.alpha, ev.n_bootstrap,
                params.seed)})
    # A degenerate cell is no trade-off worth taking: it never sits on the front.
    front = metrics.pareto_front(challenging[challenging["degenerate"].map(len) == 0])
    no_recommendation = None
    if selection.recommendation is None:
        dev = metrics.with_benign_fluency(cells[cells["experiment"] == "grid"])
        no_recommendation = metrics.why_no_pick(dev, rule)

    agreement = None
    if "toxicity_second" in sweep:
        agreement = {"second": params.scorer.second, "n": int(len(sweep)),
                     "spearman": finite(metrics.spearman(sweep["toxicity"],
                                                         sweep["toxicity_second"]))}
    # The run's manifest (built when the run started), with each input stage's own time.
    manifest = {**run_manifest(stage.run, params), "timings": {
        name: done_record(stage.input_folder(name))["seconds"] for name in stage.spec.inputs}}
    contrast_counts = read_json(stage.input("contrast_counts"))
    control_record = _control_summary(params, selection, sweep, control, cells)
    specificity = read_json(stage.input("specificity"))
    verdicts, eval_verdicts = claims.claim_verdicts(
        params, selection, chosen, grid, sweep, control, capability,
        None if specificity is None else Specificity.model_validate(specificity),
        control_record and control_record.alpha_tested,
        read_table(stage.input("methods_eval")))
    cap_items = capability[(capability["split"] == "eval")
                           & (capability["direction"] == UNSTEERED)]
    return validate_results({
        "manifest": manifest,
        "model": {"name": params.model.name, "source": params.model.source,
                  "n_layers": vectors.n_layers, "hidden_size": int(vectors.directions.shape[1])},
        "scorer": {"name": params.scorer.name, "second": params.scorer.second},
        "splits": split_sizes(prompts),
        "vectors": _vectors_record(params, vectors, stats, contrast_counts),
        "chosen_layers": [int(x) for x in chosen],
        "rule": dataclasses.asdict(rule),
        "cells": table_records(cells, Cell),
        "capability": None if capability.empty else {
            "task": str(capability["task"].iloc[0]), "chance": float(capability["chance"].iloc[0]),
            "n_items": int(len(cap_items)), "cells": table_records(accuracy, CapabilityCell)},
        "scorer_agreement": agreement,
        "recommendation": recommendation,
        "no_recommendation": no_recommendation,
        "confirmation": _eval_confirmation(
            None if recommendation is None else (recommendation.layer, recommendation.alpha),
            cells, rule, eval_verdicts),
        "stability": selection.stability,
        "alpha_range": selection.alpha_range,
        "control": control_record,
        "specificity": specificity,
        "methods": _methods_summary(stage),
        "conditional": _conditional_summary(stage),
        "verdicts": verdicts,
        "pareto": [{"layer": int(r.layer), "alpha": float(r.alpha)} for r in front.itertuples()],
        "examples": _examples(sweep, chosen[0], params.report.n_examples, params.seed),
    })


