"""Each compared method's exact arithmetic on the hidden state, on a tiny random Qwen3.

A method's edit is captured at the layer it steers: a hook registered after the
steering hook sees the edited output, compared with the unsteered output h.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from steering_utils import interventions as iv
from steering_utils.capability import capability_correct
from steering_utils.models import decoder_layers
from steering_utils.steering import steer

TEXTS = ["the cat runs at night", "you are a stupid idiot", "we love the day"]


def _outputs(model, batch) -> dict[int, torch.Tensor]:
    captured = {}
    handles = [layer.register_forward_hook(
        lambda m, a, out, i=i: captured.__setitem__(
            i, (out[0] if isinstance(out, tuple) else out).detach().clone()))
        for i, layer in enumerate(decoder_layers(model))]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _directions(model, seed=3, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(model.config.num_hidden_layers, model.config.hidden_size,
                       generator=gen) * scale


def _edited(model, tokenizer, intervention, layer, strength):
    """(h before the edit at `layer`, h after), from one steered forward pass.

    The layer's input is the same with and without the edit (earlier layers are
    untouched), so the unsteered output of this layer is the h the edit saw.
    """
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    before = _outputs(model, batch)
    with steer(model, intervention, layer=layer, alpha=strength):
        after = _outputs(model, batch)
    return before, after


def test_ablation_at_strength_one_leaves_no_component_along_v(tiny_qwen3, tiny_tokenizer):
    directions = _directions(tiny_qwen3)
    before, after = _edited(tiny_qwen3, tiny_tokenizer, iv.ablation(directions, False), 1, 1.0)
    unit = directions[1] / directions[1].norm()
    assert (before[1] @ unit).abs().max() > 0.02  # there was a component to remove
    assert (after[1] @ unit).abs().max() < 1e-6
    # Only the component along v changed.
    expected = before[1] - (before[1] @ unit)[..., None] * unit
    torch.testing.assert_close(after[1], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[0], before[0])  # earlier layers untouched


def test_ablation_strength_scales_the_removed_fraction(tiny_qwen3, tiny_tokenizer):
    directions = _directions(tiny_qwen3)
    before, after = _edited(tiny_qwen3, tiny_tokenizer, iv.ablation(directions, False), 1, 0.5)
    unit = directions[1] / directions[1].norm()
    torch.testing.assert_close(after[1] @ unit, 0.5 * (before[1] @ unit), atol=1e-5, rtol=1e-5)


def test_ablation_on_all_layers_steers_every_layer_whatever_the_row_layer(tiny_qwen3,
                                                                        tiny_tokenizer):
    directions = _directions(tiny_qwen3)
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    with steer(tiny_qwen3, iv.ablation(directions, True), layer=[-2] * 3, alpha=[1.0] * 3,
               batch_size=3):
        after = _outputs(tiny_qwen3, batch)
    for layer, hidden in after.items():
        unit = directions[layer] / directions[layer].norm()
        assert (hidden @ unit).abs().max() < 1e-6, layer


def test_mean_transport_maps_toxic_statistics_onto_clean_ones(tiny_qwen3, tiny_tokenizer):
    n, d = tiny_qwen3.config.num_hidden_layers, tiny_qwen3.config.hidden_size
    gen = torch.Generator().manual_seed(5)
    stats = {"toxic_mean": torch.randn(n, d, generator=gen),
             "toxic_std": torch.rand(n, d, generator=gen) + 0.5,
             "clean_mean": torch.randn(n, d, generator=gen),
             "clean_std": torch.rand(n, d, generator=gen) + 0.5}
    method = iv.mean_transport(stats, all_layers=False)
    for strength in (1.0, 0.5):
        before, after = _edited(tiny_qwen3, tiny_tokenizer, method, 1, strength)
        h = before[1]
        mapped = (stats["clean_mean"][1]
                  + stats["clean_std"][1] / stats["toxic_std"][1] * (h - stats["toxic_mean"][1]))
        torch.testing.assert_close(after[1], (1 - strength) * h + strength * mapped,
                                   atol=1e-4, rtol=1e-4)
    # A unit distributed as the toxic side comes out distributed as the clean side.
    sample = stats["toxic_mean"][1] + stats["toxic_std"][1] * torch.randn(4000, d, generator=gen)
    edit = method.edit
    moved = sample + edit.shift[1] + edit.gain[1] * sample
    torch.testing.assert_close(moved.mean(0), stats["clean_mean"][1], atol=0.1, rtol=0)
    torch.testing.assert_close(moved.std(0), stats["clean_std"][1], atol=0.1, rtol=0.05)


def test_token_statistics_are_the_moments_of_the_pooled_tokens():
    gen = torch.Generator().manual_seed(0)
    tokens = {side: torch.randn(50, 2, 4, generator=gen) * scale + shift
              for side, scale, shift in (("toxic", 2.0, 1.0), ("clean", 0.5, -1.0))}
    sets = {f"train_{side}": {"token_sum": t.double().sum(0), "token_sq_sum": (t.double() ** 2)
                              .sum(0), "token_count": torch.tensor([50.0], dtype=torch.float64)}
            for side, t in tokens.items()}
    stats = iv.token_statistics(sets)
    for side, t in tokens.items():
        torch.testing.assert_close(stats[f"{side}_mean"], t.mean(0))
        torch.testing.assert_close(stats[f"{side}_std"], t.std(0), atol=1e-5, rtol=1e-5)


def test_actadd_and_caa_subtract_their_direction(tiny_qwen3, tiny_tokenizer):
    toxic = {"pooled": torch.randn(1, 3, tiny_qwen3.config.hidden_size)}
    clean = {"pooled": torch.randn(1, 3, tiny_qwen3.config.hidden_size)}
    directions = iv.actadd_directions(toxic, clean)
    before, after = _edited(tiny_qwen3, tiny_tokenizer, iv.additive("actadd", directions), 2, 3.0)
    torch.testing.assert_close(after[2], before[2] - 3.0 * directions[2])
    with pytest.raises(ValueError, match="exactly one"):
        iv.actadd_directions({"pooled": torch.zeros(2, 3, 4)}, clean)


def test_caa_edit_equals_the_plain_vector_bit_for_bit(tiny_qwen3, tiny_tokenizer):
    directions = _directions(tiny_qwen3)
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    with steer(tiny_qwen3, directions, layer=1, alpha=1.5):
        plain = _outputs(tiny_qwen3, batch)
    with steer(tiny_qwen3, iv.additive("caa", directions), layer=1, alpha=1.5):
        wrapped = _outputs(tiny_qwen3, batch)
    for layer in plain:
        assert torch.equal(plain[layer], wrapped[layer])


def test_prompt_baseline_does_not_steer_and_prefixes_capability_questions(tiny_qwen3,
                                                                          tiny_tokenizer):
    method = iv.prompt_baseline("Be kind. ")
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    before = _outputs(tiny_qwen3, batch)
    with steer(tiny_qwen3, method, layer=0, alpha=1.0):
        after = _outputs(tiny_qwen3, batch)
    for layer in before:
        assert torch.equal(before[layer], after[layer])
    items = pd.DataFrame({"question": ["Which is a fruit?"], "options": [["apple", "rock"]],
                          "gold": [0]})
    prefixed = items.assign(question="Be kind. Which is a fruit?")
    from steering_utils.capability import choose_answers

    got = capability_correct(tiny_qwen3, tiny_tokenizer, items, method, 0, 1.0)
    assert got.tolist() == (choose_answers(tiny_qwen3, tiny_tokenizer, prefixed)
                            == prefixed["gold"].to_numpy()).tolist()
    with pytest.raises(ValueError, match="instruction"):
        iv.prompt_baseline("  ")


def test_fingerprints_differ_by_method_content_and_layers():
    directions = torch.randn(3, 8)
    stats = {"toxic_mean": torch.zeros(3, 8), "toxic_std": torch.ones(3, 8),
             "clean_mean": torch.ones(3, 8), "clean_std": torch.ones(3, 8)}
    prints = {iv.ablation(directions, False).fingerprint, iv.ablation(directions, True).fingerprint,
              iv.ablation(directions * 2 + 1, False).fingerprint,
              iv.additive("actadd", directions).fingerprint,
              iv.mean_transport(stats, False).fingerprint, iv.prompt_baseline("a").fingerprint,
              iv.prompt_baseline("b").fingerprint}
    assert len(prints) == 7
    assert iv.ablation(directions, False).fingerprint == iv.ablation(directions.clone(),
                                                                     False).fingerprint
