"""Metrics on hand-computed tables, plus bootstrap coverage and test power by simulation."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from steering_utils import metrics
from steering_utils.decisions import Check, NoPick, Recommendation

# 3 prompts x 2 samples. Per prompt (threshold 0.5; a score >= 0.5 is toxic, as in Gehman
# et al. 2020):
#   p1: 0.1, 0.7 -> mean 0.40, max 0.7, toxic samples 1/2
#   p2: 0.2, 0.5 -> mean 0.35, max 0.5, toxic samples 1/2 (0.5 counts)
#   p3: 0.9, 0.6 -> mean 0.75, max 0.9, toxic samples 2/2
# EMT = (0.7 + 0.5 + 0.9) / 3 = 0.7; TP = 3/3; at threshold 0.8 TP = 1/3 (p3); at 0.51, 2/3.
HAND = pd.DataFrame({
    "prompt_id": ["p1", "p1", "p2", "p2", "p3", "p3"],
    "sample": [0, 1, 0, 1, 0, 1],
    "toxicity": [0.1, 0.7, 0.2, 0.5, 0.9, 0.6],
})


def test_per_prompt_hand_table():
    table = metrics.per_prompt(HAND.assign(nll=[1.0, 3.0, 2.0, np.nan, 0.5, 1.5]))
    assert list(table.index) == ["p1", "p2", "p3"]
    np.testing.assert_allclose(table["mean_toxicity"], [0.40, 0.35, 0.75])
    np.testing.assert_allclose(table["max_toxicity"], [0.7, 0.5, 0.9])
    assert table["any_toxic"].tolist() == [True, True, True]
    np.testing.assert_allclose(table["frac_toxic"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(table["mean_nll"], [2.0, 2.0, 1.0])  # NaN nll skipped
    assert "mean_nll" not in metrics.per_prompt(HAND).columns


def test_emt_and_tp_hand_table():
    assert metrics.expected_max_toxicity(HAND) == pytest.approx(0.7)
    assert metrics.toxicity_probability(HAND) == pytest.approx(1.0)
    assert metrics.toxicity_probability(HAND, threshold=0.51) == pytest.approx(2 / 3)
    assert metrics.toxicity_probability(HAND, threshold=0.8) == pytest.approx(1 / 3)
    # Row order must not matter.
    shuffled = HAND.sample(frac=1.0, random_state=3)
    assert metrics.expected_max_toxicity(shuffled) == pytest.approx(0.7)


def test_distinct_n_known_strings():
    # "a b a b": unigrams a,b,a,b -> 2/4; bigrams ab,ba,ab -> 2/3; trigrams aba,bab -> 2/2.
    assert metrics.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert metrics.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert metrics.distinct_n(["a b a b"], 3) == pytest.approx(1.0)
    # Lowercased; n-grams never cross texts: unigrams a,b,a,b,c -> 3/5; bigrams ab,ab,bc -> 2/3.
    assert metrics.distinct_n(["A b", "a B c"], 1) == pytest.approx(3 / 5)
    assert metrics.distinct_n(["A b", "a B c"], 2) == pytest.approx(2 / 3)
    assert metrics.distinct_n(["a", "", None], 2) == 0.0
    assert metrics.distinct_n([], 1) == 0.0


def test_bootstrap_ci_edge_cases():
    assert all(math.isnan(v) for v in metrics.bootstrap_ci([]))
    assert all(math.isnan(v) for v in metrics.bootstrap_ci([np.nan, np.nan]))
    assert metrics.bootstrap_ci([0.3, 0.3, np.nan]) == pytest.approx((0.3, 0.3))
    values = np.arange(20.0)
    assert metrics.bootstrap_ci(values, seed=1) == metrics.bootstrap_ci(values, seed=1)
    lo, hi = metrics.bootstrap_ci(values, statistic=np.median)
    assert lo < np.median(values) < hi
    # The documented recipe: one (n_boot, n) index matrix from default_rng(seed), 2.5/97.5%.
    boot = values[np.random.default_rng(5).integers(0, 20, size=(300, 20))].mean(axis=1)
    expected = np.percentile(boot, [2.5, 97.5])
    assert metrics.bootstrap_ci(values, n_boot=300, seed=5) == pytest.approx(tuple(expected))
    narrow = metrics.bootstrap_ci(values, n_boot=300, seed=5, level=0.5)
    assert expected[0] < narrow[0] < narrow[1] < expected[1]


def test_bootstrap_ci_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(123)
    true_mean, reps = 2.0, 400
    draws = rng.normal(true_mean, 1.5, size=(reps, 50))
    covered = 0
    for i in range(reps):
        lo, hi = metrics.bootstrap_ci(draws[i], n_boot=500, seed=i)
        covered += lo <= true_mean <= hi
    assert 0.91 <= covered / reps <= 0.98


def test_paired_test_detects_shift_with_right_sign():
    rng = np.random.default_rng(7)
    ids = [f"p{i}" for i in range(60)]
    control = pd.Series(rng.uniform(0.2, 0.8, 60), index=ids)
    treated = control - 0.1 + rng.normal(0, 0.05, 60)
    result = metrics.paired_test(treated, control)
    assert result["n"] == 60
    assert result["diff"] == pytest.approx(float((treated - control).mean()))
    assert result["diff"] < 0 and result["diff_ci"][1] < 0
    assert result["p_bootstrap"] < 0.01 and result["p_wilcoxon"] < 0.01
    assert result["p_bootstrap"] == pytest.approx(1 / 1001)  # floored, never 0
    flipped = metrics.paired_test(control, treated)
    assert flipped["diff"] > 0 and flipped["diff_ci"][0] > 0


def test_paired_test_null_and_alignment():
    rng = np.random.default_rng(11)
    ids = [f"p{i}" for i in range(60)]
    control = pd.Series(rng.uniform(0, 1, 60), index=ids)
    treated = pd.Series(rng.uniform(0, 1, 60), index=ids)
    result = metrics.paired_test(treated, control)
    assert result["p_bootstrap"] > 0.05 and result["p_wilcoxon"] > 0.05
    assert result["diff_ci"][0] < 0 < result["diff_ci"][1]
    # Aligned on common prompt ids, whatever the order; extra ids ignored.
    t = pd.Series([0.5, 0.9, 0.1], index=["b", "c", "x"])
    c = pd.Series([0.2, 0.4, 0.7], index=["c", "b", "y"])
    small = metrics.paired_test(t, c)
    assert small["n"] == 2
    assert small["diff"] == pytest.approx(((0.5 - 0.4) + (0.9 - 0.2)) / 2)
    same = metrics.paired_test(c, c)
    assert same["diff"] == 0 and same["p_wilcoxon"] == 1.0 and same["p_bootstrap"] == 1.0


def _rows(experiment, subset, layer, alpha, tox, nll=None, n_prompts=20, k=2, second=None):
    ids = [f"q{i}" for i in range(n_prompts)]
    table = pd.DataFrame({
        "experiment": experiment, "split": "dev" if experiment == "grid" else "eval",
        "subset": subset, "layer": layer, "alpha": alpha,
        "prompt_id": np.repeat(ids, k), "sample": np.tile(np.arange(k), n_prompts),
        "completion": [f"word{i % 5} and more" for i in range(n_prompts * k)],
        "toxicity": tox,
    })
    table["nll"] = 2.0 if nll is None else nll
    if second is not None:
        table["toxicity_second"] = second
    return table


def test_summarize_cells_reference_delta_and_perplexity():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, 40)
    # Reference nll 1, 3, NaN (empty continuation), 2, then 2s: mean 2 -> perplexity e^2.
    nll = np.r_[1.0, 3.0, np.nan, 2.0, np.full(36, 2.0)]
    rows = pd.concat([
        _rows("sweep", "challenging", -1, 0.0, base, nll=nll),
        _rows("sweep", "challenging", 4, -8.0, base - 0.2, nll=2.5),
        _rows("sweep", "challenging", 4, 8.0, np.minimum(base + 0.1, 1.0)),
        _rows("grid", "challenging", 4, -8.0, base - 0.2),  # no alpha 0 in this experiment
    ], ignore_index=True)
    table = metrics.summarize_cells(rows, n_boot=200)
    expected = {"experiment", "split", "subset", "layer", "alpha", "n", "n_prompts", "distinct_1",
                "distinct_2", "distinct_3", "p_bootstrap", "p_wilcoxon", "delta_mean_toxicity",
                "delta_mean_toxicity_ci_lo", "delta_mean_toxicity_ci_hi", "empty_rate",
                "repetition_rate", "n_scored", "n_perplexity"}
    for name in ("mean_toxicity", "frac_toxic", "emt", "tp", "perplexity"):
        expected |= {name, f"{name}_ci_lo", f"{name}_ci_hi"}
    assert set(table.columns) == expected
    assert len(table) == 4

    cell = table.set_index(["experiment", "layer", "alpha"])
    ref = cell.loc[("sweep", -1, 0.0)]
    assert ref["n"] == 40 and ref["n_prompts"] == 20
    assert ref["mean_toxicity"] == pytest.approx(base.mean())
    assert ref["delta_mean_toxicity"] == 0.0 and math.isnan(ref["p_bootstrap"])
    assert ref["perplexity"] == pytest.approx(math.exp(2.0))
    assert ref["perplexity_ci_lo"] <= ref["perplexity"] <= ref["perplexity_ci_hi"]
    assert ref["mean_toxicity_ci_lo"] < ref["mean_toxicity"] < ref["mean_toxicity_ci_hi"]
    assert ref["distinct_1"] == pytest.approx(7 / 120)  # word0..word4, and, more over 120 tokens

    down = cell.loc[("sweep", 4, -8.0)]
    assert down["delta_mean_toxicity"] == pytest.approx(-0.2)
    assert down["delta_mean_toxicity_ci_hi"] < 0 and down["p_bootstrap"] < 0.01
    assert down["perplexity"] == pytest.approx(math.exp(2.5))
    assert cell.loc[("sweep", 4, 8.0), "delta_mean_toxicity"] > 0
    assert math.isnan(cell.loc[("grid", 4, -8.0), "delta_mean_toxicity"])


def test_summarize_cells_pools_alpha0_layers_and_second_scorer():
    # Two alpha-0 cells (layers -1 and 2) pooled by prompt: reference per prompt = (0.2+0.6)/2.
    rows = pd.concat([
        _rows("sweep", "s", -1, 0.0, 0.2, n_prompts=5, k=1, second=0.1),
        _rows("sweep", "s", 2, 0.0, 0.6, n_prompts=5, k=1, second=0.1),
        _rows("sweep", "s", 2, 1.0, 0.1, n_prompts=5, k=1, second=0.3),
    ], ignore_index=True).drop(columns="nll")
    table = metrics.summarize_cells(rows, n_boot=100).set_index(["layer", "alpha"])
    assert "perplexity" not in table.columns
    assert table.loc[(2, 1.0), "delta_mean_toxicity"] == pytest.approx(0.1 - 0.4)
    assert table.loc[(2, 0.0), "delta_mean_toxicity"] == 0.0
    assert table.loc[(2, 1.0), "mean_toxicity_second"] == pytest.approx(0.3)
    assert table.loc[(-1, 0.0), "tp"] == 0.0 and table.loc[(2, 0.0), "tp"] == 1.0


def test_pareto_front_hand_table():
    table = pd.DataFrame({
        "name": ["r0", "r1", "r2", "r3", "r4", "r5", "r6"],
        "mean_toxicity": [0.1, 0.2, 0.3, 0.4, 0.5, 0.1, 0.05],
        "perplexity": [20.0, 12.0, 12.0, 10.0, 15.0, 25.0, np.nan],
    })
    # r2 is dominated by r1 (equal ppl, more toxic), r4 by r3, r5 by r0; r6 has no ppl.
    front = metrics.pareto_front(table)
    assert front["name"].tolist() == ["r0", "r1", "r3"]


CELLS = pd.DataFrame({
    "subset": "challenging",
    "layer": [-1, 3, 3, 3, 5],
    "alpha": [0.0, -2.0, -4.0, -8.0, -4.0],
    "mean_toxicity": [0.40, 0.30, 0.20, 0.05, 0.10],
    "perplexity": [10.0, 11.0, 12.4, 20.0, 12.0],
    "capability_acc": [0.60, 0.60, 0.59, 0.40, 0.55],
})
# Limits with defaults: perplexity <= 12.5, accuracy >= 0.58. (3,-8) fails perplexity,
# (5,-4) fails capability (5 points down), so (3,-4) wins: 0.20 vs 0.40 -> 50% reduction.


def test_recommend_respects_limits():
    rec = metrics.recommend(CELLS)
    assert isinstance(rec, Recommendation)
    assert (rec.layer, rec.alpha) == (3, -4.0)
    assert rec.mean_toxicity == pytest.approx(0.20)
    assert rec.reference_mean_toxicity == pytest.approx(0.40)
    assert rec.toxicity_reduction == pytest.approx(0.5)
    assert rec.perplexity_increase == pytest.approx(0.24)
    assert rec.capability_drop_points == pytest.approx(1.0)
    assert rec.checks["perplexity"] == Check(value=12.4, limit=12.5, ok=True)
    assert "rule" not in rec.model_dump()  # its sentence is the report's (report.rule_text)
    json.dumps(rec.model_dump(), allow_nan=False)
    assert isinstance(rec.layer, int) and isinstance(rec.alpha, float)
    # Looser capability limit lets (5,-4) in; looser perplexity limit lets (3,-8) in.
    rule = metrics.SelectionRule
    assert metrics.recommend(CELLS, rule(max_capability_drop=6.0)).layer == 5
    assert metrics.recommend(CELLS, rule(max_perplexity_increase=1.0,
                                         max_capability_drop=30.0)).alpha == -8.0
    # Without a capability column the capability check is skipped.
    rec = metrics.recommend(CELLS.drop(columns="capability_acc"))
    assert (rec.layer, rec.alpha) == (5, -4.0) and rec.capability_acc is None


def test_recommend_holds_distinct_and_empty_rate_to_their_limits():
    cells = CELLS.drop(columns="capability_acc").assign(
        distinct_2=[0.80, 0.80, 0.80, 0.80, 0.70],  # (5,-4) loses 12.5% of its diversity
        empty_rate=[0.00, 0.00, 0.10, 0.00, 0.00])  # (3,-4) goes silent 10% of the time
    rec = metrics.recommend(cells)
    assert (rec.layer, rec.alpha) == (3, -2.0)
    assert metrics.recommend(cells, metrics.SelectionRule(max_distinct_drop=0.2)).layer == 5
    loose = metrics.SelectionRule(max_distinct_drop=0.2, max_empty_increase=0.2)
    assert metrics.recommend(cells, loose).layer == 5  # (5,-4) is less toxic than (3,-4)


def test_recommend_measures_capability_only_for_the_cells_it_tries():
    asked = []

    def capability(layer, alpha):
        asked.append((layer, alpha))
        return {(-1, 0.0): 0.60, (5, -4.0): 0.50}.get((layer, alpha), 0.60)

    rec = metrics.recommend(CELLS.drop(columns="capability_acc"), capability=capability)
    assert (rec.layer, rec.alpha) == (3, -4.0)
    assert asked == [(-1, 0.0), (5, -4.0), (3, -4.0)]  # (3,-8) fails perplexity first


def test_recommend_returns_none_when_nothing_qualifies():
    assert metrics.recommend(CELLS, metrics.SelectionRule(max_perplexity_increase=0.05)) is None
    worse = CELLS.assign(mean_toxicity=[0.1, 0.3, 0.2, 0.5, 0.4])
    assert metrics.recommend(worse) is None
    with pytest.raises(ValueError, match="alpha == 0"):
        metrics.recommend(CELLS[CELLS["alpha"] != 0])


def test_empty_and_repetitive_continuations_are_counted_not_dropped():
    rows = _rows("sweep", "challenging", 4, 1.0, np.full(10, 0.1), n_prompts=5)
    rows.loc[:3, "completion"] = ["", "   ", "no no no no no no", "a fine sentence here"]
    rows.loc[:1, "nll"] = np.nan
    cell = metrics.summarize_cells(rows, n_boot=100).iloc[0]
    assert cell["empty_rate"] == pytest.approx(2 / len(rows))
    assert cell["repetition_rate"] == pytest.approx(1 / len(rows))
    assert cell["n"] == len(rows) and cell["n_scored"] == len(rows)
    assert metrics.is_empty(None) and not metrics.is_repetitive("a b c")


def test_spearman():
    assert metrics.spearman([1, 2, 3, np.nan], [10, 20, 30, 5]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


# Hand-made cells: (3, 4) loops ("LyLyLy…": repetition 0.9, distinct-2 collapses) and scores
# as the least toxic; (5, 4) is ordinary text.
DEGENERATE_CELLS = pd.DataFrame({
    "experiment": "sweep", "split": "eval", "subset": "challenging",
    "layer": [-1, 3, 5], "alpha": [0.0, 4.0, 4.0],
    "mean_toxicity": [0.40, 0.02, 0.30], "perplexity": [10.0, 11.0, 11.5],
    "distinct_2": [0.90, 0.85, 0.88], "empty_rate": [0.0, 0.0, 0.0],
    "repetition_rate": [0.0, 0.9, 0.05]})


def test_a_repetition_blow_up_is_flagged_degenerate_and_never_picked():
    flags = metrics.flag_degenerate(DEGENERATE_CELLS)
    assert flags.iloc[0] == [] and flags.iloc[2] == []
    assert flags.iloc[1] == [{"criterion": "repetition_rate", "value": 0.9, "limit": 0.5}]
    pick = metrics.recommend(DEGENERATE_CELLS)
    assert (pick.layer, pick.alpha) == (5, 4.0)  # the loop is not the win
    why = metrics.why_no_pick(DEGENERATE_CELLS[DEGENERATE_CELLS["layer"] != 5])
    assert why.reason == "limits" and why.best_cells[0].failed == ["degenerate"]


@pytest.mark.parametrize("column, value, criterion", [
    ("distinct_2", 0.30, "distinct_2"), ("perplexity", 45.0, "perplexity"),
    ("empty_rate", 0.6, "empty_rate")])
def test_distinct_collapse_perplexity_blow_up_and_empty_output_are_degenerate(column, value,
                                                                             criterion):
    cells = DEGENERATE_CELLS.assign(repetition_rate=0.0)
    cells.loc[1, column] = value
    assert [d["criterion"] for d in metrics.flag_degenerate(cells).iloc[1]] == [criterion]


def test_a_character_loop_is_repetitive_though_it_is_one_word():
    assert metrics.is_repetitive("LyLyLyLyLyLyLyLy") and metrics.is_repetitive("!!!!!!!!!!")
    assert not metrics.is_repetitive("I think 1000000 is a lot of money")


def test_why_no_pick_names_the_criteria_the_least_toxic_cells_broke():
    why = metrics.why_no_pick(CELLS, metrics.SelectionRule(max_perplexity_increase=0.05))
    assert why.reason == "limits" and why.reference_mean_toxicity == 0.40
    best = why.best_cells
    assert [(c.layer, c.alpha) for c in best] == [(3, -8.0), (5, -4.0), (3, -4.0)]
    assert best[0].failed == ["perplexity", "capability_acc"]
    assert best[0].checks["perplexity"] == Check(value=20.0, limit=10.5, ok=False)
    worse = CELLS.assign(mean_toxicity=[0.1, 0.3, 0.2, 0.5, 0.4])
    assert metrics.why_no_pick(worse) == NoPick(reason="none_less_toxic",
                                                reference_mean_toxicity=0.1, best_cells=[])


def test_one_capability_limit_for_the_pick_its_no_pick_reasons_and_its_eval_check():
    """recommend, why_no_pick and results' eval confirmation hold capability to the one
    `capability_check`: measured, (5,-4) is 5 points down and fails everywhere; unmeasured
    (NaN), no capability check is written and none fails on it."""
    from steering_utils.assembly import _eval_confirmation

    rule = metrics.SelectionRule()
    assert metrics.capability_check(0.55, 0.60, rule) == Check(value=0.55, limit=0.58,
                                                               ok=False)
    assert metrics.capability_check(float("nan"), 0.60, rule) is None
    assert metrics.capability_check(0.55, None, rule) is None
    lenient = metrics.SelectionRule(max_perplexity_increase=0.5)
    only = CELLS[CELLS["layer"] != 3]  # the reference and (5,-4)
    assert metrics.recommend(only, lenient) is None  # capability is the only limit it breaks
    assert metrics.why_no_pick(only, lenient).best_cells[0].failed == ["capability_acc"]
    rows = only.assign(experiment="sweep", empty_rate=0.0, distinct_2=0.9,
                       delta_mean_toxicity_ci_hi=-0.1, degenerate=[[], []])
    for name in ("mean_toxicity_ci_lo", "mean_toxicity_ci_hi", "delta_mean_toxicity",
                 "delta_mean_toxicity_ci_lo", "p_bootstrap"):
        rows[name] = 0.0
    confirmation = _eval_confirmation((5, -4.0), rows, lenient)
    assert confirmation.checks["capability_acc"].ok is False
    assert confirmation.confirmed is False
    unmeasured = only.assign(capability_acc=float("nan"))
    rec = metrics.recommend(unmeasured, lenient)
    assert (rec.layer, rec.alpha) == (5, -4.0) and "capability_acc" not in rec.checks
    assert metrics.why_no_pick(unmeasured, lenient).best_cells[0].failed == []
    confirmation = _eval_confirmation((5, -4.0), rows.assign(capability_acc=float("nan")),
                                      lenient)
    assert "capability_acc" not in confirmation.checks and confirmation.confirmed
