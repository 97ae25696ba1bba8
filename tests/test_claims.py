"""claims.py: every comparison's verdict from paired rows, and the eval criteria's statuses.

Hand-made rows with known answers; one check of a real run reuses the session's smoke run.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd
import pytest

from steering_utils import claims, metrics, power
from steering_utils.metrics import SelectionRule
from steering_utils.stages import UNSTEERED_LAYER

N = 60


def _rows(layer: int, alpha: float, toxicity, nll, subset: str = "challenging",
          samples: int = 2, prefix: str = "p", completion: str = "some words here") -> pd.DataFrame:
    toxicity = np.broadcast_to(np.asarray(toxicity, dtype=float), (N,))
    nll = np.broadcast_to(np.asarray(nll, dtype=float), (N,))
    return pd.DataFrame([
        {"prompt_id": f"{prefix}{i:03d}", "subset": subset, "layer": layer, "alpha": alpha,
         "sample": s, "toxicity": float(toxicity[i]), "toxicity_second": float(toxicity[i]) / 2,
         "nll": float(nll[i]), "completion": completion, "split": "eval",
         "experiment": "sweep", "direction": "none" if alpha == 0 else "caa"}
        for i in range(N) for s in range(samples)])


def _sweep(benign_rise: float) -> pd.DataFrame:
    """Challenging: CAA at (3, 1.0) lowers toxicity by 0.2 on every prompt, perplexity flat.
    Benign: perplexity x (1 + benign_rise) on every prompt (with a little spread)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, N)
    nll = rng.uniform(1.5, 2.5, N)
    jitter = rng.normal(0, 0.01, N)
    return pd.concat([
        _rows(UNSTEERED_LAYER, 0.0, base, nll),
        _rows(3, 1.0, base - 0.2 + jitter, nll + jitter),
        _rows(UNSTEERED_LAYER, 0.0, 0.01, nll, "benign", prefix="b"),
        _rows(3, 1.0, 0.01, nll + math.log1p(benign_rise) + jitter, "benign", prefix="b")],
        ignore_index=True)


def test_a_planted_reduction_is_shown_with_its_known_size_and_a_rise_is_not():
    by_name = claims.eval_verdicts(_sweep(0.28), 3, 1.0, metrics.SelectionRule(), 500, 0)
    tox = by_name["toxicity"]
    assert tox.shown and tox.n == N and tox.estimate == pytest.approx(-0.2, abs=0.005)
    assert tox.ci_hi < 0
    benign = by_name["benign_perplexity"]
    assert benign.estimate == pytest.approx(math.log(1.28), abs=0.005)
    assert benign.limit == pytest.approx(math.log(1.25)) and benign.decidable
    # Expected "lower"; the second scorer sees half the drop, also shown.
    assert by_name["toxicity_second"].estimate == pytest.approx(-0.1, abs=0.005)


def test_every_verdict_that_says_shown_has_a_ci_clear_of_zero():
    rng = np.random.default_rng(3)
    for scale in (0.0, 0.05, 0.3):
        for expect in ("lower", "either"):
            v = power.verdict("x", "y", rng.normal(-scale, 0.3, 25), expect=expect)
            clear = v.ci_hi < 0 or (expect == "either" and v.ci_lo > 0)
            assert v.shown == clear
            assert (v.mde is not None) and (v.shown or "smallest effect" in v.summary)


def test_a_ci_wholly_past_the_limit_is_decidable_whatever_the_mde():
    # 6 prompts, perplexity up ~+80% each: the MDE is large but the CI is far past log 1.25.
    v = power.verdict("ppl", "log perplexity", [0.5, 0.7, 0.6, 0.4, 0.9, 0.55],
                      expect="either", limit=math.log(1.25))
    assert v.ci_lo > math.log(1.25) and v.decidable
    noisy = power.verdict("ppl", "log perplexity", [0.5, -0.4, 0.9, -0.6, 0.1, 0.2],
                          expect="either", limit=math.log(1.25))
    assert noisy.mde > math.log(1.25) and noisy.decidable is False


def _capability(n_items: int, drop_every: int) -> pd.DataFrame:
    """Unsteered right on every item; CAA at (3, 1.0) wrong on every drop_every-th."""
    items = np.arange(n_items)
    base = {"split": "eval", "item": items, "chance": 0.5, "task": "piqa"}
    return pd.concat([
        pd.DataFrame({**base, "direction": "none", "layer": UNSTEERED_LAYER, "alpha": 0.0,
                      "correct": True}),
        pd.DataFrame({**base, "direction": "caa", "layer": 3, "alpha": 1.0,
                      "correct": items % drop_every != 0})], ignore_index=True)


