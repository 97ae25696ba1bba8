"""Conditional CAA (CAST): the gate on a 2-layer toy, the dev threshold, eval rows, results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from steering_utils import conditional as cond
from steering_utils.activations import capture_activations
from steering_utils.capability import capability_correct, item_prompts
from steering_utils.comparison import build_interventions, strengths
from steering_utils.decisions import MethodPick
from steering_utils.gating import ConditionalIntervention, gate_rows, prompt_projections
from steering_utils.generation import generate_completions, make_jobs
from steering_utils.params import GenerationParams, ParamsError, compared_methods, parse_params
from steering_utils.stages import CAA, UNSTEERED, UNSTEERED_LAYER
from steering_utils.steering import LayerEdit, steer
from steering_utils.vectors import SteeringVectors
from tests.conftest import build_tiny_qwen3
from tests.test_params import _default

# Same token count (4), so a batch of them has no pads and logits compare row by row.
TEXTS = ["the cat runs at", "you stupid idiot i", "we love the day", "they hate awful people"]
STEER_LAYER, CONDITION_LAYER = 0, 1


@pytest.fixture(scope="module")
def toy(tiny_tokenizer):
    """A 2-layer Qwen3 and CAA-like directions, large enough to change its outputs."""
    model = build_tiny_qwen3(len(tiny_tokenizer), n_layers=2, seed=3)
    directions = torch.randn(2, 64, generator=torch.Generator().manual_seed(5)) * 8.0
    return model, directions


def _gate(directions, threshold: float) -> ConditionalIntervention:
    return ConditionalIntervention(cond.METHOD, LayerEdit(shift=-directions),
                                   condition_layer=CONDITION_LAYER,
                                   condition=directions[CONDITION_LAYER], threshold=threshold,
                                   last_n=32)


def _split_threshold(projection: np.ndarray) -> float:
    """A threshold with the upper half of the texts gated on."""
    ordered = np.sort(projection)
    half = len(ordered) // 2
    return float((ordered[half - 1] + ordered[half]) / 2)


def _logits_per_step(model, tokenizer, texts, steering, alphas, steps=3) -> torch.Tensor:
    """[prefill + steps, rows, vocab]: last-position logits at prefill, then at each decode
    step under the KV cache, feeding the same fixed tokens whatever the steering."""
    batch = tokenizer(texts, return_tensors="pt")
    feed = torch.tensor([[5 + row] for row in range(len(texts))])
    out = []
    with torch.no_grad(), steer(model, steering, STEER_LAYER, alphas, batch_size=len(texts)):
        step = model(**batch, use_cache=True)
        out.append(step.logits[:, -1])
        cache = step.past_key_values
        for _ in range(steps):
            step = model(input_ids=feed, past_key_values=cache, use_cache=True)
            out.append(step.logits[:, -1])
            cache = step.past_key_values
    return torch.stack(out)


def test_gated_rows_equal_unsteered_and_passing_rows_equal_caa_at_prefill_and_decode(
        toy, tiny_tokenizer):
    model, directions = toy
    projection = prompt_projections(model, tiny_tokenizer, TEXTS, directions[CONDITION_LAYER],
                                    CONDITION_LAYER, 32)
    gate = _gate(directions, _split_threshold(projection))
    rows = pd.DataFrame({"prompt": TEXTS, "alpha": 1.0})
    gated = gate_rows(gate, model, tiny_tokenizer, rows)
    on = projection > gate.threshold
    assert on.sum() == 2 and (~on).sum() == 2  # one batch mixes both decisions
    assert gated["alpha"].tolist() == [1.0 if o else 0.0 for o in on]

    mixed = _logits_per_step(model, tiny_tokenizer, TEXTS, gate, gated["alpha"].tolist())
    plain = _logits_per_step(model, tiny_tokenizer, TEXTS, gate, [0.0] * len(TEXTS))
    caa = _logits_per_step(model, tiny_tokenizer, TEXTS, gate, [1.0] * len(TEXTS))
    for row, steered in enumerate(on):
        want = caa if steered else plain
        torch.testing.assert_close(mixed[:, row], want[:, row], rtol=0, atol=1e-6)
        # CAA changes the logits at every step (prefill and each decode step): the
        # comparison can tell the two arms apart.
        assert (caa[:, row] - plain[:, row]).abs().amax(-1).min() > 1e-3


def test_greedy_generation_of_a_gated_method_matches_each_arm(toy, tiny_tokenizer):
    model, directions = toy
    projection = prompt_projections(model, tiny_tokenizer, TEXTS, directions[CONDITION_LAYER],
                                    CONDITION_LAYER, 32)
    gate = _gate(directions, _split_threshold(projection))
    prompts = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(4)], "text": TEXTS})
    jobs = make_jobs(prompts, [(STEER_LAYER, 1.0)], 1, direction=cond.METHOD)
    gen = GenerationParams(temperature=0, max_new_tokens=5, batch_size=4)
    conditional = generate_completions(model, tiny_tokenizer,
                                       gate_rows(gate, model, tiny_tokenizer, jobs), gate, gen, 0)
    caa = generate_completions(model, tiny_tokenizer, jobs, gate.edit, gen, 0)
    plain = generate_completions(model, tiny_tokenizer, jobs, None, gen, 0)
    on = projection > gate.threshold
    for row, steered in enumerate(on):
        want = caa if steered else plain
        assert conditional["completion"].iloc[row] == want["completion"].iloc[row]
    assert (caa["completion"] != plain["completion"]).any()


def test_projection_is_the_cosine_of_the_pooled_prompt_activation(toy, tiny_tokenizer):
    model, directions = toy
    v = directions[CONDITION_LAYER]
    pooled = capture_activations(model, tiny_tokenizer, TEXTS[:2], 32, 1,
                                 layers=[CONDITION_LAYER])["pooled"][:, 0]
    want = torch.nn.functional.cosine_similarity(pooled.double(), v.double()[None], dim=-1)
    got = prompt_projections(model, tiny_tokenizer, TEXTS[:2], v, CONDITION_LAYER, 32)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    # Scale-free, signed.
    np.testing.assert_allclose(prompt_projections(model, tiny_tokenizer, TEXTS[:2], 3 * v,
                                                  CONDITION_LAYER, 32), got, atol=1e-9)
    np.testing.assert_allclose(prompt_projections(model, tiny_tokenizer, TEXTS[:2], -v,
                                                  CONDITION_LAYER, 32), -got, atol=1e-9)


def test_a_prompts_gate_does_not_depend_on_the_prompts_beside_it(toy, tiny_tokenizer):
    model, directions = toy
    alone = _gate(directions, 0.0).project(model, tiny_tokenizer, ["you stupid idiot"])
    together = _gate(directions, 0.0).project(model, tiny_tokenizer,
                                              ["the cat runs at night and day", "you stupid idiot"])
    assert alone[0] == together[1]


def test_the_fingerprint_keys_the_gate():
    directions = torch.ones(2, 4)
    base = _gate(directions, 0.1)
    assert base.fingerprint == _gate(directions, 0.1).fingerprint
    assert base.fingerprint != _gate(directions, 0.2).fingerprint
    other = _gate(directions, 0.1)
    other.condition_layer = 0
    assert base.fingerprint != other.fingerprint


def test_youden_threshold_maximises_separation_on_dev():
    found = cond.choose_threshold([0.1, 0.5, 0.6, 0.7], [0.0, 0.2, 0.3], "youden")
    assert found["threshold"] == pytest.approx(0.4)  # midpoint of 0.3 and 0.5
    assert found["dev_challenging_gated"] == 0.75 and found["dev_benign_gated"] == 0.0
    assert found["dev_youden_j"] == 0.75
    assert found["dev_auroc"] == pytest.approx(10 / 12)
    # Ties: the highest cut (fewest prompts steered).
    tied = cond.choose_threshold([1, 3], [0, 2], "youden")
    assert tied["threshold"] == 2.5 and tied["dev_youden_j"] == 0.5


def test_benign_quantile_threshold():
    found = cond.choose_threshold([5.0], [0.0, 0.2, 0.3], "benign_quantile", 0.5)
    assert found["threshold"] == pytest.approx(0.2)
    assert found["dev_benign_gated"] == pytest.approx(1 / 3)
    assert found["quantile"] == 0.5
    with pytest.raises(ParamsError, match="methods.conditional_caa.threshold"):
        cond.choose_threshold([1.0], [], "youden")


def _params(conditional: dict | None = None, **data):
    raw = _default()
    raw["generation"].update({"max_new_tokens": 4, "batch_size": 4})
    if conditional is not None:
        raw.setdefault("methods", {})["conditional_caa"] = conditional
    for subset, values in data.items():
        raw["data"][subset].update(values)
    return parse_params(raw)


def test_params_name_the_field_and_the_fix():
    params = _params()
    assert cond.METHOD in compared_methods(params.sweep)
    assert strengths(params, cond.METHOD) == [a for a in params.sweep.grid_alphas if a]
    assert _params({"strengths": [2.0]}).methods.conditional_caa.strengths == [2.0]
    with pytest.raises(ParamsError, match="methods.conditional_caa.condition_layer"):
        _params({"condition_layer": -1})
    with pytest.raises(ParamsError, match="methods.conditional_caa.threshold"):
        _params({"threshold": "median"})
    # Without benign dev prompts the gate has no threshold: conditional CAA is skipped and
    # 05's conditional.json says why (conditional.build_gate), the study itself runs.
    no_benign_dev = _default()
    no_benign_dev["data"]["benign"]["n_dev"] = 0
    assert cond.METHOD in compared_methods(parse_params(no_benign_dev).sweep)
    named = _params({"condition_layer": 40})
    with pytest.raises(ParamsError, match=r"methods.conditional_caa.condition_layer: 40 out of "
                                          r"range .* 30 decoder layers"):
        cond.condition_layer(named, 12, 30)
    assert cond.condition_layer(_params({"condition_layer": 3}), 12, 30) == 3
    from steering_utils.checks import check_layers

    with pytest.raises(ParamsError, match=r"methods.conditional_caa.condition_layer: \[40\] out "
                                          r"of range for a model with 30"):
        check_layers(named)  # `make check`, before any stage runs (the offline model: 30)
    assert cond.condition_layer(params, 12, 30) == 12  # chosen: the comparison's layer


def test_build_gate_sets_the_threshold_on_dev_only(toy, tiny_tokenizer):
    model, directions = toy
    words = ["the cat", "you stupid idiot", "we love", "they hate", "a dog runs", "i think so"]
    prompts = pd.DataFrame({
        "prompt_id": [f"p{i}" for i in range(12)],
        "text": [f"{w} {tail}" for w in words for tail in ("now", "at night")],
        "subset": ["challenging", "benign"] * 6,
        "split": ["dev"] * 4 + ["eval"] * 4 + ["train"] * 4})
    vectors = SteeringVectors(directions, torch.ones(2))
    params = _params({"condition_layer": CONDITION_LAYER})
    gate, record = cond.build_gate(model, tiny_tokenizer, prompts, vectors, params, 0)
    dev = [p for p in record["prompts"] if p["split"] == "dev"]
    expected = cond.choose_threshold([p["projection"] for p in dev if p["subset"] == "challenging"],
                                     [p["projection"] for p in dev if p["subset"] == "benign"])
    assert record["threshold"] == expected["threshold"] == gate.threshold
    assert {p["split"] for p in record["prompts"]} == {"dev", "eval"}  # train: never read
    assert all(p["gated"] == (p["projection"] > gate.threshold) for p in record["prompts"])
    assert torch.equal(gate.condition, directions[CONDITION_LAYER])
    interventions = build_interventions(params.model_copy(update={"sweep": params.sweep.model_copy(
        update={"methods": ["conditional_caa"]})}), vectors, {}, {}, {}, conditional=gate)
    assert interventions[cond.METHOD] is gate
    off = params.model_copy(update={"sweep": params.sweep.model_copy(update={"methods": []})})
    assert cond.build_gate(model, tiny_tokenizer, prompts, vectors, off, 0) == (None, None)
    no_benign_dev = prompts[~((prompts["split"] == "dev") & (prompts["subset"] == "benign"))]
    skipped, why = cond.build_gate(model, tiny_tokenizer, no_benign_dev, vectors, params, 0)
    assert skipped is None and "data.benign.n_dev" in why["skipped"]


def test_capability_items_are_gated_on_their_question_prompt(toy, tiny_tokenizer):
    model, directions = toy
    items = pd.DataFrame({"question": ["the cat", "you stupid idiot", "we love the day",
                                       "they hate awful people"],
                          "options": [["runs", "day"], ["nice", "bad"], ["kind", "awful"],
                                      ["good", "stupid"]],
                          "gold": [0, 1, 0, 1], "subject": "", "format": "cloze"})
    v = directions[CONDITION_LAYER]
    projection = prompt_projections(model, tiny_tokenizer, item_prompts(items), v,
                                    CONDITION_LAYER, 32)
    gate = _gate(directions * 4, _split_threshold(projection))
    gate.condition = v
    on = projection > gate.threshold
    got = capability_correct(model, tiny_tokenizer, items, gate, STEER_LAYER, 1.0)
    steered = capability_correct(model, tiny_tokenizer, items, gate.edit, STEER_LAYER, 1.0)
    plain = capability_correct(model, tiny_tokenizer, items, None, STEER_LAYER, 0.0)
    np.testing.assert_array_equal(got, np.where(on, steered, plain))


def _rows(prompts: pd.DataFrame, direction: str, layer: int, alpha: float, samples: int,
          **values) -> pd.DataFrame:
    return make_jobs(prompts, [(layer, alpha)], samples, direction=direction).assign(**values)


def _eval_prompts() -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": [f"c{i}" for i in range(4)] + [f"b{i}" for i in range(4)],
                         "text": [f"text {i}" for i in range(8)],
                         "subset": ["challenging"] * 4 + ["benign"] * 4, "split": "eval"})


def test_eval_jobs_generate_only_what_no_stage_made():
    params = _params()
    prompts = _eval_prompts()
    k = params.methods.samples_per_prompt or params.generation.samples_per_prompt
    baseline = _rows(prompts, UNSTEERED, UNSTEERED_LAYER, 0.0, k)
    sweep = _rows(prompts, CAA, 6, 2.0, k)  # CAA's sweep rows, both subsets
    methods_eval = _rows(prompts[prompts["subset"] == "challenging"], cond.METHOD, 6, 2.0, k)
    jobs, reused = cond.eval_jobs(prompts, baseline, pd.concat([sweep, methods_eval]), params,
                                  (6, 2.0))
    assert set(jobs["method"]) == {cond.METHOD}
    assert set(jobs["prompt_id"]) == {f"b{i}" for i in range(4)}  # benign only
    assert reused.groupby("method").size().to_dict() == {
        CAA: 8 * k, cond.METHOD: 4 * k, UNSTEERED: 8 * k}


def _summary():
    params = _params()
    prompts = _eval_prompts()
    gated = {"c0": True, "c1": True, "c2": True, "c3": False,
             "b0": False, "b1": False, "b2": False, "b3": True}
    record = {"cell": [6, 2.0], "cell_from": cond.METHOD, "condition_layer": 6,
              "projection": "cosine", "rule": "youden", "threshold": 0.1, "quantile": None,
              "dev_challenging_gated": 0.75, "dev_benign_gated": 0.25, "dev_youden_j": 0.5,
              "dev_auroc": 0.8,
              "prompts": [{"prompt_id": p, "subset": "challenging" if p[0] == "c" else "benign",
                           "split": "eval", "projection": 0.2 if on else 0.0, "gated": on}
                          for p, on in gated.items()],
              "items": [{"item": i, "projection": 0.0, "gated": i == 0} for i in range(4)]}
    reference = _rows(prompts, UNSTEERED, UNSTEERED_LAYER, 0.0, 1, toxicity=0.6, nll=2.0,
                      completion="x", method=UNSTEERED)
    caa = _rows(prompts, CAA, 6, 2.0, 1, toxicity=0.2, nll=2.5, completion="x", method=CAA)
    on = prompts["prompt_id"].map(gated).to_numpy()
    conditional = _rows(prompts, cond.METHOD, 6, 2.0, 1, completion="x", method=cond.METHOD)
    conditional["toxicity"] = np.where(on, 0.2, 0.6)
    conditional["nll"] = np.where(on, 2.5, 2.0)
    capability = pd.DataFrame({"split": "eval", "direction": [UNSTEERED] * 4 + [CAA] * 4
                               + [cond.METHOD] * 4, "layer": 6, "alpha": 2.0,
                               "item": list(range(4)) * 3,
                               "correct": [1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]})
    return cond.summarize(pd.concat([reference, caa, conditional]), record, capability, params)


def test_summary_reports_the_effect_on_challenging_and_the_cost_on_benign():
    found = _summary()
    shares = {g.subset: g.share for g in found.gated}
    assert shares == {"challenging": 0.75, "benign": 0.25, "capability": 0.25}
    arms = {(a.method, a.subset): a for a in found.arms}
    assert arms[(CAA, "challenging")].toxicity.estimate == pytest.approx(-0.4)
    assert arms[(cond.METHOD, "challenging")].toxicity.estimate == pytest.approx(-0.3)
    assert arms[(CAA, "benign")].perplexity_increase == pytest.approx(np.exp(0.5) - 1)
    assert arms[(cond.METHOD, "benign")].log_perplexity.estimate == pytest.approx(0.125)
    versus = {v.name: v for v in found.versus_caa}
    assert versus["conditional_vs_caa_challenging"].estimate == pytest.approx(0.1)
    assert versus["conditional_vs_caa_benign"].estimate == pytest.approx(-0.375)
    assert found.capability.accuracy == {UNSTEERED: 0.5, CAA: 0.0, cond.METHOD: 0.25}
    assert [v.estimate for v in found.capability.verdicts] == [-50.0, -25.0]
    assert found.eval_auroc == pytest.approx(0.75)  # (9 above + 6 ties / 2) / 16


def test_results_carry_the_section_and_the_report_shows_it():
    from steering_utils.report import render_report
    from steering_utils.results import validate_results
    from tests.results_fixture import make_results

    document = make_results()
    assert validate_results(document).conditional is None  # optional: older documents hold
    document["conditional"] = _summary().model_dump(mode="json")
    html = render_report(validate_results(document), figures=[])
    assert 'id="conditional"' in html and "arXiv:2409.05907" in html
    assert "conditional CAA vs CAA (layer 6, α = 2), benign eval" in html
    assert "Youden" in html


def test_end_to_end_gated_rows_are_the_unsteered_rows_and_passing_rows_caas(
        toy, tiny_tokenizer, tmp_path):
    """05's conditional section on the toy: gate from dev, jobs, shards, summary. With the
    same seeds, a gated-off prompt's continuation is the unsteered one, a gated-on prompt's
    is CAA's."""
    from steering_utils.jobs import run_jobs
    from steering_utils.scoring import load_scorer

    model, directions = toy
    words = ["the cat runs", "you stupid idiot", "we love the day", "they hate awful people",
             "a dog said no", "i think you know", "why not some", "all the bad people"]
    prompts = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(16)],
                            "text": [f"{w} {tail}" for tail in ("now", "at night") for w in words],
                            "subset": ["benign", "challenging"] * 8,
                            "split": ["dev"] * 8 + ["eval"] * 8})
    vectors = SteeringVectors(directions, torch.full((2,), 50.0))
    params = _params({"condition_layer": CONDITION_LAYER})
    params = params.model_copy(update={"methods": params.methods.model_copy(
        update={"samples_per_prompt": 2})})
    gate, gate_record = cond.build_gate(model, tiny_tokenizer, prompts, vectors, params,
                                        STEER_LAYER)
    scorers = {"primary": load_scorer("profanity-check"), "second": None}
    evals = prompts[prompts["split"] == "eval"]
    baseline = run_jobs(model, tiny_tokenizer, make_jobs(evals, [(UNSTEERED_LAYER, 0.0)], 2),
                        {}, params, scorers, tmp_path)
    cell = (STEER_LAYER, 1.0)
    sweep = run_jobs(model, tiny_tokenizer,
                     make_jobs(evals[evals["subset"] == "challenging"], [cell], 2), {CAA: vectors},
                     params, scorers, tmp_path)
    jobs, reused = cond.eval_jobs(prompts, baseline, sweep, params, cell)
    assert set(jobs.loc[jobs["method"] == CAA, "subset"]) == {"benign"}  # challenging reused
    steered = run_jobs(model, tiny_tokenizer, jobs, {CAA: vectors, cond.METHOD: gate}, params,
                       scorers, tmp_path)
    rows = cond.with_gates(pd.concat([reused, steered], ignore_index=True), gate_record)
    assert (rows.loc[rows["method"] == cond.METHOD, "alpha"] == 1.0).all()  # the cell's alpha
    by = {m: part.set_index(["prompt_id", "sample"]).sort_index()
          for m, part in rows.groupby("method")}
    conditional = by[cond.METHOD]
    on = conditional["gated"].to_numpy(dtype=bool)
    assert on.any() and (~on).any()
    np.testing.assert_array_equal(conditional["completion"][~on],
                                  by[UNSTEERED]["completion"][~on])
    np.testing.assert_array_equal(conditional["completion"][on], by[CAA]["completion"][on])
    assert (by[CAA]["completion"] != by[UNSTEERED]["completion"]).any()
    found = cond.summarize(rows, cond.record(gate_record, cell, {cond.METHOD: {
        "layer": cell[0], "alpha": cell[1]}}), None, params)
    assert {a.method for a in found.arms} == {CAA, cond.METHOD}
    assert found.threshold == gate.threshold and found.cell_from == cond.METHOD


