"""Continuation log-likelihood, perplexity and multiple choice on a tiny random Qwen3."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from steering_utils.capability import choose_answers
from steering_utils.likelihood import continuation_logprobs, continuation_nll


def test_logprobs_match_a_hand_computation_and_ignore_padding(tiny_qwen3, tiny_tokenizer):
    contexts = ["the cat", "you are a very stupid idiot and"]
    continuations = [" runs at night", " bad"]
    sums, counts = continuation_logprobs(tiny_qwen3, tiny_tokenizer, contexts, continuations,
                                         batch_size=2)
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        ids = tiny_tokenizer(ctx + cont, return_tensors="pt")["input_ids"]
        n_ctx = len(tiny_tokenizer(ctx)["input_ids"])
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_qwen3(ids).logits[0, :-1], -1)
        expected = logprobs[torch.arange(n_ctx - 1, ids.shape[1] - 1), ids[0, n_ctx:]].sum()
        assert counts[i] == ids.shape[1] - n_ctx
        assert abs(sums[i] - expected.item()) < 1e-4
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
    # Without the bias the random model is not forced to the same answers.
    assert choose_answers(tiny_qwen3, tiny_tokenizer, items).shape == (2,)
