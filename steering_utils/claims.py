"""Every claim of the report with its power: one `power.Verdict` per comparison.

Each comparison is reduced to one paired difference per unit (an eval prompt, a capability
item), taken from the run's rows, never from the cell summaries: the same prompts on both
arms, the per-prompt mean over a prompt's samples. The verdicts are

- CAA vs unsteered on challenging eval (mean toxicity; the second scorer's too);
- the fluency limits of the rule at the same cell: perplexity on challenging and benign
  eval (per-prompt log perplexity, i.e. mean NLL per token, against log(1 + the limit)) and
  the empty-continuation rate;
- capability: accuracy change per item in points, against the rule's drop limit;
- CAA vs the random directions of its norm at the control's tested alpha;
- the chosen layer vs the next best layer on the dev grid (the comparison that chose it);
- CAA's rank among each null family of the specificity probe (`power.rank_verdict`);
- each method's matched point vs unsteered on eval (method vs method: `matched`).

`criteria_status` turns the eval confirmation's checks into pass / fail / undecidable at
this n: a check within its limit whose verdict cannot see the limit (MDE > limit) is not a
pass.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

from .decisions import Check, DevSelection
from .metrics import (
    SelectionRule,
    finite,
    is_empty,
    recommend,
    summarize_cells,
    with_benign_fluency,
    with_toxicity_se,
)
from .power import Verdict, rank_verdict, verdict
from .stages import CAA, UNSTEERED

Status = Literal["pass", "fail", "undecidable"]
# Which verdict sizes which criterion of the rule (distinct-2 is a corpus statistic with no
# per-prompt difference: its check stands on the point estimate alone).
CRITERION_VERDICT = {"perplexity": "perplexity", "benign_perplexity": "benign_perplexity",
                     "capability_acc": "capability", "empty_rate": "empty_rate"}


def _per_prompt(rows: pd.DataFrame, column: str) -> pd.Series:
    values = rows[column] if column != "empty" else rows["completion"].map(is_empty)
    return values.astype(float).groupby(rows["prompt_id"].to_numpy()).mean()


def paired_differences(treated: pd.DataFrame, reference: pd.DataFrame,
                       column: str) -> np.ndarray:
    """Per prompt (common to both): mean of `column` over the treated rows minus the
    reference's ('empty': the share of empty continuations). NaN where a side has none."""
    both = pd.concat({"t": _per_prompt(treated, column), "r": _per_prompt(reference, column)},
                     axis=1, join="inner")
    return (both["t"] - both["r"]).to_numpy(dtype=float)


def _cell_rows(rows: pd.DataFrame, subset: str, layer: int, alpha: float) -> pd.DataFrame:
    rows = rows[rows["subset"] == subset]
    if alpha == 0:
        return rows[rows["alpha"] == 0]
    return rows[(rows["layer"] == layer) & (rows["alpha"] == alpha)]


def eval_verdicts(sweep: pd.DataFrame, layer: int, alpha: float, rule: SelectionRule,
                  n_boot: int, seed: int, note: str = "") -> dict[str, Verdict]:
    """{name: Verdict} of CAA at (layer, alpha) vs unsteered on eval: toxicity (and the
    second scorer's), perplexity on challenging and benign prompts, the empty rate."""
    where = f"layer {layer}, α = {alpha:g}{note}"
    out = {}
    log_limit = math.log1p(rule.max_perplexity_increase)
    specs = [("toxicity", "challenging", "toxicity", "mean toxicity", "lower", None),
             ("toxicity_second", "challenging", "toxicity_second",
              "mean toxicity (second scorer)", "lower", None),
             ("perplexity", "challenging", "nll", "log perplexity (nats/token)", "either",
              log_limit),
             ("benign_perplexity", "benign", "nll", "log perplexity (nats/token)", "either",
              log_limit),
             ("empty_rate", "challenging", "empty", "empty-continuation rate", "either",
              rule.max_empty_increase)]
    for name, subset, column, metric, expect, limit in specs:
        if column not in sweep and column != "empty":
            continue
        treated = _cell_rows(sweep, subset, layer, alpha)
        reference = _cell_rows(sweep, subset, layer, 0.0)
        if treated.empty or reference.empty:
            continue
        label = "benign" if subset == "benign" else "challenging"
        out[name] = verdict(f"CAA ({where}) vs unsteered, {label} eval", metric,
                            paired_differences(treated, reference, column), "prompts", expect,
                            n_boot, seed, limit).model_copy(update={"name": name})
    return out


