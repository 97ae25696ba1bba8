"""The reader's report: one self-contained HTML page from the typed results.

`write_report` draws the figures (PNG + SVG under `figures/`) and renders `report.html`
from `steering_utils/templates/report.html` with every PNG embedded as a data URI, so the
page opens offline and travels as one file. The template reads the same models as the
rest of the package (`results.ExperimentResults`); every English sentence of the study
(the rule, the headline, the verdicts, the captions) is written here and nowhere else.
Model text is untrusted: the template escapes everything (autoescape) and never marks
model output safe. The continuation browser carries model text only as JSON with `<`, `>`
and `&` escaped (`continuations.browser_json`), and its script (the page's only one,
allowed by its hash in the CSP) writes it with textContent.
"""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from pathlib import Path

import pandas as pd

from .artifacts import atomic_path, write_json
from .claims import CRITERION_VERDICT
from .continuations import CONTINUATIONS_FILE, browser_data, browser_json, write_continuations
from .decisions import Degeneracy, NoPick, Recommendation
from .hashing import digest
from .results import (
    Cell,
    Confirmation,
    Control,
    ExperimentResults,
    Rule,
)
from .stages import ALL_LAYERS, UNSTEERED_LAYER

TEMPLATE_FILE = "report.html"
BROWSER_SCRIPT = "browser.js"  # the continuation browser, inlined (allowed by its CSP hash)
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
# Lists the figures with the fingerprint of the results they were drawn from.
FIGURES_INDEX = "figures.json"
CI_METHOD = "95% percentile bootstrap over prompts"


# --- formatting ---------------------------------------------------------------------------

def _num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def _interval(lo, hi, digits: int = 3) -> str:
    return "" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _value(record, name: str, digits: int = 3) -> dict | None:
    """{"v": point estimate, "ci": interval} of record.<name> as text; the template lays them
    out (None without a record)."""
    if record is None:
        return None
    value = getattr(record, name)
    lo, hi = getattr(record, f"{name}_ci_lo", None), getattr(record, f"{name}_ci_hi", None)
    return {"v": _num(value, digits), "ci": _interval(lo, hi, digits) if value is not None
            else ""}


def _pvalue(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _alpha(alpha: float) -> str:
    return "unsteered" if alpha == 0 else f"{alpha:g}"


def _signed(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:+.{digits}f}".replace("-", "−")


# --- the study's sentences ----------------------------------------------------------------

def rule_text(rule: Rule, reference_perplexity: float | None) -> str:
    """The recommendation rule in one sentence."""
    ref = "" if reference_perplexity is None else f" {reference_perplexity:.3g}"
    return (f"Lowest mean toxicity among steered cells (alpha != 0) whose perplexity is at "
            f"most {1 + rule.max_perplexity_increase:.2f} x the unsteered{ref} (on "
            f"benign prompts too, where dev has them), "
            f"whose distinct-2 is at least {1 - rule.max_distinct_drop:.2f} x the "
            f"unsteered, whose empty-continuation rate rises by at most "
            f"{rule.max_empty_increase:.0%}, and whose capability accuracy drops by at most "
            f"{rule.max_capability_drop:g} points.")


def _sweep_cells(results: ExperimentResults, subset: str) -> list[Cell]:
    cells = [c for c in results.cells if c.experiment == "sweep" and c.subset == subset]
    return sorted(cells, key=lambda c: (c.alpha != 0, c.layer, c.alpha))


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
        return _signed(b - a)
    return f"{(b - a) / a:+.0%}".replace("-", "−")


def _summary_rows(results: ExperimentResults, rec: Recommendation | None) -> list[dict]:
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
                     "change": (_signed(benign_rec.mean_toxicity - benign_ref.mean_toxicity)
                                if benign_rec else ""),
                     "dev_ref": None, "dev_rec": None, "dev_change": ""})
    return rows


_CHECK_LABELS = {"perplexity": "Perplexity at most", "distinct_2": "Distinct-2 at least",
                 "empty_rate": "Empty rate at most", "capability_acc": "Capability at least",
                 "benign_perplexity": "Benign perplexity at most"}


def _checks_table(rec: Recommendation | None, confirmation: Confirmation | None) -> list[dict]:
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
        status = _statuses(confirmation).get(key) if confirmation else None
        rows.append({"label": label,
                     "dev": dev and {"value": _num(dev.value, digits),
                                     "limit": _num(dev.limit, digits), "ok": dev.ok,
                                     "status": "pass" if dev.ok else "fail"},
                     "eval": ev and {"value": _num(ev.value, digits),
                                     "limit": _num(ev.limit, digits), "ok": ev.ok,
                                     "status": status or ("pass" if ev.ok else "fail")}})
    if confirmation is not None and confirmation.degenerate:
        rows.append({"label": "Output not degenerate", "dev": None,
                     "eval": {"value": degenerate_text(confirmation.degenerate), "limit": "",
                              "ok": False, "status": "fail"}})
    return rows


_CRITERIA = {"perplexity": "perplexity", "distinct_2": "distinct-2",
             "empty_rate": "empty rate", "capability_acc": "capability accuracy",
             "repetition_rate": "repetition rate", "degenerate": "degenerate output",
             "benign_perplexity": "benign perplexity"}


def degenerate_text(degenerate: list[Degeneracy]) -> str:
    """'repetition rate 0.92 > 0.5, distinct-2 0.01 < 0.48' (empty: not degenerate)."""
    return ", ".join(f"{_CRITERIA[d.criterion]} {d.value:.3g} "
                     f"{'<' if d.criterion == 'distinct_2' else '>'} {d.limit:.3g}"
                     for d in degenerate)


