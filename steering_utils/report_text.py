"""The report's sentences: every English sentence of the study (the rule, the headline, the
verdicts, the stability and alpha-range lines, the methods' and the goal's text, the
figures' captions) and the number formats they share, written from the typed results
(`results.ExperimentResults`) and nowhere else. `report_tables` lays the same numbers out
as table rows; `report` renders the page.
"""

from __future__ import annotations

from .claims import CRITERION_VERDICT
from .decisions import Degeneracy, NoPick
from .outcomes import Confirmation, Control
from .results import Cell, ExperimentResults, Rule
from .stages import ALL_LAYERS, UNSTEERED_LAYER

CI_METHOD = "95% percentile bootstrap over prompts"


# --- formatting ---------------------------------------------------------------------------

def fmt_num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def fmt_interval(lo, hi, digits: int = 3) -> str:
    return "" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_alpha(alpha: float) -> str:
    return "unsteered" if alpha == 0 else f"{alpha:g}"


def fmt_signed(value, digits: int = 3) -> str:
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
            f"{rule.max_capability_drop:g} points."
            + (f" One-standard-error rule: cells within {rule.tie_se:g} SE (over prompts) of "
               "the least toxic such cell's mean toxicity are tied, and the tie goes to the "
               "lowest perplexity." if rule.tie_se > 0 else ""))


def sweep_cells(results: ExperimentResults, subset: str) -> list[Cell]:
    cells = [c for c in results.cells if c.experiment == "sweep" and c.subset == subset]
    return sorted(cells, key=lambda c: (c.alpha != 0, c.layer, c.alpha))


CRITERION_NAMES = {"perplexity": "perplexity", "distinct_2": "distinct-2",
             "empty_rate": "empty rate", "capability_acc": "capability accuracy",
             "repetition_rate": "repetition rate", "degenerate": "degenerate output",
             "benign_perplexity": "benign perplexity"}


def degenerate_text(degenerate: list[Degeneracy]) -> str:
    """'repetition rate 0.92 > 0.5, distinct-2 0.01 < 0.48' (empty: not degenerate)."""
    return ", ".join(f"{CRITERION_NAMES[d.criterion]} {d.value:.3g} "
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
                broken.append(f"{CRITERION_NAMES.get(name, name)} {fmt_num(check.value)} (needs "
                              f"{side} {fmt_num(check.limit)})")
        where = {ALL_LAYERS: "all layers", UNSTEERED_LAYER: "no edit"}.get(
            cell.layer, f"layer {cell.layer}")
        parts.append(f"{where}, {knob} = {cell.alpha:g} (mean toxicity {cell.mean_toxicity:.3f}"
                     f"): {', '.join(broken) or 'capability not kept'}")
    return (f"The least toxic cells below the unsteered {ref:.3f} broke the rule: "
            + "; ".join(parts) + ".")


def criterion_statuses(c: Confirmation) -> dict[str, str]:
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
    for name, status in criterion_statuses(c).items():
        if status == "pass":
            continue
        v = by_name.get(CRITERION_VERDICT.get(name, ""))
        extra = ""
        if status == "undecidable" and v is not None and v.mde is not None:
            digits = 1 if v.unit == "items" else 3
            extra = f" (MDE {fmt_num(v.mde, digits)} > limit {v.limit:.3g})"
        parts.append(f"{CRITERION_NAMES.get(name, name)} {_STATUS_WORDS[status]}{extra}")
    return "; ".join(parts)


def headline(results: ExperimentResults) -> str:
    rec, confirmation = results.recommendation, results.confirmation
    if not rec:
        why = no_pick_text(results.no_recommendation)
        return ("No cell qualified. No steered cell met the recommendation rule on the dev "
                "grid" + (f". {why}" if why else ": none was less toxic than the unsteered "
                          "model within the perplexity, diversity, empty-output and "
                          "capability limits.")
                + " The eval sweep is shown for reference.")
    text = f"Chosen on dev: layer {rec.layer}, α = {rec.alpha:g}. " + tie_text(rec)
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
             f"{fmt_signed(c.delta_mean_toxicity)}, 95% CI "
             f"{fmt_interval(c.delta_mean_toxicity_ci_lo, c.delta_mean_toxicity_ci_hi)})")
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
                 f"{fmt_signed(control.estimate)}, 95% CI "
                 f"{fmt_interval(control.ci_lo, control.ci_hi)}"
                 + ("" if control.shown or control.mde is None
                    else f"; this n detects {control.mde:.3f} or more") + ").")
    ranks = [v for v in results.verdicts if v.rank is not None]
    if ranks:
        text += " Against null directions of its norm (likelihood probe): " + "; ".join(
            f"{v.name.removeprefix('specificity_')} {'shown' if v.shown else 'not shown'} "
            f"(rank {v.rank} of {v.n + 1}, p = {fmt_p(v.p_value)})" for v in ranks) + "."
    return text


