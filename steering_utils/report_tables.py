"""The report's tables: the rows the template lays out (summary, checks, verdicts, sweep,
grid, control, specificity, methods, pairs, conditional CAA, contrast pairs, examples) and
the DataFrames notebook 06 shows, from the typed results. Numbers are formatted by
`report_text`'s helpers; model text stays raw (the template escapes it).
"""

from __future__ import annotations

import pandas as pd

from .decisions import Recommendation
from .outcomes import Confirmation
from .report_text import (
    criterion_statuses,
    degenerate_text,
    fmt_alpha,
    fmt_interval,
    fmt_num,
    fmt_p,
    fmt_signed,
    method_cell_text,
    method_label,
    no_pick_text,
    pairs_line,
    sweep_cells,
    why_text,
)
from .results import ExperimentResults


def _value(record, name: str, digits: int = 3) -> dict | None:
    """{"v": point estimate, "ci": interval} of record.<name> as text; the template lays them
    out (None without a record)."""
    if record is None:
        return None
    value = getattr(record, name)
    lo, hi = getattr(record, f"{name}_ci_lo", None), getattr(record, f"{name}_ci_hi", None)
    return {"v": fmt_num(value, digits), "ci": fmt_interval(lo, hi, digits) if value is not None
            else ""}


GEHMAN_KEYS = ("emt", "tp")  # Gehman et al.'s metrics: shown only where k >= 2
_SUMMARY_ROWS = (("Mean toxicity", "mean_toxicity", 3, "relative"),
                 ("Expected maximum toxicity (EMT)", "emt", 3, "relative"),
                 ("Toxicity probability (TP)", "tp", 3, "relative"),
                 ("Fraction of toxic continuations", "frac_toxic", 3, "relative"),
                 ("Perplexity", "perplexity", 2, "relative"),
                 ("Empty continuations", "empty_rate", 3, "absolute"),
                 ("Distinct-2", "distinct_2", 3, "relative"),
                 ("Capability accuracy", "capability_acc", 3, "points"))


def _change(a, b, kind: str) -> str:
    if a is None or b is None:
        return ""
    if kind == "points":
        return f"{(b - a) * 100:+.1f} points".replace("-", "−")
    if kind == "absolute" or not a:
        return fmt_signed(b - a)
    return f"{(b - a) / a:+.0%}".replace("-", "−")


def summary_rows(results: ExperimentResults, rec: Recommendation | None) -> list[dict]:
    """Unsteered vs the dev-chosen cell: eval (reported) and dev (where it was chosen)."""
    layer, alpha = (rec.layer, rec.alpha) if rec else (None, None)
    ref, dev_ref = (results.cell(e, "challenging", None, 0.0) for e in ("sweep", "grid"))
    steered, dev = ((results.cell(e, "challenging", layer, alpha) if rec else None)
                    for e in ("sweep", "grid"))
    rows = []
    for label, key, digits, kind in _SUMMARY_ROWS:
        if key in GEHMAN_KEYS and (ref is None or ref.samples_per_prompt < 2):
            continue  # at k = 1 EMT and TP are the mean toxicity and the toxic fraction
        cells = (ref, steered, dev_ref, dev)
        if key in GEHMAN_KEYS and dev_ref is not None and dev_ref.samples_per_prompt < 2:
            cells = (ref, steered, None, None)
        raw = [None if c is None else getattr(c, key) for c in cells]
        if all(v is None for v in raw):
            continue
        rows.append({"label": label, "ref": _value(cells[0], key, digits),
                     "rec": _value(cells[1], key, digits),
                     "change": _change(raw[0], raw[1], kind),
                     "dev_ref": _value(cells[2], key, digits),
                     "dev_rec": _value(cells[3], key, digits),
                     "dev_change": _change(raw[2], raw[3], kind)})
    benign_ref = results.cell("sweep", "benign", None, 0.0)
    benign_rec = results.cell("sweep", "benign", layer, alpha) if rec else None
    if benign_ref is not None:
        rows.append({"label": "Mean toxicity, benign eval prompts",
                     "ref": _value(benign_ref, "mean_toxicity"),
                     "rec": _value(benign_rec, "mean_toxicity"),
                     # Absolute, not relative: near zero a relative change mostly measures noise.
                     "change": (fmt_signed(benign_rec.mean_toxicity - benign_ref.mean_toxicity)
                                if benign_rec else ""),
                     "dev_ref": None, "dev_rec": None, "dev_change": ""})
    return rows


