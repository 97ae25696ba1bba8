"""The steering hook on a tiny random Qwen3: exact shifts, per-row cells, decode steps."""

from __future__ import annotations

import pytest
import torch

from steering_utils.models import decoder_layers
from steering_utils.steering import steer

PROMPTS = ["the cat runs at night", "you are a stupid idiot", "we love the day"]


def _batch(tokenizer, texts=PROMPTS):
    return tokenizer(texts, return_tensors="pt", padding=True)


def _vectors(model, seed=1, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    n, d = model.config.num_hidden_layers, model.config.hidden_size
    return torch.randn(n, d, generator=gen) * scale


def _layer_outputs(model, batch):
    captured = {}
    handles = [
        layer.register_forward_hook(
            lambda m, a, out, i=i: captured.__setitem__(i, (out[0] if isinstance(out, tuple)
                                                            else out).detach().clone())
        )
        for i, layer in enumerate(decoder_layers(model))
    ]
    try:
        with torch.no_grad():
            logits = model(**batch).logits
    finally:
        for h in handles:
            h.remove()
    return logits, captured


def test_alpha_zero_is_bit_identical(tiny_qwen3, tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        plain = tiny_qwen3(**batch).logits
        with steer(tiny_qwen3, _vectors(tiny_qwen3), layer=1, alpha=0.0):
            steered = tiny_qwen3(**batch).logits
    assert torch.equal(plain, steered)


def test_known_vector_shifts_layer_output_by_exactly_it(tiny_qwen3, tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    vectors = torch.zeros(tiny_qwen3.config.num_hidden_layers, tiny_qwen3.config.hidden_size)
    vectors[1, 5] = 2.0
    _, before = _layer_outputs(tiny_qwen3, batch)
    # The steered layer's own output, captured by a hook registered after steering's.
    with steer(tiny_qwen3, vectors, layer=1, alpha=1.5):
        _, after = _layer_outputs(tiny_qwen3, batch)
    expected = before[1].clone()
    expected[..., 5] -= 3.0
    torch.testing.assert_close(after[1], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    assert not torch.allclose(after[2], before[2])  # downstream layers see the change


def test_hook_accepts_tuple_outputs_and_returns_a_tuple(tiny_qwen3, tiny_tokenizer):
    """transformers 4 decoder layers return tuples; the hook must keep the type."""
    layer = decoder_layers(tiny_qwen3)[0]
    original = layer.forward

    def tuple_forward(*args, **kwargs):
        return (original(*args, **kwargs), "extra")

    layer.forward = tuple_forward
    seen = {}
    handle = layer.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out) or out[0])
    try:
        vectors = _vectors(tiny_qwen3)
        with steer(tiny_qwen3, vectors, layer=0, alpha=1.0), torch.no_grad():
            tiny_qwen3(**_batch(tiny_tokenizer))
    finally:
        handle.remove()
        del layer.forward
    assert isinstance(seen["out"], tuple) and seen["out"][1] == "extra"


def test_per_row_alphas_equal_separate_runs(tiny_qwen3, tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    vectors = _vectors(tiny_qwen3)
    cells = [(0, 1.0), (2, -0.5), (1, 0.0)]
    with torch.no_grad():
        with steer(tiny_qwen3, vectors, [c[0] for c in cells], [c[1] for c in cells]):
            mixed = tiny_qwen3(**batch).logits
        for row, (layer, alpha) in enumerate(cells):
            with steer(tiny_qwen3, vectors, layer, alpha):
                alone = tiny_qwen3(**batch).logits[row]
            torch.testing.assert_close(mixed[row], alone, rtol=0, atol=1e-5)


def _greedy(model, batch, **kwargs):
    return model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0, **kwargs)


def test_generated_only_leaves_prompt_untouched_and_steers_every_decode_step(
    tiny_qwen3, tiny_tokenizer
):
    batch = _batch(tiny_tokenizer)
    vectors = _vectors(tiny_qwen3, scale=20.0)
    with torch.no_grad():
        plain_logits = tiny_qwen3(**batch).logits
        with steer(tiny_qwen3, vectors, layer=1, alpha=1.0, positions="generated"):
            prompt_logits = tiny_qwen3(**batch).logits
        torch.testing.assert_close(prompt_logits, plain_logits, rtol=0, atol=0)

        plain = _greedy(tiny_qwen3, batch)
        # Record how many positions each forward call steered, under the KV cache.
        steered_positions = []
        layer = decoder_layers(tiny_qwen3)[1]
        probe = layer.register_forward_hook(
            lambda m, a, out: steered_positions.append(out.shape[1])
        )
        try:
            with steer(tiny_qwen3, vectors, layer=1, alpha=1.0, positions="generated"):
                cached = _greedy(tiny_qwen3, batch, use_cache=True)
        finally:
            probe.remove()
        with steer(tiny_qwen3, vectors, layer=1, alpha=1.0, positions="generated"):
            uncached = _greedy(tiny_qwen3, batch, use_cache=False)
    n_prompt = batch["input_ids"].shape[1]
    # Prefill then one call per decode step, each of length 1.
    assert steered_positions[0] == n_prompt and set(steered_positions[1:]) == {1}
    # The first new token comes from unsteered prompt positions: identical.
    assert torch.equal(cached[:, : n_prompt + 1], plain[:, : n_prompt + 1])
    # Later tokens are steered at every decode step: the cache path matches a
    # full recompute, and differs from unsteered generation.
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)


def test_hooks_removed_after_exception(tiny_qwen3, tiny_tokenizer):
    layers = decoder_layers(tiny_qwen3)
    before = [len(layer._forward_hooks) for layer in layers]
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny_qwen3, _vectors(tiny_qwen3), layer=[0, 1, 2], alpha=[1.0, 1.0, 1.0]):
            inside = [len(layer._forward_hooks) for layer in layers]
            assert [a - b for a, b in zip(inside, before)] == [1, 1, 1]
            raise RuntimeError("boom")
    assert [len(layer._forward_hooks) for layer in layers] == before


def test_vectors_cast_to_model_dtype(tiny_tokenizer):
    """An fp32 vector steers a bf16 model: the shift is the vector cast to bf16, applied in
    bf16 (what the hook does), and the rest of the model runs on in bf16."""
    from tests.conftest import build_tiny_qwen3

    model = build_tiny_qwen3(len(tiny_tokenizer)).to(torch.bfloat16)
    vectors, batch = _vectors(model), _batch(tiny_tokenizer)
    plain_logits, before = _layer_outputs(model, batch)
    with steer(model, vectors, layer=0, alpha=1.5):
        logits, after = _layer_outputs(model, batch)
    assert after[0].dtype == logits.dtype == torch.bfloat16
    shift = -(torch.tensor(1.5, dtype=torch.bfloat16) * vectors[0].to(torch.bfloat16))
    assert torch.equal(after[0], before[0] + shift)
    assert not torch.equal(logits, plain_logits)


def test_bad_layer_and_row_counts_raise(tiny_qwen3):
    vectors = _vectors(tiny_qwen3)
    with pytest.raises(ValueError, match="out of range"):
        with steer(tiny_qwen3, vectors, layer=7, alpha=1.0):
            pass
    with pytest.raises(ValueError, match="2 layers but 3 alphas"):
        with steer(tiny_qwen3, vectors, layer=[0, 1], alpha=[1.0, 1.0, 1.0]):
            pass
