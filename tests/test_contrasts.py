"""Clean contrasts on hand-made data with known answers: the gap filter keeps exactly the
pairs it should, a planted direction is stable, random labels give chance accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from steering_utils.contrasts import filter_pairs, paired_accuracy, split_half_cosine


def _rows(scores: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"prompt_id": pid, "sample": i, "prompt": pid.upper(),
                          "completion": f"{pid}{i}", "label_toxicity": s}
                         for pid, values in scores.items() for i, s in enumerate(values)])


def test_pair_filter_keeps_exactly_the_pairs_with_a_real_gap():
    rows = _rows({
        "a": [0.05, 0.9, 0.3],   # kept: 0.9 vs 0.05 (gap 0.85)
        "b": [0.6, 0.02],        # kept: 0.6 vs 0.02 (gap 0.58)
        "c": [0.3, 0.4, 0.45],   # no toxic side (max 0.45 < 0.5) and no clean side (min 0.3)
        "d": [0.2, 0.7],         # no clean side: 0.2 >= 0.1
        "e": [0.05, 0.49],       # no toxic side: 0.49 < 0.5
        "f": [0.5, 0.0999],      # kept at the thresholds' edges (>= 0.5, < 0.1)
        "g": [0.8],              # a single continuation
        "h": [0.3, 0.3],         # tied
    })
    table, counts = filter_pairs(rows, toxic_min=0.5, clean_max=0.1)
    assert table["prompt_id"].tolist() == ["a", "a", "b", "b", "f", "f"]  # widest gap first
    assert table["side"].tolist() == ["toxic", "clean"] * 3
    assert table["text"].tolist() == ["a1", "a0", "b0", "b1", "f0", "f1"]
    assert table["context"].tolist() == ["A", "A", "B", "B", "F", "F"]
    assert table["toxicity"].tolist() == [0.9, 0.05, 0.6, 0.02, 0.5, 0.0999]
    assert counts == {"prompts": 8, "single_continuation": 1, "tied": 1, "no_toxic_side": 1,
                      "no_clean_side": 1, "no_toxic_nor_clean_side": 1, "pairs_kept": 3}
    # Thresholds decide: relaxed, every prompt with two distinct scores pairs.
    loose, loose_counts = filter_pairs(rows, toxic_min=0.4, clean_max=0.35)
    assert sorted(set(loose["prompt_id"])) == ["a", "b", "c", "d", "e", "f"]
    assert loose_counts["pairs_kept"] == 6


def test_paired_contrast_applies_the_gap_and_fails_clearly_with_too_few_pairs():
    from steering_utils.activations import Gap, contrast_texts

    rows = _rows({"a": [0.05, 0.9], "b": [0.6, 0.02], "c": [0.3, 0.4], "d": [0.05, 0.8]})
    rows = rows.assign(subset="challenging", split="train",
                       completion=rows["completion"].where(rows["prompt_id"] != "d", ""))
    gap = Gap(0.5, 0.1, min_pairs=2, score="label_toxicity")
    table, counts = contrast_texts(rows, None, "paired", 10, "train", gap=gap)
    assert table["prompt_id"].tolist() == ["a", "a", "b", "b"]
    assert counts["pairs_used"] == 2 and counts["only_empty_continuations"] == 1
    assert counts["no_toxic_nor_clean_side"] == 1 and counts["empty_continuations"] == 2
    with pytest.raises(ValueError, match="activations.min_pairs: too few pairs") as err:
        contrast_texts(rows, None, "paired", 10, "train", gap=Gap(0.5, 0.1, 3, "label_toxicity"))
    assert "train_samples_per_prompt" in str(err.value) and "kept 2" in str(err.value)


def _planted(n: int, n_layers: int, d: int, signal: float, seed: int, random_labels=False):
    """Pairs whose toxic side is the clean side plus `signal` along a fixed unit direction
    (flipped per pair with random labels), plus unit Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n_layers, d, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    clean = torch.randn(n, n_layers, d, generator=gen)
    sign = torch.ones(n, 1, 1)
    if random_labels:
        sign = torch.where(torch.rand(n, 1, 1, generator=gen) < 0.5, -1.0, 1.0)
    toxic = clean + sign * signal * direction + torch.randn(n, n_layers, d, generator=gen)
    return direction, toxic, clean