def capability_verdict(capability: pd.DataFrame, layer: int, alpha: float,
                       rule: SelectionRule, n_boot: int, seed: int,
                       note: str = "") -> Verdict | None:
    """CAA at (layer, alpha) vs unsteered on the eval items: accuracy change in points per
    item (+100, 0, -100), against the rule's drop limit; None without the cells."""
    if capability.empty:
        return None
    items = capability[capability["split"] == "eval"]
    treated = items[(items["direction"] == CAA) & (items["layer"] == layer)
                    & (items["alpha"] == alpha)].set_index("item")["correct"]
    reference = items[items["direction"] == UNSTEERED].set_index("item")["correct"]
    if treated.empty or reference.empty:
        return None
    both = pd.concat({"t": treated.astype(float), "r": reference.astype(float)}, axis=1,
                     join="inner")
    task = str(capability["task"].iloc[0])
    return verdict(f"CAA (layer {layer}, α = {alpha:g}{note}) vs unsteered, {task} eval",
                   "accuracy change (points)", 100.0 * (both["t"] - both["r"]).to_numpy(),
                   "items", "either", n_boot, seed, rule.max_capability_drop,
                   digits=1).model_copy(update={"name": "capability"})


def control_verdict(sweep: pd.DataFrame, control: pd.DataFrame, layer: int, alpha: float,
                    n_boot: int, seed: int) -> Verdict | None:
    """CAA vs the random directions (pooled per prompt) at (layer, alpha), challenging eval,
    on the same (prompt, sample) rows as `sweep.control_comparison`."""
    if control.empty:
        return None
    random = control[(control["alpha"] == alpha) & (control["alpha"] != 0)]
    caa = sweep[(sweep["subset"] == "challenging") & (sweep["layer"] == layer)
                & (sweep["alpha"] == alpha) & (sweep["sample"] <= control["sample"].max())]
    if random.empty or caa.empty:
        return None
    n_dir = random["direction"].nunique()
    return verdict(f"CAA vs {n_dir} random direction(s) of its norm (layer {layer}, "
                   f"α = {alpha:g}), challenging eval", "mean toxicity",
                   paired_differences(caa, random, "toxicity"), "prompts", "lower", n_boot,
                   seed).model_copy(update={"name": "control"})


def layer_verdict(grid: pd.DataFrame, layer: int, alpha: float | None, n_boot: int,
                  seed: int, rule: SelectionRule | None = None,
                  toxic_threshold: float = 0.5, capability=None) -> Verdict | None:
    """The chosen layer's dev cell (at `alpha`, else its least toxic) vs the next best layer's,
    paired by challenging dev prompt; None with one layer.

    With `rule`, the next best is the cell the rule would have picked without the chosen
    layer (within its limits, benign perplexity included, and capability where
    `capability(layer, alpha)` gives the dev accuracy 05 measured for the cell, NaN where
    it measured none): the comparison that chose the layer. Without it, or when no other layer
    has a cell within the limits (said in the claim), the least toxic cell of any other
    layer."""
    rows = grid[(grid["subset"] == "challenging") & (grid["alpha"] != 0)]
    means = rows.groupby(["layer", "alpha"])["toxicity"].mean()
    if means.empty or layer not in means.index.get_level_values(0):
        return None
    own = means.loc[layer]
    alpha = float(alpha) if alpha is not None and alpha in own.index else float(own.idxmin())
    others = means.drop(index=layer, level=0)
    if others.empty:
        return None
    other_layer, other_alpha = others.idxmin()
    which = "the next best"
    if rule is not None:
        others_rows = grid[grid["layer"] != layer]
        summary = with_toxicity_se(
            with_benign_fluency(summarize_cells(others_rows, toxic_threshold, 20, seed)),
            others_rows)
        runner_up = recommend(summary, rule, capability)
        if runner_up is not None:
            other_layer, other_alpha = runner_up.layer, runner_up.alpha
            which = "the next best within the limits of the rule"
        else:
            which = "no other layer within the limits of the rule: its least toxic cell"
    return verdict(f"layer {layer} (α = {alpha:g}) vs layer {int(other_layer)} "
                   f"(α = {float(other_alpha):g}), {which}, dev", "mean toxicity",
                   paired_differences(_cell_rows(rows, "challenging", layer, alpha),
                                      _cell_rows(rows, "challenging", int(other_layer),
                                                 float(other_alpha)), "toxicity"),
                   "prompts", "either", n_boot, seed).model_copy(update={"name": "layer"})


def dev_capability(capability: pd.DataFrame | None):
    """(layer, alpha) -> the dev accuracy 05 measured for CAA's cell (the unsteered one at
    alpha 0), NaN where it measured none; None without capability rows."""
    if capability is None or capability.empty or "split" not in capability:
        return None
    dev = capability[(capability["split"] == "dev")
                     & capability["direction"].isin([CAA, UNSTEERED])]
    acc = dev.groupby(["layer", "alpha"])["correct"].mean()

    def measured(layer: int, alpha: float) -> float:
        if alpha == 0:
            found = acc[acc.index.get_level_values("alpha") == 0]
            return float(found.iloc[0]) if len(found) else math.nan
        return float(acc.get((layer, alpha), math.nan))

    return measured


