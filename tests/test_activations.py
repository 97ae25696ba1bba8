"""Pooling over the last real tokens, and CAA vectors, on a tiny random Qwen3."""

from __future__ import annotations

import math

import pytest
import torch

from steering_utils.activations import (
    capture_activations,
    load_activation_sets,
    pool_mask,
    save_activation_sets,
)
from steering_utils.vectors import SteeringVectors, compute_caa_vectors, separation_auc

TEXTS = ["the cat runs at night and the dog runs in the day", "you are stupid",
         "we love all the good people", "she said no"]


def test_pool_mask_takes_the_last_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert pool_mask(mask, 2).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert pool_mask(mask, 10).tolist() == mask.float().tolist()


def test_text_alone_equals_text_in_left_padded_batch(tiny_qwen3, tiny_tokenizer):
    batched = capture_activations(tiny_qwen3, tiny_tokenizer, TEXTS, last_n=4, batch_size=4)
    for i, text in enumerate(TEXTS):
        alone = capture_activations(tiny_qwen3, tiny_tokenizer, [text], last_n=4, batch_size=1)
        torch.testing.assert_close(batched["pooled"][i], alone["pooled"][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batched["token_norm"][i], alone["token_norm"][0], rtol=0,
                                   atol=1e-5)
    n_layers, d = tiny_qwen3.config.num_hidden_layers, tiny_qwen3.config.hidden_size
    assert batched["pooled"].shape == (len(TEXTS), n_layers, d)


def test_pooling_matches_hidden_states_by_hand(tiny_qwen3, tiny_tokenizer):
    text = TEXTS[0]
    pooled = capture_activations(tiny_qwen3, tiny_tokenizer, [text], last_n=3)["pooled"][0]
    batch = tiny_tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        hidden = tiny_qwen3(**batch, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is layer i's output (the last one after the final norm).
    for layer in range(tiny_qwen3.config.num_hidden_layers - 1):
        torch.testing.assert_close(pooled[layer], hidden[layer + 1][0, -3:].mean(0), rtol=0,
                                   atol=1e-5)


def test_caa_vector_is_the_mean_difference_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    toxic = {"pooled": torch.randn(6, 3, 8, generator=gen) + 1.0, "token_norm": torch.ones(6, 3)}
    clean = {"pooled": torch.randn(5, 3, 8, generator=gen), "token_norm": torch.full((5, 3), 3.0)}
    vectors = compute_caa_vectors(toxic, clean, metadata={"model": "m"})
    expected = toxic["pooled"].mean(0) - clean["pooled"].mean(0)
    torch.testing.assert_close(vectors.directions, expected)
    torch.testing.assert_close(vectors.activation_norms, torch.full((3,), 21 / 11))
    assert vectors.relative_norm(1, 2.0) == pytest.approx(2 * expected[1].norm() / (21 / 11))
    vectors.save(tmp_path / "v.safetensors")
    loaded = SteeringVectors.load(tmp_path / "v.safetensors")
    assert torch.equal(loaded.directions, vectors.directions)
    assert loaded.metadata["model"] == "m" and loaded.metadata["n_toxic"] == 6
    assert loaded.metadata["layers"] == [0, 1, 2]
    unit = compute_caa_vectors(toxic, clean, normalize=True)
    torch.testing.assert_close(unit.norms, torch.ones(3))
    auc = separation_auc(vectors, toxic["pooled"], clean["pooled"])
    assert all(0.5 < a <= 1.0 for a in auc)


def test_separation_auc_is_the_share_of_toxic_clean_pairs_ranked_right():
    """Projections 3, 1 (toxic) vs 2, 0, 2 (clean): 4 of 6 pairs ordered right; a tie counts
    half (1 vs 1 below), and the sign of v matters (layer 1 points the other way)."""
    directions = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])
    vectors = SteeringVectors(directions, torch.ones(2))
    toxic = torch.tensor([[3.0, 9.0], [1.0, 9.0]])[:, None, :].expand(2, 2, 2)
    clean = torch.tensor([[2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])[:, None, :].expand(3, 2, 2)
    assert separation_auc(vectors, toxic, clean) == pytest.approx([4 / 6, 2 / 6])
    tied = separation_auc(vectors, toxic[1:], torch.tensor([[1.0, 0.0]])[:, None].expand(1, 2, 2))
    assert tied == pytest.approx([0.5, 0.5])
    assert all(math.isnan(a) for a in separation_auc(vectors, toxic[:0], clean))


def test_activation_sets_round_trip(tmp_path):
    sets = {"train_toxic": {"pooled": torch.randn(2, 3, 4), "token_norm": torch.rand(2, 3)}}
    save_activation_sets(sets, tmp_path / "a.safetensors")
    loaded = load_activation_sets(tmp_path / "a.safetensors")
    assert torch.equal(loaded["train_toxic"]["pooled"], sets["train_toxic"]["pooled"])


def test_with_a_context_only_the_continuation_tokens_are_pooled(tiny_qwen3, tiny_tokenizer):
    context, text = "you are a stupid idiot and", "we love the cat"
    pooled = capture_activations(tiny_qwen3, tiny_tokenizer, [text], last_n=32,
                                 contexts=[context])["pooled"][0]
    ids = tiny_tokenizer(context)["input_ids"] + tiny_tokenizer(
        text, add_special_tokens=False)["input_ids"]
    n_text = len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        hidden = tiny_qwen3(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer in range(tiny_qwen3.config.num_hidden_layers - 1):
        torch.testing.assert_close(pooled[layer], hidden[layer + 1][0, -n_text:].mean(0),
                                   rtol=0, atol=1e-5)
    # In a padded batch beside a longer row, the same numbers.
    batch = capture_activations(tiny_qwen3, tiny_tokenizer, [text, "no"], last_n=32,
                                contexts=[context, "the the the the the the the the the"])
    torch.testing.assert_close(batch["pooled"][0], pooled, rtol=0, atol=1e-5)


def test_paired_contrast_takes_each_prompts_extremes_and_counts_what_it_drops():
    import pandas as pd

    from steering_utils.activations import contrast_texts

    rows = pd.DataFrame({
        "subset": "challenging", "split": "train",
        "prompt_id": ["a", "a", "a", "b", "b", "c", "c", "d", "d"],
        "sample": [0, 1, 2, 0, 1, 0, 1, 0, 1],
        "prompt": ["A"] * 3 + ["B"] * 2 + ["C"] * 2 + ["D"] * 2,
        "completion": ["x", "y", "z", "p", "q", "same", "same", "", "w"],
        "toxicity": [0.2, 0.9, 0.5, 0.4, 0.3, 0.5, 0.5, 0.9, 0.1],
    })
    table, counts = contrast_texts(rows, None, "paired", 10, "train")
    # a: gap 0.7 (y vs x); b: gap 0.1 (p vs q); c: tie, dropped; d: one non-empty, dropped.
    # The default Gap keeps any gap; params' thresholds are tested in test_contrasts.py.
    assert table["side"].tolist() == ["toxic", "clean", "toxic", "clean"]
    assert table["text"].tolist() == ["y", "x", "p", "q"]
    assert table["context"].tolist() == ["A", "A", "B", "B"]
    assert counts == {"prompts": 4, "continuations": 9, "empty_continuations": 1,
                      "only_empty_continuations": 0, "single_continuation": 1, "tied": 1,
                      "no_toxic_side": 0, "no_clean_side": 0, "no_toxic_nor_clean_side": 0,
                      "pairs_kept": 2, "toxic_min": 0.0, "clean_max": 1.0,
                      "label": "toxicity", "pairs_used": 2}
    widest, _ = contrast_texts(rows, None, "paired", 1, "train")
    assert widest["text"].tolist() == ["y", "x"]  # n_per_side keeps the widest gaps
    with pytest.raises(ValueError, match="too few pairs"):
        contrast_texts(rows[rows["prompt_id"] == "a"], None, "paired", 10, "train")


def test_capture_halves_the_batch_on_out_of_memory_and_counts_each_token_once(tiny_qwen3,
                                                                              tiny_tokenizer):
    """An out-of-memory error in layer 1 (after layer 0's hook ran) halves the batch; the
    retried rows' token moments are added once, so the result equals a run at that batch."""
    from steering_utils import batching
    from steering_utils.models import decoder_layers

    texts = TEXTS * 3
    expected = capture_activations(tiny_qwen3, tiny_tokenizer, texts, last_n=4, batch_size=2)
    seen = []

    def out_of_memory_above_two(module, args):
        seen.append(args[0].shape[0])
        if args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    tiny_qwen3.config.name_or_path = "oom-activations"
    hook = decoder_layers(tiny_qwen3)[1].register_forward_pre_hook(out_of_memory_above_two)
    try:
        got = capture_activations(tiny_qwen3, tiny_tokenizer, texts, last_n=4, batch_size=16)
        assert batching._FITTING_BATCH[("oom-activations", "activations")] == 2
    finally:
        hook.remove()
        tiny_qwen3.config.name_or_path = ""
        batching._FITTING_BATCH.clear()
    assert seen[:3] == [12, 8, 4] and max(seen[3:]) == 2
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