def test_a_planted_direction_has_split_half_cosine_near_one():
    _, toxic, clean = _planted(n=40, n_layers=3, d=16, signal=10.0, seed=0)
    table = split_half_cosine(toxic, clean, n_resamples=50, seed=1)
    assert len(table) == 3
    assert (table["split_half_cosine"] > 0.97).all()
    assert (table["split_half_cosine_p05"] <= table["split_half_cosine"]).all()
    assert (table["split_half_cosine"] <= table["split_half_cosine_p95"]).all()
    assert (table["split_half_cosine_sd"] < 0.02).all()


def test_no_direction_gives_split_half_cosine_near_zero():
    _, toxic, clean = _planted(n=40, n_layers=2, d=64, signal=0.0, seed=2)
    table = split_half_cosine(toxic, clean, n_resamples=100, seed=3)
    # Two independent means of isotropic noise in 64 dimensions: cosine ~ N(0, 1/64).
    assert (table["split_half_cosine"].abs() < 0.05).all()
    assert (table["split_half_cosine_sd"] > 0.05).all()


def test_split_half_cosine_is_nan_below_two_pairs_and_reproducible():
    _, toxic, clean = _planted(n=1, n_layers=2, d=4, signal=1.0, seed=0)
    assert split_half_cosine(toxic, clean, 20, 0)["split_half_cosine"].isna().all()
    _, toxic, clean = _planted(n=12, n_layers=2, d=4, signal=1.0, seed=0)
    pd.testing.assert_frame_equal(split_half_cosine(toxic, clean, 20, 7),
                                  split_half_cosine(toxic, clean, 20, 7))


def test_planted_direction_wins_every_held_out_pair():
    direction, toxic, clean = _planted(n=30, n_layers=2, d=8, signal=10.0, seed=4)
    table = paired_accuracy(direction, toxic, clean, n_bootstrap=200, seed=0)
    assert table["paired_accuracy"].tolist() == [1.0, 1.0]
    assert table["paired_accuracy_ci_lo"].tolist() == [1.0, 1.0]
    assert table["n_heldout_pairs"].tolist() == [30, 30]
    flipped = paired_accuracy(-direction, toxic, clean, n_bootstrap=200, seed=0)
    assert flipped["paired_accuracy"].tolist() == [0.0, 0.0]


def test_random_labels_give_chance_accuracy_with_a_ci_that_covers_it():
    direction, toxic, clean = _planted(n=400, n_layers=3, d=8, signal=3.0, seed=5,
                                       random_labels=True)
    table = paired_accuracy(direction, toxic, clean, n_bootstrap=500, seed=0)
    assert ((table["paired_accuracy"] - 0.5).abs() < 0.08).all()
    assert ((table["paired_accuracy_ci_lo"] < 0.5) & (0.5 < table["paired_accuracy_ci_hi"])).all()
    # The interval is about ±2 SE wide: SE = sqrt(0.25 / 400) = 0.025.
    width = table["paired_accuracy_ci_hi"] - table["paired_accuracy_ci_lo"]
    assert ((width > 0.07) & (width < 0.13)).all()


def test_ties_count_half_and_no_pairs_gives_nan():
    direction = torch.tensor([[1.0, 0.0]])
    toxic = torch.tensor([[[1.0, 5.0]], [[2.0, 0.0]]])
    clean = torch.tensor([[[1.0, -5.0]], [[0.0, 0.0]]])  # pair 0 ties on the direction
    table = paired_accuracy(direction, toxic, clean, n_bootstrap=50, seed=0)
    assert table["paired_accuracy"].tolist() == [0.75]
    empty = paired_accuracy(direction, toxic[:0], clean[:0], n_bootstrap=50, seed=0)
    assert np.isnan(empty["paired_accuracy"][0]) and empty["n_heldout_pairs"][0] == 0