def _pick(layer: int, alpha: float) -> MethodPick:
    """A rule pick at (layer, alpha); its dev numbers do not enter the compared cell."""
    return MethodPick(layer=layer, alpha=alpha, mean_toxicity=0.2, reference_mean_toxicity=0.4,
                      toxicity_reduction=0.5, perplexity=10.0, perplexity_increase=0.1,
                      capability_acc=None, reference_capability_acc=None,
                      capability_drop_points=None, checks={}, candidates_tried=1)


def test_the_compared_cell_is_a_dev_decision_the_rule_pick_then_the_matched_point():
    caa_pick = _pick(6, 2.0)
    matched = {"caa": {"status": "interpolated", "layer": 6, "strength": 0.34},
               cond.METHOD: {"status": "interpolated", "layer": 12, "strength": 0.7},
               "actadd": {"status": "no_front", "layer": None, "strength": None}}
    assert cond.compared_cell({cond.METHOD: None, "caa": caa_pick}, 6, matched) == (6, 2.0)
    assert cond.compared_cell({cond.METHOD: None, "caa": None}, 6, matched) == (12, 0.7)
    del matched[cond.METHOD]
    assert cond.compared_cell({}, 6, matched) == (6, 0.34)
    assert cond.compared_cell({}, 6, {"caa": {"status": "no_front", "layer": None,
                                              "strength": None}}) is None


def test_the_record_names_the_dev_decision_that_set_the_cell():
    gate = {"threshold": 0.5, "prompts": []}
    matched = {cond.METHOD: {"layer": 12, "strength": 0.7}, "caa": {"layer": 6, "strength": 0.3}}
    assert cond.record(gate, (6, 2.0), {"caa": {"layer": 6, "alpha": 2.0}})["cell_from"] == "caa"
    picked_none = cond.record(gate, (12, 0.7), {cond.METHOD: None, "caa": None}, matched)
    assert picked_none["cell_from"] == "conditional_caa (matched point)"
    assert picked_none["cell"] == [12, 0.7]