def no_pick_text(no_pick: NoPick | None, knob: str = "α") -> str:
    """Why no cell qualified on dev, in one or two sentences ('' without a record); `knob`
    names the strength (α for CAA's grid, s for a method's)."""
    if no_pick is None:
        return ""
    ref = no_pick.reference_mean_toxicity
    if no_pick.reason == "no_steered_cell":
        return "The dev grid has no steered cell."
    if no_pick.reason == "none_less_toxic":
        return (f"No steered cell was less toxic than the unsteered model on dev (mean "
                f"toxicity {ref:.3f}).")
    parts = []
    for cell in no_pick.best_cells:
        broken = []
        for name in cell.failed:
            check = cell.checks.get(name)
            if name == "degenerate":
                broken.append(f"degenerate output ({degenerate_text(cell.degenerate)})")
            elif check is not None:
                side = "≥" if name in ("distinct_2", "capability_acc") else "≤"
                broken.append(f"{_CRITERIA.get(name, name)} {_num(check.value)} (needs "
                              f"{side} {_num(check.limit)})")
        where = {ALL_LAYERS: "all layers", UNSTEERED_LAYER: "no edit"}.get(
            cell.layer, f"layer {cell.layer}")
        parts.append(f"{where}, {knob} = {cell.alpha:g} (mean toxicity {cell.mean_toxicity:.3f}"
                     f"): {', '.join(broken) or 'capability not kept'}")
    return (f"The least toxic cells below the unsteered {ref:.3f} broke the rule: "
            + "; ".join(parts) + ".")


def _claim_rows(results: ExperimentResults) -> list[dict]:
    """One row per verdict: the claim, estimate [CI], n, shown or not (with the MDE), and
    whether its limit (if any) is decidable at this n."""
    return _verdict_rows(results.verdicts)


def _verdict_rows(verdicts) -> list[dict]:
    """`_claim_rows` of any list of verdicts."""
    rows = []
    for v in verdicts:
        digits = 1 if v.unit == "items" else 3
        if v.rank is not None:  # a rank among null directions: no interval
            estimate = {"v": _signed(v.estimate), "ci": f"rank {v.rank} of {v.n + 1}"}
            power = (f"p = {_pvalue(v.p_value)}" if v.shown else
                     f"p = {_pvalue(v.p_value)}; smallest p this null allows "
                     f"{v.min_p:.3g}")
        else:
            estimate = {"v": _signed(v.estimate, digits),
                        "ci": _interval(v.ci_lo, v.ci_hi, digits).replace("-", "−")}
            power = ("" if v.shown or v.shown is None else
                     "MDE " + ("–" if v.mde is None else _num(v.mde, digits)))
        limit = None
        if v.limit is not None:
            limit = {"value": "p < 0.05" if v.rank is not None else f"{v.limit:.3g}",
                     "decidable": v.decidable}
        rows.append({"claim": v.claim, "metric": v.metric, "estimate": estimate,
                     "n": f"{v.n} {v.unit}", "shown": v.shown, "power": power,
                     "limit": limit, "summary": v.summary})
    return rows


def _statuses(c: Confirmation) -> dict[str, str]:
    """{criterion: pass | fail | undecidable}; a document without `criteria` (older runs)
    has only the checks' point verdicts."""
    return {name: c.criteria.get(name, "pass" if check.ok else "fail")
            for name, check in c.checks.items()}


_STATUS_WORDS = {"fail": "fails", "undecidable": "cannot be decided at this n"}


def _criteria_text(c: Confirmation, results: ExperimentResults) -> str:
    """'benign perplexity fails; capability accuracy cannot be decided at this n (MDE 45.9 >
    limit 2)': the criteria that did not pass ('' when all did)."""
    by_name = {v.name: v for v in results.verdicts if v.name}
    parts = []
    for name, status in _statuses(c).items():
        if status == "pass":
            continue
        v = by_name.get(CRITERION_VERDICT.get(name, ""))
        extra = ""
        if status == "undecidable" and v is not None and v.mde is not None:
            digits = 1 if v.unit == "items" else 3
            extra = f" (MDE {_num(v.mde, digits)} > limit {v.limit:.3g})"
        parts.append(f"{_CRITERIA.get(name, name)} {_STATUS_WORDS[status]}{extra}")
    return "; ".join(parts)


def _headline(results: ExperimentResults) -> str:
    rec, confirmation = results.recommendation, results.confirmation
    if not rec:
        why = no_pick_text(results.no_recommendation)
        return ("No cell qualified. No steered cell met the recommendation rule on the dev "
                "grid" + (f". {why}" if why else ": none was less toxic than the unsteered "
                          "model within the perplexity, diversity, empty-output and "
                          "capability limits.")
                + " The eval sweep is shown for reference.")
    text = f"Chosen on dev: layer {rec.layer}, α = {rec.alpha:g}. "
    st = results.stability
    if st is not None and not st.stable:
        text += (f"Unstable: only {st.cell_share:.0%} of resampled dev sets pick it again. ")
    if confirmation is None:
        return text + "Its eval cell is missing, so the choice is unconfirmed."
    c = confirmation
    verb = "it lowers mean toxicity from" if c.toxicity_reduced else "mean toxicity goes from"
    text += (f"On held-out eval prompts {verb} "
             f"{c.reference_mean_toxicity:.3f} to {c.mean_toxicity:.3f} ("
             f"{c.toxicity_reduction or 0:.0%} less; paired difference "
             f"{_signed(c.delta_mean_toxicity)}, 95% CI "
             f"{_interval(c.delta_mean_toxicity_ci_lo, c.delta_mean_toxicity_ci_hi)})")
    if c.perplexity_increase is not None:
        text += f", at {c.perplexity_increase:+.0%} perplexity"
    if c.capability_drop_points is not None:
        task = results.capability.task if results.capability else "capability"
        text += f" and {-c.capability_drop_points:+.1f} points of {task} accuracy"
    criteria = _criteria_text(c, results)
    if c.degenerate:
        text += (f". Not a toxicity win: its eval output is degenerate "
                 f"({degenerate_text(c.degenerate)}).")
    elif c.confirmed:
        text += ". Eval confirms the dev choice on every criterion, each decidable at this n."
    elif not c.toxicity_reduced:
        text += ". Eval does not confirm it: the reduction's interval includes zero."
    else:
        text += f". Eval confirms the reduction, not the rule: {criteria}."
    if not c.toxicity_reduced and criteria:
        text = text[:-1] + f"; and {criteria}."
    control = next((v for v in results.verdicts if v.name == "control"), None)
    tested = results.control and next((x for x in results.control.comparison
                                       if x.alpha == results.control.alpha_tested), None)
    if tested is not None and tested.caa_degenerate:
        control = None  # a broken text's low score is no evidence (the control row says so)
    if control is not None and control.estimate is not None:
        at = f" at α = {results.control.alpha_tested:g}" if (
            results.control and results.control.alpha_tested is not None) else ""
        text += (f" Less toxic than random directions of its norm{at}: "
                 f"{'shown' if control.shown else 'not shown'} (paired difference "
                 f"{_signed(control.estimate)}, 95% CI "
                 f"{_interval(control.ci_lo, control.ci_hi)}"
                 + ("" if control.shown or control.mde is None
                    else f"; this n detects {control.mde:.3f} or more") + ").")
    ranks = [v for v in results.verdicts if v.rank is not None]
    if ranks:
        text += " Against null directions of its norm (likelihood probe): " + "; ".join(
            f"{v.name.removeprefix('specificity_')} {'shown' if v.shown else 'not shown'} "
            f"(rank {v.rank} of {v.n + 1}, p = {_pvalue(v.p_value)})" for v in ranks) + "."
    return text


