"""Seeded per-row sampling and mixed-cell batches on a tiny random Qwen3."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from steering_utils.generation import (
    SeededSampler,
    baseline_jobs,
    generate_completions,
    make_jobs,
)
from steering_utils.params import GenerationParams

PROMPTS = pd.DataFrame(
    {
        "prompt_id": ["p0", "p1", "p2", "p3"],
        "text": ["the cat runs", "you are a stupid idiot and", "we love", "she said that the dog"],
    }
)
CELLS = [(-1, 0.0), (0, 1.0), (1, 2.0), (2, -1.0)]


def _vectors(model):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(model.config.num_hidden_layers, model.config.hidden_size, generator=gen) * 8


def _run(model, tokenizer, jobs, batch_size, temperature=0.7):
    gen = GenerationParams(temperature=temperature, top_p=0.9, max_new_tokens=6,
                           batch_size=batch_size)
    return generate_completions(model, tokenizer, jobs, _vectors(model), gen, seed=11)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_mixed_cell_batches_equal_the_per_cell_loop(tiny_qwen3, tiny_tokenizer, temperature):
    jobs = make_jobs(PROMPTS, CELLS, samples=2)
    mixed = _run(tiny_qwen3, tiny_tokenizer, jobs, batch_size=32, temperature=temperature)
    per_cell = pd.concat(
        [
            _run(tiny_qwen3, tiny_tokenizer, jobs[(jobs.layer == layer) & (jobs.alpha == alpha)],
                 batch_size=1, temperature=temperature)
            for layer, alpha in CELLS
        ]
    ).sort_index()
    assert list(mixed["completion"]) == list(per_cell["completion"])


def _steered_by_hand(model, tokenizer, jobs, layer: int, alpha: float) -> list[str]:
    """The rows' completions with a hook of our own on decoder layer `layer` that subtracts
    alpha * v[layer] (CAA) at every position; the package itself steers nothing."""
    from steering_utils.models import decoder_layers

    direction = _vectors(model)[layer]

    def subtract(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden - alpha * direction.to(hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    handle = decoder_layers(model)[layer].register_forward_hook(subtract)
    try:
        return list(_run(model, tokenizer, jobs.assign(alpha=0.0), batch_size=1)["completion"])
    finally:
        handle.remove()


def test_samples_differ_and_each_row_is_steered_at_its_own_layer(tiny_qwen3, tiny_tokenizer):
    jobs = make_jobs(PROMPTS, CELLS, samples=2)
    out = _run(tiny_qwen3, tiny_tokenizer, jobs, batch_size=8)
    by = out.set_index(["prompt_id", "layer", "alpha", "sample"])["completion"]
    assert (by.xs(0, level="sample") != by.xs(1, level="sample")).any()
    n_layers = tiny_qwen3.config.num_hidden_layers
    for layer, alpha in CELLS[1:]:
        rows = (jobs["layer"] == layer) & (jobs["alpha"] == alpha)
        # Each steered row equals the same row steered by hand at its own layer; steering the
        # next layer instead gives other text, so a row steered at the wrong layer fails.
        intended = _steered_by_hand(tiny_qwen3, tiny_tokenizer, jobs[rows], layer, alpha)
        assert list(out.loc[rows, "completion"]) == intended, (layer, alpha)
        other = _steered_by_hand(tiny_qwen3, tiny_tokenizer, jobs[rows], (layer + 1) % n_layers,
                                 alpha)
        assert other != intended, (layer, alpha)


def test_same_seed_same_text_and_new_seed_new_text(tiny_qwen3, tiny_tokenizer):
    jobs = make_jobs(PROMPTS, [(-1, 0.0)], samples=3)
    gen = GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=4)
    a = generate_completions(tiny_qwen3, tiny_tokenizer, jobs, None, gen, seed=1)
    b = generate_completions(tiny_qwen3, tiny_tokenizer, jobs, None, gen, seed=1)
    c = generate_completions(tiny_qwen3, tiny_tokenizer, jobs, None, gen, seed=2)
    assert list(a.completion) == list(b.completion)
    assert list(a.completion) != list(c.completion)


def test_sampler_follows_the_distribution_and_truncates_to_the_nucleus():
    # Probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.9 keeps the first three.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    sampler = SeededSampler(list(range(4000)), temperature=1.0, top_p=0.9)
    scores = sampler(torch.zeros(4000, 3, dtype=torch.long), logits)
    picks = scores.argmax(-1)
    assert torch.isinf(scores).sum(-1).eq(3).all()  # exactly one token left per row
    freq = torch.bincount(picks, minlength=4).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.03,
                               rtol=0)


def test_generate_rejects_job_tables_without_columns(tiny_qwen3, tiny_tokenizer):
    with pytest.raises(ValueError, match="lacks columns"):
        generate_completions(tiny_qwen3, tiny_tokenizer, PROMPTS, None, GenerationParams(), 0)


def test_top_k_shortcut_equals_the_full_sort(monkeypatch):
    import steering_utils.generation as generation

    gen = torch.Generator().manual_seed(0)
    # Peaked rows (nucleus inside the top 1024) and flat rows (it is not: full sort).
    peaked = torch.randn(64, 5000, generator=gen) * 6
    flat = torch.randn(64, 5000, generator=gen) * 0.1
    for logits in (peaked, flat):
        sampler = SeededSampler(list(range(64)), temperature=0.7, top_p=0.9)
        fast = sampler(torch.zeros(64, 3, dtype=torch.long), logits).argmax(-1)
        monkeypatch.setattr(generation, "_CANDIDATES", 5000)
        sampler = SeededSampler(list(range(64)), temperature=0.7, top_p=0.9)
        full = sampler(torch.zeros(64, 3, dtype=torch.long), logits).argmax(-1)
        monkeypatch.undo()
        assert torch.equal(fast, full)


def test_auto_batch_halves_on_out_of_memory_and_remembers_what_fitted(tiny_qwen3,
                                                                      tiny_tokenizer):
    from test_real_run import _OomAbove

    from steering_utils import batching

    jobs = make_jobs(PROMPTS, CELLS, samples=2)
    expected = _run(tiny_qwen3, tiny_tokenizer, jobs, batch_size=2)
    tiny_qwen3.config.name_or_path = "oom-generate"
    watcher = _OomAbove(3)
    hook = tiny_qwen3.register_forward_pre_hook(watcher, with_kwargs=True)
    try:
        backed_off = _run(tiny_qwen3, tiny_tokenizer, jobs, batch_size="auto")
        assert max(watcher.seen) == 32 and set(batching._FITTING_BATCH.values()) == {2}
        watcher.seen.clear()
        _run(tiny_qwen3, tiny_tokenizer, jobs, batch_size="auto")
        assert max(watcher.seen) == 2  # the next pass starts at the batch that fitted
        with pytest.raises(torch.cuda.OutOfMemoryError):  # a fixed batch is the user's
            _run(tiny_qwen3, tiny_tokenizer, jobs, batch_size=8)
    finally:
        hook.remove()
        tiny_qwen3.config.name_or_path = ""
        batching._FITTING_BATCH.clear()
    assert list(backed_off["completion"]) == list(expected["completion"])


def test_baseline_jobs_give_train_prompts_more_samples_and_keep_the_shared_ones():
    prompts = pd.DataFrame({"prompt_id": ["t1", "t2", "d1", "b1"], "text": ["a", "b", "c", "d"],
                            "subset": ["challenging", "challenging", "challenging", "benign"],
                            "split": ["train", "train", "dev", "train"]})
    jobs = baseline_jobs(prompts, GenerationParams(samples_per_prompt=2,
                                                   train_samples_per_prompt=5))
    per_prompt = jobs.groupby("prompt_id")["sample"].apply(sorted).to_dict()
    assert per_prompt == {"t1": [0, 1, 2, 3, 4], "t2": [0, 1, 2, 3, 4], "d1": [0, 1],
                          "b1": [0, 1]}  # benign train prompts are not paired
    assert (jobs["alpha"] == 0).all() and (jobs["direction"] == "none").all()
    same = baseline_jobs(prompts, GenerationParams(samples_per_prompt=2))
    assert len(same) == 8
    shared = jobs.merge(same, on=["prompt_id", "sample"])
    assert len(shared) == 8  # the first k samples of a train prompt are the same jobs


def test_baseline_jobs_draw_dev_prompts_as_often_as_the_dev_grid():
    prompts = pd.DataFrame({"prompt_id": ["t1", "d1", "d2", "e1"], "text": list("abcd"),
                            "subset": ["challenging", "challenging", "benign", "challenging"],
                            "split": ["train", "dev", "dev", "eval"]})
    generation = GenerationParams(samples_per_prompt=2, train_samples_per_prompt=3)
    jobs = baseline_jobs(prompts, generation, dev_samples=5)
    per_prompt = jobs.groupby("prompt_id")["sample"].apply(sorted).to_dict()
    assert per_prompt == {"t1": [0, 1, 2], "d1": [0, 1, 2, 3, 4], "d2": [0, 1, 2, 3, 4],
                          "e1": [0, 1]}
    fewer = baseline_jobs(prompts, generation, dev_samples=1)  # never below k
    assert fewer.groupby("prompt_id").size().to_dict() == {"t1": 3, "d1": 2, "d2": 2, "e1": 2}
    assert fewer.equals(baseline_jobs(prompts, generation))