def control_text(control: Control | None) -> tuple[bool | None, str]:
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
              f"{at.random_mean_toxicity:.3f}; paired difference {fmt_signed(at.diff)}, 95% CI "
              f"{fmt_interval(at.diff_ci_lo, at.diff_ci_hi)}, n = {at.n_prompts} prompts")
    if control.specific:
        return True, "specific: CAA is less toxic than random steering " + detail
    return False, "not shown to be specific: " + detail


def specificity_text(results: ExperimentResults) -> tuple[bool | None, str]:
    """(CAA beats every null family at p < 0.05, or None when not run; the numbers)."""
    spec = results.specificity
    if not spec or not spec.families:
        return None, "not run (specificity.probe_pairs or every null family is 0)"
    ranks = "; ".join(f"{f.family} rank {f.rank}/{f.n + 1}, p = {f.p_value:.3g}"
                      for f in spec.families)
    detail = (f"likelihood probe at layer {spec.layer}, α = {spec.alpha:g}, n = {spec.n_pairs} "
              f"held-out pairs: CAA's Δ log p(toxic) − log p(clean) = "
              f"{fmt_signed(spec.families[0].caa_delta)} first order "
              f"({fmt_signed(spec.caa_exact_delta)} exact) against null directions of its norm "
              f"({ranks}); first order vs exact r = {fmt_num(spec.probe_exact_r, 2)}")
    if spec.specific:
        return True, "specific: CAA beats every null family (p < 0.05); " + detail
    return False, "not shown to be specific: " + detail


def second_scorer_text(results: ExperimentResults) -> str:
    rec, second = results.recommendation, results.scorer.second
    holds = rec.holds_under_second_scorer if rec else None
    if holds is None:
        return ("not measured (no second scorer)" if not second
                else "not measured" if rec else "no recommendation to check")
    return (f"yes: {second} also sees a reduction (paired 95% CI below zero)" if holds
            else f"no: {second} does not confirm the reduction")


def tie_text(rec) -> str:
    """One sentence on the one-standard-error rule's tie, when it moved the pick off the least
    toxic admissible cell ('' otherwise)."""
    tie = rec.tie
    if tie is None or (tie.least_toxic_layer, tie.least_toxic_alpha) == (rec.layer, rec.alpha):
        return ""
    return (f"The least toxic cell within the limits, layer {tie.least_toxic_layer}, "
            f"α = {tie.least_toxic_alpha:g} ({tie.least_toxic_mean_toxicity:.3f}), is within "
            f"{tie.tie_se:g} SE ({tie.standard_error:.3f}) of it ({rec.mean_toxicity:.3f}): "
            "tied, and the rule took the lower perplexity. ")


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
        text += _alternatives_on_dev(results, others)
        if st.projections:
            text += " Projected on more dev prompts like these: " + "; ".join(
                f"{p.draw_scale:g}x, {p.cell_share:.0%} (layer {p.layer_share:.0%})"
                for p in st.projections) + (
                "." if st.projections[-1].cell_share >= 0.8 else
                f"; still below 80% at {st.projections[-1].draw_scale:g}x, the leading cells "
                "are close to a tie (the layer choice matters little there).")
    return text, st.stable


