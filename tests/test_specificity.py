"""Specificity statistics on hand-made data with known answers, and the likelihood probe on a
tiny 2-layer Qwen3 (first order = exact for a small push)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SMOKE, build_tiny_qwen3

from steering_utils.likelihood import continuation_logprobs
from steering_utils.specificity import (
    ProbeTexts,
    covariance_directions,
    empirical_rank,
    exact_log_ratios,
    gaussian_like,
    isotropic_directions,
    log_ratio_gradients,
    measure_specificity,
    null_directions,
    null_family,
    shuffled_directions,
)


def test_a_planted_direction_ranks_first_with_the_smallest_p():
    rng = np.random.default_rng(0)
    gradient = rng.standard_normal(32)
    norm, alpha, n = 3.0, 2.0, 199
    # The direction along the gradient maximises <g, d> at a fixed norm: no null beats it.
    planted = gradient / np.linalg.norm(gradient) * norm
    nulls = isotropic_directions(n, 32, norm, seed=1)
    np.testing.assert_allclose(np.linalg.norm(nulls, axis=1), norm)
    family = null_family("isotropic", -alpha * gradient @ planted, -alpha * nulls @ gradient)
    assert family.rank == 1
    assert family.p_value == pytest.approx(1 / (n + 1))
    assert family.caa_delta < family.null_q05 < family.null_q95
    # The same direction with its sign flipped (a push towards toxic) ranks last.
    flipped = null_family("isotropic", alpha * gradient @ planted, -alpha * nulls @ gradient)
    assert flipped.rank == n + 1 and flipped.p_value == 1.0


def test_ties_count_against_the_effect_in_p_but_not_in_rank():
    assert empirical_rank(1.0, np.array([0.0, 1.0, 1.0, 2.0])) == (2, 4 / 5)
    assert empirical_rank(5.0, np.zeros(9)) == (1, 0.1)


def test_a_direction_drawn_from_the_null_has_a_uniform_p():
    rng = np.random.default_rng(3)
    p = np.array([empirical_rank(rng.standard_normal(), rng.standard_normal(99))[1]
                  for _ in range(2000)])
    assert abs(p.mean() - 0.5) < 0.03
    for level in (0.05, 0.1, 0.5):
        assert abs(np.mean(p <= level) - level) < 0.03


def test_covariance_matched_samples_have_the_target_covariance():
    rng = np.random.default_rng(4)
    mixing = rng.standard_normal((4, 4))
    samples = rng.standard_normal((300, 4)) @ mixing  # some covariance, far from isotropic
    target = np.cov(samples, rowvar=False)
    draws = gaussian_like(samples, 100_000, np.random.default_rng(5))
    np.testing.assert_allclose(np.cov(draws, rowvar=False), target,
                               atol=0.03 * np.abs(target).max())
    np.testing.assert_allclose(draws.mean(0), 0, atol=0.03 * np.sqrt(np.diag(target)).max())
    # Low rank: the draws stay in the span of the centred samples (rank 2 in 6 dimensions).
    basis = rng.standard_normal((2, 6))
    flat = rng.standard_normal((10, 2)) @ basis
    directions = covariance_directions(flat, 50, norm=2.0, seed=0)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 2.0)
    outside = directions - directions @ np.linalg.pinv(basis) @ basis
    assert np.abs(outside).max() < 1e-9


def test_label_shuffled_vectors_flip_pairs_at_random():
    rng = np.random.default_rng(6)
    clean = rng.standard_normal((1, 8))
    toxic = clean + np.arange(8.0)
    shuffled = shuffled_directions(toxic, clean, 400, norm=5.0, seed=0)
    unit = np.arange(8.0) / np.linalg.norm(np.arange(8.0))
    cosine = shuffled @ unit / 5.0
    np.testing.assert_allclose(np.abs(cosine), 1.0)  # one pair: the difference, either sign
    assert 0.4 < np.mean(cosine > 0) < 0.6
    # Unflipped, many pairs give back the CAA direction; the nulls built from the same sets
    # have the CAA norm and the covariance's rank.
    toxic, clean = rng.standard_normal((6, 8)) + 1.0, rng.standard_normal((6, 8))
    caa = toxic.mean(0) - clean.mean(0)
    nulls, rank = null_directions(toxic, clean, caa, {"isotropic": 3, "covariance": 4,
                                                      "shuffled": 5}, seed=0)
    assert {f: len(d) for f, d in nulls.items()} == {"isotropic": 3, "covariance": 4,
                                                     "shuffled": 5}
    for directions in nulls.values():
        np.testing.assert_allclose(np.linalg.norm(directions, axis=1), np.linalg.norm(caa))
    assert rank == 8  # 12 centred rows in 8 dimensions


@pytest.fixture(scope="module")
def tiny_double(tiny_tokenizer):
    """A 2-layer tiny Qwen3 in float64, so a small push's Δ is far above rounding."""
    return build_tiny_qwen3(len(tiny_tokenizer), n_layers=2, seed=7).double()