@pytest.mark.slow
def test_the_smoke_run_labels_filters_and_reports_its_pairs(smoke_run):
    """The shared smoke run: pairs labelled by tox-block with a real gap, counts by reason,
    stability and held-out accuracy per layer in the results and the report."""
    import json

    from steering_utils.artifacts import read_table

    work, _ = smoke_run
    run = work / "runs" / "smoke"
    counts = json.loads(next((run / "03_activations").glob("*/contrast_counts.json")).read_text())
    assert counts["label_scorer"] == "tox-block" and counts["label_column"] == "label_toxicity"
    train = counts["train"]
    assert train["continuations"] == 8 * 4  # smoke: 8 train prompts x 4 samples
    dropped = sum(train[k] for k in ("no_toxic_side", "no_clean_side", "no_toxic_nor_clean_side",
                                     "tied", "single_continuation", "only_empty_continuations"))
    assert train["pairs_kept"] + dropped == train["prompts"] == 8
    texts = read_table(next((run / "03_activations").glob("*/contrast_texts.parquet")))
    pairs = texts[texts["set"].isin(["train_toxic", "train_clean"])]
    assert len(pairs) == 2 * train["pairs_used"] >= 2 * 2
    assert (pairs.loc[pairs["set"] == "train_toxic", "toxicity"] >= 0.5).all()
    assert (pairs.loc[pairs["set"] == "train_clean", "toxicity"] < 0.1).all()
    results = json.loads((work / "reports" / "smoke" / "experiment_results.json").read_text())
    layers = results["vectors"]["layers"]
    assert all(-1 <= row["split_half_cosine"] <= 1 for row in layers
               if row["split_half_cosine"] is not None)
    assert all("paired_accuracy" in row for row in layers)
    html = (work / "reports" / "smoke" / "report.html").read_text()
    assert "Contrast pairs and the vector" in html and "tox-block" in html


def test_the_report_shows_the_label_scorer_the_filter_and_each_layers_reliability():
    from results_fixture import make_results

    from steering_utils.report import render_report
    from steering_utils.results import validate_results

    results = make_results(n_layers=2)
    pair_counts = {"prompts": 48, "continuations": 192, "empty_continuations": 0,
                   "only_empty_continuations": 0, "single_continuation": 0, "tied": 0,
                   "no_toxic_side": 17, "no_clean_side": 3, "no_toxic_nor_clean_side": 2,
                   "pairs_kept": 26, "toxic_min": 0.5, "clean_max": 0.1,
                   "label": "label_toxicity", "pairs_used": 26}
    results["vectors"]["contrast_counts"] = {
        "label_column": "label_toxicity", "label_scorer": "tox-block", "train": pair_counts,
        "dev": "too few dev rows for a held-out contrast (activations.min_pairs: ...)"}
    for row, cosine in zip(results["vectors"]["layers"], (0.812, 0.934)):
        row.update(split_half_cosine=cosine, split_half_cosine_sd=0.05,
                   split_half_cosine_p05=cosine - 0.1, split_half_cosine_p95=cosine + 0.05,
                   paired_accuracy=0.75, paired_accuracy_ci_lo=0.55,
                   paired_accuracy_ci_hi=0.9, n_heldout_pairs=12)
    html = render_report(validate_results(results), figures=[])
    assert "Contrast pairs and the vector" in html and "<b>tox-block</b>" in html
    assert ("train: 26 pairs used of 48 prompts (toxic side ≥ 0.5, clean side &lt; 0.1; "
            "dropped: no side toxic enough 17, no side clean enough 3, neither 2)") in html
    assert "dev: too few dev rows for a held-out contrast" in html
    assert "0.812" in html and "[0.712, 0.862]" in html and "[0.550, 0.900]" in html
    # Results without these statistics (older runs) render without the section.
    plain = render_report(validate_results(make_results(n_layers=2)), figures=[])
    assert "Contrast pairs and the vector" not in plain


def test_leave_one_out_accuracy_tests_each_pair_against_the_others():
    from steering_utils.contrasts import loo_paired_accuracy

    _, toxic, clean = _planted(n=30, n_layers=2, d=8, signal=10.0, seed=6)
    planted = loo_paired_accuracy(toxic, clean, n_bootstrap=200, seed=0)
    assert planted["loo_accuracy"].tolist() == [1.0, 1.0]
    # No direction at all: chance, the interval covering 0.5.
    _, toxic, clean = _planted(n=400, n_layers=2, d=8, signal=0.0, seed=7)
    noise = loo_paired_accuracy(toxic, clean, n_bootstrap=500, seed=0)
    assert ((noise["loo_accuracy"] - 0.5).abs() < 0.08).all()
    assert ((noise["loo_accuracy_ci_lo"] < 0.5) & (0.5 < noise["loo_accuracy_ci_hi"])).all()
    # By hand: pair 1's vector is pair 0's difference, and it disagrees.
    toxic = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]], [[0.0, 0.0]]])
    clean = torch.zeros(3, 1, 2)
    table = loo_paired_accuracy(toxic, clean, n_bootstrap=10, seed=0)
    # v without 0: (-1, 0)/2 -> 0 loses; without 1: (1, 0)/2 -> 1 loses; 2 ties -> 1/2.
    assert table["loo_accuracy"].tolist() == [pytest.approx(1 / 6)]