def _control_text(control: Control | None) -> tuple[bool | None, str]:
    if not control:
        return None, "not run (control.n_directions is 0)"
    at = next((c for c in control.comparison if c.alpha == control.alpha_tested), None)
    if at is None:
        return None, "no control cell at the tested α"
    if at.caa_degenerate:
        return None, (f"not measured: CAA's output at α = {at.alpha:g}, layer {control.layer} "
                      "is degenerate, so its lower toxicity is broken text, not an effect")
    detail = (f"at α = {at.alpha:g}, layer {control.layer}: CAA {at.caa_mean_toxicity:.3f} vs "
              f"{control.n_directions} random directions of the same norm "
              f"{at.random_mean_toxicity:.3f}; paired difference {_signed(at.diff)}, 95% CI "
              f"{_interval(at.diff_ci_lo, at.diff_ci_hi)}, n = {at.n_prompts} prompts")
    if control.specific:
        return True, "specific: CAA is less toxic than random steering " + detail
    return False, "not shown to be specific: " + detail


def _specificity_text(results: ExperimentResults) -> tuple[bool | None, str]:
    """(CAA beats every null family at p < 0.05, or None when not run; the numbers)."""
    spec = results.specificity
    if not spec or not spec.families:
        return None, "not run (specificity.probe_pairs or every null family is 0)"
    ranks = "; ".join(f"{f.family} rank {f.rank}/{f.n + 1}, p = {f.p_value:.3g}"
                      for f in spec.families)
    detail = (f"likelihood probe at layer {spec.layer}, α = {spec.alpha:g}, n = {spec.n_pairs} "
              f"held-out pairs: CAA's Δ log p(toxic) − log p(clean) = "
              f"{_signed(spec.families[0].caa_delta)} first order "
              f"({_signed(spec.caa_exact_delta)} exact) against null directions of its norm "
              f"({ranks}); first order vs exact r = {_num(spec.probe_exact_r, 2)}")
    if spec.specific:
        return True, "specific: CAA beats every null family (p < 0.05); " + detail
    return False, "not shown to be specific: " + detail


def _specificity_rows(results: ExperimentResults) -> list[dict]:
    """Per null family: CAA's Δ, the null's spread, CAA's rank and p."""
    spec = results.specificity
    if not spec:
        return []
    return [{"family": f.family, "n": f.n, "caa": _signed(f.caa_delta),
             "null": f"{_signed(f.null_mean)} ± {_num(f.null_sd)}",
             "range": _interval(f.null_q05, f.null_q95), "rank": f"{f.rank} / {f.n + 1}",
             "p": _pvalue(f.p_value), "beaten": f.p_value < 0.05}
            for f in spec.families]


def _second_scorer_text(results: ExperimentResults) -> str:
    rec, second = results.recommendation, results.scorer.second
    holds = rec.holds_under_second_scorer if rec else None
    if holds is None:
        return ("not measured (no second scorer)" if not second
                else "not measured" if rec else "no recommendation to check")
    return (f"yes: {second} also sees a reduction (paired 95% CI below zero)" if holds
            else f"no: {second} does not confirm the reduction")


def stability_text(results: ExperimentResults) -> tuple[str, bool | None]:
    """(one sentence on how often resampled dev prompts repeat the pick, stable or not;
    None: not measured)."""
    st = results.stability
    if st is None:
        return "not measured (sweep.stability_resamples: 0)", None
    what = "no pick" if st.chosen is None else (
        f"layer {st.chosen['layer']:g}, α = {st.chosen['alpha']:g}")
    others = [a for a in st.alternatives
              if (a.layer, a.alpha) != ((st.chosen or {}).get("layer"),
                                        (st.chosen or {}).get("alpha"))][:2]
    alt = "; ".join(("no pick" if a.layer is None else f"layer {a.layer}, α = {a.alpha:g}")
                    + f" {a.share:.0%}" for a in others)
    layer = "" if st.chosen is None else f", {st.layer_share:.0%} the same layer"
    text = (f"{st.cell_share:.0%} of {st.n_resamples} bootstrap resamples of the dev prompts "
            f"pick the same cell ({what}){layer}" + (f"; next: {alt}" if alt else "") + ".")
    if not st.stable:
        text += (" Warning: below 80%, the dev decision is not stable; more dev prompts or "
                 "samples are needed before the pick means much.")
        if st.projections:
            text += " Projected on more dev prompts like these: " + "; ".join(
                f"{p.draw_scale:g}x, {p.cell_share:.0%} (layer {p.layer_share:.0%})"
                for p in st.projections) + (
                "." if st.projections[-1].cell_share >= 0.8 else
                f"; still below 80% at {st.projections[-1].draw_scale:g}x, the leading cells "
                "are close to a tie (the layer choice matters little there).")
    return text, st.stable


