"""The method comparison: equal dev budgets, matched fluency on dev, confirmed on eval.

Each method (`params.MethodName`) searches its own dev cells on CAA's budget
(`method_plans`, `matched.plan_search`) on the challenging dev prompts (CAA's cells there
are its grid's rows), growing its strength grid where the rule's pick sat at the edge
(`search_methods`). The recommendation rule picks each method's cell on dev (capability on
dev items); the comparison itself is at matched fluency: each method's point at the
perplexity budget on its dev front (`matched.matched_point`) is generated on the eval
prompts (challenging and benign) with k samples, against the same unsteered baseline rows,
so every method is compared on the same prompts, seeds and limits. Methods with an edit at
every layer (`layers: all`) carry layer `ALL_LAYERS` in their rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .decisions import AlphaRange, MethodPick, MethodSearch, NoPick
from .generation import make_jobs
from .matched import method_cells
from .outcomes import (
    MatchedPoint,
    MethodCapability,
    MethodEval,
    MethodGridCell,
    MethodResult,
    Methods,
)
from .params import StudyParams, compared_methods
from .stages import ALL_LAYERS, CAA, UNSTEERED, UNSTEERED_LAYER
from .sweep import check_additive_push


def build_interventions(params: StudyParams, vectors, statistics: dict, actadd: dict | None,
                        randoms: dict, layer: int | None = None, tokenizer=None,
                        linear_act=None, conditional=None) -> dict:
    """{method: intervention} of every compared method (CAA: its SteeringVectors).

    `statistics`: `interventions.token_statistics` of the train contrast; `actadd`:
    `actadd_activations` (ActAdd's two texts, per position and pooled); `randoms`: the
    control's random directions (the comparison's `random` is the first); `layer`: the
    comparison's layer (CAA's dev pick), the source of ablation's one direction and
    ActAdd's layer unless it has its own; `tokenizer`: its chat template for `prompt`;
    `linear_act`: the fitted map (`fit_linear_act`). With `layer`, additive strengths are
    held to `sweep.max_relative_push` before anything is generated. `conditional`:
    conditional CAA's gated intervention (`conditional.build_gate`, its threshold set on
    dev); without it the method is left out.
    """
    from . import interventions as iv
    from .params import resolve_layers

    methods = params.methods
    limit = params.sweep.max_relative_push
    n_layers = vectors.n_layers
    out: dict = {}

    def needs(what: str, method: str):
        raise ValueError(f"build_interventions: {method} needs {what}")

    for method in compared_methods(params.sweep):
        if method == CAA:
            out[method] = vectors
        elif method == "actadd":
            if not actadd or "front" not in actadd:
                needs("actadd_activations(...)['front']", method)
            own = methods.actadd.layer
            if own is not None:
                resolve_layers([own], 1, n_layers, "methods.actadd.layer")
            at = own if own is not None else layer
            if at is None:
                needs("a layer (methods.actadd.layer or the comparison's)", method)
            toxic, clean = actadd["front"]["toxic"], actadd["front"]["clean"]
            peak = (toxic - clean).norm(dim=-1).amax(dim=-1)[:, None]  # per layer, worst token
            check_additive_push("actadd", methods.actadd.strengths, peak,
                                vectors.activation_norms, [at], limit)
            out[method] = iv.actadd_front(toxic, clean, at,
                                          {"toxic_text": methods.actadd.toxic_text,
                                           "clean_text": methods.actadd.clean_text,
                                           "context": methods.actadd.context})
        elif method == "actadd_pooled":
            if not actadd or "toxic" not in actadd:
                needs("actadd_activations(...)['toxic'/'clean']", method)
            directions = iv.actadd_directions(actadd["toxic"], actadd["clean"])
            if layer is not None:
                check_additive_push("actadd_pooled", methods.actadd_pooled.strengths,
                                    directions, vectors.activation_norms, [layer], limit)
            out[method] = iv.additive("actadd_pooled", directions,
                                      {"toxic_text": methods.actadd_pooled.toxic_text,
                                       "clean_text": methods.actadd_pooled.clean_text})
        elif method == "ablation":
            if layer is None:
                needs("the comparison's layer (its direction's source)", method)
            out[method] = iv.directional_ablation(vectors.directions[layer], n_layers, layer)
        elif method == "ablation_layer":
            out[method] = iv.ablation(vectors.directions, methods.ablation_layer.layers == "all")
        elif method == "ace":
            out[method] = iv.ace(vectors.directions, statistics["clean_mean"])
        elif method == "linear_act":
            if linear_act is None:
                needs("the fitted map (comparison.fit_linear_act)", method)
            out[method] = linear_act
        elif method == "mean_transport":
            out[method] = iv.mean_transport(statistics, methods.mean_transport.layers == "all")
        elif method == "prompt":
            if tokenizer is None:
                needs("the tokenizer (its chat template)", method)
            out[method] = iv.chat_prompt(tokenizer, methods.prompt.instruction)
        elif method == "prompt_raw":
            out[method] = iv.prompt_baseline(methods.prompt.instruction)
        elif method == "random":
            if not randoms:
                raise ValueError("sweep.methods: 'random' needs control.n_directions >= 1")
            out[method] = randoms[sorted(randoms)[0]]
        elif method == "conditional_caa" and conditional is not None:
            if layer is not None:
                check_additive_push(method, strengths(params, method), vectors.directions,
                                    vectors.activation_norms, [layer],
                                    params.sweep.max_relative_push)
            out[method] = conditional
    return out


def actadd_activations(model, tokenizer, params: StudyParams) -> dict:
    """ActAdd's two texts' activations, for the methods compared: 'front' {'toxic', 'clean'}
    ([n_layers, n, d], per position, padded to equal length: `actadd`) and 'toxic', 'clean'
    (pooled over all their tokens: `actadd_pooled`).

    Each text follows its `context`, so neither sits at position 0, where residual norms are
    outliers (the attention sink): there a one-token text's difference has a norm ~100x the
    CAA vector's, all of it position-0 artefact. At the shared context the front
    difference is exactly zero (causal attention), as at GPT-2's BOS in the paper.
    """
    from .activations import MAX_TOKENS, capture_activations, capture_positions

    compared = compared_methods(params.sweep)
    out: dict = {}
    if "actadd" in compared:
        spec = params.methods.actadd
        both = capture_positions(model, tokenizer, [spec.context + spec.toxic_text,
                                                    spec.context + spec.clean_text])
        out["front"] = {"toxic": both[0], "clean": both[1]}
    if "actadd_pooled" in compared:
        spec = params.methods.actadd_pooled
        out.update({side: capture_activations(model, tokenizer, [text], MAX_TOKENS, 1,
                                              desc=side, contexts=[spec.context])
                    for side, text in (("toxic", spec.toxic_text),
                                       ("clean", spec.clean_text))})
    return out


def fit_linear_act(model, tokenizer, params: StudyParams, contrast: pd.DataFrame):
    """Linear-AcT fitted on the train contrast (03's `contrast_texts`), layer by layer on the
    model transported at the earlier layers (`interventions.fit_linear_act`); None when
    `linear_act` is not compared."""
    from contextlib import nullcontext

    from . import interventions as iv
    from .activations import capture_activations
    from .models import decoder_layers
    from .params import resolve_layers
    from .steering import steer

    if "linear_act" not in compared_methods(params.sweep):
        return None
    spec, act = params.methods.linear_act, params.activations
    n_layers = len(decoder_layers(model))
    layers = resolve_layers(spec.layers, spec.layer_stride, n_layers, "methods.linear_act.layers")
    sides = {side: contrast[contrast["set"] == f"train_{side}"] for side in ("toxic", "clean")}

    def capture(edit, layer: int):
        pooled = []
        with steer(model, edit, layer=0, alpha=1.0) if edit is not None else nullcontext():
            for side, rows in sides.items():
                contexts = list(rows["context"]) if rows["context"].astype(bool).any() else None
                pooled.append(capture_activations(
                    model, tokenizer, list(rows["text"]), act.pool_last_tokens,
                    act.batch_size, layers=[layer], desc=f"linear_act {side} L{layer}",
                    contexts=contexts, stop_early=True)["pooled"][:, 0])
        return tuple(pooled)

    return iv.fit_linear_act(capture, layers, n_layers,
                             model.config.get_text_config().hidden_size)


def strengths(params: StudyParams, method: str) -> list[float]:
    """The dev grid of one method's strength (CAA and random: the CAA grid's alphas)."""
    if method in ("prompt", "prompt_raw"):
        return [1.0]
    spec = getattr(params.methods, method, None)
    grid = getattr(spec, "strengths", None)
    if grid is None:  # caa, and random without its own grid
        grid = [a for a in params.sweep.grid_alphas if a != 0]
    return list(grid)


def _layer(intervention, layer: int) -> int:
    """The layer column of a method's rows: ALL_LAYERS, UNSTEERED_LAYER (prompt), the method's
    own layer (ActAdd's, when set) or `layer`."""
    if getattr(intervention, "all_layers", False):
        return ALL_LAYERS
    if getattr(intervention, "layer", None) is not None:
        return intervention.layer
    return UNSTEERED_LAYER if getattr(intervention, "prefix", "") else layer


def _jobs(prompts: pd.DataFrame, method: str, intervention, cells: list[tuple[int, float]],
          samples: int) -> pd.DataFrame:
    jobs = make_jobs(prompts, cells, samples, direction=method)
    prefix, suffix = getattr(intervention, "prefix", ""), getattr(intervention, "suffix", "")
    if prefix or suffix:  # the prompt baselines: an instruction (or a chat template) around it
        jobs["prompt"] = prefix + jobs["prompt"] + suffix
    return jobs.assign(method=method)


def _challenging(table: pd.DataFrame, split: str) -> pd.DataFrame:
    return table[(table["subset"] == "challenging") & (table["split"] == split)]


def _reuse_or_jobs(prompts: pd.DataFrame, done: pd.DataFrame, method: str, intervention,
                   cells: list[tuple[int, float]], samples: int
                   ) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """(jobs of the cells `done` lacks, the rows of `done` that serve the others)."""
    have = done[(done["alpha"] != 0) & (done["sample"] < samples)
                & (done["prompt_id"].isin(prompts["prompt_id"]))]
    have = have[pd.Series([(int(layer), float(alpha)) in cells
                           for layer, alpha in zip(have["layer"], have["alpha"])],
                          index=have.index, dtype=bool)]
    found = {(int(layer), float(alpha)) for layer, alpha in zip(have["layer"], have["alpha"])}
    missing = [cell for cell in cells if cell not in found]
    jobs = _jobs(prompts, method, intervention, missing, samples) if missing else None
    return jobs, have.drop(columns=["experiment", "stage"], errors="ignore").assign(method=method)


def _plan(prompts: pd.DataFrame, baseline: pd.DataFrame, done: pd.DataFrame, samples: int,
          cells: dict, interventions: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    reference = baseline[(baseline["sample"] < samples)
                         & baseline["prompt_id"].isin(prompts["prompt_id"])]
    reused, jobs = [reference.assign(method=UNSTEERED)], []
    for method, its_cells in cells.items():
        if method == CAA:  # CAA's rows of the grid or the sweep serve where they exist
            todo, have = _reuse_or_jobs(prompts, done, method, interventions[method],
                                        its_cells, samples)
            reused.append(have)
        else:
            todo = _jobs(prompts, method, interventions[method], its_cells, samples)
        if todo is not None:
            jobs.append(todo)
    reused_rows = pd.concat(reused, ignore_index=True)
    if not jobs:
        return reused_rows.iloc[:0], reused_rows
    return pd.concat(jobs, ignore_index=True), reused_rows


def grid_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, grid: pd.DataFrame,
              params: StudyParams, layer: int, interventions: dict, plans: dict | None = None
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(jobs of every method's dev cells, rows to reuse: the unsteered reference and CAA's
    grid rows), on the challenging dev prompts. With `plans` ({method: matched.SearchPlan},
    `method_plans`) each method's own search (CAA: every cell of its grid); without, each
    method's strengths at `layer`."""
    samples = params.methods.grid_samples_per_prompt or params.sweep.grid_samples_per_prompt
    if plans is None:
        cells = {method: [(_layer(iv, layer), s) for s in strengths(params, method)]
                 for method, iv in interventions.items()}
    else:
        dev = _challenging(grid, "dev")
        dev = dev[dev["alpha"] != 0]
        cells = {method: (sorted({(int(x), float(a)) for x, a in zip(dev["layer"], dev["alpha"])})
                          if method == CAA else plans[method].cells)
                 for method in interventions}
    return _plan(_challenging(prompts, "dev"), _challenging(baseline, "dev"), grid, samples,
                 cells, interventions)


def method_plans(params: StudyParams, interventions: dict, candidates: list[int],
                 activation_norms) -> dict:
    """{method: matched.SearchPlan}: each method's dev search on CAA's budget (the number of
    CAA's grid cells over `candidates`, or `methods.dev_cells`)."""
    from .matched import SearchPlan, dev_budget, plan_search

    caa_alphas = [float(a) for a in params.sweep.grid_alphas if a != 0]
    budget = dev_budget(params, len(candidates) * len(caa_alphas))
    plans = {}
    for method, intervention in interventions.items():
        if method == CAA:
            plans[method] = SearchPlan(CAA, list(candidates), caa_alphas,
                                       len(candidates) * len(caa_alphas), "searched")
        else:
            plans[method] = plan_search(params, method, intervention, strengths(params, method),
                                        candidates, budget, activation_norms)
    return plans


def search_methods(rows: pd.DataFrame, params: StudyParams, plans: dict, probes: dict,
                   generate=None, caa_range: AlphaRange | None = None
                   ) -> tuple[pd.DataFrame, dict[str, MethodSearch]]:
    """(the methods grid grown where each method's rule pick sat at its grid's edge, {method:
    its search record}). CAA's grid was grown by `sweep.decide_on_dev`: `caa_range` is its
    `alpha_range`."""
    from .matched import extend_search, search_record

    records = {}
    for method, plan in plans.items():
        if method == CAA:
            records[method] = (
                search_record(plan, "grid_edge", None, []) if caa_range is None else
                search_record(plan, caa_range.stopped_by, caa_range.bound_by,
                              list(caa_range.added_cells)))
            continue
        rows, records[method] = extend_search(rows, plan, params, probes.get(method), generate)
    return rows, records


def method_generator(model, tokenizer, prompts: pd.DataFrame, params: StudyParams,
                     interventions: dict, scorers: dict, shard_dir):
    """generate(method, cells) -> the method's dev rows at those cells (challenging dev
    prompts, the grid's samples), through the same content-keyed shards."""
    from .jobs import run_jobs

    samples = params.methods.grid_samples_per_prompt or params.sweep.grid_samples_per_prompt
    dev = _challenging(prompts, "dev")

    def generate(method: str, cells: list[tuple[int, float]]) -> pd.DataFrame:
        jobs = _jobs(dev, method, interventions[method], cells, samples)
        out = run_jobs(model, tokenizer, jobs, interventions, params, scorers, shard_dir,
                       params.sweep.positions, desc=f"methods extension {method}")
        return out.assign(method=method)

    return generate


def select_methods(cells: pd.DataFrame, params: StudyParams, probes: dict,
                   rows: pd.DataFrame | None = None) -> dict[str, MethodPick | None]:
    """{method: the recommendation rule's pick on dev (or None)}; `probes[method](layer,
    strength)` measures dev capability under that method, lazily. `rows`: the methods grid's
    rows, whose per-prompt toxicity gives the rule's tie band (`evaluation.tie_se`) as it
    does CAA's; without them, the least toxic cell."""
    from .metrics import SelectionRule, recommend, with_toxicity_se

    rule = SelectionRule.from_params(params.evaluation)
    reference = cells[cells["method"] == UNSTEERED]
    picks = {}
    for method in [m for m in cells["method"].unique() if m != UNSTEERED]:
        candidates = pd.concat([reference, cells[cells["method"] == method]]).drop(
            columns="method")
        if rows is not None:
            candidates = with_toxicity_se(
                candidates, rows[rows["method"].isin([UNSTEERED, method])])
        picks[method] = recommend(candidates, rule, probes.get(method), MethodPick)
    return picks


def eval_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, sweep: pd.DataFrame,
              params: StudyParams, picks: dict, interventions: dict, matched: dict | None = None
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(jobs of each method's eval cell with k samples, rows to reuse: the unsteered
    reference and CAA's sweep rows there). With `matched` ({method: matched point}) the
    matched points on the challenging and benign eval prompts; else the dev picks on the
    challenging ones."""
    from .matched import has_point

    samples = params.methods.samples_per_prompt or params.generation.samples_per_prompt
    if matched is None:
        cells = {method: [(pick.layer, pick.alpha)] for method, pick in picks.items()
                 if pick is not None}
        return _plan(_challenging(prompts, "eval"), _challenging(baseline, "eval"), sweep,
                     samples, cells, interventions)
    cells = {method: [(point["layer"], point["strength"])] for method, point in matched.items()
             if has_point(point)}
    return _plan(prompts[prompts["split"] == "eval"], baseline[baseline["split"] == "eval"],
                 sweep, samples, cells, interventions)


def capability_cells(picks: dict, matched: dict | None = None) -> list[tuple[str, int, float]]:
    """(method, layer, strength) measured on eval items: unsteered and every method's eval
    cell (its matched point where given, else its dev pick)."""
    from .matched import has_point

    cells = [(UNSTEERED, UNSTEERED_LAYER, 0.0)]
    if matched is not None:
        return cells + [(method, point["layer"], point["strength"])
                        for method, point in matched.items() if has_point(point)]
    return cells + [(method, pick.layer, pick.alpha) for method, pick in picks.items()
                    if pick is not None]


def picks_record(picks: dict[str, MethodPick | None], layer: int,
                 searches: dict[str, MethodSearch] | None = None,
                 matched: dict | None = None) -> dict:
    """The JSON-able dev decision of the comparison (methods_selection.json): each method's
    rule pick, its search and its matched point."""
    record = {"split": "dev", "layer": int(layer),
              "picks": {m: None if p is None else p.model_dump(mode="json")
                        for m, p in picks.items()}}
    if searches is not None:
        record["searches"] = {m: s.model_dump(mode="json") for m, s in searches.items()}
    if matched is not None:
        record["matched"] = matched
    return record


_EVAL_FIELDS = ("mean_toxicity", "frac_toxic", "emt", "tp", "perplexity", "delta_mean_toxicity")


def _eval_record(cell: pd.Series) -> MethodEval:
    from .metrics import finite

    record = {"n": int(cell["n"]), "n_prompts": int(cell["n_prompts"])}
    for name in _EVAL_FIELDS:
        for key in (name, f"{name}_ci_lo", f"{name}_ci_hi"):
            record[key] = finite(cell.get(key))
    for name in ("distinct_1", "distinct_2", "empty_rate", "repetition_rate", "p_bootstrap",
                 "p_wilcoxon"):
        record[name] = finite(cell.get(name))
    record["degenerate"] = list(cell.get("degenerate", []))
    return MethodEval.model_validate(record)


def _capability(capability: pd.DataFrame, method: str, layer: int, alpha: float,
                n_boot: int, seed: int) -> MethodCapability | None:
    """Eval accuracy of one cell with its CI, and the paired drop against unsteered items."""
    from .metrics import bootstrap_ci, finite, paired_test

    rows = capability[capability["split"] == "eval"]
    reference = rows[rows["direction"] == UNSTEERED].drop_duplicates("item")
    cell = rows[(rows["direction"] == method) & (rows["layer"] == layer)
                & (rows["alpha"] == alpha)].drop_duplicates("item")
    if cell.empty or reference.empty:
        return None
    correct = cell["correct"].astype(float)
    lo, hi = bootstrap_ci(correct.to_numpy(), n_boot=n_boot, seed=seed)
    test = paired_test(correct.set_axis(cell["item"]),
                       reference["correct"].astype(float).set_axis(reference["item"]),
                       n_boot, seed)
    return MethodCapability(
        acc=float(correct.mean()), acc_ci_lo=float(lo), acc_ci_hi=float(hi),
        reference_acc=float(reference["correct"].astype(float).mean()),
        drop_points=float(-test["diff"] * 100),
        drop_points_ci_lo=finite(-test["diff_ci"][1] * 100),
        drop_points_ci_hi=finite(-test["diff_ci"][0] * 100),
        p_bootstrap=finite(test["p_bootstrap"]), n_items=int(len(cell)))


def _dev_accuracy(capability: pd.DataFrame) -> pd.DataFrame:
    """(method, layer, alpha, capability_acc) of every cell measured on dev items."""
    dev = capability[capability["split"] == "dev"]
    if dev.empty:
        return pd.DataFrame(columns=["method", "layer", "alpha", "capability_acc"])
    acc = dev.assign(correct=dev["correct"].astype(float)).groupby(
        ["direction", "layer", "alpha"], as_index=False)["correct"].mean()
    return acc.rename(columns={"direction": "method", "correct": "capability_acc"}).assign(
        layer=lambda t: t["layer"].astype(int), alpha=lambda t: t["alpha"].astype(float))


def _perplexity_increase(rows: pd.DataFrame, method: str, subset: str) -> float | None:
    """exp(mean NLL) of the method's eval rows over the unsteered rows', minus 1."""
    from .metrics import finite

    if "nll" not in rows:
        return None
    part = rows[rows["subset"] == subset]
    nll = {m: part.loc[part["method"] == m, "nll"].astype(float).mean()
           for m in (method, UNSTEERED)}
    return finite(np.exp(nll[method] - nll[UNSTEERED]) - 1.0)


def _matched_record(point: dict | None, eval_rows: pd.DataFrame, method: str,
                    budget: float) -> MatchedPoint | None:
    """The matched point (05's record of `matched.matched_point`) with its eval perplexity
    against the budget."""
    if point is None:
        return None
    out = {**point, "eval_perplexity_increase": None, "eval_benign_perplexity_increase": None,
           "within_budget_on_eval": None}
    if (eval_rows["method"] == method).any():
        rises = [_perplexity_increase(eval_rows, method, subset)
                 for subset in ("challenging", "benign")]
        out["eval_perplexity_increase"], out["eval_benign_perplexity_increase"] = rises
        known = [r for r in rises if r is not None]
        out["within_budget_on_eval"] = bool(known) and all(r <= budget for r in known)
    return MatchedPoint.model_validate(out)


def _method_result(method: str, params: StudyParams, pick: MethodPick | None,
                   search: MethodSearch | None, matched: MatchedPoint | None,
                   no_pick: NoPick | None, found: pd.DataFrame, cell: tuple[int, float] | None,
                   reference: MethodEval | None, methods_capability: pd.DataFrame
                   ) -> MethodResult:
    """One method's row: its dev pick and search, and its eval point (`found`, the eval cell
    at `cell`) with capability and the rule's limits checked again."""
    from .metrics import finite

    ev = params.evaluation
    evaluated = capability = ratio = within = None
    if not found.empty:
        evaluated = _eval_record(found.iloc[0])
        ref_frac = reference.frac_toxic if reference else None
        ratio = finite(ref_frac / evaluated.frac_toxic) if evaluated.frac_toxic else None
        capability = _capability(methods_capability, method, cell[0], cell[1], ev.n_bootstrap,
                                 params.seed)
        ref_ppl = reference.perplexity if reference else None
        ppl_ok = (evaluated.perplexity is not None and ref_ppl is not None
                  and evaluated.perplexity <= ref_ppl * (1 + ev.max_perplexity_increase))
        cap_ok = capability is None or capability.drop_points <= ev.max_capability_drop
        within = bool(ppl_ok and cap_ok and not evaluated.degenerate)
    return MethodResult(method=method, picked=pick is not None,
                        strengths=strengths(params, method), dev=pick, eval=evaluated,
                        capability=capability, toxic_fraction_ratio=ratio,
                        within_limits_on_eval=within, no_pick=no_pick, search=search,
                        matched=matched)


def comparison_results(params: StudyParams, methods_grid: pd.DataFrame,
                       methods_eval: pd.DataFrame, methods_capability: pd.DataFrame,
                       record: dict) -> Methods | None:
    """The `methods` section of experiment_results.json: per method its dev search, its rule
    pick (or why none qualified), its matched point at the perplexity budget with that
    point's eval numbers (CIs and paired tests vs unsteered), and every method's dev cells
    (every pair and the goal: `goal.comparison_verdicts`, in 06).

    A record without matched points (a run before the matched comparison) puts each
    method's dev pick on eval, as it was then."""
    from .metrics import SelectionRule, finite, why_no_pick

    if methods_grid.empty:
        return None
    budget = params.methods.perplexity_budget
    matched = record.get("matched")
    searches = {m: MethodSearch.model_validate(s)
                for m, s in (record.get("searches") or {}).items()}
    picks = {m: None if p is None else MethodPick.model_validate(p)
             for m, p in record["picks"].items()}
    grid_cells = method_cells(methods_grid, params)
    methods_eval = methods_eval.assign(subset=methods_eval["subset"].fillna("challenging")
                                       if "subset" in methods_eval else "challenging")
    challenging_eval = methods_eval[methods_eval["subset"] == "challenging"]
    eval_cells = (method_cells(challenging_eval, params)
                  if (challenging_eval["method"] != UNSTEERED).any() else None)
    reference = None
    if eval_cells is not None:
        reference = _eval_record(eval_cells[eval_cells["method"] == UNSTEERED].iloc[0])
    rule = SelectionRule.from_params(params.evaluation)
    dev_accuracy = _dev_accuracy(methods_capability)
    rows = []
    for method in compared_methods(params.sweep):
        pick = picks.get(method)
        point = _matched_record(None if matched is None else matched.get(method), methods_eval,
                                method, budget)
        no_pick = None
        own = grid_cells[grid_cells["method"].isin([UNSTEERED, method])]
        if pick is None and (own["method"] == method).any():
            own = own.merge(dev_accuracy.assign(method=[UNSTEERED if a == 0 else d for d, a in
                                                        zip(dev_accuracy["method"],
                                                            dev_accuracy["alpha"])]),
                            how="left", on=["method", "layer", "alpha"])
            no_pick = why_no_pick(own.drop(columns="method"), rule)
        if matched is None:
            cell = None if pick is None else (pick.layer, pick.alpha)
        else:
            cell = None if point is None or point.layer is None else (point.layer,
                                                                      point.strength)
        found = pd.DataFrame()
        if cell is not None and eval_cells is not None:
            found = eval_cells[(eval_cells["method"] == method) & (eval_cells["layer"] == cell[0])
                               & (eval_cells["alpha"] == cell[1])]
        rows.append(_method_result(method, params, pick, searches.get(method), point, no_pick,
                                   found, cell, reference, methods_capability))
    grid = [MethodGridCell(method=str(c.method), layer=int(c.layer), alpha=float(c.alpha),
                           mean_toxicity=float(c.mean_toxicity), frac_toxic=float(c.frac_toxic),
                           perplexity=finite(c.perplexity), empty_rate=float(c.empty_rate),
                           degenerate=list(c.degenerate))
            for c in grid_cells.itertuples()]
    return Methods(layer=int(record["layer"]),
                   samples_per_prompt=int(params.methods.samples_per_prompt
                                          or params.generation.samples_per_prompt),
                   reference=reference, methods=rows, grid_cells=grid, strongest=None,
                   # pairs and the goal: `goal.comparison_verdicts`
                   perplexity_budget=None if matched is None else budget)
