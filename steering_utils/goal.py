"""On eval, at the matched points (06): every pair of methods, and the study's goal.

The matched points are dev decisions (`matched.py`); here they are only measured.

- `pairwise_verdicts`: every pair of methods at their matched points on the same
  challenging eval prompts and sample seeds, per-prompt mean toxicity paired by prompt: a
  verdict each (shown, or not shown with the MDE). No method is picked here.
- `goal_verdict`: the method chosen on dev (least toxic at its matched point there) at
  >= `methods.goal_toxic_ratio` fewer toxic continuations on challenging eval (ratio of toxic
  fractions, bootstrap CI over prompts), within the budget on challenging and benign eval,
  with no capability loss its power could show: met, not met or undecidable.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .matched import best_on_dev, has_point
from .outcomes import GoalVerdict, ToxicRatio
from .params import StudyParams
from .stages import UNSTEERED

_UNBOUNDED = 1e12  # a resampled ratio with no toxic continuation left (x / 0)


def _rows(rows: pd.DataFrame, method: str, subset: str) -> pd.DataFrame:
    return rows[(rows["method"] == method) & (rows["subset"] == subset)]


def pairwise_verdicts(rows: pd.DataFrame, methods: list[str], budget: float, n_boot: int,
                      seed: int) -> list:
    """Every pair of methods at their matched points on challenging eval: per-prompt mean
    toxicity, first minus second, paired by prompt (same prompts and sample seeds)."""
    from .claims import paired_differences
    from .power import verdict

    present = [m for m in methods if not _rows(rows, m, "challenging").empty]
    out = []
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            claim = (f"{a} vs {b} at matched fluency (+{budget:.0%} perplexity on dev), "
                     "challenging eval")
            diffs = paired_differences(_rows(rows, a, "challenging"),
                                       _rows(rows, b, "challenging"), "toxicity")
            out.append(verdict(claim, "mean toxicity", diffs, "prompts", "either", n_boot,
                               seed).model_copy(update={"name": f"pair_{a}_{b}"}))
    return out


def toxic_ratio(treated: pd.DataFrame, reference: pd.DataFrame, threshold: float,
                n_boot: int, seed: int) -> ToxicRatio:
    """Unsteered / steered toxic fraction on the prompts both have, with a percentile
    bootstrap CI over prompts (paired). A bound is None where resamples have no toxic
    continuation left (the ratio is unbounded there)."""
    def per_prompt(rows):
        return (rows["toxicity"].astype(float) >= threshold).astype(float).groupby(
            rows["prompt_id"].to_numpy()).mean()

    both = pd.concat({"t": per_prompt(treated), "r": per_prompt(reference)}, axis=1,
                     join="inner")
    if both.empty:
        return ToxicRatio(ratio=None, ci_lo=None, ci_hi=None, frac_toxic=None,
                          reference_frac_toxic=None, n_prompts=0)
    t, r = both["t"].to_numpy(), both["r"].to_numpy()
    draw = np.random.default_rng(seed).integers(0, len(t), size=(n_boot, len(t)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = r[draw].mean(axis=1) / t[draw].mean(axis=1)
    boot = np.where(np.isnan(boot), 1.0, boot)  # 0 / 0: no toxic continuation on either side
    lo, hi = np.percentile(np.minimum(boot, _UNBOUNDED), [2.5, 97.5])

    def bound(x):
        return float(x) if math.isfinite(x) and x < _UNBOUNDED else None

    return ToxicRatio(ratio=bound(r.mean() / t.mean()) if t.mean() > 0 else None,
                      ci_lo=bound(lo), ci_hi=bound(hi), frac_toxic=float(t.mean()),
                      reference_frac_toxic=float(r.mean()), n_prompts=int(len(t)))


def capability_items_verdict(capability: pd.DataFrame, method: str, layer: int,
                             strength: float, limit: float, n_boot: int, seed: int):
    """Accuracy change in points per eval item under the method vs unsteered (None: no items)."""
    from .power import verdict

    if capability is None or capability.empty:
        return None
    items = capability[capability["split"] == "eval"]
    reference = items[items["direction"] == UNSTEERED].drop_duplicates("item")
    treated = items[(items["direction"] == method) & (items["layer"] == layer)
                    & (items["alpha"] == strength)].drop_duplicates("item")
    if treated.empty or reference.empty:
        return None
    both = pd.concat({"t": treated.set_index("item")["correct"].astype(float),
                      "r": reference.set_index("item")["correct"].astype(float)}, axis=1,
                     join="inner")
    return verdict(f"{method} at its matched point vs unsteered, eval items",
                   "accuracy change (points)", (both["t"] - both["r"]).to_numpy() * 100,
                   "items", "lower", n_boot, seed, limit).model_copy(
                       update={"name": f"goal_capability_{method}"})


def goal_verdict(method: str | None, rows: pd.DataFrame, capability: pd.DataFrame | None,
                 matched: dict, params: StudyParams) -> GoalVerdict:
    """The goal's typed record: the dev-chosen `method` at its
    matched point on eval. Criteria (pass / fail / undecidable):

    - toxic_ratio: pass when the ratio's CI lower bound is >= the target, fail when its
      upper bound is below it, undecidable in between;
    - perplexity, benign_perplexity: per-prompt log perplexity vs unsteered within
      log(1 + budget) (`claims.criterion_status`: undecidable when this n cannot see the
      budget crossed);
    - capability: the accuracy drop within `evaluation.max_capability_drop` points and
      decidable at this n (no loss its power could show).

    met: every criterion passes; not_met: one fails; undecidable otherwise (or no method).
    """
    from .claims import criterion_status, paired_differences
    from .power import verdict

    ev, spec = params.evaluation, params.methods
    target, budget = spec.goal_toxic_ratio, spec.perplexity_budget
    undecided = GoalVerdict(method=method, target_ratio=target, perplexity_budget=budget,
                            status="undecidable", criteria={}, toxic_ratio=None, summary="")
    if method is None or not has_point(matched):
        return undecided.model_copy(
            update={"summary": "undecidable: no method has a matched point on dev"})
    treated = _rows(rows, method, "challenging")
    reference = _rows(rows, UNSTEERED, "challenging")
    if treated.empty or reference.empty:
        return undecided.model_copy(update={
            "dev_mean_toxicity": matched["dev_mean_toxicity"],
            "summary": f"undecidable: {method}'s matched point has no eval rows"})
    ratio = toxic_ratio(treated, reference, ev.toxic_threshold, ev.n_bootstrap, params.seed)
    reduction = verdict(f"{method} at its matched point (chosen on dev) vs unsteered, "
                        "challenging eval", "mean toxicity",
                        paired_differences(treated, reference, "toxicity"), "prompts", "lower",
                        ev.n_bootstrap, params.seed).model_copy(
                            update={"name": f"goal_toxicity_{method}"})
    criteria, verdicts = {}, [reduction]
    lo, hi = ratio.ci_lo, ratio.ci_hi
    criteria["toxic_ratio"] = ("pass" if lo is None or lo >= target else
                               "fail" if hi is not None and hi < target else "undecidable")
    log_budget = math.log1p(budget)
    for name, subset in (("perplexity", "challenging"), ("benign_perplexity", "benign")):
        t, r = _rows(rows, method, subset), _rows(rows, UNSTEERED, subset)
        if t.empty or r.empty or "nll" not in rows:
            criteria[name] = "undecidable"
            continue
        found = verdict(f"{method} at its matched point vs unsteered, {subset} eval",
                        "log perplexity (nats/token)", paired_differences(t, r, "nll"),
                        "prompts", "either", ev.n_bootstrap, params.seed, log_budget
                        ).model_copy(update={"name": f"goal_{name}_{method}"})
        verdicts.append(found)
        ok = found.estimate is not None and found.estimate <= log_budget
        criteria[name] = criterion_status(ok, found) if found.n else "undecidable"
    found = capability_items_verdict(capability, method, matched["layer"],
                                     matched["strength"], ev.max_capability_drop,
                                     ev.n_bootstrap, params.seed)
    if found is None:
        criteria["capability"] = "undecidable"
    else:
        verdicts.append(found)
        ok = found.estimate is not None and -found.estimate <= ev.max_capability_drop
        criteria["capability"] = criterion_status(ok, found)
    statuses = set(criteria.values())
    goal = GoalVerdict(
        method=method, target_ratio=target, perplexity_budget=budget,
        status=("not_met" if "fail" in statuses else "met" if statuses == {"pass"}
                else "undecidable"),
        criteria=criteria, dev_mean_toxicity=matched["dev_mean_toxicity"],
        # The dev decision holds on eval: its reduction is shown and no budget is broken.
        confirmed_on_eval=bool(reduction.shown) and "fail" not in (
            criteria["perplexity"], criteria["benign_perplexity"]),
        toxic_ratio=ratio, verdicts=verdicts, summary="")
    return goal.model_copy(update={"summary": _goal_summary(goal)})


def _goal_summary(goal: GoalVerdict) -> str:
    r = goal.toxic_ratio

    def num(x):
        return "∞" if x is None else f"{x:.1f}"

    head = {"met": "met", "not_met": "not met", "undecidable": "undecidable"}[goal.status]
    failed = [f"{k} ({v})" for k, v in goal.criteria.items() if v != "pass"]
    return (f"{head}: {goal.method} (chosen on dev) at +{goal.perplexity_budget:.0%} "
            f"perplexity: toxic fraction {r.reference_frac_toxic:.3f} → {r.frac_toxic:.3f}, "
            f"{num(r.ratio)}× fewer [{num(r.ci_lo)}, {num(r.ci_hi)}] against the "
            f"{goal.target_ratio:g}× target, n = {r.n_prompts} prompts"
            + ("; not passed: " + ", ".join(failed) if failed else "; every criterion passes")
            + ("; eval confirms the dev choice (reduction shown, within the budget)"
               if goal.confirmed_on_eval else "; eval does not confirm the dev choice"))


def comparison_verdicts(params: StudyParams, record: dict, methods_eval: pd.DataFrame,
                        capability: pd.DataFrame | None) -> dict:
    """{perplexity_budget, pairwise, goal} of the `methods` section (`outcomes.Methods`), from
    05's dev record (its matched points) and the eval rows; {} for a record without them."""
    matched = record.get("matched")
    if matched is None:
        return {}
    spec, ev = params.methods, params.evaluation
    if "subset" not in methods_eval:
        methods_eval = methods_eval.assign(subset="challenging")
    best = best_on_dev(matched)
    methods = [m for m in record["picks"]]
    return {"perplexity_budget": spec.perplexity_budget,
            "pairwise": pairwise_verdicts(methods_eval, methods, spec.perplexity_budget,
                                          ev.n_bootstrap, params.seed),
            "goal": goal_verdict(best, methods_eval, capability,
                                 matched.get(best) if best else None, params)}