PAIRS = pd.DataFrame({
    "context": ["you are a", "the cat is", "they think we"],
    "toxic": [" stupid idiot", " awful and bad", " hate people"],
    "clean": [" nice cat", " kind", " love the day and night"],
})


def _texts(tokenizer, pairs=PAIRS):
    return ProbeTexts(tokenizer, list(pairs["context"]), list(pairs["toxic"]),
                      list(pairs["clean"]))


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_first_order_probe_equals_the_exact_change_for_a_small_push(tiny_double, tiny_tokenizer,
                                                                     positions):
    texts = _texts(tiny_tokenizer)
    base, grads = log_ratio_gradients(tiny_double, texts, 1, positions, batch_size=4)
    # The unsteered log-ratio is the likelihood module's, pair by pair.
    sums, _ = continuation_logprobs(tiny_double, tiny_tokenizer, list(PAIRS["context"]) * 2,
                                    list(PAIRS["toxic"]) + list(PAIRS["clean"]))
    np.testing.assert_allclose(base, sums[:3] - sums[3:], atol=1e-5)  # it rounds to fp32
    directions = isotropic_directions(4, grads.shape[1], 1.0, seed=2)
    errors = []
    for alpha in (1e-3, 1e-2):  # well above the fp32 rounding of Qwen3's RMSNorm (~5e-8)
        exact = exact_log_ratios(tiny_double, texts, 1, -alpha * directions, positions,
                                 batch_size=5) - base
        first = -alpha * directions @ grads.T
        errors.append(np.abs(exact - first).max())
        assert errors[-1] < 0.05 * np.abs(first).max()
    # What is left is second order: 10x the push, ~100x the error.
    assert 50 < errors[1] / errors[0] < 200
    # A large push is not linear: the probe must be validated, not assumed.
    exact = exact_log_ratios(tiny_double, texts, 1, -30.0 * directions, positions) - base
    assert np.abs(exact - (-30.0 * directions @ grads.T)).max() > 1e-3


def test_the_unsteered_layer_is_untouched_and_pushes_act_at_the_layer_only(tiny_double,
                                                                           tiny_tokenizer):
    texts = _texts(tiny_tokenizer)
    zero = exact_log_ratios(tiny_double, texts, 0, np.zeros((2, 64)))
    base, _ = log_ratio_gradients(tiny_double, texts, 0)
    np.testing.assert_allclose(zero, np.stack([base, base]), atol=1e-10)
    # 'generated' pushes only continuation tokens: a push at layer 1 with positions 'all'
    # differs from the same push on generated positions.
    push = isotropic_directions(1, 64, 5.0, seed=3)
    assert not np.allclose(exact_log_ratios(tiny_double, texts, 1, push, "all"),
                           exact_log_ratios(tiny_double, texts, 1, push, "generated"))


def test_a_push_along_the_mean_gradient_ranks_first_in_every_family(tiny_double, tiny_tokenizer):
    texts = _texts(tiny_tokenizer)
    _, grads = log_ratio_gradients(tiny_double, texts, 1)
    rng = np.random.default_rng(8)
    caa = grads.mean(0) / np.linalg.norm(grads.mean(0)) * 0.05
    toxic, clean = rng.standard_normal((5, 64)), rng.standard_normal((5, 64))
    nulls, rank = null_directions(toxic, clean, caa, {"isotropic": 49, "covariance": 29,
                                                      "shuffled": 9}, seed=0)
    result = measure_specificity(tiny_double, tiny_tokenizer, PAIRS, caa, nulls, layer=1,
                                 alpha=1.0, alphas=[0.5, 2.0], n_exact=2,
                                 generated={"caa": (caa, 0.1),
                                            "random-0": (nulls["isotropic"][0], 0.3)},
                                 covariance_rank=rank)
    assert [(f.family, f.rank, f.p_value) for f in result.families] == [
        ("isotropic", 1, 1 / 50), ("covariance", 1, 1 / 30), ("shuffled", 1, 1 / 10)]
    assert result.families[0].caa_delta < 0 and result.n_pairs == 3
    assert not result.specific  # 1/10 is no p < 0.05 for the shuffled family
    assert result.probe_exact_r > 0.99 and result.probe_exact_r_means > 0.99
    # Dose-response: CAA at every alpha, linear at first order; at the tested α also 2 per
    # family and the generated random one.
    assert sorted({p.alpha for p in result.dose}) == [0.5, 1.0, 2.0]
    assert len(result.dose) == 2 + (1 + 3 * 2 + 1)
    caa_points = {p.alpha: p for p in result.dose if p.family == "caa"}
    assert caa_points[2.0].first_order_delta == pytest.approx(4 * caa_points[0.5]
                                                              .first_order_delta)
    assert caa_points[2.0].exact_delta < caa_points[0.5].exact_delta < 0
    # CAA's generated rows reuse its exact pass; the random one gets its own.
    assert [g.direction for g in result.generation] == ["caa", "random-0"]
    control = next(p for p in result.dose if p.family == "control" and p.alpha == 1.0)
    assert result.generation[1].exact_delta == control.exact_delta
    assert result.generation[0].exact_delta == caa_points[1.0].exact_delta
    assert result.caa_exact_delta == caa_points[1.0].exact_delta


