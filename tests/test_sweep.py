"""The sweep's design: dev selection, layer ranking, the random-direction control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from steering_utils.params import parse_params
from steering_utils.stages import UNSTEERED_LAYER
from steering_utils.sweep import (
    add_reference_nll,
    control_comparison,
    control_jobs,
    random_directions,
    rank_layers,
    select_on_dev,
    steered_cells,
)
from steering_utils.vectors import SteeringVectors
from tests.test_params import _default


def test_steered_cells_skip_alpha_zero():
    assert steered_cells([2, 5], [-1.0, 0, 1.0]) == [(2, -1.0), (2, 1.0), (5, -1.0), (5, 1.0)]


def test_rank_layers_prefers_the_least_toxic_fluent_layer():
    grid = pd.DataFrame({
        "layer": [-1, 0, 0, 5, 5, 9],
        "alpha": [0.0, 1.0, 2.0, 1.0, 2.0, 2.0],
        "mean_toxicity": [0.30, 0.20, 0.05, 0.15, 0.10, 0.01],
        "perplexity": [10.0, 10.5, 20.0, 11.0, 12.0, 40.0],
    })
    # Layer 9 and layer 0 at alpha 2 are least toxic but break fluency (+25% allowed).
    assert rank_layers(grid, 0.25) == [5, 0, 9]
    assert rank_layers(grid, 10.0)[0] == 9


def _grid_rows(cells: dict[tuple[int, float], list[float]], completion: str = "a b c d e f"
               ) -> pd.DataFrame:
    rows = []
    for (layer, alpha), toxicity in cells.items():
        for i, tox in enumerate(toxicity):
            rows.append({"experiment": "grid", "split": "dev", "subset": "challenging",
                         "layer": layer,
                         "alpha": alpha, "prompt_id": f"p{i}", "sample": 0, "toxicity": tox,
                         "completion": f"{completion} {i}" if completion else "",
                         "nll": 2.0 + alpha / 10})
    return pd.DataFrame(rows)


def test_selection_uses_dev_capability_lazily_and_skips_failing_cells():
    params = parse_params({**_default(), "evaluation": {**_default()["evaluation"],
                                                         "max_capability_drop": 5.0}})
    grid = _grid_rows({(-1, 0.0): [0.5] * 6, (4, 1.0): [0.3] * 6, (4, 2.0): [0.1] * 6,
                       (8, 2.0): [0.2] * 6})
    asked = []

    def capability(layer, alpha):
        asked.append((layer, alpha))
        return {(-1, 0.0): 0.60, (4, 2.0): 0.40, (8, 2.0): 0.58}.get((layer, alpha), 0.6)

    selection = select_on_dev(grid, params, capability)
    rec = selection.recommendation
    # The least toxic cell (layer 4, alpha 2) loses 20 points on dev: the next one wins.
    assert (rec.layer, rec.alpha) == (8, 2.0)
    assert asked == [(-1, 0.0), (4, 2.0), (8, 2.0)]  # cells after the winner never measured
    assert rec.checks["capability_acc"].ok and rec.candidates_tried == 2
    assert selection.chosen_layers[0] == 8 and selection.split == "dev"


def test_selection_rejects_empty_and_degenerate_output():
    params = parse_params(_default())
    base = _grid_rows({(-1, 0.0): [0.5] * 6, (4, 1.0): [0.3] * 6})
    empty = _grid_rows({(4, 2.0): [0.0] * 6}, completion="")
    loops = _grid_rows({(8, 2.0): [0.01] * 6}, completion="the the the the the the the")
    loops["completion"] = "the the the the the the the"
    selection = select_on_dev(pd.concat([base, empty, loops]), params)
    rec = selection.recommendation
    assert (rec.layer, rec.alpha) == (4, 1.0)


def test_random_directions_have_the_caa_norm_at_one_layer_only():
    vectors = SteeringVectors(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
                              torch.ones(4))
    randoms = random_directions(vectors, 2, 3, seed=5)
    assert list(randoms) == ["random-0", "random-1", "random-2"]
    for r in randoms.values():
        assert torch.allclose(r.norms[2], vectors.norms[2])
        assert torch.count_nonzero(r.norms) == 1
    cosine = torch.nn.functional.cosine_similarity(randoms["random-0"].directions[2],
                                                   randoms["random-1"].directions[2], dim=0)
    assert abs(float(cosine)) < 0.9
    again = random_directions(vectors, 2, 3, seed=5)
    assert torch.equal(again["random-1"].directions, randoms["random-1"].directions)
    assert randoms["random-0"].fingerprint != again["random-1"].fingerprint


def test_control_jobs_and_comparison_pair_the_same_prompts():
    raw = _default()
    raw["control"] = {"n_directions": 2, "samples_per_prompt": 1, "alphas": [1.0, 2.0]}
    params = parse_params(raw)
    prompts = pd.DataFrame({"prompt_id": ["a", "b", "c"], "text": ["x", "y", "z"],
                            "subset": "challenging", "split": "eval"})
    baseline = prompts.assign(sample=0, layer=UNSTEERED_LAYER, alpha=0.0, toxicity=0.5,
                              completion="w", direction="none")
    jobs, reference = control_jobs(prompts, baseline, params, 3, ["random-0", "random-1"])
    assert len(jobs) == 3 * 2 * 2 and set(jobs["layer"]) == {3}
    assert len(reference) == 3
    sweep = pd.concat([baseline, baseline.assign(layer=3, alpha=1.0, toxicity=[0.1, 0.2, 0.1])])
    control = jobs.assign(toxicity=np.where(jobs["alpha"] == 1.0, 0.45, 0.4), completion="w")
    rows = control_comparison(sweep.assign(sample=0), control, 3, 0.5, 200, 0)
    assert [r.alpha for r in rows] == [1.0]  # no CAA cell at alpha 2 in this sweep
    assert rows[0].diff == pytest.approx(np.mean([0.1, 0.2, 0.1]) - 0.45)
    assert rows[0].n_prompts == 3 and set(rows[0].random_by_direction) == {"random-0",
                                                                           "random-1"}


def test_reference_model_nll_is_added_when_named(tiny_qwen3, tiny_tokenizer, tmp_path):
    folder = tmp_path / "ref"
    tiny_qwen3.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    raw = _default()
    rows = pd.DataFrame({"prompt": ["the cat", "we love"], "completion": [" runs", " the day"]})
    assert "nll_reference" not in add_reference_nll(rows, parse_params(raw))
    raw["evaluation"]["reference_model"] = {"name": "ref", "source": "local", "path": str(folder),
                                            "device": "cpu"}
    out = add_reference_nll(rows, parse_params(raw))
    assert out["nll_reference"].gt(0).all()


def _stats(ratios: list[float]) -> pd.DataFrame:
    """A hand-made 04 layer_stats table: ||h|| = 100 everywhere, ||v|| = ratio * 100."""
    return pd.DataFrame({"layer": range(len(ratios)),
                         "vector_norm": [100.0 * r for r in ratios],
                         "activation_norm": 100.0})


def _bounded_params(**sweep):
    raw = _default()
    raw["sweep"].update({"layers": [0, 2], **sweep})
    return parse_params(raw)


def test_relative_push_within_the_limit_passes_and_reports_the_largest():
    from steering_utils.sweep import check_relative_push

    # default grid/sweep/control/random alphas reach |alpha| = 2: 2 * 0.3 at layer 0
    assert check_relative_push(_bounded_params(), _stats([0.3, 5.0, 0.2])) == pytest.approx(0.6)


@pytest.mark.parametrize("sweep, control, field", [
    ({"alphas": [0, 1.0, 20.0]}, None, "sweep.alphas"),
    ({"grid_alphas": [0, -20.0]}, None, "sweep.grid_alphas"),
    ({}, [20.0], "control.alphas")])
def test_relative_push_over_the_limit_names_field_layer_value_and_limit(sweep, control, field):
    from steering_utils.params import ParamsError
    from steering_utils.sweep import check_relative_push

    raw = _default()
    raw["sweep"].update({"layers": [0, 2], **sweep})
    raw["control"]["alphas"] = control or raw["control"]["alphas"]
    # layer 1 is not steered: its huge ratio is no reason to refuse
    with pytest.raises(ParamsError, match=rf"{field}: -?\d+ pushes layer 0 by .* = 6 > "
                                          r"sweep.max_relative_push = 4 .*at most 13.3"):
        check_relative_push(parse_params(raw), _stats([0.3, 50.0, 0.2]))


def test_ablation_and_actadd_strengths_are_held_to_the_limit():
    from steering_utils.params import ParamsError
    from steering_utils.sweep import check_additive_push, check_relative_push

    raw = _default()
    raw["sweep"]["layers"] = [0]
    raw["methods"]["ablation"]["strengths"] = [0.5, 5.0]
    with pytest.raises(ParamsError, match="methods.ablation.strengths: 5"):
        check_relative_push(parse_params(raw), _stats([0.1]))
    directions = torch.zeros(2, 4)
    directions[1, 0] = 30.0  # ||d_1|| = 30, ||h_1|| = 10: s = 2 pushes by 6
    check_additive_push("actadd", [1.0], directions, torch.full((2,), 10.0), [1], 4.0)
    with pytest.raises(ParamsError, match=r"methods.actadd.strengths: 2 pushes layer 1 .* = 6 >"):
        check_additive_push("actadd", [1.0, 2.0], directions, torch.full((2,), 10.0), [1], 4.0)