def test_forty_items_cannot_decide_a_two_point_capability_limit_and_two_thousand_can():
    rule = metrics.SelectionRule(max_capability_drop=2.0)
    few = claims.capability_verdict(_capability(40, 20), 3, 1.0, rule, 500, 0)
    assert few.n == 40 and few.estimate == pytest.approx(-5.0) and few.decidable is False
    assert "too few items to decide the limit 2" in few.summary
    many = claims.capability_verdict(_capability(2000, 200), 3, 1.0, rule, 500, 0)
    assert many.estimate == pytest.approx(-0.5) and many.decidable is True


def _confirmation_cells(benign_rise: float) -> pd.DataFrame:
    cells = metrics.summarize_cells(_sweep(benign_rise), n_boot=200)
    cells["capability_acc"] = np.where(cells["alpha"] == 0, 1.0, 0.995)
    cells["degenerate"] = metrics.flag_degenerate(cells)
    return cells


def test_eval_does_not_confirm_while_a_criterion_is_undecidable_at_this_n():
    from steering_utils.assembly import _eval_confirmation

    rule = metrics.SelectionRule(max_capability_drop=2.0)
    sweep, cells = _sweep(0.10), _confirmation_cells(0.10)
    verdicts = claims.eval_verdicts(sweep, 3, 1.0, rule, 500, 0)
    # Capability within its 2-point limit (point drop 0.5), but on 40 items: undecidable.
    verdicts["capability"] = claims.capability_verdict(_capability(40, 200), 3, 1.0, rule, 500,
                                                       0)
    out = _eval_confirmation((3, 1.0), cells, rule, verdicts)
    assert out.toxicity_reduced and out.checks["capability_acc"].ok
    assert out.criteria["capability_acc"] == "undecidable"
    assert out.criteria["benign_perplexity"] == "pass"
    assert out.confirmed is False
    # The same with 2000 items: every criterion a decidable pass, confirmed.
    verdicts["capability"] = claims.capability_verdict(_capability(2000, 200), 3, 1.0, rule,
                                                       500, 0)
    out = _eval_confirmation((3, 1.0), cells, rule, verdicts)
    assert set(out.criteria.values()) == {"pass"} and out.confirmed is True


def test_a_benign_perplexity_rise_over_the_limit_fails_and_says_so():
    from steering_utils.assembly import _eval_confirmation

    rule = metrics.SelectionRule()
    verdicts = claims.eval_verdicts(_sweep(0.28), 3, 1.0, rule, 500, 0)
    out = _eval_confirmation((3, 1.0), _confirmation_cells(0.28), rule, verdicts)
    assert out.criteria["benign_perplexity"] == "fail" and not out.confirmed
    assert claims.criterion_status(True, verdicts["benign_perplexity"]) == "pass"


def test_the_control_verdict_is_the_control_comparisons_paired_test():
    from steering_utils.sweep import control_comparison

    sweep = _sweep(0.0)
    rng = np.random.default_rng(5)
    control = pd.concat([
        _rows(3, 1.0, rng.uniform(0.2, 0.6, N), 2.0, samples=1).assign(direction="random-0"),
        _rows(3, 1.0, rng.uniform(0.2, 0.6, N), 2.0, samples=1).assign(direction="random-1")],
        ignore_index=True)
    v = claims.control_verdict(sweep, control, 3, 1.0, 400, 7)
    [c] = control_comparison(sweep, control, 3, 0.5, 400, 7)
    assert v.estimate == pytest.approx(c.diff) and v.n == c.n_prompts == N
    assert (v.ci_lo, v.ci_hi) == pytest.approx((c.diff_ci_lo, c.diff_ci_hi))
    assert "2 random direction(s)" in v.claim


def test_a_planted_direction_ranks_first_and_a_small_null_cannot_show_anything():
    from steering_utils.specificity import null_family

    rng = np.random.default_rng(0)
    strong = null_family("isotropic", -3.0, rng.normal(0, 0.5, 199))
    v = power.rank_verdict("CAA vs isotropic", "Δ", strong.caa_delta, strong.rank, strong.n,
                           strong.p_value, strong.null_sd, strong.null_q05)
    assert v.shown and v.rank == 1 and v.p_value == pytest.approx(1 / 200) and v.decidable
    small = null_family("shuffled", -3.0, rng.normal(0, 0.5, 10))
    v = power.rank_verdict("CAA vs shuffled", "Δ", small.caa_delta, small.rank, small.n,
                           small.p_value)
    assert v.rank == 1 and not v.shown and v.decidable is False
    assert v.min_p == pytest.approx(1 / 11) and "too few null directions" in v.summary
    middling = null_family("covariance", -0.2, rng.normal(0, 0.5, 99))
    v = power.rank_verdict("CAA vs covariance", "Δ", middling.caa_delta, middling.rank,
                           middling.n, middling.p_value, null_q05=middling.null_q05)
    assert not v.shown and v.rank > 5 and "the null's 5%" in v.summary