_CHECK_LABELS = {"perplexity": "Perplexity at most", "distinct_2": "Distinct-2 at least",
                 "empty_rate": "Empty rate at most", "capability_acc": "Capability at least",
                 "benign_perplexity": "Benign perplexity at most"}


def checks_rows(rec: Recommendation | None, confirmation: Confirmation | None) -> list[dict]:
    """Each criterion of the rule: value, limit and verdict on dev, then again on eval."""
    if not rec:
        return []
    rows = []
    eval_checks = confirmation.checks if confirmation else {}
    for key, label in _CHECK_LABELS.items():
        dev, ev = rec.checks.get(key), eval_checks.get(key)
        if dev is None and ev is None:
            continue
        digits = 2 if key in ("perplexity", "benign_perplexity") else 3
        status = criterion_statuses(confirmation).get(key) if confirmation else None
        rows.append({"label": label,
                     "dev": dev and {"value": fmt_num(dev.value, digits),
                                     "limit": fmt_num(dev.limit, digits), "ok": dev.ok,
                                     "status": "pass" if dev.ok else "fail"},
                     "eval": ev and {"value": fmt_num(ev.value, digits),
                                     "limit": fmt_num(ev.limit, digits), "ok": ev.ok,
                                     "status": status or ("pass" if ev.ok else "fail")}})
    if confirmation is not None and confirmation.degenerate:
        rows.append({"label": "Output not degenerate", "dev": None,
                     "eval": {"value": degenerate_text(confirmation.degenerate), "limit": "",
                              "ok": False, "status": "fail"}})
    return rows


def claim_rows(results: ExperimentResults) -> list[dict]:
    """One row per verdict: the claim, estimate [CI], n, shown or not (with the MDE), and
    whether its limit (if any) is decidable at this n."""
    return verdict_rows(results.verdicts)


def verdict_rows(verdicts) -> list[dict]:
    """`claim_rows` of any list of verdicts."""
    rows = []
    for v in verdicts:
        digits = 1 if v.unit == "items" else 3
        if v.rank is not None:  # a rank among null directions: no interval
            estimate = {"v": fmt_signed(v.estimate), "ci": f"rank {v.rank} of {v.n + 1}"}
            power = (f"p = {fmt_p(v.p_value)}" if v.shown else
                     f"p = {fmt_p(v.p_value)}; smallest p this null allows "
                     f"{v.min_p:.3g}")
        else:
            estimate = {"v": fmt_signed(v.estimate, digits),
                        "ci": fmt_interval(v.ci_lo, v.ci_hi, digits).replace("-", "−")}
            power = ("" if v.shown or v.shown is None else
                     "MDE " + ("–" if v.mde is None else fmt_num(v.mde, digits)))
        limit = None
        if v.limit is not None:
            limit = {"value": "p < 0.05" if v.rank is not None else f"{v.limit:.3g}",
                     "decidable": v.decidable}
        rows.append({"claim": v.claim, "metric": v.metric, "estimate": estimate,
                     "n": f"{v.n} {v.unit}", "shown": v.shown, "power": power,
                     "limit": limit, "summary": v.summary})
    return rows


def specificity_rows(results: ExperimentResults) -> list[dict]:
    """Per null family: CAA's Δ, the null's spread, CAA's rank and p."""
    spec = results.specificity
    if not spec:
        return []
    return [{"family": f.family, "n": f.n, "caa": fmt_signed(f.caa_delta),
             "null": f"{fmt_signed(f.null_mean)} ± {fmt_num(f.null_sd)}",
             "range": fmt_interval(f.null_q05, f.null_q95), "rank": f"{f.rank} / {f.n + 1}",
             "p": fmt_p(f.p_value), "beaten": f.p_value < 0.05}
            for f in spec.families]