def _alternatives_on_dev(results: ExperimentResults, others) -> str:
    """How far the cells resamples pick instead sit from the pick on the whole dev set: an
    unstable pick among near-equal cells costs little, one among distant cells a lot."""
    rec = results.recommendation
    dev = {(c.layer, c.alpha): c.mean_toxicity for c in results.cells
           if c.experiment == "grid" and c.subset == "challenging"}
    if rec is None or (rec.layer, rec.alpha) not in dev:
        return ""
    pick = dev[(rec.layer, rec.alpha)]
    gaps = [(a, dev[(a.layer, a.alpha)] - pick) for a in others
            if a.layer is not None and (a.layer, a.alpha) in dev]
    if not gaps:
        return ""
    listed = "; ".join(f"layer {a.layer}, α = {a.alpha:g}, {pick + gap:.3f} ({gap:+.3f})"
                       for a, gap in gaps)
    return (f" On the whole dev set the pick's mean toxicity is {pick:.3f}; the next cells': "
            f"{listed}, all within {max(abs(g) for _, g in gaps):.3f} of it (point "
            "estimates; the layer claim below gives the runner-up's paired CI).")


_STOPPED_BY = {
    "more_toxic": "the rule: the next α at this layer was within the limits but not less toxic",
    "tied": "the rule: the next α at this layer was within the limits and less toxic, but "
            "within the one-standard-error tie band and less fluent",
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
            f"{CRITERION_NAMES.get(n, n)}" + (f" {fmt_num(ar.bound_by.checks[n].value)} > limit "
                                        f"{fmt_num(ar.bound_by.checks[n].limit)}"
                                        if n in ar.bound_by.checks and n not in
                                        ("distinct_2", "capability_acc") else "")
            for n in ar.bound_by.failed)
        return (f"Set by the rule: at α = {ar.bound_by.alpha:g} the limit on {broken} "
                f"binds." + added)
    if ar.stopped_by == "no_pick":
        return "No α to set: no cell was picked." + added
    return f"Set by {_STOPPED_BY[ar.stopped_by]}." + added


def method_label(method: str) -> str:
    from .plots import METHOD_LABELS

    return "unsteered" if method == "none" else METHOD_LABELS.get(method, method)


def method_cell_text(layer: int, strength: float) -> str:
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
    return target + goal.summary.replace(str(goal.method), method_label(goal.method or ""), 1)


def methods_text(results: ExperimentResults) -> str:
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
    text = (f"least toxic on dev among the methods' dev picks: {method_label(best.method)} "
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


def why_text(m) -> str:
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


def figure_captions(results: ExperimentResults) -> dict[str, tuple[str, str]]:
    """{figure name: (title, caption)}; captions name the data, the n and the CI method."""
    ch = sweep_cells(results, "challenging")
    be = sweep_cells(results, "benign")
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
            f"{subset_samples(results, 'challenging')} continuations per prompt; drawn "
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


def subset_samples(results: ExperimentResults, subset: str) -> int:
    """k of the eval sweep on one subset (its unsteered cell; 0 without one)."""
    ref = results.cell("sweep", subset, None, 0.0)
    return 0 if ref is None else ref.samples_per_prompt


_DROP_REASONS = {"no_toxic_side": "no side toxic enough", "no_clean_side": "no side clean enough",
                 "no_toxic_nor_clean_side": "neither", "tied": "tied",
                 "single_continuation": "one non-empty continuation",
                 "only_empty_continuations": "only empty continuations"}


def pairs_line(split: str, counts) -> str:
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
