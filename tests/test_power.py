"""power.py: verdicts state a CI and, when not shown, the smallest effect this n detects."""

import math

import numpy as np
import pytest

from steering_utils import power


def test_the_mde_factor_is_z_975_plus_z_80():
    assert power.mde_factor() == pytest.approx(1.959964 + 0.841621, abs=1e-5)


def test_mde_and_units_needed_invert_each_other():
    mde = power.minimum_detectable_effect(sd=0.36, n=120)
    assert mde == pytest.approx(2.8016 * 0.36 / math.sqrt(120), rel=1e-3)
    assert power.units_needed(sd=0.36, effect=mde) in (120, 121)
    assert power.minimum_detectable_effect(sd=0.36, n=1) is None


def test_a_large_reduction_is_shown_and_a_null_one_is_not():
    rng = np.random.default_rng(0)
    big = power.verdict("CAA vs unsteered", "mean toxicity", rng.normal(-0.2, 0.1, 40))
    assert big.shown and big.ci_hi < 0 and big.summary.startswith("shown.")
    null = power.verdict("CAA vs random", "mean toxicity", rng.normal(0.0, 0.3, 40))
    assert not null.shown
    assert null.mde == pytest.approx(2.8016 * null.sd / math.sqrt(40), rel=1e-3)
    assert "smallest effect this n detects" in null.summary


def test_the_expected_side_matters():
    rise = power.verdict("ablation vs unsteered", "mean toxicity", np.full(10, 0.2) +
                         np.linspace(-0.01, 0.01, 10), expect="lower")
    assert rise.shown is False  # a rise is not the reduction the claim expects
    assert power.verdict("x", "y", rise_values := np.full(10, 0.2) +
                         np.linspace(-0.01, 0.01, 10), expect="either").shown
    assert power.verdict("x", "y", rise_values, expect="higher").shown


def test_a_limit_below_the_mde_is_not_decidable():
    # 40 capability items, each right (1) or wrong (0) under both arms: the drop's
    # spread makes a 5-point limit undecidable, as the review found.
    rng = np.random.default_rng(1)
    diffs = (rng.random(40) < 0.2).astype(float) * rng.choice([-100.0, 100.0], 40)
    v = power.verdict("capability", "accuracy (points)", diffs, unit="items",
                      expect="either", limit=5.0)
    assert v.decidable is False and v.mde > 5.0
    assert "too few items to decide the limit 5" in v.summary


def test_no_data_gives_no_verdict_and_nans_are_dropped():
    empty = power.verdict("x", "y", [math.nan, math.nan])
    assert empty.n == 0 and empty.shown is None and "no paired prompts" in empty.summary
    assert power.verdict("x", "y", [-0.3, math.nan, -0.2, -0.25]).n == 3
