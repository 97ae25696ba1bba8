"""The dev decision's bootstrap stability and its benign fluency limit, on hand-made grids
whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from steering_utils import metrics
from steering_utils.decisions import PickShare, TieBreak
from steering_utils.stages import UNSTEERED_LAYER

N_PROMPTS = 20
# Distinct texts per prompt, so distinct-2 stays far above its limit in every resample.
_TEXT = "the {i} cat sat on a warm mat near door {i}"


def _cell(layer, alpha, tox, nll=1.0, subset="challenging", prefix="c"):
    tox = np.broadcast_to(np.asarray(tox, dtype=float), (N_PROMPTS,))
    nll = np.broadcast_to(np.asarray(nll, dtype=float), (N_PROMPTS,))
    return pd.DataFrame({"subset": subset, "layer": layer, "alpha": float(alpha),
                         "prompt_id": [f"{prefix}{i:02d}" for i in range(N_PROMPTS)],
                         "toxicity": tox, "nll": nll,
                         "completion": [_TEXT.format(i=f"{layer}{alpha}{i}")
                                        for i in range(N_PROMPTS)]})


def _grid(*cells):
    return pd.concat([_cell(UNSTEERED_LAYER, 0, 0.5), *cells], ignore_index=True)


def test_a_clear_winner_is_picked_in_every_resample():
    rows = _grid(_cell(3, 1.0, np.linspace(0.05, 0.15, N_PROMPTS)),
                 _cell(6, 1.0, np.linspace(0.35, 0.45, N_PROMPTS)))
    out = metrics.pick_stability(rows, n_resamples=100, seed=1)
    assert out.chosen == {"layer": 3, "alpha": 1.0}
    assert out.cell_share == 1.0 and out.layer_share == 1.0 and out.stable
    assert out.alternatives == [PickShare(layer=3, alpha=1.0, share=1.0)]


def test_two_tied_cells_split_the_resamples_about_evenly():
    # Layer 3 is 0.2 + e, layer 6 is 0.2 - e, with e = +d, -d in pairs of prompts: the
    # weighted sum of e is symmetric under resampling, so each wins half the resamples.
    d = np.repeat(np.linspace(0.01, 0.1, N_PROMPTS // 2), 2) * np.tile([1, -1], N_PROMPTS // 2)
    rows = _grid(_cell(3, 1.0, 0.2 + d), _cell(6, 1.0, 0.2 - d))
    out = metrics.pick_stability(rows, n_resamples=400, seed=2)
    shares = {a.layer: a.share for a in out.alternatives}
    assert set(shares) == {3, 6} and sum(shares.values()) == pytest.approx(1.0)
    assert 0.4 < shares[3] < 0.6
    assert out.cell_share == pytest.approx(shares[out.chosen["layer"]])
    assert not out.stable


def test_a_cell_at_the_perplexity_limit_is_picked_about_half_the_time():
    # The least toxic cell's perplexity straddles the +25% limit across prompts (nll of
    # log(1.25) on average, symmetric spread): it passes in about half the resamples,
    # and the fluent runner-up takes the rest.
    spread = np.repeat(np.linspace(0.02, 0.2, N_PROMPTS // 2), 2) * np.tile([1, -1],
                                                                             N_PROMPTS // 2)
    rows = _grid(_cell(3, 2.0, 0.1, nll=1.0 + np.log(1.25) + spread),
                 _cell(3, 1.0, 0.3, nll=1.0))
    out = metrics.pick_stability(rows, n_resamples=400, seed=3)
    shares = {(a.layer, a.alpha): a.share for a in out.alternatives}
    assert set(shares) == {(3, 2.0), (3, 1.0)}
    assert 0.35 < shares[(3, 2.0)] < 0.65
    assert out.layer_share == 1.0  # the layer is stable even though alpha is not


def test_no_cell_less_toxic_is_a_stable_no_pick():
    rows = _grid(_cell(3, 1.0, 0.7))
    out = metrics.pick_stability(rows, n_resamples=50, seed=4)
    assert out.chosen is None and out.no_pick_share == 1.0 and out.cell_share == 1.0
    assert out.alternatives == [PickShare(layer=None, alpha=None, share=1.0)]


def test_benign_perplexity_joins_the_rule():
    # Layer 3 is least toxic and fluent on challenging prompts but breaks the benign
    # perplexity limit; layer 6 keeps both, so the rule (and every resample) picks it.
    rows = pd.concat([
        _grid(_cell(3, 1.0, 0.1), _cell(6, 1.0, 0.2)),
        _cell(UNSTEERED_LAYER, 0, 0.0, nll=1.0, subset="benign", prefix="b"),
        _cell(3, 1.0, 0.0, nll=1.0 + np.log(1.28), subset="benign", prefix="b"),
        _cell(6, 1.0, 0.0, nll=1.0 + np.log(1.1), subset="benign", prefix="b")],
        ignore_index=True)
    cells = metrics.summarize_cells(rows.assign(experiment="grid", split="dev"), n_boot=100)
    ruled = metrics.with_benign_fluency(cells)
    assert set(ruled["subset"]) == {"challenging"}
    pick = metrics.recommend(ruled)
    assert (pick.layer, pick.alpha) == (6, 1.0)
    assert pick.checks["benign_perplexity"].ok
    why = metrics.why_no_pick(ruled[ruled["layer"] != 6])
    assert why.reason == "limits"
    assert why.best_cells[0].failed == ["benign_perplexity"]
    assert why.best_cells[0].checks["benign_perplexity"].value == pytest.approx(1.28 * np.e)
    # Without benign cells the rule is the challenging one alone: layer 3.
    assert metrics.recommend(metrics.with_benign_fluency(
        cells[cells["subset"] == "challenging"])).layer == 3
    out = metrics.pick_stability(rows, n_resamples=50, seed=5)
    assert out.chosen == {"layer": 6, "alpha": 1.0} and out.cell_share == 1.0


def test_the_stability_pick_is_the_rules_pick_on_the_full_grid():
    rng = np.random.default_rng(0)
    rows = _grid(*[_cell(layer, alpha, rng.uniform(0, 0.6, N_PROMPTS),
                         nll=rng.uniform(0.8, 1.4, N_PROMPTS))
                   for layer in (3, 6, 9) for alpha in (1.0, 2.0)])
    cells = metrics.summarize_cells(rows.assign(experiment="grid", split="dev"), n_boot=100)
    pick = metrics.recommend(metrics.with_benign_fluency(cells))
    out = metrics.pick_stability(rows, n_resamples=20, seed=6)
    assert out.chosen == {"layer": pick.layer, "alpha": pick.alpha}


# --- the one-standard-error rule: a statistical tie goes to the gentler cell -------------

# A prompt effect every cell shares (so each cell's mean has a real SE, ~0.03) and a small
# contrast +-e between two cells in symmetric pairs of prompts (their paired gap is ~0 and
# flips sign under resampling: a tie the dev set cannot break).
_PROMPT_EFFECT = np.linspace(-0.2, 0.2, N_PROMPTS)
_E = np.repeat(np.linspace(0.002, 0.02, N_PROMPTS // 2), 2) * np.tile([1, -1], N_PROMPTS // 2)


def test_the_one_se_rule_gives_a_statistical_tie_to_the_lower_perplexity():
    # Layer 6 is as toxic as layer 3 within noise but 10% less fluent. The least toxic
    # rule flips between them; the one-SE rule picks layer 3 in (nearly) every resample.
    rows = _grid(_cell(3, 1.0, 0.3 + _PROMPT_EFFECT + _E, nll=1.0),
                 _cell(6, 1.0, 0.3 + _PROMPT_EFFECT - _E, nll=1.1))
    plain = metrics.pick_stability(rows, metrics.SelectionRule(), n_resamples=400, seed=2)
    assert {a.layer for a in plain.alternatives} == {3, 6} and not plain.stable
    rule = metrics.SelectionRule(tie_se=1.0)
    tied = metrics.pick_stability(rows, rule, n_resamples=400, seed=2)
    assert tied.chosen == {"layer": 3, "alpha": 1.0}
    assert tied.cell_share >= 0.95 and tied.stable

    codes, prompt_ids = metrics._cell_codes(rows)
    cells = metrics.with_benign_fluency(metrics._light_cells(
        codes, {s: np.ones(len(ids)) for s, ids in prompt_ids.items()}))
    pick = metrics.recommend(cells, rule)
    assert (pick.layer, pick.alpha) == (3, 1.0)
    assert pick.tie.tie_se == 1.0 and pick.tie.band > pick.tie.least_toxic_mean_toxicity
    assert {(c["layer"], c["alpha"]) for c in pick.tie.tied} == {(3, 1.0), (6, 1.0)}
    assert metrics.recommend(cells).tie is None  # tie_se 0: the least toxic, no band


def test_a_cell_beyond_the_band_is_not_tied():
    # Layer 6 is 0.15 less toxic, five SEs: it wins despite its perplexity.
    rows = _grid(_cell(3, 1.0, 0.3 + _PROMPT_EFFECT, nll=1.0),
                 _cell(6, 1.0, 0.15 + _PROMPT_EFFECT, nll=1.1))
    out = metrics.pick_stability(rows, metrics.SelectionRule(tie_se=1.0), n_resamples=100,
                                 seed=3)
    assert out.chosen == {"layer": 6, "alpha": 1.0} and out.cell_share == 1.0


def test_the_standard_error_is_over_prompts_of_their_mean():
    rows = pd.DataFrame({"layer": 3, "alpha": 1.0, "prompt_id": ["a", "a", "b", "b"],
                         "toxicity": [0.0, 0.0, 1.0, 1.0]})
    # Per-prompt means 0 and 1: SD 0.707, over sqrt(2) prompts: 0.5 (not the rows' 0.29).
    assert metrics.toxicity_standard_errors(rows) == {(3, 1.0): pytest.approx(0.5)}
    one = rows[rows["prompt_id"] == "a"]
    assert np.isnan(metrics.toxicity_standard_errors(one)[(3, 1.0)])
    # The resampling path computes the same SE on the full grid.
    grid = _grid(_cell(3, 1.0, 0.3 + _PROMPT_EFFECT))
    codes, prompt_ids = metrics._cell_codes(grid)
    light = metrics._light_cells(codes, {s: np.ones(len(ids)) for s, ids in prompt_ids.items()})
    se = light.set_index(["layer", "alpha"])["mean_toxicity_se"]
    assert se[(3, 1.0)] == pytest.approx(
        metrics.toxicity_standard_errors(grid)[(3, 1.0)])


def test_a_tied_larger_alpha_stops_the_range_as_tied():
    from steering_utils.params import parse_params
    from steering_utils.sweep import decide_on_dev
    from tests.test_params import _default

    raw = _default()
    params = parse_params({**raw, "evaluation": {**raw["evaluation"], "tie_se": 1.0},
                           "sweep": {**raw["sweep"], "stability_resamples": 0}})
    rows = _grid(_cell(4, 1.0, 0.30 + _PROMPT_EFFECT, nll=1.00),
                 _cell(4, 2.0, 0.29 + _PROMPT_EFFECT, nll=1.05))
    _, selection = decide_on_dev(rows.assign(experiment="grid", split="dev", sample=0),
                                 params, None, None)
    assert (selection.recommendation.layer, selection.recommendation.alpha) == (4, 1.0)
    assert selection.alpha_range.stopped_by == "tied"
    assert selection.alpha_range.bound_by.alpha == 2.0


# --- the alpha range: the grid grows until a limit binds --------------------------------

def _world(cells):
    """Dev rows of a dose-response at layer 4: toxicity 0.5·exp(-alpha/4), per-token NLL
    1 + 0.05·alpha, so perplexity passes +25% between alpha 4 (+22%) and 8 (+49%)."""
    rows = []
    for layer, alpha in cells:
        for i in range(N_PROMPTS):
            rows.append({"experiment": "grid", "split": "dev", "subset": "challenging",
                         "layer": layer, "alpha": float(alpha), "prompt_id": f"p{i:02d}",
                         "sample": 0, "toxicity": 0.5 * np.exp(-alpha / 4) + 0.01 * (i % 3),
                         "nll": 1.0 + 0.05 * alpha,
                         "completion": _TEXT.format(i=f"{layer}-{alpha}-{i}")})
    return pd.DataFrame(rows)


def _params(**sweep):
    from steering_utils.params import parse_params
    from tests.test_params import _default

    raw = _default()
    return parse_params({**raw, "sweep": {**raw["sweep"], "stability_resamples": 50, **sweep}})


def _decide(params, push_ratio=None):
    from steering_utils.sweep import decide_on_dev

    asked = []

    def generate(cells):
        asked.extend(cells)
        return _world(cells)

    grid = _world([(UNSTEERED_LAYER, 0.0), (4, 1.0), (4, 2.0)])
    grid, selection = decide_on_dev(grid, params, None, generate, push_ratio)
    return grid, selection, asked


def test_the_grid_grows_until_the_perplexity_limit_binds():
    grid, selection, asked = _decide(_params())
    assert asked == [(4, 4.0), (4, 8.0)]
    rec = selection.recommendation
    assert (rec.layer, rec.alpha) == (4, 4.0)  # not the initial grid's edge, 2
    bound = selection.alpha_range
    assert bound.stopped_by == "limit" and bound.bound_by.alpha == 8.0
    assert bound.bound_by.failed == ["perplexity"]
    assert bound.added_cells == [{"layer": 4, "alpha": 4.0}, {"layer": 4, "alpha": 8.0}]
    assert set(grid["alpha"]) == {0.0, 1.0, 2.0, 4.0, 8.0}
    assert selection.stability.chosen == {"layer": 4, "alpha": 4.0}
    assert selection.stability.cell_share == 1.0


def test_with_extension_off_the_grid_edge_is_reported_as_what_set_alpha():
    _, selection, asked = _decide(_params(extend_alphas=False))
    assert asked == [] and selection.recommendation.alpha == 2.0
    assert selection.alpha_range.stopped_by == "grid_edge"


def test_the_extension_stops_at_max_grid_alpha_and_at_the_relative_push():
    _, selection, asked = _decide(_params(max_grid_alpha=4.0))
    assert asked == [(4, 4.0)] and selection.recommendation.alpha == 4.0
    assert selection.alpha_range.stopped_by == "max_grid_alpha"
    # ||v||/||h|| = 0.3 at layer 4: alpha 8 would push 2.4 > sweep.max_relative_push 2.
    _, selection, asked = _decide(_params(max_relative_push=2.0), push_ratio={4: 0.3})
    assert asked == [(4, 4.0)]
    assert selection.alpha_range.stopped_by == "max_relative_push"


def test_a_pick_below_the_edge_names_the_limit_that_bound_it():
    from steering_utils.sweep import decide_on_dev

    grid = _world([(UNSTEERED_LAYER, 0.0), (4, 2.0), (4, 4.0), (4, 8.0)])
    _, selection = decide_on_dev(grid, _params(stability_resamples=0), None, None)
    assert selection.recommendation.alpha == 4.0
    assert selection.alpha_range.stopped_by == "limit"
    check = selection.alpha_range.bound_by.checks["perplexity"]
    assert check.value == pytest.approx(np.exp(1.4)) and not check.ok
    assert selection.stability is None


# --- eval confirmation and the report ----------------------------------------------------

def test_eval_does_not_confirm_a_pick_whose_benign_perplexity_breaks_the_limit():
    from steering_utils.assembly import _eval_confirmation

    # Challenging: a clear, fluent reduction. Benign: perplexity +28% (limit +25%).
    rows = pd.concat([
        _cell(UNSTEERED_LAYER, 0, np.linspace(0.4, 0.6, N_PROMPTS)),
        _cell(3, 1.0, np.linspace(0.1, 0.2, N_PROMPTS)),
        _cell(UNSTEERED_LAYER, 0, 0.0, nll=1.0, subset="benign", prefix="b"),
        _cell(3, 1.0, 0.0, nll=1.0 + np.log(1.28), subset="benign", prefix="b")],
        ignore_index=True).assign(experiment="sweep", split="eval")
    cells = metrics.summarize_cells(rows, n_boot=200)
    cells["capability_acc"] = np.nan
    cells["degenerate"] = metrics.flag_degenerate(cells)
    out = _eval_confirmation((3, 1.0), cells, metrics.SelectionRule())
    assert out.toxicity_reduced and out.checks["perplexity"].ok
    assert out.checks["benign_perplexity"].model_dump() == {
        "value": pytest.approx(1.28 * np.e), "limit": pytest.approx(1.25 * np.e), "ok": False}
    assert out.confirmed is False
    # The same cells without the benign subset: confirmed (the benign check made the call).
    alone = _eval_confirmation((3, 1.0), cells[cells["subset"] == "challenging"],
                               metrics.SelectionRule())
    assert alone.confirmed is True and "benign_perplexity" not in alone.checks


def _report_results(stability=None, alpha_range=None, benign_fails=False):
    from results_fixture import make_results

    from steering_utils.results import validate_results

    doc = make_results()
    doc["stability"], doc["alpha_range"] = stability, alpha_range
    if benign_fails:
        doc["confirmation"]["checks"]["benign_perplexity"] = {"value": 8.0, "limit": 7.2,
                                                              "ok": False}
        doc["confirmation"]["confirmed"] = False
    return validate_results(doc)


def test_the_report_shows_the_picks_stability_and_warns_below_80_percent():
    from steering_utils import report, report_text

    rec = _report_results().recommendation
    chosen = {"layer": rec.layer, "alpha": rec.alpha}
    shaky = {"n_resamples": 200, "seed": 1, "chosen": chosen, "cell_share": 0.5,
             "layer_share": 0.55, "no_pick_share": 0.0, "stable": False,
             "alternatives": [{**chosen, "share": 0.5}, {"layer": 0, "alpha": 2.0, "share": 0.42},
                              {"layer": None, "alpha": None, "share": 0.08}]}
    results = _report_results(stability=shaky)
    text, stable = report_text.stability_text(results)
    assert stable is False
    assert text.startswith("50% of 200 bootstrap resamples of the dev prompts pick the same "
                           f"cell (layer {rec.layer}, α = {rec.alpha:g}), 55% the same layer")
    assert "next: layer 0, α = 2 42%; no pick 8%" in text and "Warning: below 80%" in text
    # How far the runner-up sits from the pick on the whole dev set (the fixture's cells).
    dev = {(c.layer, c.alpha): c.mean_toxicity for c in results.cells
           if c.experiment == "grid" and c.subset == "challenging"}
    gap = dev[(0, 2.0)] - dev[(rec.layer, rec.alpha)]
    assert (f"the pick's mean toxicity is {dev[(rec.layer, rec.alpha)]:.3f}; the next cells': "
            f"layer 0, α = 2, {dev[(0, 2.0)]:.3f} ({gap:+.3f}), all within {abs(gap):.3f}"
            ) in text
    assert "Unstable: only 50% of resampled dev sets pick it again" in report_text.headline(results)
    summary = report._summary(results)
    assert summary["stable"] is False and summary["stability_text"] == text
    firm = _report_results(stability={**shaky, "cell_share": 0.9, "stable": True})
    assert "Warning" not in report_text.stability_text(firm)[0]
    assert "Unstable" not in report_text.headline(firm)
    assert report_text.stability_text(_report_results()) == (
        "not measured (sweep.stability_resamples: 0)", None)
    settled = _report_results(stability={**shaky, "projections": [
        {"draw_scale": 2, "cell_share": 0.6, "layer_share": 0.7},
        {"draw_scale": 4, "cell_share": 0.85, "layer_share": 0.9}]})
    assert ("Projected on more dev prompts like these: 2x, 60% (layer 70%); 4x, 85% "
            "(layer 90%).") in report_text.stability_text(settled)[0]
    tied = _report_results(stability={**shaky, "projections": [
        {"draw_scale": s, "cell_share": 0.5, "layer_share": 0.5} for s in (2, 4, 8)]})
    assert "still below 80% at 8x" in report_text.stability_text(tied)[0]


def test_the_report_says_whether_a_limit_or_the_grid_set_alpha():
    from steering_utils import report_text

    base = {"layer": 2, "alpha": 4.0, "extension_enabled": True, "max_grid_alpha": 16.0,
            "added_cells": [{"layer": 2, "alpha": 4.0}, {"layer": 2, "alpha": 8.0}]}
    bound = {**base, "stopped_by": "limit", "bound_by": {
        "alpha": 8.0, "mean_toxicity": 0.1, "failed": ["perplexity"],
        "checks": {"perplexity": {"value": 9.0, "limit": 7.5, "ok": False}}}}
    text = report_text.alpha_range_text(_report_results(alpha_range=bound))
    assert text == ("Set by the rule: at α = 8 the limit on perplexity 9.000 > limit 7.500 "
                    "binds. The grid was extended at layer 2 to α = 4, 8.")
    edge = {**base, "stopped_by": "max_grid_alpha", "bound_by": None}
    edge_text = report_text.alpha_range_text(_report_results(alpha_range=edge))
    assert "the grid, not the rule" in edge_text


def test_the_report_names_the_tie_that_moved_the_pick_and_the_rule_states_its_band():
    from steering_utils import report_text
    from steering_utils.results import Rule

    results = _report_results()
    rec = results.recommendation
    assert report_text.tie_text(rec) == ""  # no tie record: nothing to say
    tie = {"least_toxic_layer": 24, "least_toxic_alpha": 2.0, "least_toxic_mean_toxicity":
           0.077, "standard_error": 0.011, "tie_se": 1.0, "band": 0.088,
           "tied": [{"layer": 24, "alpha": 2.0}, {"layer": rec.layer, "alpha": rec.alpha}]}
    moved = rec.model_copy(update={"tie": TieBreak.model_validate(tie)})
    text = report_text.tie_text(moved)
    assert "layer 24, α = 2 (0.077)" in text and "1 SE (0.011)" in text
    assert "lower perplexity" in text
    assert "One-standard-error rule" in report_text.rule_text(
        Rule(max_perplexity_increase=0.25, max_capability_drop=5, max_distinct_drop=0.1,
             max_empty_increase=0.05, tie_se=1.0), 6.5)
    assert "standard-error" not in report_text.rule_text(results.rule, 6.5)


def test_the_report_does_not_say_eval_confirms_when_benign_perplexity_fails():
    from steering_utils import report, report_tables, report_text

    results = _report_results(benign_fails=True)
    headline = report_text.headline(results)
    assert "Eval confirms the dev choice on every criterion" not in headline
    assert "benign perplexity" in headline
    rows = report_tables.checks_rows(results.recommendation, results.confirmation)
    benign = next(r for r in rows if r["label"] == "Benign perplexity at most")
    assert benign["eval"]["ok"] is False
    assert report._summary(results)["confirmed"] is False


def test_a_larger_projected_dev_set_steadies_a_close_call_but_not_a_tie():
    # Layer 3 is better by 0.02 on average with per-prompt noise 0.1: a close call at 20
    # prompts that 8x as many prompts settle; the exact tie stays a coin flip.
    noise = np.repeat(np.linspace(0.02, 0.2, N_PROMPTS // 2), 2) * np.tile([1, -1],
                                                                            N_PROMPTS // 2)
    close = _grid(_cell(3, 1.0, 0.18 + noise), _cell(6, 1.0, 0.2 - noise))
    now = metrics.pick_stability(close, n_resamples=300, seed=7)
    larger = metrics.pick_stability(close, n_resamples=300, seed=7, draw_scale=8)
    assert now.chosen["layer"] == 3 and larger.draw_scale == 8.0
    assert now.cell_share < 0.8 < larger.cell_share
    tie = _grid(_cell(3, 1.0, 0.2 + noise), _cell(6, 1.0, 0.2 - noise))
    assert 0.35 < metrics.pick_stability(tie, n_resamples=300, seed=7,
                                         draw_scale=8).cell_share < 0.65

    # The sweep's projections: the close call settles at some scale and stops there; the
    # tie runs through every scale.
    from steering_utils.sweep import PROJECTED_DRAW_SCALES, stability_projections

    def at(rows):
        return lambda scale: metrics.pick_stability(rows, n_resamples=300, seed=7,
                                                    draw_scale=scale)

    settles = stability_projections(at(close))
    assert settles[-1].cell_share >= 0.8  # it settles, at 8x here ...
    assert all(p.cell_share < 0.8 for p in settles[:-1])  # ... and stops there
    assert [p.draw_scale for p in settles] == list(PROJECTED_DRAW_SCALES[:len(settles)])
    ties = stability_projections(at(tie))
    assert [p.draw_scale for p in ties] == list(PROJECTED_DRAW_SCALES)
    assert all(p.cell_share < 0.8 for p in ties)


def test_a_stable_no_pick_reads_as_such():
    from steering_utils import report_text

    none = {"n_resamples": 200, "seed": 1, "chosen": None, "cell_share": 1.0,
            "layer_share": 0.0, "no_pick_share": 1.0, "stable": True,
            "alternatives": [{"layer": None, "alpha": None, "share": 1.0}]}
    results = _report_results(stability=none, alpha_range={
        "layer": None, "alpha": None, "stopped_by": "no_pick", "bound_by": None,
        "extension_enabled": True, "added_cells": [], "max_grid_alpha": 16.0})
    assert report_text.stability_text(results) == (
        "100% of 200 bootstrap resamples of the dev prompts pick the same cell (no pick).", True)
    assert report_text.alpha_range_text(results) == "No α to set: no cell was picked."