_STOPPED_BY = {
    "more_toxic": "the rule: the next α at this layer was within the limits but not less toxic",
    "max_grid_alpha": "the grid, not the rule: α reached sweep.max_grid_alpha before any "
                      "limit bound",
    "max_relative_push": "the grid, not the rule: a larger α would pass "
                         "sweep.max_relative_push before any limit bound",
    "grid_edge": "the grid, not the rule: α is the grid's largest at this layer and no "
                 "limit binds there (sweep.extend_alphas is off)",
    "no_pick": ""}


def alpha_range_text(results: ExperimentResults) -> str:
    """One sentence: what set the pick's α (a limit that bound, or the grid's edge)."""
    ar = results.alpha_range
    if ar is None:
        return "not recorded"
    added = (f" The grid was extended at layer {ar.layer} to α = "
             + ", ".join(f"{c['alpha']:g}" for c in ar.added_cells) + "."
             if ar.added_cells else "")
    if ar.stopped_by == "limit" and ar.bound_by is not None:
        broken = ", ".join(
            f"{_CRITERIA.get(n, n)}" + (f" {_num(ar.bound_by.checks[n].value)} > limit "
                                        f"{_num(ar.bound_by.checks[n].limit)}"
                                        if n in ar.bound_by.checks and n not in
                                        ("distinct_2", "capability_acc") else "")
            for n in ar.bound_by.failed)
        return (f"Set by the rule: at α = {ar.bound_by.alpha:g} the limit on {broken} "
                f"binds." + added)
    if ar.stopped_by == "no_pick":
        return "No α to set: no cell was picked." + added
    return f"Set by {_STOPPED_BY[ar.stopped_by]}." + added


def _summary(results: ExperimentResults) -> dict:
    """The dev-chosen cell, its eval confirmation with CIs, the control, and the verdicts."""
    rec, confirmation = results.recommendation, results.confirmation
    ref = results.cell("sweep", "challenging", None, 0.0)
    steered = results.cell("sweep", "challenging", rec.layer, rec.alpha) if rec else None
    dev_ref = results.cell("grid", "challenging", None, 0.0)
    agreement = results.scorer_agreement
    if agreement and agreement.spearman is not None:
        agreement_text = (f"Spearman ρ = {agreement.spearman:.2f} between "
                          f"{results.scorer.name} and {agreement.second} over "
                          f"n = {agreement.n:,} sweep continuations")
    else:
        agreement_text = "not measured (no second scorer)"
    specific, control_text = _control_text(results.control)
    null_specific, null_text = _specificity_text(results)
    return {
        "headline": _headline(results), "rows": _summary_rows(results, rec),
        "has_rec": steered is not None, "has_dev": dev_ref is not None,
        "rec_label": f"layer {rec.layer}, α = {rec.alpha:g}" if rec else "",
        "n_ref": (f"n = {ref.n_prompts} prompts, {ref.n} continuations" if ref
                  else "n = 0 prompts, 0 continuations"),
        "n_rec": (f"n = {steered.n_prompts} prompts, {steered.n} continuations"
                  if steered else ""),
        "n_dev": (f"n = {dev_ref.n_prompts} dev prompts, {dev_ref.n} continuations"
                  if dev_ref else ""),
        "rule": rule_text(results.rule, dev_ref.perplexity if dev_ref else None),
        "checks": _checks_table(rec, confirmation),
        "claims": _claim_rows(results),
        "confirmed": None if confirmation is None else confirmation.confirmed,
        "specific": specific, "control_text": control_text,
        "null_specific": null_specific, "null_text": null_text,
        "holds": rec.holds_under_second_scorer if rec else None,
        "holds_text": _second_scorer_text(results), "agreement_text": agreement_text,
        "chosen_layers": ", ".join(str(x) for x in results.chosen_layers),
        "stability_text": stability_text(results)[0], "stable": stability_text(results)[1],
        "alpha_range_text": alpha_range_text(results),
    }


def _control_rows(results: ExperimentResults) -> list[dict]:
    """Per control α: CAA vs random directions (toxicity, paired difference, fluency)."""
    control = results.control
    if not control:
        return []
    rows = []
    for item in control.comparison:
        random_cell = results.cell("control", "challenging", control.layer, item.alpha)
        caa_cell = results.cell("sweep", "challenging", control.layer, item.alpha)
        rows.append({
            "alpha": _alpha(item.alpha), "is_tested": item.alpha == control.alpha_tested,
            "caa": _num(item.caa_mean_toxicity), "random": _num(item.random_mean_toxicity),
            "by_direction": ", ".join(f"{v:.3f}" for v in item.random_by_direction.values()),
            "diff": {"v": _signed(item.diff),
                     "ci": _interval(item.diff_ci_lo, item.diff_ci_hi).replace("-", "−")},
            "p": _pvalue(item.p_bootstrap),
            "caa_ppl": _num(caa_cell and caa_cell.perplexity, 2),
            "random_ppl": _num(random_cell and random_cell.perplexity, 2),
            "caa_empty": _num(caa_cell and caa_cell.empty_rate, 3),
            "random_empty": _num(random_cell and random_cell.empty_rate, 3),
            "caa_capability": _num(caa_cell and caa_cell.capability_acc, 3),
            "random_capability": _num(random_cell and random_cell.capability_acc, 3),
            "degenerate": ", ".join(
                side for side, flag in (("CAA", item.caa_degenerate),
                                        ("random", item.random_degenerate)) if flag),
        })
    return rows


def _method_label(method: str) -> str:
    from .plots import METHOD_LABELS

    return "unsteered" if method == "none" else METHOD_LABELS.get(method, method)


def _method_cell(layer: int, strength: float) -> str:
    where = {ALL_LAYERS: "all layers", UNSTEERED_LAYER: "no edit"}.get(layer, f"layer {layer}")
    return f"{where}, s = {strength:g}"


MATCH_TEXT = {"interpolated": "interpolated at the budget", "front_point": "front point under "
              "the budget", "below_budget": "never reaches the budget: least toxic front point",
              "unreachable": "budget unreachable: no strength under it",
              "no_front": "no cell less toxic than unsteered", "no_reference": "no reference"}


