"""Methods on equal dev budgets, compared at matched fluency, and the study's goal.

1. **Equal budgets (dev).** Every method searches as many dev cells (layers x strengths)
   as CAA's dev grid has (`methods.dev_cells`; null: CAA's count), on the same dev prompts
   and seeds. Its layers: CAA's candidate layers (evenly thinned when the budget is
   smaller), or its own layer rule where it has one: every layer at once (ActAdd-style
   all-layer edits, `layers: all`), the one layer its vector exists at (a random direction),
   none (the prompt). Its strengths: its own grid, grown by doubling to fill the budget.
   Then, as CAA's grid does (`sweep.decide_on_dev`), the grid grows at the pick's layer
   while the rule's pick sits at its largest strength within every limit, until a limit
   binds, or `sweep.max_grid_alpha` / `sweep.max_relative_push` stops it. Where every
   less toxic cell broke a limit (the grid starts too strong for this model: Linear-AcT's
   full transport, Arditi's full ablation on a small model), it shrinks instead, halving
   below its weakest strength at each of its layers until the rule picks a cell or
   `MAX_HALVINGS` is reached. `search_record` keeps the cells searched and what stopped
   the search.
2. **Matched fluency (dev decides).** On each method's dev Pareto front (mean toxicity vs
   perplexity, degenerate cells off), the strength whose perplexity reaches the budget
   (`methods.perplexity_budget`, +10% over unsteered): interpolated between the two front
   points that bracket it at one layer, else the nearest front point not over it
   (`matched_point`). Each matched point is generated on the eval prompts (challenging and
   benign) with k samples; the method least toxic at its matched point on dev is the best
   (`best_on_dev`), a dev decision. Every pair compared on eval and the goal verdict:
   `steering_utils/goal.py` (06).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .decisions import AlphaBound, MethodSearch
from .params import StudyParams
from .stages import ALL_LAYERS, UNSTEERED, UNSTEERED_LAYER

# Methods whose strength is an on/off switch: no strength between two cells to interpolate.
FIXED_STRENGTH = frozenset({"prompt"})
MATCHED_STATUSES = ("interpolated", "front_point", "below_budget")


@dataclass
class SearchPlan:
    """One method's dev search: its layers, its strength grid and the rule that set them."""

    method: str
    layers: list[int]
    strengths: list[float]
    budget: int
    layer_rule: str  # searched | all_layers | own_layers | no_edit
    push_ratio: dict[int, float] = field(default_factory=dict)  # layer -> push per unit s

    @property
    def cells(self) -> list[tuple[int, float]]:
        return [(layer, s) for layer in self.layers for s in self.strengths]


def candidate_layers(params: StudyParams, grid_layers: list[int]) -> list[int]:
    """The layers CAA's dev decision could choose among: its grid's (or the fixed ones)."""
    if params.sweep.chosen_layers != "auto":
        return sorted({int(x) for x in params.sweep.chosen_layers})
    return sorted({int(x) for x in grid_layers})


def dev_budget(params: StudyParams, caa_cells: int) -> int:
    """Dev cells per method: `methods.dev_cells`, else CAA's grid count."""
    return int(params.methods.dev_cells or caa_cells)


def spread(layers: list[int], n: int) -> list[int]:
    """n of `layers`, evenly spaced and centred (n >= len: all of them)."""
    if n >= len(layers):
        return list(layers)
    return sorted({layers[int((i + 0.5) * len(layers) / n)] for i in range(n)})


def edited_layers(intervention, n_layers: int) -> list[int]:
    """The layers an intervention's edit is non-zero at (every layer when unknown)."""
    directions = getattr(intervention, "directions", None)  # SteeringVectors (CAA, random)
    if directions is not None:
        return [i for i in range(n_layers) if bool(directions[i].abs().sum() > 0)]
    edit = getattr(intervention, "edit", None)
    if edit is None or not hasattr(edit, "acts_at"):
        return list(range(n_layers))
    return [i for i in range(n_layers) if edit.acts_at(i)]