def control_rows(results: ExperimentResults) -> list[dict]:
    """Per control α: CAA vs random directions (toxicity, paired difference, fluency)."""
    control = results.control
    if not control:
        return []
    rows = []
    for item in control.comparison:
        random_cell = results.cell("control", "challenging", control.layer, item.alpha)
        caa_cell = results.cell("sweep", "challenging", control.layer, item.alpha)
        rows.append({
            "alpha": fmt_alpha(item.alpha), "is_tested": item.alpha == control.alpha_tested,
            "caa": fmt_num(item.caa_mean_toxicity), "random": fmt_num(item.random_mean_toxicity),
            "by_direction": ", ".join(f"{v:.3f}" for v in item.random_by_direction.values()),
            "diff": {"v": fmt_signed(item.diff),
                     "ci": fmt_interval(item.diff_ci_lo, item.diff_ci_hi).replace("-", "−")},
            "p": fmt_p(item.p_bootstrap),
            "caa_ppl": fmt_num(caa_cell and caa_cell.perplexity, 2),
            "random_ppl": fmt_num(random_cell and random_cell.perplexity, 2),
            "caa_empty": fmt_num(caa_cell and caa_cell.empty_rate, 3),
            "random_empty": fmt_num(random_cell and random_cell.empty_rate, 3),
            "caa_capability": fmt_num(caa_cell and caa_cell.capability_acc, 3),
            "random_capability": fmt_num(random_cell and random_cell.capability_acc, 3),
            "degenerate": ", ".join(
                side for side, flag in (("CAA", item.caa_degenerate),
                                        ("random", item.random_degenerate)) if flag),
        })
    return rows


def method_rows(results: ExperimentResults) -> list[dict]:
    """Per method: its dev pick and the pick's eval numbers with CIs, vs unsteered."""
    methods = results.methods
    if methods is None:
        return []
    best = (methods.goal.method if methods.goal else
            methods.strongest.method if methods.strongest else None)
    entries = [("none", None, methods.reference, None, None, None)] if methods.reference else []
    entries += [(m.method, m.dev, m.eval, m.capability, m.toxic_fraction_ratio,
                 m.within_limits_on_eval) for m in methods.methods]
    why = {m.method: why_text(m) for m in methods.methods}
    matched = {m.method: m.matched for m in methods.methods}
    rows = []
    for method, dev, ev, cap, ratio, within in entries:
        point = matched.get(method)
        if method == "none":
            cell = ""
        elif point is not None:
            cell = ("no matched point" if point.layer is None
                    else method_cell_text(point.layer, point.strength))
        else:
            cell = ("none qualified on dev" if dev is None
                    else method_cell_text(dev.layer, dev.alpha))
        rows.append({
            "method": method_label(method), "is_ref": method == "none",
            "is_best": method == best, "cell": cell, "why": why.get(method, ""),
            "budget": (None if point is None or point.eval_perplexity_increase is None
                       else f"{point.eval_perplexity_increase:+.0%}"
                       + ("" if point.eval_benign_perplexity_increase is None
                          else f" / {point.eval_benign_perplexity_increase:+.0%}")),
            "degenerate": degenerate_text(ev.degenerate) if ev and method != "none" else "",
            **{name: _value(ev, name, 2 if name == "perplexity" else 3) for name in
               ("mean_toxicity", "frac_toxic", "emt", "tp", "perplexity")},
            "delta": ({"v": fmt_signed(ev.delta_mean_toxicity),
                       "ci": fmt_interval(ev.delta_mean_toxicity_ci_lo,
                                       ev.delta_mean_toxicity_ci_hi).replace("-", "−")}
                      if ev else None),
            "p": fmt_p(ev.p_bootstrap if ev else None),
            "distinct_2": fmt_num(ev.distinct_2 if ev else None),
            "empty_rate": fmt_num(ev.empty_rate if ev else None),
            "capability": _value(cap, "acc"),
            "capability_drop": ({"v": fmt_signed(cap.drop_points, 1),
                                 "ci": fmt_interval(cap.drop_points_ci_lo, cap.drop_points_ci_hi,
                                                 1).replace("-", "−")} if cap else None),
            "ratio": "–" if ratio is None else f"{ratio:.1f}×",
            "within": within,
        })
    return rows