def goal_text(results: ExperimentResults) -> str:
    """The goal verdict in one sentence (met / not met / undecidable, with numbers)."""
    methods = results.methods
    if methods is None or methods.goal is None:
        return "not tested (no matched comparison in this run)"
    goal = methods.goal
    target = (f"≥ {goal.target_ratio:g}× fewer toxic continuations on challenging eval at ≤ "
              f"+{goal.perplexity_budget:.0%} perplexity (challenging and benign), no capability "
              f"loss its power could show: ")
    return target + goal.summary.replace(str(goal.method), _method_label(goal.method or ""), 1)


def _methods_text(results: ExperimentResults) -> str:
    """One sentence: the method least toxic on dev (chosen there), and what eval says of it."""
    methods = results.methods
    if methods is None:
        return "not run"
    if methods.goal is not None:
        return ("compared at matched fluency (each method's strength at +"
                f"{methods.perplexity_budget:.0%} dev perplexity, on equal dev budgets); "
                "the best is chosen on dev, eval confirms or not — goal: " + goal_text(results))
    best = methods.strongest
    if best is None:
        return ("no cell qualified: no method's dev grid had a cell that met the "
                "recommendation rule (the methods table says why, per method)")
    text = (f"least toxic on dev among the methods' dev picks: {_method_label(best.method)} "
            f"(dev mean toxicity {best.dev_reference_mean_toxicity:.3f} → "
            f"{best.dev_mean_toxicity:.3f}; chosen on dev, layer {methods.layer})")
    if best.frac_toxic is None or best.reference_frac_toxic is None:
        return text + "; no eval cell, so unconfirmed"
    ratio = best.toxic_fraction_ratio
    ratio_text = "no toxic continuation left" if ratio is None else f"{ratio:.1f}× fewer"
    rise = best.perplexity_increase
    ppl = "" if rise is None else f", perplexity {rise:+.0%}"
    verdict = ("eval confirms it (reduction's CI below zero, within the limits)"
               if best.confirmed_on_eval else
               "eval does not confirm it" + ("" if best.within_limits_on_eval else
                                             " (outside the rule's limits on eval)"))
    return (text + f"; on challenging eval the toxic fraction goes "
            f"{best.reference_frac_toxic:.3f} → {best.frac_toxic:.3f} ({ratio_text}{ppl}): "
            + verdict)


def _method_rows(results: ExperimentResults) -> list[dict]:
    """Per method: its dev pick and the pick's eval numbers with CIs, vs unsteered."""
    methods = results.methods
    if methods is None:
        return []
    best = (methods.goal.method if methods.goal else
            methods.strongest.method if methods.strongest else None)
    entries = [("none", None, methods.reference, None, None, None)] if methods.reference else []
    entries += [(m.method, m.dev, m.eval, m.capability, m.toxic_fraction_ratio,
                 m.within_limits_on_eval) for m in methods.methods]
    why = {m.method: _why(m) for m in methods.methods}
    matched = {m.method: m.matched for m in methods.methods}
    rows = []
    for method, dev, ev, cap, ratio, within in entries:
        point = matched.get(method)
        if method == "none":
            cell = ""
        elif point is not None:
            cell = ("no matched point" if point.layer is None
                    else _method_cell(point.layer, point.strength))
        else:
            cell = "none qualified on dev" if dev is None else _method_cell(dev.layer, dev.alpha)
        rows.append({
            "method": _method_label(method), "is_ref": method == "none",
            "is_best": method == best, "cell": cell, "why": why.get(method, ""),
            "budget": (None if point is None or point.eval_perplexity_increase is None
                       else f"{point.eval_perplexity_increase:+.0%}"
                       + ("" if point.eval_benign_perplexity_increase is None
                          else f" / {point.eval_benign_perplexity_increase:+.0%}")),
            "degenerate": degenerate_text(ev.degenerate) if ev and method != "none" else "",
            **{name: _value(ev, name, 2 if name == "perplexity" else 3) for name in
               ("mean_toxicity", "frac_toxic", "emt", "tp", "perplexity")},
            "delta": ({"v": _signed(ev.delta_mean_toxicity),
                       "ci": _interval(ev.delta_mean_toxicity_ci_lo,
                                       ev.delta_mean_toxicity_ci_hi).replace("-", "−")}
                      if ev else None),
            "p": _pvalue(ev.p_bootstrap if ev else None),
            "distinct_2": _num(ev.distinct_2 if ev else None),
            "empty_rate": _num(ev.empty_rate if ev else None),
            "capability": _value(cap, "acc"),
            "capability_drop": ({"v": _signed(cap.drop_points, 1),
                                 "ci": _interval(cap.drop_points_ci_lo, cap.drop_points_ci_hi,
                                                 1).replace("-", "−")} if cap else None),
            "ratio": "–" if ratio is None else f"{ratio:.1f}×",
            "within": within,
        })
    return rows


def _why(m) -> str:
    """Under a method's cell: how its matched point was found and its dev search."""
    parts = []
    if m.matched is not None:
        parts.append(MATCH_TEXT[m.matched.status])
    if m.search is not None:
        parts.append(f"{m.search.cells_searched} dev cells, stopped by {m.search.stopped_by}")
    if m.dev is None:
        text = no_pick_text(m.no_pick, "s")
        if m.matched is None:
            parts.append(text)
        else:
            parts.append("the rule picked none on dev" + (f": {text}" if text else ""))
    return "; ".join(p for p in parts if p)


def pairwise_table(results: ExperimentResults) -> pd.DataFrame:
    """Every pair of methods at their matched points: paired estimate, CI, shown, MDE."""
    columns = ["claim", "estimate", "ci_lo", "ci_hi", "n", "shown", "mde"]
    pairs = results.methods.pairwise if results.methods else []
    return pd.DataFrame([v.model_dump() for v in pairs], columns=columns)


def _pairwise_rows(results: ExperimentResults) -> list[dict]:
    pairs = results.methods.pairwise if results.methods else []
    return [{"claim": v.claim, "estimate": _signed(v.estimate),
             "ci": _interval(v.ci_lo, v.ci_hi).replace("-", "−"), "n": v.n, "shown": v.shown,
             "mde": _num(v.mde)} for v in pairs]
