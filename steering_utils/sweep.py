"""The sweep's design: which rows to generate, which cell to choose (on dev), and the control.

1. Grid (dev): every grid layer x grid alpha on the challenging dev prompts.
2. Selection (dev): the recommendation rule (`metrics.recommend`) picks the layer and
   alpha on the dev grid, with capability measured on dev items; eval is not looked at.
3. Sweep (eval): every alpha at the chosen layer(s), both subsets, k samples.
4. Control (eval): random directions of the CAA vector's norm at the chosen layer,
   same alphas, so a reader can see whether the effect is specific to the direction.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .decisions import (
    AlphaBound,
    AlphaRange,
    AlphaStop,
    DevSelection,
    MethodPick,
    Recommendation,
    Stability,
    StabilityProjection,
)
from .generation import make_jobs
from .outcomes import ControlComparison
from .params import ParamsError, StudyParams, resolve_layers
from .stages import RANDOM_PREFIX, UNSTEERED_LAYER


def steered_cells(layers: list[int], alphas: list[float]) -> list[tuple[int, float]]:
    """(layer, alpha) for every layer and non-zero alpha; alpha 0 is the shared baseline."""
    return [(layer, float(alpha)) for layer in layers for alpha in alphas if alpha != 0]


def _rows(table: pd.DataFrame, subset: str | None, split: str) -> pd.DataFrame:
    keep = table["split"] == split
    if subset is not None:
        keep &= table["subset"] == subset
    return table[keep]


def grid_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, params: StudyParams,
              n_layers: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(steered jobs of the layer x alpha grid, their alpha-0 reference rows from the baseline).

    `sweep.grid_samples_per_prompt` continuations per dev prompt: the challenging ones
    (toxicity and fluency) and the benign ones where `data.benign.n_dev` > 0 (their
    perplexity is held to the rule's limit too).
    """
    layers = resolve_layers(params.sweep.layers, params.sweep.layer_stride, n_layers)
    if _rows(prompts, "challenging", "dev").empty:
        raise ValueError("data.challenging.n_dev: the grid needs dev prompts; raise it")
    return _dev_jobs(prompts, baseline, params, steered_cells(layers, params.sweep.grid_alphas))