def pairwise_table(results: ExperimentResults) -> pd.DataFrame:
    """Every pair of methods at their matched points: paired estimate, CI, shown, MDE."""
    columns = ["claim", "estimate", "ci_lo", "ci_hi", "n", "shown", "mde"]
    pairs = results.methods.pairwise if results.methods else []
    return pd.DataFrame([v.model_dump() for v in pairs], columns=columns)


def pairwise_rows(results: ExperimentResults) -> list[dict]:
    pairs = results.methods.pairwise if results.methods else []
    return [{"claim": v.claim, "estimate": fmt_signed(v.estimate),
             "ci": fmt_interval(v.ci_lo, v.ci_hi).replace("-", "−"), "n": v.n, "shown": v.shown,
             "mde": fmt_num(v.mde)} for v in pairs]
def _cell_source(source: str) -> str:
    """'caa' -> 'CAA'; 'conditional_caa (matched point)' -> 'conditional CAA (matched point)'."""
    method, _, rest = source.partition(" ")
    return f"{method_label(method)} {rest}".strip()


def conditional_section(results: ExperimentResults) -> dict | None:
    """Conditional CAA (CAST) beside CAA: the gate in words, one row per (subset, arm) with
    its gated share, and every verdict (vs unsteered, vs CAA, capability)."""
    c = results.conditional
    if c is None:
        return None
    shares = {g.subset: g for g in c.gated}

    def share(subset: str) -> dict:
        g = shares.get(subset)
        if g is None or g.share is None:
            return {"v": "–", "ci": ""}
        return {"v": f"{g.share:.0%}", "ci": f"[{g.share_ci_lo:.0%}, {g.share_ci_hi:.0%}] "
                                             f"of {g.n}"}
    rows = []
    for arm in c.arms:
        conditional = arm.method == "conditional_caa"
        rows.append({
            "method": method_label(arm.method), "subset": arm.subset,
            "gated": share(arm.subset) if conditional else {"v": "100%", "ci": "every prompt"},
            "toxicity": fmt_num(arm.mean_toxicity),
            "reference": fmt_num(arm.reference_mean_toxicity),
            "delta": {"v": fmt_signed(arm.toxicity and arm.toxicity.estimate),
                      "ci": fmt_interval(arm.toxicity.ci_lo, arm.toxicity.ci_hi).replace("-", "−")
                      if arm.toxicity else ""},
            "perplexity": fmt_num(arm.perplexity, 2),
            "ppl_change": "–" if arm.perplexity_increase is None else
            f"{arm.perplexity_increase:+.1%}".replace("-", "−")})
    verdicts = [v for arm in c.arms for v in (arm.toxicity, arm.log_perplexity) if v]
    verdicts += c.versus_caa + (c.capability.verdicts if c.capability else [])
    dev = (f"on dev, {c.dev_challenging_gated:.0%} of challenging and {c.dev_benign_gated:.0%} "
           f"of benign prompts pass it" if c.dev_challenging_gated is not None else "")
    rule = ("the cut maximising (challenging gated) − (benign gated) on dev (Youden)"
            if c.rule == "youden" else f"the {c.quantile:g} quantile of the benign dev "
                                       "projections")
    auc = ", ".join(f"{name} {value:.2f}" for name, value in
                    (("dev", c.dev_auroc), ("eval", c.eval_auroc)) if value is not None)
    text = (f"A prompt is steered iff the cosine of its activation at layer "
            f"{c.condition_layer} (mean over its last tokens) with the CAA vector there "
            f"exceeds {c.threshold:.4f}, {rule}; {dev}. Separation of challenging from "
            f"benign prompts by this cosine (AUROC): {auc or '–'}. Both arms steer at layer "
            f"{c.layer}, α = {c.alpha:g} (the dev pick of "
            f"{_cell_source(c.cell_from)}), with {c.samples_per_prompt} sample(s) per eval "
            "prompt.")
    accuracy = c.capability.accuracy if c.capability else {}
    return {"text": text, "rows": rows, "verdicts": verdict_rows(verdicts),
            "capability": ", ".join(f"{method_label(k)} {v:.3f}" for k, v in accuracy.items()),
            "capability_gated": share("capability")}


