"""benchmarks/stability_variants.py on a hand-made grid whose answer is known: a tie the
least-toxic rule splits and the one-SE rule gives to the lower perplexity, and benign dev
sets that keep or break the pick's benign perplexity limit."""

import numpy as np
import pandas as pd

from benchmarks.stability_variants import benign_subsets, stability_table
from steering_utils import metrics
from steering_utils.stages import UNSTEERED_LAYER
from tests.test_decision import _E, _PROMPT_EFFECT, N_PROMPTS, _cell, _grid


def test_the_table_splits_the_gain_between_the_tie_rule_and_the_benign_dev_set():
    # Benign prompts b00-b09 keep layer 3's perplexity flat, b10-b19 triple it: with the
    # first ten only, layer 3 always passes the benign limit; with all twenty it breaks it.
    benign_nll = np.r_[np.zeros(N_PROMPTS // 2), np.full(N_PROMPTS // 2, np.log(3.0))]
    grid = pd.concat([
        _grid(_cell(3, 1.0, 0.3 + _PROMPT_EFFECT + _E, nll=1.0),
              _cell(6, 1.0, 0.3 + _PROMPT_EFFECT - _E, nll=1.1)),
        _cell(UNSTEERED_LAYER, 0, 0.0, nll=1.0, subset="benign", prefix="b"),
        _cell(3, 1.0, 0.0, nll=1.0 + benign_nll, subset="benign", prefix="b"),
        _cell(6, 1.0, 0.0, nll=1.0, subset="benign", prefix="b")], ignore_index=True)
    prompts = pd.DataFrame({"prompt_id": [f"b{i:02d}" for i in range(N_PROMPTS)],
                            "subset": "benign", "split": "dev"})
    subsets = benign_subsets(prompts, first=10, random=None, seed=0)
    assert list(subsets) == ["all 20", "first 10"]
    table = stability_table(grid, subsets, metrics.SelectionRule(), None, n_resamples=200)
    share = {(r["benign dev"], r["tie_se"]): (r["chosen"], r["cell_share"])
             for r in table.to_dict("records")}
    # All benign prompts: layer 3 breaks the benign limit (+73%), so layer 6 is picked in
    # (nearly) every resample, tie band or not.
    for tie_se in (0.0, 1.0):
        chosen, kept = share[("all 20", tie_se)]
        assert chosen == {"layer": 6, "alpha": 1.0} and kept >= 0.97
    # The first ten: a tie the plain rule splits and the one-SE rule gives to layer 3.
    _, plain = share[("first 10", 0.0)]
    assert plain < 0.8
    chosen, tied = share[("first 10", 1.0)]
    assert chosen == {"layer": 3, "alpha": 1.0} and tied >= 0.95
