"""Equal dev budgets, the matched-fluency point, pairwise verdicts and the goal verdict."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from steering_utils import comparison as cmp
from steering_utils import goal as gl
from steering_utils import interventions as iv
from steering_utils import matched as mt
from steering_utils.decisions import AlphaRange
from steering_utils.params import ParamsError, parse_params
from steering_utils.stages import ALL_LAYERS, CAA, UNSTEERED, UNSTEERED_LAYER
from steering_utils.vectors import SteeringVectors
from tests.test_params import _default


def _params(**methods):
    raw = _default()
    raw["methods"].update(methods)
    return parse_params(raw)


def _cells(rows: list[tuple]) -> pd.DataFrame:
    """(method, layer, alpha, mean_toxicity, perplexity) -> a method cells table."""
    table = pd.DataFrame(rows, columns=["method", "layer", "alpha", "mean_toxicity",
                                        "perplexity"])
    return table.assign(frac_toxic=table["mean_toxicity"],
                        degenerate=[[] for _ in range(len(table))])


REFERENCE = (UNSTEERED, UNSTEERED_LAYER, 0.0, 0.6, 10.0)


# --- matched point ------------------------------------------------------------------------------

def test_the_budget_between_two_cells_at_one_layer_is_interpolated():
    cells = _cells([REFERENCE, (CAA, 4, 1.0, 0.4, 10.5), (CAA, 4, 2.0, 0.2, 11.5),
                    (CAA, 4, 4.0, 0.1, 20.0)])
    point = mt.matched_point(cells, CAA, 0.10)  # limit 11.0: halfway from 10.5 to 11.5
    assert point["status"] == "interpolated"
    assert (point["layer"], point["strength"]) == (4, pytest.approx(1.5))
    assert point["dev_mean_toxicity"] == pytest.approx(0.3)
    assert point["dev_perplexity_increase"] == pytest.approx(0.10)
    assert [b["alpha"] for b in point["bracket"]] == [1.0, 2.0]


def test_below_the_first_cell_the_line_starts_at_the_unsteered_point():
    cells = _cells([REFERENCE, (CAA, 4, 2.0, 0.2, 12.0)])
    point = mt.matched_point(cells, CAA, 0.10)  # limit 11: a quarter... of 10 -> 12 is half
    assert point["status"] == "interpolated"
    assert point["strength"] == pytest.approx(1.0)
    assert point["dev_mean_toxicity"] == pytest.approx(0.4)


def test_bracketed_across_layers_takes_the_last_front_point_under_the_budget():
    cells = _cells([REFERENCE, (CAA, 4, 1.0, 0.4, 10.5), (CAA, 8, 1.0, 0.1, 12.0),
                    (CAA, 8, 0.5, 0.5, 10.8)])  # (8, 0.5) is dominated by (4, 1.0)
    point = mt.matched_point(cells, CAA, 0.10)
    assert point["status"] == "front_point"
    assert (point["layer"], point["strength"]) == (4, 1.0)


def test_no_point_reachable_is_reported_as_such():
    # The prompt has no strength between off and on: over the budget, no point.
    over = mt.matched_point(_cells([REFERENCE, ("prompt", UNSTEERED_LAYER, 1.0, 0.3, 12.0)]),
                            "prompt", 0.10)
    assert over["status"] == "unreachable" and over["strength"] is None
    assert over["perplexity_limit"] == pytest.approx(11.0)
    assert not mt.has_point(over)
    # Any on/off method (its plan has no edit), whatever its name; a knob interpolates.
    chat = _cells([REFERENCE, ("chat", UNSTEERED_LAYER, 1.0, 0.3, 12.0)])
    plans = {"chat": mt.SearchPlan("chat", [UNSTEERED_LAYER], [1.0], 1, "no_edit")}
    assert mt.matched_points(chat, ["chat"], 0.10, plans)["chat"]["status"] == "unreachable"
    assert mt.matched_point(chat, "chat", 0.10)["status"] == "interpolated"
    # More toxic than unsteered everywhere: no steered point on the front.
    worse = mt.matched_point(_cells([REFERENCE, ("ablation", ALL_LAYERS, 1.0, 0.7, 10.2)]),
                             "ablation", 0.10)
    assert worse["status"] == "no_front"
    # A degenerate cell never sits on the front, however non-toxic.
    broken = _cells([REFERENCE, (CAA, 4, 8.0, 0.0, 10.1)])
    broken.at[1, "degenerate"] = [{"criterion": "repetition_rate", "value": 0.9, "limit": 0.5}]
    assert mt.matched_point(broken, CAA, 0.10)["status"] == "no_front"


def test_a_method_that_never_spends_the_budget_is_taken_at_its_least_toxic_front_point():
    cells = _cells([REFERENCE, ("mean_transport", 4, 0.5, 0.5, 10.1),
                    ("mean_transport", 4, 1.0, 0.45, 10.3)])
    point = mt.matched_point(cells, "mean_transport", 0.10)
    assert point["status"] == "below_budget"
    assert point["strength"] == 1.0 and mt.has_point(point)


def test_the_best_method_is_the_least_toxic_matched_point_on_dev():
    matched = {CAA: {"status": "interpolated", "dev_mean_toxicity": 0.3},
               "actadd": {"status": "front_point", "dev_mean_toxicity": 0.2},
               "prompt": {"status": "unreachable"}}
    assert mt.best_on_dev(matched) == "actadd"
    assert mt.best_on_dev({"prompt": {"status": "no_front"}}) is None


# --- equal budgets --------------------------------------------------------------------------------

def test_each_method_gets_caas_cell_count_over_its_own_layers():
    params = _params(dev_cells=None)
    n, d = 30, 8
    norms = torch.ones(n)
    directions = torch.full((n, d), 0.01)
    candidates = [0, 6, 12, 18, 24]
    budget = mt.dev_budget(params, len(candidates) * 2)
    assert budget == 10  # null: CAA's 5 layers x 2 alphas
    searched = mt.plan_search(params, "actadd", iv.additive("actadd", directions), [0.25, 0.5],
                              candidates, budget, norms)
    assert searched.layer_rule == "searched" and searched.layers == candidates
    assert searched.strengths == [0.25, 0.5] and len(searched.cells) == 10
    thin = mt.plan_search(params, "actadd", iv.additive("actadd", directions), [0.25, 0.5],
                          candidates, 4, norms)
    assert thin.layers == [6, 18] and len(thin.cells) == 4  # evenly spread, centred
    # An edit of every layer spends the whole budget on strengths (doubling its grid).
    every = mt.plan_search(params, "ablation", iv.ablation(directions, True), [0.5, 1.0],
                           candidates, 4, norms)
    assert every.layers == [ALL_LAYERS] and every.strengths == [0.5, 1.0, 2.0, 4.0]
    # A random direction exists at one layer only: its own.
    only = torch.zeros(n, d)
    only[12, 0] = 1.0
    random = mt.plan_search(params, "random", SteeringVectors(only, norms), [2.0], candidates,
                            4, norms)
    assert random.layer_rule == "own_layers" and random.layers == [12]
    # ||d|| / ||h|| = 1 there: the grid doubles to s = 4 = sweep.max_relative_push, not 8.
    assert random.strengths == [2.0, 4.0]
    prompt = mt.plan_search(params, "prompt", iv.prompt_baseline("Be kind.\n"), [1.0],
                            candidates, 4, norms)
    assert prompt.cells == [(UNSTEERED_LAYER, 1.0)]


def test_push_limit_stops_the_grown_grid():
    params = _params()
    n, d = 4, 4
    directions = torch.zeros(n, d)
    directions[:, 0] = 1.0  # ||d|| / ||h|| = 1: s up to sweep.max_relative_push = 4
    plan = mt.plan_search(params, "actadd", iv.additive("actadd", directions), [1.0],
                          [1], 8, torch.ones(n))
    assert plan.strengths == [1.0, 2.0, 4.0]


def _rows(cells: dict, n: int = 10, split: str = "dev") -> pd.DataFrame:
    """{(method, layer, alpha): (toxicities per prompt, nll)} -> generated rows."""
    out = []
    for (method, layer, alpha), (tox, nll) in cells.items():
        tox = tox if isinstance(tox, list) else [tox] * n
        for i, t in enumerate(tox):
            out.append({"method": method, "experiment": "methods", "split": split,
                        "subset": "challenging", "layer": layer, "alpha": alpha,
                        "prompt_id": f"p{i}", "sample": 0, "toxicity": t, "nll": nll,
                        "completion": f"w{i} x{i} y{i} z{i} and {i}"})
    return pd.DataFrame(out)


def _generate(method, cells):
    """The toy method: toxicity 0.6 - 0.1 s, NLL 2 + 0.05 s (perplexity x e^(0.05 s))."""
    return _rows({(method, layer, s): (max(0.6 - 0.1 * s, 0.0), 2.0 + 0.05 * s)
                  for layer, s in cells})


def test_the_strength_grid_extends_until_the_rules_limit_binds():
    params = _params()  # rule: perplexity at most +25%, so s <= 4.46 here
    rows = pd.concat([_rows({(UNSTEERED, UNSTEERED_LAYER, 0.0): (0.6, 2.0)}),
                      _generate("actadd", [(4, 0.5), (4, 1.0)])], ignore_index=True)
    plan = mt.SearchPlan("actadd", [4], [0.5, 1.0], 2, "searched")
    grown, record = mt.extend_search(rows, plan, params, None, _generate)
    assert [c["alpha"] for c in record.added_cells] == [2.0, 4.0, 8.0]
    assert record.stopped_by == "limit"
    assert record.bound_by.alpha == 8.0 and "perplexity" in record.bound_by.failed
    assert record.cells_searched == 5
    assert set(grown.loc[grown["method"] == "actadd", "alpha"]) == {0.5, 1.0, 2.0, 4.0, 8.0}
    # The pick now sits inside the grid: the rule, not the grid's edge, set it.
    picks = cmp.select_methods(cmp.method_cells(grown, params), params, {})
    assert picks["actadd"].alpha == 4.0


def _steep(method, cells):
    """A toy too strong at s = 1: NLL 2 + s (the rule's +25% perplexity allows s <= 0.22)."""
    return _rows({(method, layer, s): (max(0.6 - 0.1 * s, 0.0), 2.0 + s) for layer, s in cells})


def test_a_grid_that_starts_too_strong_shrinks_until_the_rule_picks():
    params = _params()
    rows = pd.concat([_rows({(UNSTEERED, UNSTEERED_LAYER, 0.0): (0.6, 2.0)}),
                      _steep("linear_act", [(ALL_LAYERS, 1.0)])], ignore_index=True)
    plan = mt.SearchPlan("linear_act", [ALL_LAYERS], [1.0], 1, "all_layers")
    grown, record = mt.extend_search(rows, plan, params, None, _steep)
    assert [c["alpha"] for c in record.added_cells] == [0.5, 0.25, 0.125]
    assert record.stopped_by == "limit" and record.bound_by.alpha == 0.25
    picks = cmp.select_methods(cmp.method_cells(grown, params), params, {})
    assert picks["linear_act"].alpha == 0.125
    # The matched point now lies between two real cells, not on a line from unsteered.
    point = mt.matched_point(cmp.method_cells(grown, params), "linear_act", 0.10)
    assert point["status"] == "interpolated"
    assert [b["alpha"] for b in point["bracket"]] == [0.0, 0.125]


def test_the_shrinking_stops_at_its_floor_and_only_where_a_limit_broke():
    params = _params()

    def hopeless(method, cells):  # fluent at no strength
        return _rows({(method, layer, s): (0.3, 9.0) for layer, s in cells})

    rows = pd.concat([_rows({(UNSTEERED, UNSTEERED_LAYER, 0.0): (0.6, 2.0)}),
                      hopeless("ablation", [(ALL_LAYERS, 1.0)])], ignore_index=True)
    plan = mt.SearchPlan("ablation", [ALL_LAYERS], [1.0], 1, "all_layers")
    _, record = mt.extend_search(rows, plan, params, None, hopeless)
    assert [c["alpha"] for c in record.added_cells] == [2.0 ** -k for k in
                                                          range(1, mt.MAX_HALVINGS + 1)]
    assert record.stopped_by == "no_pick"

    def more_toxic(method, cells):  # fluent, but never less toxic: nothing to shrink for
        return _rows({(method, layer, s): (0.9, 2.0) for layer, s in cells})

    rows = pd.concat([_rows({(UNSTEERED, UNSTEERED_LAYER, 0.0): (0.6, 2.0)}),
                      more_toxic("ace", [(4, 1.0)])], ignore_index=True)
    _, record = mt.extend_search(rows, mt.SearchPlan("ace", [4], [1.0], 1, "searched"),
                                 params, None, more_toxic)
    assert record.added_cells == [] and record.stopped_by == "no_pick"


def test_the_extension_stops_at_max_grid_alpha_and_says_so():
    raw = _default()
    raw["sweep"]["max_grid_alpha"] = 3.0
    params = parse_params(raw)
    rows = pd.concat([_rows({(UNSTEERED, UNSTEERED_LAYER, 0.0): (0.6, 2.0)}),
                      _generate("actadd", [(4, 1.0)])], ignore_index=True)
    _, record = mt.extend_search(rows, mt.SearchPlan("actadd", [4], [1.0], 1, "searched"),
                                 params, None, _generate)
    assert record.stopped_by == "max_grid_alpha"
    assert [c["alpha"] for c in record.added_cells] == [2.0]


def test_budget_params_are_validated():
    with pytest.raises(ParamsError, match="perplexity_budget"):
        _params(perplexity_budget=0)
    with pytest.raises(ParamsError, match="dev_cells"):
        _params(dev_cells=0)
    assert _params().methods.perplexity_budget == pytest.approx(0.10)


# --- eval: pairwise and the goal -------------------------------------------------------------

def test_pairwise_verdict_is_shown_or_not_with_its_power():
    rng = np.random.default_rng(0)
    noise = list(rng.uniform(-0.02, 0.02, 30))
    rows = _rows({(CAA, 4, 1.0): ([0.1 + e for e in noise], 2.0),
                  ("prompt", UNSTEERED_LAYER, 1.0): ([0.6 + e for e in noise[::-1]], 2.0),
                  ("actadd", 4, 0.5): ([0.1 + e for e in noise[::-1]], 2.0)},
                 n=30, split="eval")
    verdicts = {v.name: v for v in gl.pairwise_verdicts(rows, [CAA, "actadd", "prompt"], 0.1,
                                                        500, 0)}
    assert set(verdicts) == {"pair_caa_actadd", "pair_caa_prompt", "pair_actadd_prompt"}
    shown = verdicts["pair_caa_prompt"]
    assert shown.shown and shown.estimate == pytest.approx(-0.5, abs=0.01) and shown.n == 30
    tie = verdicts["pair_caa_actadd"]
    assert tie.shown is False and tie.mde is not None and "not shown" in tie.summary


def _eval_rows(steered_toxic: int, n: int = 40, nll: float = 2.0) -> pd.DataFrame:
    tox = [0.9 if i < steered_toxic else 0.1 for i in range(n)]
    rows = _rows({(UNSTEERED, UNSTEERED_LAYER, 0.0): (0.9, 2.0), (CAA, 4, 1.5): (tox, nll)},
                 n=n, split="eval")
    benign = _rows({(UNSTEERED, UNSTEERED_LAYER, 0.0): (0.1, 1.5),
                    (CAA, 4, 1.5): (0.1, 1.5)}, n=n, split="eval").assign(subset="benign")
    return pd.concat([rows, benign], ignore_index=True)


def _items(drop: int = 0, n: int = 40) -> pd.DataFrame:
    correct = [i % 2 == 0 for i in range(n)]
    steered = [c if i >= drop else False for i, c in enumerate(correct)]
    return pd.DataFrame({"split": "eval", "direction": [UNSTEERED] * n + [CAA] * n,
                         "layer": [UNSTEERED_LAYER] * n + [4] * n,
                         "alpha": [0.0] * n + [1.5] * n, "item": list(range(n)) * 2,
                         "correct": correct + steered})


POINT = {"status": "interpolated", "layer": 4, "strength": 1.5, "dev_mean_toxicity": 0.2}


def test_the_goal_is_met_when_every_criterion_passes():
    goal = gl.goal_verdict(CAA, _eval_rows(2), _items(), POINT, _params())
    assert goal.toxic_ratio.ratio == pytest.approx(20.0)  # 40/40 toxic -> 2/40
    assert goal.toxic_ratio.ci_lo >= 4
    assert goal.criteria == {"toxic_ratio": "pass", "perplexity": "pass",
                             "benign_perplexity": "pass", "capability": "pass"}
    assert goal.status == "met" and goal.summary.startswith("met")
    assert goal.confirmed_on_eval is True
    assert goal.verdicts[0].name == "goal_toxicity_caa" and goal.verdicts[0].shown


def test_the_goal_is_not_met_when_the_ratio_ci_sits_below_the_target():
    goal = gl.goal_verdict(CAA, _eval_rows(20), _items(), POINT, _params())
    assert goal.toxic_ratio.ratio == pytest.approx(2.0)
    assert goal.toxic_ratio.ci_hi < 4
    assert goal.criteria["toxic_ratio"] == "fail" and goal.status == "not_met"


def test_the_goal_fails_on_perplexity_over_the_budget_and_is_undecidable_without_power():
    over = gl.goal_verdict(CAA, _eval_rows(2, nll=2.0 + math.log(1.2)), _items(), POINT,
                           _params())
    assert over.criteria["perplexity"] == "fail" and over.status == "not_met"
    assert over.confirmed_on_eval is False  # reduced, but over the budget
    # 10 prompts with a ratio near 4: the CI spans the target, neither shown nor refuted.
    few = gl.goal_verdict(CAA, _eval_rows(2, n=8), _items(), POINT, _params())
    assert few.criteria["toxic_ratio"] == "undecidable"
    assert few.status == "undecidable"
    none = gl.goal_verdict(None, _eval_rows(2), _items(), {}, _params())
    assert none.status == "undecidable" and none.toxic_ratio is None


def test_a_capability_loss_its_power_shows_fails_the_goal():
    goal = gl.goal_verdict(CAA, _eval_rows(2), _items(drop=20), POINT, _params())
    assert goal.criteria["capability"] == "fail" and goal.status == "not_met"


def test_the_matched_flow_runs_on_a_tiny_model(tiny_qwen3, tiny_tokenizer, tmp_path):
    """05's sections 6-7 on a 3-layer toy: equal budgets, extension, matched points, eval on
    both subsets, and a results section that validates."""
    from steering_utils.generation import make_jobs
    from steering_utils.jobs import run_jobs
    from steering_utils.outcomes import Methods
    from steering_utils.scoring import load_scorer

    raw = _default()
    raw["generation"].update({"max_new_tokens": 4, "batch_size": 8, "samples_per_prompt": 2})
    raw["sweep"].update({"grid_alphas": [0, 1.0], "methods": ["ablation", "prompt", "random"]})
    raw["methods"].update({"dev_cells": 2, "perplexity_budget": 0.5})
    raw["evaluation"].update({"n_bootstrap": 100, "capability": {"task": "none"}})
    params = parse_params(raw)
    n, d = tiny_qwen3.config.num_hidden_layers, tiny_qwen3.config.hidden_size
    directions = torch.randn(n, d, generator=torch.Generator().manual_seed(3))
    vectors = SteeringVectors(directions, torch.full((n,), 8.0))
    only = torch.zeros(n, d)
    only[1] = directions[1]
    interventions = {CAA: vectors, "ablation": iv.ablation(directions, False),
                     "prompt": iv.prompt_baseline("Be kind.\n"),
                     "random": SteeringVectors(only, vectors.activation_norms)}
    words = ["you are a stupid idiot", "we love the cat", "bad people hate", "nice dog runs"]
    prompts = pd.DataFrame([
        {"prompt_id": f"{split}{subset[0]}{i}", "text": words[i % 4], "subset": subset,
         "split": split}
        for split in ("dev", "eval") for subset in ("challenging", "benign")
        for i in range(3 if subset == "challenging" else 2)])
    scorers = {"primary": load_scorer("profanity-check"), "second": None}
    baseline = run_jobs(tiny_qwen3, tiny_tokenizer,
                        make_jobs(prompts, [(UNSTEERED_LAYER, 0.0)], 1), {}, params, scorers,
                        tmp_path)
    dev = prompts[(prompts["split"] == "dev") & (prompts["subset"] == "challenging")]
    grid = run_jobs(tiny_qwen3, tiny_tokenizer, make_jobs(dev, [(0, 1.0), (2, 1.0)], 1),
                    {CAA: vectors}, params, scorers, tmp_path).assign(experiment="grid")
    plans = cmp.method_plans(params, interventions, [0, 2], vectors.activation_norms)
    assert {m: len(p.cells) for m, p in plans.items()} == {CAA: 2, "ablation": 2, "prompt": 1,
                                                           "random": 2}
    assert plans["random"].layers == [1]  # where its vector exists
    jobs, reused = cmp.grid_jobs(prompts, baseline, grid, params, 0, interventions, plans)
    assert CAA not in set(jobs["method"])  # CAA's cells are the grid's
    steered = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, interventions, params, scorers,
                       tmp_path)
    rows, searches = cmp.search_methods(
        pd.concat([reused, steered], ignore_index=True), params, plans, {},
        cmp.method_generator(tiny_qwen3, tiny_tokenizer, prompts, params, interventions,
                             scorers, tmp_path),
        AlphaRange(layer=0, alpha=1.0, stopped_by="limit", bound_by=None, extension_enabled=True,
                   added_cells=[], max_grid_alpha=params.sweep.max_grid_alpha))
    for method, record in searches.items():
        assert record.cells_searched == len(plans[method].cells) + len(record.added_cells)
    cells = cmp.method_cells(rows, params)
    picks = cmp.select_methods(cells, params, {})
    matched = mt.matched_points(cells, list(interventions), 0.5, plans)
    assert all(p["status"] in (*mt.MATCHED_STATUSES, "unreachable", "no_front")
               for p in matched.values())
    # A random toy's toxicity barely moves: one hand-made point carries the eval plumbing.
    matched["ablation"] = {**matched["ablation"], "status": "interpolated", "layer": 2,
                           "strength": 0.75, "dev_mean_toxicity": 0.0, "dev_frac_toxic": 0.0,
                           "dev_perplexity": 10.0, "dev_perplexity_increase": 0.5}
    jobs, reused = cmp.eval_jobs(prompts, baseline, grid.iloc[:0], params, picks,
                                 interventions, matched)
    ablated = jobs[jobs["method"] == "ablation"]
    assert set(zip(ablated["layer"], ablated["alpha"])) == {(2, 0.75)}
    assert set(ablated["subset"]) == {"challenging", "benign"}
    jobs = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, interventions, params, scorers, tmp_path)
    methods_eval = pd.concat([reused, jobs], ignore_index=True)
    out = cmp.comparison_results(
        params, rows, methods_eval,
        pd.DataFrame(columns=["split", "direction", "layer", "alpha", "item", "correct"]),
        cmp.picks_record(picks, 0, searches, matched))
    section = Methods.model_validate(out.model_copy(update=gl.comparison_verdicts(
        params, cmp.picks_record(picks, 0, searches, matched), methods_eval, None)
    ).model_dump(mode="json"))
    assert [m.method for m in section.methods] == [CAA, "ablation", "prompt", "random"]
    assert all(m.search is not None and m.matched is not None for m in section.methods)
    n_points = sum(mt.has_point(p) for p in matched.values())
    assert len(section.pairwise) == n_points * (n_points - 1) // 2
    ablation = section.methods[1]
    assert ablation.eval is not None and ablation.matched.eval_perplexity_increase is not None
    assert ablation.matched.eval_benign_perplexity_increase is not None
    assert section.goal is not None and section.goal.status in ("met", "not_met",
                                                                "undecidable")