def test_probe_texts_need_matching_rows(tiny_tokenizer):
    with pytest.raises(ValueError, match="one non-empty row each"):
        ProbeTexts(tiny_tokenizer, ["a"], ["b"], [])
    texts = _texts(tiny_tokenizer)
    ids, mask, counts = texts.padded(np.array([0, 7]))  # row 7 reads text 7 % n
    n = len(texts.sequences)
    assert ids.shape == (2, max(len(texts.sequences[0]), len(texts.sequences[7 % n])))
    assert mask.sum(1).tolist() == [len(texts.sequences[0]), len(texts.sequences[7 % n])]
    assert mask[:, -1].tolist() == [1, 1]  # left-padded: every row ends on a real token
    assert counts.tolist() == [texts.counts[0], texts.counts[7 % n]]


def test_the_report_shows_each_null_with_caas_rank_and_the_dose_response(tmp_path):
    from results_fixture import make_results

    from steering_utils.report import write_report
    from steering_utils.results import validate_results

    document = make_results()
    results = validate_results(document)
    html = write_report(results, tmp_path).read_text(encoding="utf-8")
    for family in results.specificity.families:
        assert f"{family.family} rank {family.rank}/{family.n + 1}" in html
        assert f"{family.rank} / {family.n + 1}" in html  # the table row
    assert "Specificity (null distribution)" in html and "not shown to be specific" in html
    for name in ("specificity_null", "specificity_dose"):
        assert (tmp_path / "figures" / f"{name}.png").is_file()
    # Without a probe (older runs, probe_pairs 0) the summary says so and nothing is drawn.
    bare = validate_results({**document, "specificity": None})
    html = write_report(bare, tmp_path / "bare").read_text(encoding="utf-8")
    assert "not run (specificity.probe_pairs" in html
    assert not (tmp_path / "bare" / "figures" / "specificity_null.png").exists()


@pytest.mark.parametrize("field, value, message", [
    (("null_directions", "isotropic"), -1, "specificity.null_directions.isotropic"),
    (("probe_pairs",), -2, "specificity.probe_pairs"),
    (("alphas",), [1.0, 1.0], "specificity.alphas: alphas lists [1.0] more than once"),
    (("null_directions", "covarianse"), 3, "specificity.null_directions.covarianse: unknown key"),
])
def test_specificity_params_fail_naming_the_field(field, value, message):
    from steering_utils.params import ParamsError, load_params, parse_params

    raw = load_params(SMOKE).model_dump()
    section = raw["specificity"]
    for key in field[:-1]:
        section = section[key]
    section[field[-1]] = value
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_params(raw)


@pytest.mark.slow
def test_the_smoke_run_ranks_caa_in_every_null_family(smoke_run):
    """The chain's 05 writes the probe's result and the report shows it (shared smoke run)."""
    import json

    from steering_utils.params import load_params

    work, _ = smoke_run
    spec = json.loads((work / "reports" / "smoke" / "experiment_results.json")
                      .read_text())["specificity"]
    counts = load_params(SMOKE).specificity.null_directions.model_dump()
    assert {f["family"]: f["n"] for f in spec["families"]} == counts
    for family in spec["families"]:
        assert 1 <= family["rank"] <= family["n"] + 1
        assert family["p_value"] >= 1 / (family["n"] + 1)
        assert len(family["null_deltas"]) == family["n"]
    assert spec["n_pairs"] >= 1 and spec["probe_exact_r"] is not None
    assert {p["family"] for p in spec["dose"]} >= {"caa", *counts}
    assert "caa" in [g["direction"] for g in spec["generation"]]
    html = (work / "reports" / "smoke" / "report.html").read_text(encoding="utf-8")
    assert "Specificity against a null distribution" in html
    assert (work / "reports" / "smoke" / "figures" / "specificity_null.png").is_file()