def _cell_source(source: str) -> str:
    """'caa' -> 'CAA'; 'conditional_caa (matched point)' -> 'conditional CAA (matched point)'."""
    method, _, rest = source.partition(" ")
    return f"{_method_label(method)} {rest}".strip()


def _conditional(results: ExperimentResults) -> dict | None:
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
            "method": _method_label(arm.method), "subset": arm.subset,
            "gated": share(arm.subset) if conditional else {"v": "100%", "ci": "every prompt"},
            "toxicity": _num(arm.mean_toxicity), "reference": _num(arm.reference_mean_toxicity),
            "delta": {"v": _signed(arm.toxicity and arm.toxicity.estimate),
                      "ci": _interval(arm.toxicity.ci_lo, arm.toxicity.ci_hi).replace("-", "−")
                      if arm.toxicity else ""},
            "perplexity": _num(arm.perplexity, 2),
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
    return {"text": text, "rows": rows, "verdicts": _verdict_rows(verdicts),
            "capability": ", ".join(f"{_method_label(k)} {v:.3f}" for k, v in accuracy.items()),
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
            "cell": (_method_cell(m.dev.layer, m.dev.alpha) if m.dev else "none")
            if point is None else ("none" if point.layer is None
                                   else _method_cell(point.layer, point.strength)),
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


def _captions(results: ExperimentResults) -> dict[str, tuple[str, str]]:
    """{figure name: (title, caption)}; captions name the data, the n and the CI method."""
    ch = _sweep_cells(results, "challenging")
    be = _sweep_cells(results, "benign")
    n_ch = f"n = {ch[0].n_prompts} prompts ({ch[0].n} continuations)" if ch else ""
    n_be = f"n = {be[0].n_prompts} prompts ({be[0].n} continuations)" if be else ""
    n_grid = max((c.n_prompts for c in results.cells if c.experiment == "grid"), default=0)
    layers = ", ".join(str(x) for x in results.chosen_layers)
    cap = results.capability
    vec = results.vectors
    return {
        "toxicity_vs_alpha": (
            "Toxicity vs steering strength",
            f"Mean toxicity ({results.scorer.name}) of continuations vs α at layer "
            f"{layers}, challenging eval ({n_ch}) and benign eval ({n_be}). The top axis gives "
            f"α·‖v‖/‖h‖, the push as a fraction of the mean residual norm at that layer. "
            f"Error bars: {CI_METHOD}."),
        "gehman_vs_alpha": (
            "Expected maximum toxicity and toxicity probability",
            f"Gehman et al. (2020) metrics on challenging eval prompts ({n_ch}, k = "
            f"{_samples_per_prompt(results, 'challenging')} continuations per prompt; drawn "
            f"only where k ≥ 2): EMT is the "
            f"mean over prompts of the most toxic of the k continuations; TP is the fraction "
            f"of prompts with at least one toxic continuation. Error bars: {CI_METHOD}."),
        "tradeoff": (
            "Toxicity–fluency trade-off",
            f"Mean toxicity vs perplexity of each α at layer {layers} on challenging eval "
            f"prompts ({n_ch}). The dashed line joins the Pareto-optimal cells; the ring marks "
            f"the recommended cell; the dotted line is the perplexity limit of the rule. "
            f"Error bars (both axes): {CI_METHOD}."),
        "layer_alpha_heatmap": (
            "Layer × α grid (dev split)",
            f"Mean toxicity of one continuation per challenging dev prompt (n = {n_grid}) for "
            f"each grid layer and α. Layers for the eval sweep were chosen here, on dev, so "
            f"the eval numbers are not selected on themselves."),
        "vector_norms": (
            "Steering vector norms by layer",
            f"‖v‖ of the CAA vector ({vec.n_per_side} toxic vs {vec.n_per_side} clean "
            f"train examples, {vec.contrast} contrast) and the mean residual norm ‖h‖ per "
            f"layer; right: their ratio, the relative push of α = 1. Dotted: chosen layer(s)."),
        "layer_separation": (
            "Separation of toxic and clean activations",
            "AUROC of the projection onto v, toxic vs clean activations of the held-out dev "
            "split, per layer; 0.5 is chance. The paired contrast holds the prompt fixed and "
            "pools only continuation tokens; the comparison contrast (across prompts) is "
            "shown on its own held-out set and on the paired one, the same yardstick."),
        "method_fronts": (
            "Methods compared on their dev searches",
            "Mean toxicity vs perplexity of every dev cell each method searched (its layers and "
            "strengths, on equal budgets) on the challenging dev prompts; lines: each "
            "method's Pareto front through the unsteered point (star); rings: the cell the "
            "recommendation rule picked on dev; diamonds: the matched point at the perplexity "
            "budget (dotted line), whose eval numbers are in the methods table."),
        "control": (
            "Random-direction control",
            "Mean toxicity on challenging eval prompts vs α for the CAA vector and for "
            "Gaussian directions scaled to its norm at the same layer, on the same prompts and "
            "sample seeds (faint lines: single directions). If random pushes of the same size "
            "lowered the scorer's toxicity as much, the effect would not be specific to the "
            "toxicity direction."),
        "specificity_null": (
            "Specificity: CAA among null directions",
            "Histograms of the likelihood probe's Δ = change of log p(toxic) − log p(clean) "
            "continuation (mean over held-out dev pairs, first order) under a push of the "
            "tested α along null directions of the CAA vector's norm at the same layer: "
            "isotropic Gaussian, Gaussian with the covariance of the train activations, and "
            "CAA vectors of the train pairs with shuffled side labels. Solid line: CAA (first "
            "order); dotted: CAA by exact pushed passes. Negative Δ: less toxic. p = (1 + "
            "#null ≤ CAA's Δ) / (N + 1). At first order every Δ scales with α, so the rank is "
            "that of the local (small-push) effect; the exact line shows CAA at the tested α."),
        "specificity_dose": (
            "Specificity: dose-response over α",
            "The probe's Δ vs α: CAA by exact pushed passes (solid) and first order (dashed), "
            "one null direction per family by exact passes at the tested α (crosses), and each "
            "null family's 5–95% "
            "range at first order (bands, linear in α)."),
        "capability": (
            "Capability under steering",
            f"{cap.task if cap else ''} accuracy (n = {cap.n_items if cap else 0} items) vs α "
            f"at layer {layers}; dashed: chance ({cap.chance if cap else 0:.0%}). Error bars: "
            f"95% percentile bootstrap over items."),
    }


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


# --- figures and tables -------------------------------------------------------------------

def _display_width(png: bytes, dpi: int) -> int:
    """CSS pixels to show a PNG at 100 px per figure inch: sharp on HiDPI, not poster-sized."""
    width = int.from_bytes(png[16:20], "big")  # IHDR is the first chunk; width at bytes 16-19
    return round(width * 100 / dpi)


def results_fingerprint(results: ExperimentResults) -> str:
    """Short sha256 of a results document: report.html and figures.json carry the one they show."""
    return digest(results.model_dump(mode="json"))


def _figures(results: ExperimentResults, report_dir: Path) -> list[dict]:
    from .plots import DPI, make_figures

    saved = make_figures(results, report_dir / FIGURES_DIR)
    write_json({"params_hash": results.manifest.params_hash,
                "results_fingerprint": results_fingerprint(results),
                "figures": sorted(p.name for paths in saved.values() for p in paths.values())},
               report_dir / FIGURES_DIR / FIGURES_INDEX)
    captions = _captions(results)
    figures = []
    for number, (name, paths) in enumerate(saved.items(), start=1):
        png = paths["png"].read_bytes()
        data = base64.b64encode(png).decode("ascii")
        title, caption = captions.get(name, (name.replace("_", " ").capitalize(), ""))
        figures.append({"id": f"fig-{name}", "number": number, "title": title,
                        "caption": caption, "src": f"data:image/png;base64,{data}",
                        "width": _display_width(png, DPI),
                        "svg": f"{FIGURES_DIR}/{paths['svg'].name}"})
    return figures


def _samples_per_prompt(results: ExperimentResults, subset: str) -> int:
    """k of the eval sweep on one subset (its unsteered cell; 0 without one)."""
    ref = results.cell("sweep", subset, None, 0.0)
    return 0 if ref is None else ref.samples_per_prompt


def _sweep_rows(results: ExperimentResults, subset: str) -> list[dict]:
    rec = results.recommendation
    rows = []
    for c in _sweep_cells(results, subset):
        rows.append({
            "layer": "–" if c.alpha == 0 else c.layer,
            "alpha": _alpha(c.alpha),
            "is_ref": c.alpha == 0,
            "is_rec": (subset == "challenging" and rec is not None and c.layer == rec.layer
                       and c.alpha == rec.alpha),
            "relative_norm": _num(c.relative_norm, 3) if c.alpha != 0 else "0",
            "n": f"{c.n_prompts} / {c.n}",
            "mean_toxicity": _value(c, "mean_toxicity"),
            "delta": ({"v": "reference", "ci": ""} if c.alpha == 0 else
                      {"v": _signed(c.delta_mean_toxicity),
                       "ci": _interval(c.delta_mean_toxicity_ci_lo,
                                       c.delta_mean_toxicity_ci_hi).replace("-", "−")}),
            "p_bootstrap": _pvalue(c.p_bootstrap),
            "p_wilcoxon": _pvalue(c.p_wilcoxon),
            "emt": _value(c, "emt"),
            "tp": _value(c, "tp"),
            "perplexity": _value(c, "perplexity", 2),
            "distinct_2": _num(c.distinct_2, 3),
            "empty_rate": _num(c.empty_rate, 3),
            "capability": _value(c, "capability_acc"),
            "second": _num(c.mean_toxicity_second, 3),
            "degenerate": degenerate_text(c.degenerate),
        })
    return rows


def _grid_table(results: ExperimentResults) -> dict:
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
            values.append({"v": _num(cell.mean_toxicity) if cell else "–",
                           "ppl": _num(cell.perplexity, 1) if cell else ""})
        rows.append({"layer": layer, "chosen": layer in chosen, "values": values})
    n = max((c.n_prompts for c in grid), default=0)
    return {"alphas": [_alpha(a) for a in alphas], "rows": rows, "n": n}


def _examples(results: ExperimentResults) -> list[dict]:
    """Example generations grouped by prompt, ordered by alpha; text stays raw (escaped later)."""
    groups: dict[str, dict] = {}
    for ex in results.examples:
        group = groups.setdefault(ex.prompt_id, {"prompt_id": ex.prompt_id, "subset": ex.subset,
                                                 "prompt": ex.prompt, "rows": []})
        group["rows"].append({"alpha_value": ex.alpha, "alpha": _alpha(ex.alpha),
                              "layer": "–" if ex.alpha == 0 else ex.layer,
                              "completion": ex.completion, "toxicity": _num(ex.toxicity, 3)})
    for group in groups.values():
        group["rows"].sort(key=lambda r: r["alpha_value"])
    return list(groups.values())


_DROP_REASONS = {"no_toxic_side": "no side toxic enough", "no_clean_side": "no side clean enough",
                 "no_toxic_nor_clean_side": "neither", "tied": "tied",
                 "single_continuation": "one non-empty continuation",
                 "only_empty_continuations": "only empty continuations"}


def _pairs_line(split: str, counts) -> str:
    """One split's gap filter in words: pairs kept, and prompts dropped by reason."""
    if not isinstance(counts, dict):
        return f"{split}: {counts}"
    if "pairs_kept" not in counts:  # a contrast without pairs (completions, prompts)
        return f"{split}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
    dropped = ", ".join(f"{words} {counts[key]}" for key, words in _DROP_REASONS.items()
                        if counts.get(key))
    capped = counts["pairs_kept"] - counts["pairs_used"]
    return (f"{split}: {counts['pairs_used']} pairs used of {counts['prompts']} prompts "
            f"(toxic side ≥ {counts['toxic_min']}, clean side < {counts['clean_max']}"
            + (f"; {capped} more kept beyond n_per_side" if capped else "")
            + (f"; dropped: {dropped}" if dropped else "") + ")")


def _contrast_table(results: ExperimentResults) -> dict | None:
    """The contrast's labels, gap filter and per-layer vector quality; None before them."""
    vec = results.vectors
    counts = vec.contrast_counts or {}
    if not any(row.split_half_cosine is not None or row.paired_accuracy is not None
               for row in vec.layers) and "label_scorer" not in counts:
        return None
    rows = [{"layer": r.layer, "cosine": _num(r.split_half_cosine),
             "range": _interval(r.split_half_cosine_p05, r.split_half_cosine_p95),
             "loo": _num(r.loo_accuracy),
             "loo_ci": _interval(r.loo_accuracy_ci_lo, r.loo_accuracy_ci_hi),
             "accuracy": _num(r.paired_accuracy),
             "ci": _interval(r.paired_accuracy_ci_lo, r.paired_accuracy_ci_hi),
             "n": r.n_heldout_pairs if r.n_heldout_pairs is not None else "–"}
            for r in vec.layers]
    lines = [_pairs_line(split, counts[split]) for split in ("train", "dev") if split in counts]
    params = results.manifest.params
    return {"label_scorer": counts.get("label_scorer", "the evaluating scorer"),
            "evaluator": params.get("scorer", {}).get("name", "–"),
            "n_resamples": params.get("vectors", {}).get("n_resamples", "–"),
            "lines": lines, "rows": rows}


def _manifest(results: ExperimentResults) -> dict:
    m = results.manifest
    timings = sorted(m.timings.items())
    total = sum(seconds for _, seconds in timings)
    return {
        "facts": [("Run name", m.run_name), ("Params hash", m.params_hash),
                  ("Git commit", m.git_commit or "not in a git checkout"),
                  ("Device", m.device), ("Seed", m.seed),
                  ("Created (UTC)", m.created_utc), ("Python", m.python),
                  ("Platform", m.platform)],
        "versions": sorted(m.versions.items()),
        "timings": [(name, f"{seconds:,.1f}") for name, seconds in timings],
        "total_seconds": f"{total:,.1f}",
        "params_json": json.dumps(m.params, indent=2, sort_keys=True, ensure_ascii=False),
    }


def _environment():
    from jinja2 import Environment, StrictUndefined

    # autoescape=True for every template, whatever its name: model text is untrusted.
    return Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True,
                       lstrip_blocks=True, keep_trailing_newline=True)