def claims_table(results: ExperimentResults) -> pd.DataFrame:
    """One row per verdict: estimate, CI, n, shown, MDE, limit and decidable."""
    columns = ["claim", "metric", "estimate", "ci_lo", "ci_hi", "n", "unit", "shown", "mde",
               "p_value", "limit", "decidable"]
    return pd.DataFrame([v.model_dump() for v in results.verdicts], columns=columns)


def methods_table(results: ExperimentResults) -> pd.DataFrame:
    """Each method's dev pick and its eval numbers (challenging eval), unsteered first."""
    methods = results.methods
    if methods is None:
        return pd.DataFrame()
    rows = {}
    if methods.reference:
        rows["unsteered"] = {"cell": "", "frac_toxic": methods.reference.frac_toxic,
                             "mean_toxicity": methods.reference.mean_toxicity,
                             "perplexity": methods.reference.perplexity}
    for m in methods.methods:
        point = m.matched
        rows[m.method] = {
            "cell": (method_cell_text(m.dev.layer, m.dev.alpha) if m.dev else "none")
            if point is None else ("none" if point.layer is None
                                   else method_cell_text(point.layer, point.strength)),
            "matched": point and point.status,
            "dev_cells": m.search and m.search.cells_searched,
            "stopped_by": m.search and m.search.stopped_by,
            "perplexity_increase": point and point.eval_perplexity_increase,
            "benign_perplexity_increase": point and point.eval_benign_perplexity_increase,
            "frac_toxic": m.eval and m.eval.frac_toxic,
            "mean_toxicity": m.eval and m.eval.mean_toxicity,
            "perplexity": m.eval and m.eval.perplexity, "fewer_toxic_x": m.toxic_fraction_ratio,
            "capability_drop_points": m.capability and m.capability.drop_points,
            "within_limits_on_eval": m.within_limits_on_eval,
            "degenerate": degenerate_text(m.eval.degenerate) if m.eval else "",
            "no_pick": no_pick_text(m.no_pick, "s")}
    return pd.DataFrame(rows).T


def summary_table(results: ExperimentResults) -> pd.DataFrame:
    """Unsteered vs the dev-chosen cell, on dev (where it was chosen) and on eval (confirmation)."""
    rec = results.recommendation
    rows = {}
    for experiment, split in (("grid", "dev"), ("sweep", "eval")):
        rows[f"unsteered ({split})"] = results.cell(experiment, "challenging", None, 0.0)
        if rec:
            rows[f"layer {rec.layer}, alpha {rec.alpha:g} ({split})"] = results.cell(
                experiment, "challenging", rec.layer, rec.alpha)
    keys = ["n_prompts", "mean_toxicity", "frac_toxic", "perplexity", "empty_rate",
            "capability_acc"]
    return pd.DataFrame({name: {k: getattr(cell, k) for k in keys}
                         for name, cell in rows.items() if cell is not None}).T


def sweep_rows(results: ExperimentResults, subset: str) -> list[dict]:
    rec = results.recommendation
    rows = []
    for c in sweep_cells(results, subset):
        rows.append({
            "layer": "–" if c.alpha == 0 else c.layer,
            "alpha": fmt_alpha(c.alpha),
            "is_ref": c.alpha == 0,
            "is_rec": (subset == "challenging" and rec is not None and c.layer == rec.layer
                       and c.alpha == rec.alpha),
            "relative_norm": fmt_num(c.relative_norm, 3) if c.alpha != 0 else "0",
            "n": f"{c.n_prompts} / {c.n}",
            "mean_toxicity": _value(c, "mean_toxicity"),
            "delta": ({"v": "reference", "ci": ""} if c.alpha == 0 else
                      {"v": fmt_signed(c.delta_mean_toxicity),
                       "ci": fmt_interval(c.delta_mean_toxicity_ci_lo,
                                       c.delta_mean_toxicity_ci_hi).replace("-", "−")}),
            "p_bootstrap": fmt_p(c.p_bootstrap),
            "p_wilcoxon": fmt_p(c.p_wilcoxon),
            "emt": _value(c, "emt"),
            "tp": _value(c, "tp"),
            "perplexity": _value(c, "perplexity", 2),
            "distinct_2": fmt_num(c.distinct_2, 3),
            "empty_rate": fmt_num(c.empty_rate, 3),
            "capability": _value(c, "capability_acc"),
            "second": fmt_num(c.mean_toxicity_second, 3),
            "degenerate": degenerate_text(c.degenerate),
        })
    return rows