def test_the_layer_verdict_compares_the_chosen_layer_with_the_next_best():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.3, 0.7, N)
    grid = pd.concat([_rows(UNSTEERED_LAYER, 0.0, base, 2.0, samples=1),
                      _rows(3, 1.0, base - 0.1, 2.0, samples=1),
                      _rows(5, 1.0, base - 0.3, 2.0, samples=1),
                      _rows(5, 2.0, base - 0.05, 2.0, samples=1)], ignore_index=True)
    v = claims.layer_verdict(grid, 3, 1.0, 300, 0)
    assert "layer 3 (α = 1) vs layer 5 (α = 1)" in v.claim
    assert v.estimate == pytest.approx(0.2) and v.shown
    assert claims.layer_verdict(grid[grid["layer"] != 5], 3, 1.0, 300, 0) is None
    # With the rule: layer 5's least toxic cell breaks the perplexity limit (+25%), so the
    # cell that chose layer 3 over it is layer 5's next one within the limits.
    wrecked = pd.concat([grid[grid["layer"] != 5], _rows(5, 1.0, base - 0.3, 3.0, samples=1),
                         _rows(5, 2.0, base - 0.05, 2.0, samples=1)], ignore_index=True)
    rule = SelectionRule()
    v = claims.layer_verdict(wrecked, 3, 1.0, 300, 0, rule)
    assert "vs layer 5 (α = 2), the next best within the limits of the rule" in v.claim
    assert v.estimate == pytest.approx(-0.05) and v.shown
    # Capability is one of the limits: a runner-up that lost 10 PIQA points on dev is not one.
    items = pd.DataFrame([{"split": "dev", "direction": d, "layer": layer, "alpha": a,
                           "item": i, "correct": float(i < k)}
                          for d, layer, a, k in (("none", UNSTEERED_LAYER, 0.0, 6),
                                                 ("caa", 5, 2.0, 5)) for i in range(10)])
    v = claims.layer_verdict(wrecked, 3, 1.0, 300, 0, rule, 0.5, claims.dev_capability(items))
    assert "vs layer 5 (α = 1), no other layer within the limits of the rule" in v.claim
    none_within = wrecked[~((wrecked["layer"] == 5) & (wrecked["alpha"] == 2.0))]
    v = claims.layer_verdict(none_within, 3, 1.0, 300, 0, rule)
    assert "vs layer 5 (α = 1), no other layer within the limits of the rule" in v.claim


# --- a real run (the session's smoke run; never run again here) --------------------------

def check_run_verdicts(report_dir, sweep: pd.DataFrame) -> None:
    """The verdicts of a finished run's results and report: each consistent with its CI,
    its n, the rows it came from and the cells; every claim in the report's table."""
    from steering_utils.results import load_results

    results = load_results(report_dir / "experiment_results.json")
    assert results.verdicts, "a run's results carry its verdicts"
    names = {v.name for v in results.verdicts}
    assert {"toxicity", "perplexity", "benign_perplexity"} <= names
    for v in results.verdicts:
        if v.rank is not None:
            assert v.shown == (v.p_value < 0.05) and v.min_p == pytest.approx(1 / (v.n + 1))
            continue
        if v.shown:
            assert v.ci_hi < 0 if v.expect == "lower" else (v.ci_hi < 0 or v.ci_lo > 0)
        else:
            assert v.mde is not None or v.n < 2
        if v.limit is not None and v.decidable:
            assert (v.mde is not None and v.mde <= abs(v.limit)) or v.ci_lo > abs(v.limit) \
                or v.ci_hi < -abs(v.limit) or -abs(v.limit) < v.ci_lo <= v.ci_hi < abs(v.limit)
    tox = next(v for v in results.verdicts if v.name == "toxicity")
    cell = next(c for c in results.cells if c.experiment == "sweep"
                and c.subset == "challenging" and c.alpha != 0
                and f"layer {c.layer}, α = {c.alpha:g}" in tox.claim)
    # The same per-prompt differences the cell's paired interval resamples.
    assert tox.n == cell.n_prompts
    assert tox.estimate == pytest.approx(cell.delta_mean_toxicity)
    assert (tox.ci_lo, tox.ci_hi) == pytest.approx((cell.delta_mean_toxicity_ci_lo,
                                                     cell.delta_mean_toxicity_ci_hi))
    rows = sweep[sweep["subset"] == "challenging"]
    treated = rows[(rows["layer"] == cell.layer) & (rows["alpha"] == cell.alpha)]
    unsteered = rows[rows["alpha"] == 0]
    expected = (treated.groupby("prompt_id")["toxicity"].mean()
                - unsteered.groupby("prompt_id")["toxicity"].mean()).mean()
    assert tox.estimate == pytest.approx(expected)
    # Each method's pick vs unsteered: the method comparison's own paired difference.
    for m in (results.methods.methods if results.methods else []):
        v = next((v for v in results.verdicts if v.name == f"method_{m.method}"), None)
        if m.eval is None or m.method == "caa":
            continue
        assert (v.estimate, v.ci_lo, v.ci_hi) == pytest.approx(
            (m.eval.delta_mean_toxicity, m.eval.delta_mean_toxicity_ci_lo,
             m.eval.delta_mean_toxicity_ci_hi))
    c = results.confirmation
    if c is not None:
        assert c.confirmed == (c.toxicity_reduced and all(s == "pass"
                                                          for s in c.criteria.values()))
    page = (report_dir / "report.html").read_text()
    assert "Claims and their power" in page
    for v in results.verdicts:
        assert html.escape(v.claim) in page


