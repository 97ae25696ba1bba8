"""The method comparison: jobs per method, reuse of CAA's rows, dev picks, the results section."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from steering_utils import comparison as cmp
from steering_utils import interventions as iv
from steering_utils.generation import make_jobs
from steering_utils.jobs import run_jobs
from steering_utils.params import ParamsError, compared_methods, parse_params
from steering_utils.scoring import load_scorer
from steering_utils.stages import ALL_LAYERS, CAA, UNSTEERED, UNSTEERED_LAYER
from steering_utils.vectors import SteeringVectors
from tests.test_params import _default


def _params(**sweep):
    raw = _default()
    raw["sweep"].update(sweep)
    raw["generation"].update({"max_new_tokens": 4, "batch_size": 4})
    return parse_params(raw)


def _prompts(split: str, n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": [f"{split}{i}" for i in range(n)],
                         "text": [f"text {i} of {split}" for i in range(n)],
                         "subset": "challenging", "split": split})


def _baseline(prompts: pd.DataFrame, samples: int) -> pd.DataFrame:
    jobs = make_jobs(prompts, [(UNSTEERED_LAYER, 0.0)], samples)
    return jobs.assign(completion="a b c", toxicity=0.5, nll=2.0, experiment="baseline")


def _interventions(n_layers=3, d=8):
    directions = torch.randn(n_layers, d, generator=torch.Generator().manual_seed(0))
    vectors = SteeringVectors(directions, torch.ones(n_layers))
    stats = {"toxic_mean": torch.zeros(n_layers, d), "toxic_std": torch.ones(n_layers, d),
             "clean_mean": torch.ones(n_layers, d), "clean_std": torch.ones(n_layers, d)}
    return {CAA: vectors, "ablation": iv.ablation(directions, True),
            "mean_transport": iv.mean_transport(stats, False),
            "prompt": iv.prompt_baseline("Be kind.\n")}


def test_the_default_compares_the_published_variants_caa_first():
    # The default's 2-core budget: Arditi ablation and Linear-AcT run in the reference.
    assert compared_methods(_params().sweep) == ["caa", "actadd", "ace", "prompt",
                                                 "conditional_caa"]
    assert compared_methods(_params(methods="all").sweep) == [
        "caa", "actadd", "actadd_pooled", "ablation", "ablation_layer", "ace", "linear_act",
        "mean_transport", "prompt", "prompt_raw", "random", "conditional_caa"]
    assert compared_methods(_params(methods=["prompt"]).sweep) == ["caa", "prompt"]
    with pytest.raises(ParamsError, match="sweep.methods"):
        _params(methods=["steer-harder"])


def test_grid_jobs_reuse_caa_grid_rows_and_label_layers_per_method():
    params = _params(grid_alphas=[0, 1.0, 2.0])
    dev = _prompts("dev")
    baseline = _baseline(dev, 1)
    grid = make_jobs(dev, [(4, 1.0), (4, 2.0), (8, 2.0)], 1).assign(
        completion="x", toxicity=0.1, nll=2.0, experiment="grid")
    jobs, reused = cmp.grid_jobs(dev, baseline, grid, params, 4, _interventions())
    # CAA's cells at layer 4 come from the grid: no CAA job.
    assert CAA not in set(jobs["method"])
    caa = reused[reused["method"] == CAA]
    assert sorted(set(zip(caa["layer"], caa["alpha"]))) == [(4, 1.0), (4, 2.0)]
    assert (reused[reused["method"] == UNSTEERED]["alpha"] == 0).all()
    layers = jobs.groupby("method")["layer"].unique().to_dict()
    assert list(layers["ablation"]) == [ALL_LAYERS]  # edits every layer
    assert list(layers["mean_transport"]) == [4]
    assert list(layers["prompt"]) == [UNSTEERED_LAYER]  # no edit, an instruction
    prompt_rows = jobs[jobs["method"] == "prompt"]
    assert prompt_rows["prompt"].str.startswith("Be kind.\n").all()
    assert (prompt_rows["alpha"] == 1.0).all()
    assert set(jobs.loc[jobs["method"] == "ablation", "alpha"]) == set(
        params.methods.ablation.strengths)


def test_caa_cells_missing_from_the_grid_are_generated():
    params = _params(grid_alphas=[0, 1.0, 2.0])
    dev = _prompts("dev")
    grid = make_jobs(dev, [(4, 1.0)], 1).assign(completion="x", toxicity=0.1, nll=2.0,
                                                 experiment="grid")
    jobs, _ = cmp.grid_jobs(dev, _baseline(dev, 1), grid, params, 4,
                            {CAA: _interventions()[CAA]})
    assert sorted(set(zip(jobs["layer"], jobs["alpha"]))) == [(4, 2.0)]


def _cells_rows(method_cells: dict) -> pd.DataFrame:
    """Rows of a methods table: {(method, layer, alpha): [toxicity per prompt]}."""
    rows = []
    for (method, layer, alpha), values in method_cells.items():
        for i, tox in enumerate(values):
            rows.append({"method": method, "experiment": "methods", "split": "dev",
                         "subset": "challenging",
                         "layer": layer, "alpha": alpha, "prompt_id": f"p{i}", "sample": 0,
                         "toxicity": tox, "completion": f"w{i} x{i} y z", "nll": 2.0 + alpha})
    return pd.DataFrame(rows)


def test_each_method_is_picked_by_the_rule_on_its_own_cells():
    params = _params()
    rows = _cells_rows({(UNSTEERED, -1, 0.0): [0.6] * 8, (CAA, 4, 0.1): [0.3] * 8,
                        (CAA, 4, 5.0): [0.0] * 8,  # least toxic, but perplexity e^7
                        ("prompt", -1, 0.1): [0.7] * 8})  # more toxic than unsteered
    cells = cmp.method_cells(rows, params)
    assert set(cells["method"]) == {UNSTEERED, CAA, "prompt"}
    picks = cmp.select_methods(cells, params, {})
    assert (picks[CAA].layer, picks[CAA].alpha) == (4, 0.1)
    assert picks["prompt"] is None


def test_a_methods_statistical_tie_goes_to_its_lower_perplexity_as_caas_does():
    # CAA at s = 0.15 is 0.01 less toxic than at 0.1, far inside one SE (per-prompt
    # toxicity spread 0.1-0.5), at higher perplexity (nll 2 + s, +5%): the one-SE rule picks 0.1.
    spread = list(np.linspace(0.1, 0.5, 8))
    rows = _cells_rows({(UNSTEERED, -1, 0.0): [0.6] * 8, (CAA, 4, 0.1): spread,
                        (CAA, 4, 0.15): [t - 0.01 for t in spread]})
    raw = _default()
    raw["evaluation"]["tie_se"] = 1.0
    params = parse_params(raw)
    cells = cmp.method_cells(rows, params)
    tied = cmp.select_methods(cells, params, {}, rows)[CAA]
    assert (tied.layer, tied.alpha) == (4, 0.1) and tied.tie.least_toxic_alpha == 0.15
    plain = cmp.select_methods(cells, params, {})[CAA]  # no rows: no SE, the least toxic
    assert (plain.alpha, plain.tie) == (0.15, None)


def test_an_older_record_without_matched_points_puts_each_dev_pick_on_eval():
    params = _params(methods=["prompt"])
    grid = _cells_rows({(UNSTEERED, -1, 0.0): [0.6] * 8, (CAA, 4, 0.1): [0.3] * 8,
                        ("prompt", -1, 0.1): [0.55] * 8})
    evaluation = _cells_rows({(UNSTEERED, -1, 0.0): [0.6] * 8, (CAA, 4, 0.1): [0.7, 0.1] * 4,
                              ("prompt", -1, 0.1): [0.55] * 8})
    capability = pd.DataFrame({"split": "eval", "direction": [UNSTEERED] * 4 + [CAA] * 4,
                               "layer": [-1] * 4 + [4] * 4, "alpha": [0.0] * 4 + [0.1] * 4,
                               "item": list(range(4)) * 2,
                               "correct": [True, True, False, True, True, False, False, True]})
    picks = cmp.select_methods(cmp.method_cells(grid, params), params, {})
    out = cmp.comparison_results(params, grid, evaluation, capability,
                                 cmp.picks_record(picks, 4))
    by_method = {m.method: m for m in out.methods}
    caa = by_method[CAA]
    assert caa.eval.frac_toxic == pytest.approx(0.5)
    assert out.reference.frac_toxic == pytest.approx(1.0)
    assert caa.toxic_fraction_ratio == pytest.approx(2.0)
    assert caa.capability.acc == pytest.approx(0.5)
    assert caa.capability.drop_points == pytest.approx(25.0)
    # A 25-point capability drop breaks the 5-point limit: CAA is not "within limits".
    assert caa.within_limits_on_eval is False
    assert by_method["prompt"].within_limits_on_eval is True
    # No matched points: no best method, no pairs, no goal (the eval picks are not compared).
    assert out.strongest is None and out.goal is None and out.pairwise == []


def test_methods_are_compared_at_their_matched_points_and_the_best_is_chosen_on_dev():
    from steering_utils.goal import comparison_verdicts
    from steering_utils.matched import matched_points
    from steering_utils.outcomes import Methods

    params = _params(methods=["prompt"])
    # nll = 2 + alpha: perplexity x e^alpha. CAA's +10% lies between 0.05 and 0.2.
    grid = _cells_rows({(UNSTEERED, -1, 0.0): [0.6] * 8, (CAA, 4, 0.05): [0.5] * 8,
                        (CAA, 4, 0.2): [0.2] * 8, ("prompt", -1, 0.05): [0.55] * 8})
    cells = cmp.method_cells(grid, params)
    picks = cmp.select_methods(cells, params, {})
    matched = matched_points(cells, [CAA, "prompt"], 0.10)
    strength = matched[CAA]["strength"]
    assert matched[CAA]["status"] == "interpolated" and 0.05 < strength < 0.2
    # Linear in perplexity between the two cells: t = (1.1 - e^0.05) / (e^0.2 - e^0.05).
    t = (1.1 - math.exp(0.05)) / (math.exp(0.2) - math.exp(0.05))
    assert strength == pytest.approx(0.05 + t * 0.15, abs=1e-4)
    assert matched["prompt"]["status"] == "below_budget"
    evaluation = _cells_rows({(UNSTEERED, -1, 0.0): [0.9] * 8, (CAA, 4, strength): [0.1] * 8,
                              ("prompt", -1, 0.05): [0.5, 0.6] * 4}).assign(split="eval")
    evaluation.loc[evaluation["alpha"] != 0, "nll"] = 2.0  # no perplexity cost on eval
    prompts = _prompts("eval", 8).assign(prompt_id=[f"p{i}" for i in range(8)])
    reference = evaluation[evaluation["method"] == UNSTEERED]
    jobs, reused = cmp.eval_jobs(prompts, reference, reference, params, picks,
        {CAA: _interventions()[CAA], "prompt": iv.prompt_baseline("Be kind.\n")}, matched)
    assert sorted(set(zip(jobs["method"], jobs["layer"], jobs["alpha"]))) == [
        (CAA, 4, strength), ("prompt", -1, 0.05)]
    record = cmp.picks_record(picks, 4, {}, matched)
    items = pd.DataFrame(columns=["split", "direction", "layer", "alpha", "item", "correct"])
    out = cmp.comparison_results(params, grid, evaluation, items, record)
    section = out.model_copy(update=comparison_verdicts(params, record, evaluation, items))
    assert isinstance(section, Methods)
    caa = section.methods[0]
    assert caa.matched.strength == strength and caa.eval.frac_toxic == 0.0
    assert caa.matched.within_budget_on_eval is True
    [pair] = section.pairwise
    assert pair.name == "pair_caa_prompt" and pair.shown
    assert pair.estimate == pytest.approx(-0.45)
    # Least toxic at its matched point on dev: CAA (interpolated 0.5 -> 0.2 at +10%).
    assert section.goal.method == CAA and section.goal.chosen_on == "dev"
    assert section.goal.toxic_ratio.ratio is None  # no toxic continuation left
    assert section.goal.criteria["toxic_ratio"] == "pass"


def test_methods_steer_through_the_job_runner_with_their_own_shards(tiny_qwen3, tiny_tokenizer,
                                                                     tmp_path):
    raw = _default()
    raw["generation"].update({"max_new_tokens": 4, "batch_size": 4})
    params = parse_params(raw)
    d = tiny_qwen3.config.hidden_size
    n = tiny_qwen3.config.num_hidden_layers
    directions = torch.randn(n, d, generator=torch.Generator().manual_seed(1)) * 5
    stats = {"toxic_mean": torch.zeros(n, d), "toxic_std": torch.ones(n, d),
             "clean_mean": torch.full((n, d), 0.5), "clean_std": torch.full((n, d), 0.2)}
    interventions = {"ablation": iv.ablation(directions, True),
                     "mean_transport": iv.mean_transport(stats, False),
                     "prompt": iv.prompt_baseline("Be kind.\n")}
    prompts = pd.DataFrame({"prompt_id": ["a", "b"], "text": ["you are a stupid", "we love"]})
    jobs = pd.concat([cmp._jobs(prompts, m, interventions[m],
                                [(cmp._layer(interventions[m], 1), 1.0)], 2)
                      for m in interventions], ignore_index=True)
    scorers = {"primary": load_scorer("profanity-check"), "second": None}
    out = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, interventions, params, scorers, tmp_path)
    assert len(list(tmp_path.glob("*.parquet"))) == 3  # one shard per method's cell
    plain = run_jobs(tiny_qwen3, tiny_tokenizer, jobs.assign(alpha=0.0, direction=UNSTEERED),
                     {}, params, scorers, tmp_path / "plain")
    differs = out["completion"].to_numpy() != plain["completion"].to_numpy()
    # The edits change the continuations; same seeds, so any difference is the edit's.
    assert differs[(jobs["method"] != "prompt").to_numpy()].any()
    again = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, interventions, params, scorers, tmp_path)
    pd.testing.assert_frame_equal(out, again)


def test_no_method_qualifying_is_a_result_not_a_crash():
    """Nothing passes the dev rule: no eval rows but the reference, each method records why,
    and the section validates (05 crashed here: 'No objects to concatenate')."""
    from steering_utils.outcomes import Methods

    params = _params(methods=["prompt"])
    grid = _cells_rows({(UNSTEERED, -1, 0.0): [0.3] * 8, (CAA, 4, 0.1): [0.1] * 8,
                        (CAA, 4, 5.0): [0.0] * 8, ("prompt", -1, 0.1): [0.5] * 8})
    grid.loc[grid["alpha"] == 0.1, "nll"] = 2.5  # +65% perplexity: over the +25% limit
    picks = cmp.select_methods(cmp.method_cells(grid, params), params, {})
    assert picks == {CAA: None, "prompt": None}
    evaluation = grid[grid["method"] == UNSTEERED].assign(split="eval")
    eval_cells = cmp.method_cells(evaluation, params)  # the notebook's last table
    assert list(eval_cells["method"]) == [UNSTEERED]
    out = cmp.comparison_results(params, grid, evaluation, pd.DataFrame(
        columns=["split", "direction", "layer", "alpha", "item", "correct"]),
        cmp.picks_record(picks, 4))
    section = Methods.model_validate(out.model_dump(mode="json"))  # what 06 writes
    assert section.strongest is None and not any(m.picked for m in section.methods)
    caa, prompt = section.methods
    assert caa.no_pick.reason == "limits" and prompt.no_pick.reason == "none_less_toxic"
    # (4, 5): perplexity e^5 x the unsteered, past the rule and past collapse
    assert [c.failed for c in caa.no_pick.best_cells] == [["perplexity", "degenerate"],
                                                          ["perplexity"]]


def test_a_degenerate_method_pick_is_not_within_limits_nor_confirmed():
    params = _params(methods=["prompt"])
    grid = _cells_rows({(UNSTEERED, -1, 0.0): [0.6] * 8, (CAA, 4, 0.1): [0.3] * 8,
                        ("prompt", -1, 0.1): [0.55] * 8})
    evaluation = _cells_rows({(UNSTEERED, -1, 0.0): [0.6] * 8, (CAA, 4, 0.1): [0.0] * 8,
                              ("prompt", -1, 0.1): [0.55] * 8})
    evaluation.loc[evaluation["method"] == CAA, "completion"] = "LyLyLyLyLyLyLyLyLy"
    picks = cmp.select_methods(cmp.method_cells(grid, params), params, {})
    out = cmp.comparison_results(params, grid, evaluation, pd.DataFrame(
        columns=["split", "direction", "layer", "alpha", "item", "correct"]),
        cmp.picks_record(picks, 4))
    caa = next(m for m in out.methods if m.method == CAA)
    assert caa.eval.frac_toxic == 0.0  # the "win" a degenerate cell would claim
    assert {d.criterion for d in caa.eval.degenerate} == {"repetition_rate", "distinct_2"}
    assert caa.within_limits_on_eval is False
