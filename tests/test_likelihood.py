"""Continuation log-likelihood, perplexity and multiple choice on a tiny random Qwen3 (and, for
batch-independence, the offline model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from steering_utils.capability import choose_answers
from steering_utils.likelihood import continuation_logprobs, continuation_nll


def _logprob(model, tokenizer, context: str, continuation: str) -> tuple[float, int]:
    """(sum of log p(continuation | context), its token count): one unbatched forward pass."""
    ids = tokenizer(context + continuation, return_tensors="pt")["input_ids"]
    n_ctx = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1], -1)
    picked = logprobs[torch.arange(n_ctx - 1, ids.shape[1] - 1), ids[0, n_ctx:]]
    return picked.sum().item(), ids.shape[1] - n_ctx


def test_logprobs_match_a_hand_computation_and_ignore_padding(tiny_qwen3, tiny_tokenizer):
    contexts = ["the cat", "you are a very stupid idiot and"]
    continuations = [" runs at night", " bad"]
    sums, counts = continuation_logprobs(tiny_qwen3, tiny_tokenizer, contexts, continuations,
                                         batch_size=2)
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        expected, n = _logprob(tiny_qwen3, tiny_tokenizer, ctx, cont)
        assert counts[i] == n
        assert abs(sums[i] - expected) < 1e-4
    nll = continuation_nll(tiny_qwen3, tiny_tokenizer, contexts + ["the"], continuations + [""])
    np.testing.assert_allclose(nll[:2], -sums / counts, rtol=1e-6)
    assert np.isnan(nll[2])


def test_multiple_choice_picks_the_option_made_far_likelier(tiny_qwen3, tiny_tokenizer):
    dog = tiny_tokenizer.convert_tokens_to_ids("dog")
    items = pd.DataFrame({"question": ["what runs", "who is kind"],
                          "options": [["cat", "dog", "day"], ["dog", "night"]], "gold": [1, 0]})
    # A large output bias makes "dog" far likelier than any other token.
    bias = torch.zeros(tiny_qwen3.config.vocab_size)
    bias[dog] = 100.0
    hook = tiny_qwen3.lm_head.register_forward_hook(lambda m, a, out: out + bias)
    try:
        picks = choose_answers(tiny_qwen3, tiny_tokenizer, items)
    finally:
        hook.remove()
    assert picks.tolist() == [1, 0]
    # Without the bias each pick is the option likeliest per character, computed here one
    # option at a time (no batching, no padding).
    expected = []
    for question, options in zip(items["question"], items["options"]):
        per_char = [_logprob(tiny_qwen3, tiny_tokenizer, f"Question: {question}\nAnswer:",
                             f" {option}")[0] / len(f" {option}") for option in options]
        expected.append(int(np.argmax(per_char)))
    assert choose_answers(tiny_qwen3, tiny_tokenizer, items, batch_size=3).tolist() == expected


# Short rows of one shard, then a longer shard's rows that would share their batch.
SHARD = [("The weather today is", " nice and warm"), ("I think that", " you are right")]
BESIDE = [("In a long story about a small village by the sea, the old fisherman told us that",
           " the storm was coming"),
          ("After many years of hard work in the city, she finally decided to", " go home")]


@pytest.mark.slow
def test_a_blocks_numbers_do_not_depend_on_the_rows_beside_it(offline_model):
    """Perplexity is computed shard by shard (`blocks`): padding changes a batch's float
    rounding (about 1e-6 on the offline model), and a local, a Ray and a resumed run put
    other shards beside a shard; its numbers must not move."""
    model, tokenizer = offline_model
    alone = continuation_nll(model, tokenizer, *map(list, zip(*SHARD)))
    beside = continuation_nll(model, tokenizer, *map(list, zip(*(SHARD + BESIDE))),
                              blocks=[0, 0, 1, 1])
    assert beside[:2].tolist() == alone.tolist()