def grid_section(results: ExperimentResults) -> dict:
    """Compact layer x alpha table of the dev grid: mean toxicity (perplexity)."""
    grid = [c for c in results.cells if c.experiment == "grid" and c.subset == "challenging"]
    alphas = sorted({c.alpha for c in grid})
    layers = sorted({c.layer for c in grid if c.alpha != 0})
    reference = next((c for c in grid if c.alpha == 0), None)
    by_key = {(c.layer, c.alpha): c for c in grid}
    chosen = set(results.chosen_layers)
    rows = []
    for layer in layers:
        values = []
        for alpha in alphas:
            cell = reference if alpha == 0 else by_key.get((layer, alpha))
            values.append({"v": fmt_num(cell.mean_toxicity) if cell else "–",
                           "ppl": fmt_num(cell.perplexity, 1) if cell else ""})
        rows.append({"layer": layer, "chosen": layer in chosen, "values": values})
    n = max((c.n_prompts for c in grid), default=0)
    return {"alphas": [fmt_alpha(a) for a in alphas], "rows": rows, "n": n}


def example_rows(results: ExperimentResults) -> list[dict]:
    """Example generations grouped by prompt, ordered by alpha; text stays raw (escaped later)."""
    groups: dict[str, dict] = {}
    for ex in results.examples:
        group = groups.setdefault(ex.prompt_id, {"prompt_id": ex.prompt_id, "subset": ex.subset,
                                                 "prompt": ex.prompt, "rows": []})
        group["rows"].append({"alpha_value": ex.alpha, "alpha": fmt_alpha(ex.alpha),
                              "layer": "–" if ex.alpha == 0 else ex.layer,
                              "completion": ex.completion, "toxicity": fmt_num(ex.toxicity, 3)})
    for group in groups.values():
        group["rows"].sort(key=lambda r: r["alpha_value"])
    return list(groups.values())


def contrast_section(results: ExperimentResults) -> dict | None:
    """The contrast's labels, gap filter and per-layer vector quality; None before them."""
    vec = results.vectors
    counts = vec.contrast_counts or {}
    if not any(row.split_half_cosine is not None or row.paired_accuracy is not None
               for row in vec.layers) and "label_scorer" not in counts:
        return None
    rows = [{"layer": r.layer, "cosine": fmt_num(r.split_half_cosine),
             "range": fmt_interval(r.split_half_cosine_p05, r.split_half_cosine_p95),
             "loo": fmt_num(r.loo_accuracy),
             "loo_ci": fmt_interval(r.loo_accuracy_ci_lo, r.loo_accuracy_ci_hi),
             "accuracy": fmt_num(r.paired_accuracy),
             "ci": fmt_interval(r.paired_accuracy_ci_lo, r.paired_accuracy_ci_hi),
             "n": r.n_heldout_pairs if r.n_heldout_pairs is not None else "–"}
            for r in vec.layers]
    lines = [pairs_line(split, counts[split]) for split in ("train", "dev") if split in counts]
    params = results.manifest.params
    return {"label_scorer": counts.get("label_scorer", "the evaluating scorer"),
            "evaluator": params.get("scorer", {}).get("name", "–"),
            "n_resamples": params.get("vectors", {}).get("n_resamples", "–"),
            "lines": lines, "rows": rows}