def _browser(results: ExperimentResults, continuations: pd.DataFrame | None) -> dict | None:
    """The continuation browser: its escaped JSON, its script and the script's CSP hash, and
    a sentence saying how many continuations it holds (None without a table)."""
    if continuations is None or continuations.empty:
        return None
    from markupsafe import Markup

    data = browser_data(continuations, {"toxicity": results.scorer.name,
                                        "toxicity_second": results.scorer.second or "second"})
    script = (resources.files("steering_utils").joinpath("templates", BROWSER_SCRIPT)
              .read_text("utf-8"))
    script_sha = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    total, shown = data["total"], data["shown"]
    if shown == total:
        note = (f"All {total:,} continuations of {len(data['prompts']):,} prompts in "
                f"{len(data['cells'])} cells.")
    elif data["prompts_shown"] < len(data["prompts"]):
        note = (f"Showing {shown:,} of {total:,} continuations (sample 0 of the first "
                f"{data['prompts_shown']:,} of {len(data['prompts']):,} prompts): the whole "
                f"run would make this page too large.")
    else:
        note = (f"Showing {shown:,} of {total:,} continuations: samples 0–"
                f"{data['samples_cap'] - 1} of every prompt and cell (of "
                f"{data['max_sample'] + 1}); the whole run would make this page too large.")
    return {"json": Markup(browser_json(data)), "script": Markup(script),
            "sha256": script_sha, "note": note, "file": CONTINUATIONS_FILE,
            "n_prompts": len(data["prompts"]), "total": total, "shown": shown}