def push_ratio(intervention, layer: int, activation_norms) -> float | None:
    """The push of strength 1 as a fraction of ||h||: ||d_l|| / ||h_l|| of an additive edit,
    1 for a projection (it removes at most s ||h||); None when the edit has no such bound
    (a transport map) and only `sweep.max_grid_alpha` holds it."""
    norms = [float(x) for x in activation_norms]
    layers = range(len(norms)) if layer == ALL_LAYERS else [layer]
    directions = getattr(intervention, "directions", None)
    edit = getattr(intervention, "edit", None)
    if directions is None and edit is not None and edit.shift is not None \
            and edit.gain is None and edit.unit is None:
        directions = edit.shift
    if directions is not None:
        return max(float(directions[i].norm()) / norms[i] for i in layers if norms[i] > 0)
    if edit is not None and edit.unit is not None and edit.shift is None and edit.gain is None:
        return 1.0
    return None


def _allowed(strength: float, plan: SearchPlan, params: StudyParams) -> str | None:
    """None when every layer of the plan may take `strength`; else the limit that stops it."""
    if abs(strength) > params.sweep.max_grid_alpha:
        return "max_grid_alpha"
    for layer in plan.layers:
        ratio = plan.push_ratio.get(layer)
        if ratio is not None and not abs(strength) * ratio <= params.sweep.max_relative_push:
            return "max_relative_push"
    return None