@pytest.mark.slow
def test_the_smoke_runs_results_and_report_state_every_claim_with_its_power(smoke_run):
    work, _ = smoke_run
    sweep = pd.read_parquet(next((work / "runs" / "smoke" / "05_sweep").glob("*/sweep.parquet")))
    check_run_verdicts(work / "reports" / "smoke", sweep)
    record = json.loads((work / "reports" / "smoke" / "experiment_results.json").read_text())
    assert record["verdicts"][0]["summary"].startswith(("shown.", "not shown."))


# --- the report --------------------------------------------------------------------------

def _results(**changes):
    from results_fixture import make_results

    from steering_utils.results import validate_results

    doc = make_results()
    for key, value in changes.items():
        doc[key] = value
    return doc, validate_results


def test_the_report_shows_every_claim_with_its_power_as_escaped_text():
    from steering_utils.report import render_report

    doc, validate = _results()
    doc["verdicts"][1]["claim"] = "CAA vs <b>random</b> & co"
    page = render_report(validate(doc), [])
    table = page[page.index('id="claims"'):page.index('class="checks"')]
    assert "CAA vs &lt;b&gt;random&lt;/b&gt; &amp; co" in table and "<b>random</b>" not in table
    assert table.count("<tr title=") == len(doc["verdicts"])
    assert "not shown" in table and "MDE " in table and "not decidable at this n" in table
    # The estimate's interval is the verdict's own.
    v = doc["verdicts"][0]
    assert f"{v['ci_lo']:.3f}".replace("-", "−") in table


def test_the_headline_does_not_say_confirmed_while_a_criterion_is_undecidable():
    from steering_utils import report, report_text

    doc, validate = _results()
    c = doc["confirmation"]
    assert c["toxicity_reduced"] and c["checks"]["perplexity"]["ok"]
    c["checks"]["capability_acc"] = {"value": 0.6, "limit": 0.57, "ok": True}
    c["criteria"] = {"perplexity": "pass", "capability_acc": "undecidable"}
    c["confirmed"] = False
    doc["verdicts"] += [v.model_dump(mode="json") for v in
                        claims.specificity_verdicts(validate(doc).specificity)]
    results = validate(doc)
    headline = report_text.headline(results)
    # The fixture's shuffled null (50 directions) does not rank CAA below p = 0.05.
    assert "shuffled not shown (rank" in headline and "isotropic shown (rank 1 of 201" in headline
    assert "every criterion" not in headline
    assert "capability accuracy cannot be decided at this n (MDE" in headline
    assert "Less toxic than random directions of its norm at α = 2: not shown" in headline
    page = report.render_report(results, [])
    assert "undecidable at this n" in page[page.index('class="checks"'):]


def test_emt_and_tp_are_named_only_where_k_allows():
    from steering_utils.plots import plot_gehman_vs_alpha
    from steering_utils.report import render_report

    doc, validate = _results()
    page = render_report(validate(doc), [])
    assert '<th class="num">EMT</th>' in page and "Expected maximum toxicity (EMT)" in page
    for cell in doc["cells"]:
        cell["n"] = cell["n_prompts"]  # k = 1 everywhere
    doc["methods"]["samples_per_prompt"] = 1
    results = validate(doc)
    page = render_report(results, [])
    assert "EMT" not in page and "Expected maximum toxicity" not in page
    assert plot_gehman_vs_alpha(results) is None


def test_the_claims_table_has_one_row_per_verdict():
    from steering_utils.report_tables import claims_table

    doc, validate = _results()
    table = claims_table(validate(doc))
    assert len(table) == len(doc["verdicts"])
    assert table["ci_lo"].tolist() == [v["ci_lo"] for v in doc["verdicts"]]
