"""The published variants of the compared methods, each on a tiny random Qwen3 (3 layers) or
hand-built tensors, where the edit's effect is known exactly.

ActAdd at the prompt's front positions (prefill only, decode steps untouched), Arditi's
one-direction ablation at every layer, affine concept editing, Linear-AcT's sequential
per-unit quantile maps, and the prompt baseline through a chat template.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from steering_utils import comparison as cmp
from steering_utils import interventions as iv
from steering_utils.activations import capture_activations, capture_positions
from steering_utils.models import decoder_layers
from steering_utils.params import (
    ActAddParams,
    LinearActParams,
    ParamsError,
    compared_methods,
    parse_params,
)
from steering_utils.steering import LayerEdit, steer
from steering_utils.vectors import SteeringVectors
from tests.test_interventions import TEXTS, _outputs
from tests.test_params import _default


def _sizes(model) -> tuple[int, int]:
    return model.config.num_hidden_layers, model.config.hidden_size


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ActAdd: the front positions ----------------------------------------------------------


def _front(model, n_front=2, layer=1, seed=1):
    n_layers, d = _sizes(model)
    toxic, clean = _randn(n_layers, n_front, d, seed=seed), _randn(n_layers, n_front, d,
                                                                   seed=seed + 1)
    return toxic, clean, iv.actadd_front(toxic, clean, layer)


def test_actadd_edits_each_rows_first_real_tokens_only(tiny_qwen3, tiny_tokenizer):
    toxic, clean, method = _front(tiny_qwen3)
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)  # left padding
    before = _outputs(tiny_qwen3, batch)
    with steer(tiny_qwen3, method, layer=1, alpha=2.0):
        after = _outputs(tiny_qwen3, batch)
    pads = (batch["attention_mask"] == 0).sum(1)
    assert pads.tolist() == [0, 0, 1]  # the last text is one token shorter
    expected = before[1].clone()
    for row, pad in enumerate(pads.tolist()):
        expected[row, pad:pad + 2] -= 2.0 * (toxic[1] - clean[1])
    torch.testing.assert_close(after[1], expected)
    torch.testing.assert_close(after[0], before[0])  # the layer before is untouched
    assert method.layer == 1 and method.edit.acts_at(1) and not method.edit.acts_at(0)


def test_actadd_never_edits_decode_steps_under_the_kv_cache(tiny_qwen3, tiny_tokenizer):
    """Decode calls (length 1) are untouched; the edited prefill's KV carries the edit, so
    cached generation equals a cache-free recompute that edits the front positions only."""
    toxic, clean, method = _front(tiny_qwen3, layer=1, seed=4)
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    seen = []  # (call length, raw layer-1 output, steered output)
    layer = decoder_layers(tiny_qwen3)[1]
    raw = layer.register_forward_hook(
        lambda m, a, out: seen.append([(out[0] if isinstance(out, tuple) else out).clone()]))
    try:
        with steer(tiny_qwen3, method, layer=1, alpha=3.0):
            after = layer.register_forward_hook(
                lambda m, a, out: seen[-1].append(out[0] if isinstance(out, tuple) else out))
            try:
                cached = tiny_qwen3.generate(**batch, max_new_tokens=4, do_sample=False,
                                             pad_token_id=0, eos_token_id=None)
            finally:
                after.remove()
    finally:
        raw.remove()
    lengths = [s[0].shape[1] for s in seen]
    assert lengths[0] == batch["input_ids"].shape[1] and lengths[1:] == [1, 1, 1]
    # The prefill was edited at each row's first two real tokens (generate's padding mask).
    expected = seen[0][0].clone()
    for row, pad in enumerate((batch["attention_mask"] == 0).sum(1).tolist()):
        expected[row, pad:pad + 2] -= 3.0 * (toxic[1] - clean[1])
    torch.testing.assert_close(seen[0][1], expected)
    for step_raw, step_steered in seen[1:]:
        assert torch.equal(step_raw, step_steered)  # decode steps were not
    # Cache-free: every step recomputes the whole sequence; only the front is edited.
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad(), steer(tiny_qwen3, method, layer=1, alpha=3.0):
        for _ in range(4):
            logits = tiny_qwen3(input_ids=ids, attention_mask=mask, use_cache=False).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], 1)
            mask = torch.cat([mask, torch.ones_like(token)], 1)
    assert torch.equal(cached, ids)
    with torch.no_grad():  # and the edit matters: unsteered greedy differs here
        plain = tiny_qwen3.generate(**batch, max_new_tokens=4, do_sample=False,
                                    pad_token_id=0, eos_token_id=None)
    assert not torch.equal(plain, cached)


def test_actadd_edits_a_one_token_prompts_prefill_but_not_its_decode_steps(tiny_qwen3,
                                                                         tiny_tokenizer):
    toxic, clean, method = _front(tiny_qwen3, n_front=2, layer=0, seed=12)
    batch = tiny_tokenizer(["the", "cat"], return_tensors="pt", padding=True)
    layer = decoder_layers(tiny_qwen3)[0]
    seen = []
    raw = layer.register_forward_hook(lambda m, a, out: seen.append([out.clone()]))
    try:
        with steer(tiny_qwen3, method, layer=0, alpha=1.0):
            after = layer.register_forward_hook(lambda m, a, out: seen[-1].append(out))
            try:
                tiny_qwen3.generate(**batch, max_new_tokens=3, do_sample=False,
                                    pad_token_id=0, eos_token_id=None)
            finally:
                after.remove()
    finally:
        raw.remove()
    assert [s[0].shape[1] for s in seen] == [1, 1, 1]
    torch.testing.assert_close(seen[0][1], seen[0][0] - (toxic[0, :1] - clean[0, :1]))
    for step_raw, step_steered in seen[1:]:  # the second front position is a decode step
        assert torch.equal(step_raw, step_steered)


def test_actadd_positions_ignore_the_generated_only_setting(tiny_qwen3, tiny_tokenizer):
    toxic, clean, method = _front(tiny_qwen3, n_front=1, layer=0)
    batch = tiny_tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    before = _outputs(tiny_qwen3, batch)
    with steer(tiny_qwen3, method, layer=0, alpha=1.0, positions="generated"):
        after = _outputs(tiny_qwen3, batch)
    torch.testing.assert_close(after[0][:, 0], before[0][:, 0] - (toxic[0, 0] - clean[0, 0]))
    torch.testing.assert_close(after[0][:, 1:], before[0][:, 1:])


def test_actadd_pair_difference_is_zero_at_the_shared_context(tiny_qwen3, tiny_tokenizer):
    both = capture_positions(tiny_qwen3, tiny_tokenizer, ["the hate", "the love"])
    assert both.shape == (2, *_sizes(tiny_qwen3)[:1], 2, _sizes(tiny_qwen3)[1])
    assert torch.equal(both[0, :, 0], both[1, :, 0])  # causal: the same first token
    assert (both[0, :, 1] - both[1, :, 1]).norm(dim=-1).min() > 0
    with pytest.raises(ValueError, match="equal token length"):  # no one-token space here
        capture_positions(tiny_qwen3, tiny_tokenizer, ["the hate", "the very love"])


# Directional ablation (Arditi et al.) and ACE ---------------------------------------------


def test_arditi_ablation_removes_one_direction_at_every_layer(tiny_qwen3, tiny_tokenizer):
    n_layers, d = _sizes(tiny_qwen3)
    directions = _randn(n_layers, d, seed=3, scale=2.0)
    method = iv.directional_ablation(directions[1], n_layers, source_layer=1)
    unit = directions[1] / directions[1].norm()
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    before = _outputs(tiny_qwen3, batch)
    # Rows at any layer: the edit acts at every layer (the comparison labels it ALL_LAYERS).
    with steer(tiny_qwen3, method, layer=[2, 0, 1], alpha=[1.0] * 3, batch_size=3):
        after = _outputs(tiny_qwen3, batch)
    for layer in range(n_layers):
        assert (before[layer] @ unit).abs().max() > 0.02
        assert (after[layer] @ unit).abs().max() < 1e-5, layer  # one r^, every layer
    # Exactly: layer 0 sees the plain embeddings; layer 1 sees layer 0's ablated output.
    torch.testing.assert_close(after[0], before[0] - (before[0] @ unit)[..., None] * unit)
    only_first = LayerEdit(unit=torch.stack([unit, torch.zeros(d), torch.zeros(d)]))
    with steer(tiny_qwen3, only_first, layer=0, alpha=1.0):
        h1 = _outputs(tiny_qwen3, batch)[1]
    torch.testing.assert_close(after[1], h1 - (h1 @ unit)[..., None] * unit,
                               atol=1e-5, rtol=1e-5)
    # Strength multiplies the projection removed (at layer 0, exactly).
    with steer(tiny_qwen3, method, layer=0, alpha=0.5):
        half = _outputs(tiny_qwen3, batch)
    torch.testing.assert_close(half[0] @ unit, 0.5 * (before[0] @ unit), atol=1e-5, rtol=1e-5)


def test_ace_sets_the_projection_to_the_clean_mean(tiny_qwen3, tiny_tokenizer):
    n_layers, d = _sizes(tiny_qwen3)
    directions = _randn(n_layers, d, seed=5)
    clean_mean = _randn(n_layers, d, seed=6)
    method = iv.ace(directions, clean_mean)
    unit = directions[2] / directions[2].norm()
    mu = float(unit @ clean_mean[2])
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    before = _outputs(tiny_qwen3, batch)
    for strength in (1.0, 0.5):
        with steer(tiny_qwen3, method, layer=2, alpha=strength):
            after = _outputs(tiny_qwen3, batch)
        proj = before[2] @ unit
        # h - s r^ (r^ . h - mu): the projection moves the fraction s of the way to mu ...
        torch.testing.assert_close(after[2] @ unit, proj + strength * (mu - proj),
                                   atol=1e-5, rtol=1e-5)
        # ... and nothing orthogonal to r^ moves.
        torch.testing.assert_close(after[2] - (after[2] @ unit)[..., None] * unit,
                                   before[2] - proj[..., None] * unit, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(after[1], before[1])


# Linear-AcT ------------------------------------------------------------------------------


def test_quantile_maps_recover_an_affine_map_between_shuffled_samples():
    toxic = _randn(50, 2, 4, seed=7)
    shuffled = toxic[torch.randperm(50, generator=torch.Generator().manual_seed(8))]
    clean = 2.0 * shuffled + 1.0  # unpaired: only the sorted samples match
    clean[:, 1, 3] = -0.5 * shuffled[:, 1, 3] + 3.0  # a decreasing map sorts the other way
    w, b = iv.quantile_maps(toxic, clean)
    expected_w = torch.full((2, 4), 2.0)
    expected_b = torch.full((2, 4), 1.0)
    sorted_fit = np.polyfit(np.sort(toxic[:, 1, 3].numpy()), np.sort(clean[:, 1, 3].numpy()), 1)
    expected_w[1, 3], expected_b[1, 3] = float(sorted_fit[0]), float(sorted_fit[1])
    torch.testing.assert_close(w, expected_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, expected_b, atol=1e-5, rtol=1e-5)
    assert expected_w[1, 3] > 0  # sorted samples: a monotone (increasing) transport
    # A unit that never varies on the toxic side is shifted only.
    flat = torch.zeros(10, 1)
    w, b = iv.quantile_maps(flat, torch.arange(10.0)[:, None])
    assert float(w) == 1.0 and float(b) == pytest.approx(4.5)
    # Unequal counts: both sides read at the same quantiles.
    w, b = iv.quantile_maps(toxic[:20, 0], 3.0 * toxic[:, 0] - 2.0)
    assert w.shape == (4,)


def _fit_by_hand(model, tokenizer, toxic, clean, layers):
    """(w, b) per fitted layer, sorted numpy least squares on captures made by hand."""
    n_layers, d = _sizes(model)
    gain, shift = torch.zeros(n_layers, d), torch.zeros(n_layers, d)
    out = {}
    for layer in layers:
        edit = LayerEdit(shift=shift.clone(), gain=gain.clone(), all_layers=True)
        with steer(model, edit, layer=0, alpha=1.0) if torch.any(gain) or torch.any(shift) \
                else torch.no_grad():
            a = capture_activations(model, tokenizer, toxic, layers=[layer])["pooled"][:, 0]
            c = capture_activations(model, tokenizer, clean, layers=[layer])["pooled"][:, 0]
        fits = [np.polyfit(np.sort(a[:, u].double().numpy()), np.sort(c[:, u].double().numpy()),
                           1) for u in range(d)]
        w = torch.tensor([f[0] for f in fits], dtype=torch.float32)
        b = torch.tensor([f[1] for f in fits], dtype=torch.float32)
        gain[layer], shift[layer] = w - 1, b
        out[layer] = (w, b, a)
    return out


def test_linear_act_is_fitted_layer_by_layer_on_the_transported_model(tiny_qwen3,
                                                                      tiny_tokenizer):
    toxic = ["you stupid idiot", "i hate you all", "awful bad people", "you are awful",
             "stupid stupid day", "they hate the cat"]
    clean = ["we love the day", "a nice kind cat", "good people said yes", "i love you",
             "the dog is nice", "very good night"]
    contrast = pd.DataFrame({"set": ["train_toxic"] * 6 + ["train_clean"] * 6,
                             "context": "", "text": toxic + clean})
    raw = _default()
    raw["sweep"]["methods"] = ["linear_act"]
    raw["methods"]["linear_act"] = {"strengths": [1.0], "layers": [0, 2]}
    params = parse_params(raw)
    method = cmp.fit_linear_act(tiny_qwen3, tiny_tokenizer, params, contrast)
    edit = method.edit
    assert edit.all_layers and method.metadata["layers"] == [0, 2]
    assert not edit.acts_at(1)  # layer 1 is not transported
    expected = _fit_by_hand(tiny_qwen3, tiny_tokenizer, toxic, clean, [0, 2])
    for layer, (w, b, _) in expected.items():
        torch.testing.assert_close(edit.gain[layer] + 1, w, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(edit.shift[layer], b, atol=1e-4, rtol=1e-4)
    # Sequential: layer 2's map differs from one fitted on the untransported model.
    independent = _fit_by_hand(tiny_qwen3, tiny_tokenizer, toxic, clean, [2])[2]
    assert (independent[0] - (edit.gain[2] + 1)).abs().max() > 1e-3
    # At strength s: (1 - s) h + s (w h + b) at the first transported layer.
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    before = _outputs(tiny_qwen3, batch)
    with steer(tiny_qwen3, method, layer=0, alpha=0.5):
        after = _outputs(tiny_qwen3, batch)
    w, b, _ = expected[0]
    torch.testing.assert_close(after[0], 0.5 * before[0] + 0.5 * (w * before[0] + b),
                               atol=1e-4, rtol=1e-4)
    # Not compared: nothing is fitted.
    raw["sweep"]["methods"] = ["caa"]
    assert cmp.fit_linear_act(tiny_qwen3, tiny_tokenizer, parse_params(raw), contrast) is None


def test_linear_act_layers_out_of_range_name_the_field(tiny_qwen3, tiny_tokenizer):
    raw = _default()
    raw["sweep"]["methods"] = ["linear_act"]
    raw["methods"]["linear_act"] = {"strengths": [1.0], "layers": [0, 9]}
    contrast = pd.DataFrame({"set": ["train_toxic", "train_clean"], "context": "",
                             "text": ["a", "b"]})
    with pytest.raises(ParamsError, match="methods.linear_act.layers"):
        cmp.fit_linear_act(tiny_qwen3, tiny_tokenizer, parse_params(raw), contrast)


# The prompt baseline through the chat template ---------------------------------------------

_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>"
             "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def test_prompt_goes_through_the_chat_template_when_there_is_one(tiny_tokenizer):
    import copy

    chat = copy.deepcopy(tiny_tokenizer)
    chat.chat_template = _TEMPLATE
    method = iv.chat_prompt(chat, "Be kind.\n\n")
    text = chat.apply_chat_template(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "you are"}],
        tokenize=False, add_generation_prompt=True)
    assert method.wrap("you are") == text == ("<system>Be kind.</system><user>you are</user>"
                                              "<assistant>")
    assert method.method == "prompt" and method.edit is None
    raw = iv.chat_prompt(tiny_tokenizer, "Be kind. ")  # no template: the raw text, so noted
    assert raw.wrap("you are") == "Be kind. you are" and "none" in raw.metadata["template"]
    assert iv.prompt_baseline("Be kind. ").method == "prompt_raw"
    assert method.fingerprint != raw.fingerprint


def test_capability_questions_are_wrapped_by_the_template(tiny_qwen3, tiny_tokenizer):
    import copy

    from steering_utils.capability import capability_correct, choose_answers

    chat = copy.deepcopy(tiny_tokenizer)
    chat.chat_template = _TEMPLATE
    method = iv.chat_prompt(chat, "Be kind.")
    items = pd.DataFrame({"question": ["Which is a cat?"], "options": [["dog", "cat"]],
                          "gold": [1]})
    wrapped = items.assign(question=method.wrap("Which is a cat?"))
    got = capability_correct(tiny_qwen3, tiny_tokenizer, items, method, 0, 1.0)
    assert got.tolist() == (choose_answers(tiny_qwen3, tiny_tokenizer, wrapped)
                            == wrapped["gold"].to_numpy()).tolist()


# Params and the builder ----------------------------------------------------------------


def test_build_interventions_makes_the_published_variants(tiny_qwen3, tiny_tokenizer):
    n_layers, d = _sizes(tiny_qwen3)
    raw = _default()
    raw["sweep"]["methods"] = "all"
    raw["methods"]["actadd"] = {"strengths": [1.0], "toxic_text": " hate",
                                "clean_text": " love", "context": "the"}
    raw["methods"]["actadd_pooled"] = {"strengths": [1.0], "toxic_text": "hate",
                                       "clean_text": "love", "context": "the"}
    params = parse_params(raw)
    directions = _randn(n_layers, d, seed=9) * 0.01
    vectors = SteeringVectors(directions, torch.full((n_layers,), 10.0))
    stats = {"toxic_mean": torch.zeros(n_layers, d), "toxic_std": torch.ones(n_layers, d),
             "clean_mean": _randn(n_layers, d, seed=10), "clean_std": torch.ones(n_layers, d)}
    actadd = cmp.actadd_activations(tiny_qwen3, tiny_tokenizer, params)
    linear = iv.linear_act(torch.zeros(n_layers, d), torch.ones(n_layers, d), [0, 1, 2])
    built = cmp.build_interventions(params, vectors, stats, actadd, {"random-0": vectors},
                                    layer=1, tokenizer=tiny_tokenizer, linear_act=linear)
    # conditional CAA needs its dev gate (conditional.build_gate): left out without one
    assert list(built) == [m for m in compared_methods(params.sweep) if m != "conditional_caa"]
    assert built["actadd"].layer == 1 and built["actadd"].edit.front.shape == (n_layers, 2, d)
    assert torch.equal(built["actadd"].edit.front[1, 0], torch.zeros(d))  # shared context
    assert built["ablation"].all_layers and built["ablation"].metadata["direction_layer"] == 1
    unit = directions[1] / directions[1].norm()
    assert torch.allclose(built["ablation"].edit.unit, unit.expand(n_layers, -1))
    assert not built["ace"].all_layers and not built["ablation_layer"].all_layers
    assert built["prompt_raw"].prefix == params.methods.prompt.instruction
    assert built["linear_act"] is linear
    # ActAdd's own layer, range-checked against the model.
    raw["methods"]["actadd"]["layer"] = 7
    with pytest.raises(ParamsError, match="methods.actadd.layer"):
        cmp.build_interventions(parse_params(raw), vectors, stats, actadd, {"random-0": vectors},
                                layer=1, tokenizer=tiny_tokenizer, linear_act=linear)
    # Its strengths are held to sweep.max_relative_push at its worst token.
    raw["methods"]["actadd"].update(layer=None, strengths=[900.0])
    with pytest.raises(ParamsError, match="methods.actadd.strengths: 900"):
        cmp.build_interventions(parse_params(raw), vectors, stats, actadd, {"random-0": vectors},
                                layer=1, tokenizer=tiny_tokenizer, linear_act=linear)
    assert cmp.strengths(params, "prompt") == cmp.strengths(params, "prompt_raw") == [1.0]


def test_method_params_errors_name_the_field_and_fix():
    raw = _default()
    raw["methods"]["ablation"] = {"strengths": [1.0], "layers": "all"}
    with pytest.raises(ParamsError, match="methods.ablation.*ablation_layer"):
        parse_params(raw)
    raw = _default()
    raw["generation"]["engine"] = "vllm"
    raw["sweep"]["methods"] = ["caa", "actadd", "ace"]
    with pytest.raises(ParamsError, match="sweep.methods: generation.engine vllm cannot steer "
                                          "actadd"):
        parse_params(raw)
    raw["sweep"]["methods"] = ["caa", "actadd_pooled", "ace"]
    assert compared_methods(parse_params(raw).sweep) == ["caa", "actadd_pooled", "ace"]
    with pytest.raises(ValueError, match="strength"):
        LinearActParams(strengths=[0.0])
    with pytest.raises(ValueError):
        ActAddParams(layer=-1)


def test_method_rows_carry_actadds_own_layer_and_the_templated_prompt(tiny_tokenizer):
    import copy

    from steering_utils.generation import make_jobs
    from steering_utils.stages import ALL_LAYERS, UNSTEERED_LAYER

    raw = _default()
    raw["sweep"]["methods"] = ["caa", "actadd", "ablation", "prompt"]
    raw["methods"]["actadd"] = {"strengths": [1.0, 3.0], "layer": 2}
    params = parse_params(raw)
    n_layers, d = 3, 8
    directions = _randn(n_layers, d, seed=11)
    chat = copy.deepcopy(tiny_tokenizer)
    chat.chat_template = _TEMPLATE
    interventions = {"caa": SteeringVectors(directions, torch.ones(n_layers)),
                     "actadd": iv.actadd_front(_randn(n_layers, 2, d), _randn(n_layers, 2, d), 2),
                     "ablation": iv.directional_ablation(directions[1], n_layers, 1),
                     "prompt": iv.chat_prompt(chat, "Be kind.")}
    dev = pd.DataFrame({"prompt_id": ["d0", "d1"], "text": ["you are", "the cat"],
                        "subset": "challenging", "split": "dev"})
    baseline = make_jobs(dev, [(UNSTEERED_LAYER, 0.0)], 1).assign(
        completion="a", toxicity=0.5, nll=2.0, experiment="baseline")
    grid = make_jobs(dev, [(1, 1.0), (1, 2.0)], 1).assign(completion="x", toxicity=0.1,
                                                          nll=2.0, experiment="grid")
    jobs, _ = cmp.grid_jobs(dev, baseline, grid, params, 1, interventions)
    cells = {m: sorted(set(zip(part["layer"], part["alpha"])))
             for m, part in jobs.groupby("method")}
    assert cells["actadd"] == [(2, 1.0), (2, 3.0)]  # its own layer, not the comparison's
    assert cells["ablation"] == [(ALL_LAYERS, 1.0)]
    assert cells["prompt"] == [(UNSTEERED_LAYER, 1.0)]
    prompt_rows = jobs[jobs["method"] == "prompt"]
    assert list(prompt_rows["prompt"]) == [
        "<system>Be kind.</system><user>you are</user><assistant>",
        "<system>Be kind.</system><user>the cat</user><assistant>"]


def test_new_methods_run_through_job_shards_keyed_by_their_content(tiny_qwen3, tiny_tokenizer,
                                                                   tmp_path):
    import copy

    from steering_utils.generation import make_jobs
    from steering_utils.jobs import run_jobs
    from steering_utils.scoring import load_scorer
    from steering_utils.stages import ALL_LAYERS, UNSTEERED_LAYER

    raw = _default()
    raw["generation"].update(max_new_tokens=3, batch_size=4)
    params = parse_params(raw)
    n_layers, d = _sizes(tiny_qwen3)
    directions = _randn(n_layers, d, seed=13)
    chat = copy.deepcopy(tiny_tokenizer)
    chat.chat_template = _TEMPLATE
    toxic, clean = _randn(n_layers, 2, d, seed=14), _randn(n_layers, 2, d, seed=15)
    methods = {"actadd": (iv.actadd_front(toxic, clean, 1), 1),
               "ablation": (iv.directional_ablation(directions[1], n_layers, 1), ALL_LAYERS),
               "ace": (iv.ace(directions, _randn(n_layers, d, seed=16)), 1),
               "linear_act": (iv.linear_act(torch.full((n_layers, d), -0.5),
                                            torch.ones(n_layers, d), [0, 2]), ALL_LAYERS),
               "prompt": (iv.chat_prompt(chat, "be kind"), UNSTEERED_LAYER)}
    prompts = pd.DataFrame({"prompt_id": ["p0", "p1"], "text": ["you are a", "the cat"]})
    jobs = pd.concat([make_jobs(prompts, [(layer, 1.0)], 1, direction=name)
                      .assign(prompt=lambda t, m=method: [m.wrap(x) for x in t["prompt"]])
                      for name, (method, layer) in methods.items()], ignore_index=True)
    scorers = {"primary": load_scorer("profanity-check"), "second": None}
    directions_by_name = {name: method for name, (method, _) in methods.items()}
    out = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, directions_by_name, params, scorers,
                   tmp_path)
    assert len(out) == 10 and out["nll"].notna().all()
    assert len(list(tmp_path.glob("*.parquet"))) == 5  # one shard per method's cell
    # Another ActAdd pair is another shard; the same one is reused.
    other = iv.actadd_front(toxic, clean + 1, 1)
    assert other.fingerprint != methods["actadd"][0].fingerprint
    assert iv.actadd_front(toxic.clone(), clean.clone(), 1).fingerprint == \
        methods["actadd"][0].fingerprint


def test_capture_stopped_after_the_deepest_layer_equals_the_full_pass(tiny_qwen3,
                                                                      tiny_tokenizer):
    full = capture_activations(tiny_qwen3, tiny_tokenizer, TEXTS, layers=[1, 0])
    stopped = capture_activations(tiny_qwen3, tiny_tokenizer, TEXTS, layers=[1, 0],
                                  stop_early=True)
    for key in full:
        assert torch.equal(full[key], stopped[key]), key
    calls = []
    hook = decoder_layers(tiny_qwen3)[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        capture_activations(tiny_qwen3, tiny_tokenizer, TEXTS, layers=[1], stop_early=True)
    finally:
        hook.remove()
    assert calls == []  # the layer above the deepest captured one never ran