def plan_search(params: StudyParams, method: str, intervention, base: list[float],
                candidates: list[int], budget: int, activation_norms) -> SearchPlan:
    """The method's dev cells on a budget of `budget` (see the module doc); `base`: its own
    strength grid (`comparison.strengths`)."""
    n_layers = len(activation_norms)
    if getattr(intervention, "prefix", "") or (hasattr(intervention, "edit")
                                                and intervention.edit is None):
        return SearchPlan(method, [UNSTEERED_LAYER], [1.0], budget, "no_edit")
    if getattr(intervention, "all_layers", False):
        layers, rule = [ALL_LAYERS], "all_layers"
    else:
        own = edited_layers(intervention, n_layers)
        if len(own) < n_layers:
            layers, rule = ([x for x in own if x in candidates] or own), "own_layers"
        else:
            layers, rule = list(candidates), "searched"
    base = sorted(float(s) for s in base)
    n_strengths = min(len(base), budget)
    layers = spread(layers, max(1, budget // max(n_strengths, 1)))
    plan = SearchPlan(method, layers, [], budget, rule,
                      {x: r for x in layers
                       if (r := push_ratio(intervention, x, activation_norms)) is not None})
    strengths = [s for s in base[:max(n_strengths, 1)] if _allowed(s, plan, params) is None]
    while strengths and len(layers) * (len(strengths) + 1) <= budget:
        grown = 2.0 * strengths[-1]
        if _allowed(grown, plan, params) is not None:
            break
        strengths.append(grown)
    plan.strengths = strengths
    return plan


def search_record(plan: SearchPlan, stopped_by: str, bound_by: AlphaBound | None,
                  added: list[dict]) -> MethodSearch:
    """The record of one method's dev search: its plan, the cells added, what stopped it."""
    return MethodSearch(layer_rule=plan.layer_rule, layers=[int(x) for x in plan.layers],
                        strengths=[float(s) for s in plan.strengths], budget=int(plan.budget),
                        cells_searched=len(plan.cells) + len(added), added_cells=added,
                        stopped_by=stopped_by, bound_by=bound_by)


def method_cells(rows: pd.DataFrame, params: StudyParams) -> pd.DataFrame:
    """Cell summaries (`metrics.summarize_cells`) per method, each with the unsteered
    reference cell; column `method` ('none' for the reference), column `degenerate`
    (`metrics.degenerate_checks` against the reference). With no method's rows (nothing
    qualified on dev, so nothing went to eval) only the reference cell."""
    from .metrics import flag_degenerate, summarize_cells

    ev = params.evaluation
    reference = rows[rows["method"] == UNSTEERED]
    parts = list(rows[rows["method"] != UNSTEERED].groupby("method", sort=False))
    if not parts:
        parts = [(UNSTEERED, reference.iloc[:0])]
    frames = []
    for method, part in parts:
        cells = summarize_cells(pd.concat([reference, part]).assign(experiment="methods"),
                                ev.toxic_threshold, ev.n_bootstrap, params.seed)
        frames.append(cells.assign(method=[UNSTEERED if a == 0 else method
                                           for a in cells["alpha"]]))
    table = pd.concat(frames, ignore_index=True)
    table = table.drop_duplicates(subset=["method", "layer", "alpha"]).reset_index(drop=True)
    return table.assign(degenerate=flag_degenerate(table, keys=()))


def extend_search(rows: pd.DataFrame, plan: SearchPlan, params: StudyParams, probe=None,
                  generate=None) -> tuple[pd.DataFrame, MethodSearch]:
    """(the methods' dev rows with this method's grid grown where the rule asked for it, its
    `search_record`). `rows`: the methods grid rows (column `method`, the unsteered
    reference 'none'); `generate(method, cells)` makes dev rows; `probe(layer, s)`: dev
    capability under the method (lazily)."""
    from .decisions import MethodPick
    from .metrics import SelectionRule, recommend, why_no_pick, with_toxicity_se
    from .sweep import alpha_stop

    rule = SelectionRule.from_params(params.evaluation)
    added: list[dict] = []
    fixed = plan.method in FIXED_STRENGTH or plan.layer_rule == "no_edit"
    while True:
        own = rows[rows["method"].isin([UNSTEERED, plan.method])]
        cells = with_toxicity_se(method_cells(own, params).drop(columns="method"), own)
        pick = recommend(cells, rule, probe, MethodPick)
        if (pick is None and not fixed and generate is not None and params.sweep.extend_alphas
                and why_no_pick(cells, rule).reason == "limits"):
            # Every less toxic cell broke a limit: the grid starts too strong for this model.
            # It shrinks by halving below its weakest strength, at each of its layers, so
            # the rule (and the matched point) find the strength where the limits bind.
            weaker = _halved(cells, plan)
            if weaker:
                rows = pd.concat([rows, generate(plan.method, weaker).assign(
                    method=plan.method)], ignore_index=True)
                added += [{"layer": int(layer), "alpha": float(s)} for layer, s in weaker]
                continue
        stopped_by, bound_by = alpha_stop(pick, cells, rule, probe)
        if stopped_by != "grid_edge" or fixed:
            if fixed and stopped_by == "grid_edge":
                stopped_by = "fixed_strength"
            break
        if generate is None or not params.sweep.extend_alphas:
            break
        layer, strength = pick.layer, 2.0 * pick.alpha
        stop = _allowed(strength, SearchPlan(plan.method, [layer], [], 0, "",
                                             plan.push_ratio), params)
        if stop is not None:
            stopped_by = stop
            break
        rows = pd.concat([rows, generate(plan.method, [(layer, strength)]).assign(
            method=plan.method)], ignore_index=True)
        added.append({"layer": int(layer), "alpha": float(strength)})
    return rows, search_record(plan, stopped_by, bound_by, added)


MAX_HALVINGS = 5  # a grid shrinks to 1/32 of its weakest planned strength at most


def _halved(cells: pd.DataFrame, plan: SearchPlan) -> list[tuple[int, float]]:
    """(layer, half its weakest strength) for each plan layer; none past `MAX_HALVINGS`."""
    floor = min((abs(s) for s in plan.strengths if s), default=0.0) / 2 ** MAX_HALVINGS
    out = []
    for layer in plan.layers:
        tried = cells.loc[(cells["layer"] == layer) & (cells["alpha"] != 0), "alpha"]
        if tried.empty:
            continue
        weakest = float(tried.loc[tried.abs().idxmin()])
        if abs(weakest) / 2 >= floor > 0:
            out.append((int(layer), weakest / 2))
    return out


# --- matched fluency -------------------------------------------------------------------------

def _point(cell, status: str, limit: float, reference_ppl: float) -> dict:
    return {"status": status, "layer": int(cell["layer"]), "strength": float(cell["alpha"]),
            "dev_mean_toxicity": float(cell["mean_toxicity"]),
            "dev_frac_toxic": float(cell["frac_toxic"]),
            "dev_perplexity": float(cell["perplexity"]),
            "dev_perplexity_increase": float(cell["perplexity"]) / reference_ppl - 1.0,
            "perplexity_limit": limit}


def _bracket(cell) -> dict:
    return {"layer": int(cell["layer"]), "alpha": float(cell["alpha"]),
            "mean_toxicity": float(cell["mean_toxicity"]),
            "perplexity": float(cell["perplexity"])}


def matched_point(cells: pd.DataFrame, method: str, budget: float,
                  fixed: bool | None = None) -> dict:
    """The strength at which `method` reaches the perplexity budget on its dev front.

    `cells`: method cell summaries (`method_cells`) with the unsteered one
    ('none'). The front: the method's non-degenerate cells and the unsteered one, not
    dominated on (mean toxicity, perplexity), by perplexity. Status:
    'interpolated' (the limit lies between two front points at one layer, or between the
    unsteered point and the first: strength, toxicity and perplexity read off the line),
    'front_point' (bracketed across layers, or a fixed strength: the last point not over the
    limit), 'below_budget' (every front point is within it: the method never spends the
    budget; its least toxic front point), 'unreachable' (the first steered front point is
    over the limit and no strength lies between: `fixed`, an on/off method, default
    `FIXED_STRENGTH`), 'no_front' (no steered cell is on the front:
    none is less toxic than unsteered at any perplexity), 'no_reference'.
    """
    from .metrics import pareto_front

    reference = cells[cells["method"] == UNSTEERED]
    empty = {"status": "no_reference", "layer": None, "strength": None,
             "perplexity_limit": None, "bracket": []}
    if reference.empty or not np.isfinite(reference["perplexity"]).all():
        return empty
    ref = reference.iloc[0]
    ref_ppl = float(ref["perplexity"])
    limit = ref_ppl * (1.0 + budget)
    # Only cells less toxic than unsteered can trade perplexity for toxicity.
    own = cells[(cells["method"] == method) & (cells["alpha"] != 0)
                & (cells["mean_toxicity"] < float(ref["mean_toxicity"]))]
    if "degenerate" in own:
        own = own.loc[own["degenerate"].map(lambda d: not d).astype(bool)]
    own = own.loc[np.isfinite(own["perplexity"].astype(float))]
    front = pareto_front(pd.concat([reference.iloc[:1], own]), ("mean_toxicity", "perplexity"))
    front = front.sort_values("perplexity", kind="stable")
    if (front["alpha"] == 0).all():
        return {**empty, "status": "no_front", "perplexity_limit": limit}
    within, above = front[front["perplexity"] <= limit], front[front["perplexity"] > limit]
    lo = within.iloc[-1]
    if above.empty:
        return {**_point(lo, "below_budget", limit, ref_ppl), "bracket": [_bracket(lo)]}
    hi = above.iloc[0]
    bracket = [_bracket(lo), _bracket(hi)]
    same_line = lo["alpha"] == 0 or int(lo["layer"]) == int(hi["layer"])
    if fixed is None:
        fixed = method in FIXED_STRENGTH
    if not fixed and same_line:
        t = (limit - float(lo["perplexity"])) / (float(hi["perplexity"])
                                                 - float(lo["perplexity"]))
        point = {name: float(lo[name]) + t * (float(hi[name]) - float(lo[name]))
                 for name in ("alpha", "mean_toxicity", "frac_toxic", "perplexity")}
        strength = float(f"{point['alpha']:.4g}")
        return {"status": "interpolated", "layer": int(hi["layer"]), "strength": strength,
                "dev_mean_toxicity": point["mean_toxicity"],
                "dev_frac_toxic": point["frac_toxic"], "dev_perplexity": point["perplexity"],
                "dev_perplexity_increase": point["perplexity"] / ref_ppl - 1.0,
                "perplexity_limit": limit, "bracket": bracket}
    if lo["alpha"] == 0:
        return {**empty, "status": "unreachable", "perplexity_limit": limit,
                "bracket": bracket}
    return {**_point(lo, "front_point", limit, ref_ppl), "bracket": bracket}


def matched_points(cells: pd.DataFrame, methods: list[str], budget: float,
                   plans: dict | None = None) -> dict:
    """{method: matched_point}; `plans` ({method: SearchPlan}) mark the on/off methods (no
    edit: no strength to interpolate)."""
    fixed = {m for m, p in (plans or {}).items() if p.layer_rule == "no_edit"}
    return {m: matched_point(cells, m, budget, (m in fixed) or (m in FIXED_STRENGTH))
            for m in methods}


def has_point(matched: dict | None) -> bool:
    return bool(matched) and matched.get("status") in MATCHED_STATUSES


def best_on_dev(matched: dict) -> str | None:
    """The method least toxic (dev mean toxicity) at its matched point: a dev decision."""
    found = [(m["dev_mean_toxicity"], method) for method, m in matched.items() if has_point(m)]
    return min(found)[1] if found else None


def plan_records(plans: dict[str, SearchPlan]) -> dict:
    return {m: {k: v for k, v in asdict(p).items() if k != "push_ratio"}
            for m, p in plans.items()}