def method_verdicts(methods_eval: pd.DataFrame, n_boot: int, seed: int) -> list[Verdict]:
    """Each method's eval cell (its matched point; older runs: its dev pick) vs unsteered on
    challenging eval, paired by prompt (method vs method: `matched.pairwise_verdicts`)."""
    if methods_eval.empty or "method" not in methods_eval:
        return []
    rows = methods_eval[methods_eval["subset"] == "challenging"]
    reference = rows[rows["method"] == UNSTEERED]
    out = []
    for method, pick in rows[rows["method"] != UNSTEERED].groupby("method", sort=True):
        out.append(verdict(f"{method} (its eval cell: the matched point, else the dev pick) "
                           "vs unsteered, challenging eval",
                           "mean toxicity", paired_differences(pick, reference, "toxicity"),
                           "prompts", "lower", n_boot, seed).model_copy(
                               update={"name": f"method_{method}"}))
    return out


def specificity_verdicts(specificity) -> list[Verdict]:
    """CAA's rank among each null family (`specificity.Specificity`), one verdict each."""
    if specificity is None:
        return []
    return [rank_verdict(f"CAA vs {f.n} {f.family} null directions (layer "
                         f"{specificity.layer}, α = {specificity.alpha:g}), likelihood probe",
                         "Δ log p(toxic) − log p(clean)", f.caa_delta, f.rank, f.n, f.p_value,
                         f.null_sd, f.null_q05).model_copy(
                             update={"name": f"specificity_{f.family}"})
            for f in specificity.families]


def criterion_status(ok: bool, found: Verdict | None) -> Status:
    """fail: the point estimate breaks the limit; undecidable: within it, but this n cannot
    see the limit crossed (MDE above it); pass otherwise."""
    if not ok:
        return "fail"
    if found is not None and found.decidable is False:
        return "undecidable"
    return "pass"


def criteria_status(checks: dict[str, Check],
                    verdicts: dict[str, Verdict]) -> dict[str, Status]:
    """{criterion: pass | fail | undecidable} of the eval confirmation's checks."""
    return {name: criterion_status(bool(check.ok),
                                   verdicts.get(CRITERION_VERDICT.get(name, "")))
            for name, check in checks.items()}


def tested_cell(selection: DevSelection, chosen: list[int],
                sweep: pd.DataFrame) -> tuple[int, float]:
    """(layer, alpha) the eval claims are about: the dev pick, else the first sweep layer's
    largest alpha (for reference: no pick means nothing to confirm)."""
    rec = selection.recommendation
    if rec is not None:
        return int(rec.layer), float(rec.alpha)
    layer = int(chosen[0])
    alphas = sweep.loc[(sweep["layer"] == layer) & (sweep["alpha"] > 0), "alpha"]
    return layer, float(alphas.max()) if len(alphas) else 0.0


def claim_verdicts(params, selection: DevSelection, chosen: list[int], grid: pd.DataFrame,
                   sweep: pd.DataFrame, control: pd.DataFrame, capability: pd.DataFrame,
                   specificity, control_alpha: float | None,
                   methods_eval: pd.DataFrame | None = None) -> tuple[list[Verdict],
                                                                       dict[str, Verdict]]:
    """(every verdict in the report's order, {name: verdict} of the eval cell's checks)."""
    ev = params.evaluation
    rule = SelectionRule.from_params(ev)
    n_boot, seed = ev.n_bootstrap, params.seed
    layer, alpha = tested_cell(selection, chosen, sweep)
    # Without a dev pick there is nothing to confirm: the numbers are the sweep's, for reference.
    note = "" if selection.recommendation else "; no dev pick, for reference"
    by_name = eval_verdicts(sweep, layer, alpha, rule, n_boot, seed, note) if alpha else {}
    cap = (capability_verdict(capability, layer, alpha, rule, n_boot, seed, note) if alpha
           else None)
    if cap is not None:
        by_name["capability"] = cap
    ordered = [by_name[k] for k in ("toxicity", "toxicity_second") if k in by_name]
    if control_alpha is not None:
        found = control_verdict(sweep, control, int(selection.control_layer),
                                float(control_alpha), n_boot, seed)
        ordered += [found] if found is not None else []
    ordered += specificity_verdicts(specificity)
    rec = selection.recommendation
    found = layer_verdict(grid, int(rec.layer) if rec else int(chosen[0]),
                          finite(rec.alpha) if rec else None, n_boot, seed, rule,
                          ev.toxic_threshold, dev_capability(capability))
    ordered += [found] if found is not None else []
    if methods_eval is not None:
        ordered += method_verdicts(methods_eval, n_boot, seed)
    ordered += [by_name[k] for k in ("perplexity", "benign_perplexity", "empty_rate",
                                     "capability") if k in by_name]
    return ordered, by_name