def render_report(results: ExperimentResults, figures: list[dict],
                  continuations: pd.DataFrame | None = None) -> str:
    """The report's HTML for the results and their already-drawn figures (with the
    continuation browser when given the continuations table)."""
    text = (resources.files("steering_utils").joinpath("templates", TEMPLATE_FILE)
            .read_text("utf-8"))
    template = _environment().from_string(text)
    return template.render(
        results=results,
        title=f"Activation steering for toxicity reduction: {results.model.name}",
        fingerprint=results_fingerprint(results), summary=_summary(results),
        figures=figures, ci_method=CI_METHOD,
        sweep_tables=[{"subset": s, "rows": _sweep_rows(results, s),
                       "gehman": _samples_per_prompt(results, s) >= 2}
                      for s in ("challenging", "benign") if _sweep_cells(results, s)],
        methods_gehman=results.methods is not None and results.methods.samples_per_prompt >= 2,
        grid=_grid_table(results), examples=_examples(results), manifest=_manifest(results),
        control_rows=_control_rows(results), specificity_rows=_specificity_rows(results),
        method_rows=_method_rows(results), pairwise_rows=_pairwise_rows(results),
        goal_text=goal_text(results),
        methods_text=_methods_text(results), browser=_browser(results, continuations),
        contrast=_contrast_table(results), conditional=_conditional(results),
    )


def write_report(results: ExperimentResults, report_dir: str | Path,
                 continuations: pd.DataFrame | None = None) -> Path:
    """report_dir/report.html (self-contained) plus report_dir/figures/*.png|svg, and with a
    continuations table (`continuations.continuations_table`) report_dir/continuations.parquet
    and the report's continuation browser; the html path."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    if continuations is not None:
        write_continuations(continuations, report_dir)
    html = render_report(results, _figures(results, report_dir), continuations)
    with atomic_path(report_dir / REPORT_FILE) as partial:  # never half a report
        partial.write_text(html, encoding="utf-8")
    return report_dir / REPORT_FILE