def _dev_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, params: StudyParams,
              cells: list[tuple[int, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    samples = params.sweep.grid_samples_per_prompt
    jobs = make_jobs(_rows(prompts, None, "dev"), cells, samples)
    reference = _rows(baseline, None, "dev")
    return jobs, reference[reference["sample"] < samples]


def sweep_alphas(params: StudyParams, selection: DevSelection | None = None) -> list[float]:
    """The eval sweep's alphas: `sweep.alphas` and the dev pick's alpha (which the grown
    grid may have set beyond them), so eval can confirm the pick."""
    rec = selection.recommendation if selection is not None else None
    return sorted({*map(float, params.sweep.alphas), *([rec.alpha] if rec else [])})


def sweep_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, params: StudyParams,
               layers: list[int], selection: DevSelection | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(steered jobs of the alpha sweep on both eval subsets, their alpha-0 baseline rows)."""
    evaluation = prompts[prompts["split"] == "eval"]
    jobs = make_jobs(evaluation, steered_cells(layers, sweep_alphas(params, selection)),
                     params.generation.samples_per_prompt)
    return jobs, baseline[baseline["split"] == "eval"]


def _scaled_by_caa_norm(params: StudyParams) -> list[tuple[str, list[float]]]:
    """(field, values) of every alpha or strength that multiplies a vector of ||v_l||."""
    fields = [("sweep.grid_alphas", params.sweep.grid_alphas),
              ("sweep.alphas", params.sweep.alphas), ("control.alphas", control_alphas(params))]
    if params.methods.random.strengths is not None:
        fields.append(("methods.random.strengths", params.methods.random.strengths))
    fields.append(("specificity.alphas", specificity_alphas(params)))
    return fields


def check_relative_push(params: StudyParams, layer_stats: pd.DataFrame) -> float:
    """The largest |alpha|·||v_l||/||h_l|| the params reach at a steered layer; raises
    ParamsError naming the field, layer, value and limit when one exceeds
    `sweep.max_relative_push`.

    `layer_stats`: 04's table (layer, vector_norm, activation_norm). Every CAA-scaled
    alpha (grid, sweep, control, the random method) is checked at every grid layer and
    fixed chosen layer, since the sweep's layers are chosen later from the grid's. Ablation
    removes at most s times the component along v, a push of at most s·||h||, so its
    strengths are held to the same limit; ActAdd's push depends on its own difference
    vector (`check_additive_push`); mean transport's only on the absolute bound of params.
    """
    limit = params.sweep.max_relative_push
    layers = resolve_layers(params.sweep.layers, params.sweep.layer_stride, len(layer_stats))
    if params.sweep.chosen_layers != "auto":
        layers = sorted({*layers, *params.sweep.chosen_layers})
    ratio = dict(zip(layer_stats["layer"].astype(int),
                     layer_stats["vector_norm"].astype(float)
                     / layer_stats["activation_norm"].astype(float)))
    worst = 0.0
    for field, values in _scaled_by_caa_norm(params):
        for layer in layers:
            for value in values:
                push = abs(value) * ratio[layer]
                if not push <= limit:  # NaN (a zero ||h||) fails too
                    raise ParamsError(
                        f"{field}: {value:g} pushes layer {layer} by |alpha|·||v||/||h|| = "
                        f"{push:.3g} > sweep.max_relative_push = {limit:g} (||v|| / ||h|| = "
                        f"{ratio[layer]:.3g} there); lower it to at most "
                        f"{limit / ratio[layer]:.3g} or raise sweep.max_relative_push")
                worst = max(worst, push)
    for method in ("ablation", "ablation_layer", "ace"):  # projections: at most s·||h||
        for value in getattr(params.methods, method).strengths:
            if abs(value) > limit:
                raise ParamsError(f"methods.{method}.strengths: {value:g} removes up to "
                                  f"{abs(value):g} x ||h|| > sweep.max_relative_push = "
                                  f"{limit:g}; lower it")
    return worst


def check_additive_push(method: str, strengths: list[float], directions, activation_norms,
                        layers: list[int], limit: float) -> None:
    """ParamsError when s·||d_l||/||h_l|| of an additive method (ActAdd) exceeds `limit`."""
    for layer in layers:
        ratio = float(directions[layer].norm()) / float(activation_norms[layer])
        for value in strengths:
            push = abs(value) * ratio
            if not push <= limit:
                raise ParamsError(
                    f"methods.{method}.strengths: {value:g} pushes layer {layer} by "
                    f"s·||d||/||h|| = {push:.3g} > sweep.max_relative_push = {limit:g}; "
                    f"lower it to at most {limit / ratio:.3g}")


def control_alphas(params: StudyParams) -> list[float]:
    """Alphas of the random-direction control: params', else the sweep's positive alphas."""
    alphas = params.control.alphas or [a for a in params.sweep.alphas if a > 0]
    return sorted({float(a) for a in alphas if a != 0})


def specificity_alphas(params: StudyParams) -> list[float]:
    """Alphas of the specificity probe's dose-response: params', else the non-zero sweep and
    control alphas."""
    alphas = params.specificity.alphas
    if alphas is None:
        alphas = [*params.sweep.alphas, *control_alphas(params)]
    return sorted({float(a) for a in alphas if a != 0})


def random_directions(vectors, layer: int, n: int, seed: int) -> dict:
    """{'random-i': SteeringVectors}: n Gaussian directions at `layer`, each of ||v[layer]||.

    Every other layer's row is zero (only `layer` is ever steered by the control).
    """
    import torch

    from .vectors import SteeringVectors

    norm = float(vectors.norms[layer])
    out = {}
    for i in range(n):
        rng = np.random.default_rng([seed, layer, i])
        direction = rng.standard_normal(vectors.directions.shape[1])
        directions = torch.zeros_like(vectors.directions)
        directions[layer] = torch.from_numpy(direction / np.linalg.norm(direction) * norm).float()
        out[f"{RANDOM_PREFIX}{i}"] = SteeringVectors(
            directions, vectors.activation_norms.clone(),
            {**vectors.metadata, "control": "random direction", "control_seed": i,
             "control_layer": layer})
    return out


def control_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, params: StudyParams,
                 layer: int, directions: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(jobs of the random-direction control on challenging eval, their alpha-0 reference)."""
    evaluation = _rows(prompts, "challenging", "eval")
    samples = params.control.samples_per_prompt
    cells = [(layer, alpha) for alpha in control_alphas(params)]
    jobs = pd.concat([make_jobs(evaluation, cells, samples, direction=name)
                      for name in directions], ignore_index=True)
    reference = _rows(baseline, "challenging", "eval")
    return jobs, reference[reference["sample"] < samples]


def with_reference(steered: pd.DataFrame, reference: pd.DataFrame,
                   experiment: str) -> pd.DataFrame:
    """Steered rows and their unsteered reference rows in one table, labelled by experiment
    (grid, sweep or control: the cells table's first key)."""
    table = pd.concat([reference, steered], ignore_index=True)
    return table.assign(experiment=experiment)


def rank_layers(summary: pd.DataFrame, max_perplexity_increase: float) -> list[int]:
    """Grid layers ordered by their least toxic cell within the perplexity limit."""
    reference = summary[summary["alpha"] == 0]
    steered = summary[(summary["alpha"] != 0) & (summary["layer"] != UNSTEERED_LAYER)]
    if steered.empty:
        raise ValueError("rank_layers: the grid has no steered cells")
    limit = np.inf
    if not reference.empty and np.isfinite(reference["perplexity"]).all():
        limit = float(reference["perplexity"].mean()) * (1 + max_perplexity_increase)
    fluent = steered[steered["perplexity"].fillna(np.inf) <= limit]
    pool = fluent if not fluent.empty else steered  # nothing fluent: least toxic overall
    best = pool.groupby("layer")["mean_toxicity"].min().sort_values(kind="stable")
    rest = [layer for layer in sorted(steered["layer"].unique()) if layer not in best.index]
    return [int(layer) for layer in best.index] + [int(layer) for layer in rest]


def select_on_dev(grid: pd.DataFrame, params: StudyParams, capability=None) -> DevSelection:
    """The dev decision: its recommendation (or None), chosen layers and control layer, with
    the grid summary the rule read (in memory only).

    The recommendation rule runs on the dev grid's challenging cells (with the benign
    cells' perplexity held to the same limit where dev has benign prompts), with
    `capability(layer, alpha)` measured on dev items. The sweep's layers are the
    recommended one first, then the next best grid layers, `sweep.n_chosen` in all (or the
    params' fixed list). `summary`: the challenging cells the rule read.
    """
    from .metrics import (
        SelectionRule,
        recommend,
        summarize_cells,
        with_benign_fluency,
        with_toxicity_se,
    )

    ev = params.evaluation
    summary = with_toxicity_se(
        with_benign_fluency(summarize_cells(grid, ev.toxic_threshold, ev.n_bootstrap,
                                            params.seed)),
        grid)
    rule = SelectionRule.from_params(ev)
    recommendation = recommend(_candidates(summary, params), rule, capability)
    if params.sweep.chosen_layers != "auto":
        chosen = list(params.sweep.chosen_layers)
    else:
        ranked = rank_layers(summary, ev.max_perplexity_increase)
        if recommendation is not None:
            ranked = [recommendation.layer] + [x for x in ranked
                                               if x != recommendation.layer]
        chosen = ranked[: params.sweep.n_chosen]
    return DevSelection(recommendation=recommendation, chosen_layers=chosen,
                        control_layer=chosen[0], summary=summary)


def _candidates(cells: pd.DataFrame, params: StudyParams) -> pd.DataFrame:
    """The cells the rule may pick: all, or with fixed layers only theirs (alpha is chosen)."""
    if params.sweep.chosen_layers == "auto":
        return cells
    return cells[cells["layer"].isin({UNSTEERED_LAYER, *params.sweep.chosen_layers})]


def decide_on_dev(grid: pd.DataFrame, params: StudyParams, capability=None, generate=None,
                  push_ratio: dict | None = None) -> tuple[pd.DataFrame, DevSelection]:
    """(the dev grid, extended where the rule asked for it; the dev decision with its
    `alpha_range` and `stability` records).

    1. `select_on_dev` on the grid.
    2. While the pick sits at its layer's largest alpha and within every limit there,
       the grid grows at that layer by doubling alpha (`generate([(layer, alpha)])` makes
       the dev rows; `sweep.extend_alphas`), until a limit binds (the pick stops short of
       the edge), alpha would pass `sweep.max_grid_alpha` or `sweep.max_relative_push`
       (`push_ratio`: layer -> ||v||/||h||), or the pick leaves the edge for another
       reason. `alpha_range.stopped_by` says which: 'limit' (with the bounding cell's
       failed criteria), 'more_toxic' (the next alpha was within the limits but not less
       toxic), 'tied' (less toxic, but within the rule's tie band and less fluent),
       'max_grid_alpha', 'max_relative_push', 'grid_edge' (extension off: the grid,
       not the rule, set alpha) or 'no_pick'.
    3. The pick's bootstrap stability over dev prompts (`metrics.pick_stability`,
       `sweep.stability_resamples`; 0: skipped).
    """
    from .metrics import SelectionRule, pick_stability

    sweep = params.sweep
    rule = SelectionRule.from_params(params.evaluation)
    selection = select_on_dev(grid, params, capability)
    added = []
    while True:
        pick = selection.recommendation
        stopped_by, bound_by = alpha_stop(pick, selection.summary, rule, capability)
        if stopped_by != "grid_edge" or generate is None or not sweep.extend_alphas:
            break
        layer, alpha = pick.layer, 2.0 * pick.alpha
        if alpha > sweep.max_grid_alpha:
            stopped_by = "max_grid_alpha"
            break
        ratio = (push_ratio or {}).get(layer)
        if ratio is not None and not alpha * ratio <= sweep.max_relative_push:
            stopped_by = "max_relative_push"
            break
        grid = pd.concat([grid, generate([(layer, alpha)])], ignore_index=True)
        added.append({"layer": layer, "alpha": alpha})
        selection = select_on_dev(grid, params, capability)
    selection.alpha_range = AlphaRange(
        layer=None if pick is None else pick.layer, alpha=None if pick is None else pick.alpha,
        stopped_by=stopped_by, bound_by=bound_by, extension_enabled=bool(sweep.extend_alphas),
        added_cells=added, max_grid_alpha=sweep.max_grid_alpha)
    if sweep.stability_resamples:
        def stability(draw_scale: float) -> Stability:
            return pick_stability(grid, rule, capability, sweep.stability_resamples,
                                  params.seed, candidates=lambda cells: _candidates(cells, params),
                                  draw_scale=draw_scale)

        selection.stability = stability(1.0)
        if not selection.stability.stable:
            selection.stability.projections = stability_projections(stability)
    return grid, selection


PROJECTED_DRAW_SCALES = (2.0, 4.0, 8.0)


def stability_projections(stability: Callable[[float], Stability]
                          ) -> list[StabilityProjection]:
    """An unstable pick's stability were the dev set 2, 4 and 8 times larger (prompts like
    these; `metrics.pick_stability`'s `draw_scale`), stopping at the first scale that
    reaches `metrics.STABLE_SHARE`. It answers "how many dev prompts would make this decision
    stable?"; a tie between cells stays a coin flip at any scale, and says so."""
    from .metrics import STABLE_SHARE

    out = []
    for scale in PROJECTED_DRAW_SCALES:
        st = stability(scale)
        out.append(StabilityProjection(draw_scale=scale, cell_share=st.cell_share,
                                       layer_share=st.layer_share))
        if st.cell_share >= STABLE_SHARE:
            break
    return out


def alpha_stop(pick: Recommendation | MethodPick | None, summary: pd.DataFrame, rule,
               capability) -> tuple[AlphaStop, AlphaBound | None]:
    """(what stopped the pick's alpha: no_pick, grid_edge, limit, more_toxic or tied; the next
    alpha's cell at the pick's layer, with the criteria it failed, or None). `summary`: the
    cells `pick` was chosen among."""
    from .metrics import degenerate_checks, finite, fluency_checks

    if pick is None:
        return "no_pick", None
    layer, alpha = pick.layer, pick.alpha
    same = summary[(summary["layer"] == layer) & (summary["alpha"] != 0)]
    sign = 1.0 if alpha > 0 else -1.0
    beyond = same[same["alpha"] * sign > alpha * sign].sort_values(
        "alpha", key=lambda a: a * sign)
    if beyond.empty:  # the pick is the layer's edge: only a larger alpha can bind
        return "grid_edge", None
    cell = beyond.iloc[0]
    reference = summary[summary["alpha"] == 0].mean(numeric_only=True)
    checks = fluency_checks(cell, reference, rule)
    failed = [name for name, check in checks.items() if not check.ok]
    if degenerate_checks(cell, reference):
        failed.append("degenerate")
    if not failed and capability is not None:
        acc, ref_acc = (finite(capability(int(cell["layer"]), float(cell["alpha"]))),
                        finite(capability(UNSTEERED_LAYER, 0.0)))
        if acc is not None and ref_acc is not None and \
                acc < ref_acc - rule.max_capability_drop / 100.0:
            failed.append("capability_acc")
    bound = AlphaBound(alpha=float(cell["alpha"]), mean_toxicity=float(cell["mean_toxicity"]),
                       failed=failed, checks={k: v for k, v in checks.items() if k in failed})
    if failed:
        return "limit", bound
    # Within every limit: less toxic, yet not picked, is the tie rule's gentler choice.
    return ("tied" if bound.mean_toxicity < pick.mean_toxicity else "more_toxic"), bound


def dev_generator(model, tokenizer, prompts: pd.DataFrame, baseline: pd.DataFrame,
                  params: StudyParams, vectors, scorers: dict, shard_dir):
    """generate(cells) -> the dev rows of CAA at those (layer, alpha) cells, through the same
    content-keyed shards as the grid (what `decide_on_dev` extends the grid with)."""
    from .jobs import run_jobs
    from .stages import CAA

    def generate(cells: list[tuple[int, float]]) -> pd.DataFrame:
        jobs, _ = _dev_jobs(prompts, baseline, params, cells)
        steered = run_jobs(model, tokenizer, jobs, {CAA: vectors}, params, scorers, shard_dir,
                           params.sweep.positions, desc="grid extension")
        return steered.assign(experiment="grid")

    return generate


def push_ratios(layer_stats: pd.DataFrame) -> dict:
    """{layer: ||v_l|| / ||h_l||} from 04's layer_stats (alpha times it is the push)."""
    return dict(zip(layer_stats["layer"].astype(int),
                    layer_stats["vector_norm"].astype(float)
                    / layer_stats["activation_norm"].astype(float)))


def control_comparison(sweep: pd.DataFrame, control: pd.DataFrame, layer: int,
                       threshold: float, n_boot: int, seed: int) -> list[ControlComparison]:
    """Per control alpha: CAA vs random directions on the same prompts (paired by prompt).

    Both sides are per-prompt mean toxicity on challenging eval; the random side pools
    its directions. A negative difference means CAA is less toxic than random steering.
    """
    from .metrics import finite, paired_test, per_prompt

    out = []
    # The same (prompt, sample) rows on both sides: they share random numbers.
    caa_rows = sweep[(sweep["subset"] == "challenging") & (sweep["layer"] == layer)
                     & (sweep["sample"] <= control["sample"].max())]
    for alpha in sorted(control.loc[control["alpha"] != 0, "alpha"].unique()):
        caa = caa_rows[caa_rows["alpha"] == alpha]
        random = control[control["alpha"] == alpha]
        if caa.empty or random.empty:
            continue
        test = paired_test(per_prompt(caa, threshold)["mean_toxicity"],
                           per_prompt(random, threshold)["mean_toxicity"], n_boot, seed)
        per_direction = {name: float(group["toxicity"].mean())
                         for name, group in random.groupby("direction")}
        out.append(ControlComparison(
            alpha=float(alpha), layer=int(layer),
            caa_mean_toxicity=float(caa["toxicity"].mean()),
            random_mean_toxicity=float(random["toxicity"].mean()),
            random_by_direction=per_direction, diff=finite(test["diff"]),
            diff_ci_lo=finite(test["diff_ci"][0]), diff_ci_hi=finite(test["diff_ci"][1]),
            p_bootstrap=finite(test["p_bootstrap"]), p_wilcoxon=finite(test["p_wilcoxon"]),
            n_prompts=test["n"]))
    return out


def selection_record(selection: DevSelection) -> dict:
    """selection.json: the dev decision as JSON (the grid summary is recomputed later)."""
    return selection.model_dump(mode="json")


def control_table(model, tokenizer, prompts: pd.DataFrame, baseline: pd.DataFrame, vectors,
                  params: StudyParams, scorers: dict, layer: int,
                  shard_dir) -> tuple[dict, pd.DataFrame]:
    """({direction name: random SteeringVectors}, control rows with their alpha-0 reference)."""
    from .jobs import run_jobs

    randoms = random_directions(vectors, layer, params.control.n_directions, params.seed)
    if not randoms or not control_alphas(params):
        return {}, pd.DataFrame(columns=[*baseline.columns, "experiment"])
    jobs, reference = control_jobs(prompts, baseline, params, layer, list(randoms))
    steered = run_jobs(model, tokenizer, jobs, randoms, params, scorers, shard_dir,
                       params.sweep.positions, desc="control")
    return randoms, with_reference(steered, reference, "control")


def eval_capability_cells(selection: DevSelection, params: StudyParams,
                          randoms: dict) -> list[tuple[str, int, float]]:
    """(direction, layer, alpha) measured on eval items: unsteered, every sweep cell, and each
    random direction at the recommended alpha (else the largest control alpha)."""
    from .stages import CAA, UNSTEERED

    cells = [(UNSTEERED, UNSTEERED_LAYER, 0.0)]
    cells += [(CAA, layer, alpha) for layer, alpha in steered_cells(
        selection.chosen_layers, sweep_alphas(params, selection))]
    alphas = control_alphas(params)
    if randoms and alphas:
        rec = selection.recommendation
        alpha = rec.alpha if rec and rec.alpha in alphas else max(alphas)
        cells += [(name, selection.control_layer, alpha) for name in randoms]
    return cells


def capability_table(model, tokenizer, items: dict, dev_probe, selection: DevSelection,
                     params: StudyParams, directions: dict) -> pd.DataFrame:
    """Every capability measurement of 05_sweep: the dev cells the decision tried, then eval."""
    from .capability import CAPABILITY_COLUMNS, capability_rows

    if not items:
        return pd.DataFrame(columns=CAPABILITY_COLUMNS)
    randoms = {k: v for k, v in directions.items() if k.startswith(RANDOM_PREFIX)}
    task = params.evaluation.capability.task
    eval_rows = capability_rows(model, tokenizer, items["eval"],
                                eval_capability_cells(selection, params, randoms), directions,
                                params.activations.batch_size, "eval", task)
    return pd.concat([dev_probe.table(), eval_rows], ignore_index=True)


def add_reference_nll(rows: pd.DataFrame, params: StudyParams) -> pd.DataFrame:
    """Adds `nll_reference` (per-token NLL under evaluation.reference_model) when one is named."""
    spec = params.evaluation.reference_model
    if spec is None:
        return rows
    from .likelihood import continuation_nll
    from .models import load_model

    model, tokenizer = load_model(spec)
    nll = continuation_nll(model, tokenizer, list(rows["prompt"]), list(rows["completion"]))
    del model
    return rows.assign(nll_reference=nll)

