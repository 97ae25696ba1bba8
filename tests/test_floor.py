"""The compute floor's counting (benchmarks/floor.py) on hand-made tables whose token counts
are known (the word-level tiny tokenizer: one token a word or punctuation run), then on the
session's smoke run, against the runner's own count of the work it planned."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from benchmarks.floor import (
    Passes,
    activation_passes,
    capability_passes,
    floor_report,
    generation_passes,
    matmul_rate,
    model_sizes,
    new_rows,
    run_work,
    specificity_passes,
)


def _rows(*rows):
    return pd.DataFrame(rows, columns=["direction", "layer", "alpha", "prompt_id", "sample",
                                       "prompt", "completion"])


def test_a_generated_row_is_its_prefill_and_new_tokens_then_a_scoring_pass(tiny_tokenizer):
    rows = _rows(("none", -1, 0.0, "p1", 0, "the cat runs", " very good"),
                 ("caa", 5, 2.0, "p1", 0, "the cat runs", ""))
    work = generation_passes(rows, tiny_tokenizer)
    # Prefill 3 + 3; new tokens 2 + 0, one logit each.
    assert work["generation"] == Passes(tokens=8, logits=2, items=2)
    # Scoring reads prompt + continuation and scores the continuation's tokens.
    assert work["perplexity"] == Passes(tokens=8, logits=2, items=2)


def test_a_row_shared_by_two_stages_counts_once_in_the_first():
    baseline = _rows(("none", -1, 0.0, "p1", 0, "a", "b"), ("none", -1, 0.0, "p1", 1, "a", "c"))
    grid = pd.concat([baseline.iloc[[1]], _rows(("caa", 5, 2.0, "p1", 0, "a", "d"))])
    seen: set = set()
    assert len(new_rows([baseline], seen)) == 2
    fresh = new_rows([grid, grid], seen)  # the reference row and a repeat are not new
    assert fresh["direction"].tolist() == ["caa"]


def test_activation_texts_are_read_with_their_context_and_need_no_logits(tiny_tokenizer):
    texts = pd.DataFrame({"set": ["train_toxic", "train_toxic", "completions"],
                          "context": ["the cat", "a dog", ""],
                          "text": [" runs", " hate you", "i love it"]})
    # 2 + 1, 2 + 2 (paired: context + continuation); 3 (no context).
    assert activation_passes(texts, tiny_tokenizer, 32) == Passes(tokens=10, logits=0, items=3)


def test_each_answer_is_one_pass_per_option_or_one_lettered_prompt(tiny_tokenizer):
    items = {"eval": pd.DataFrame({"question": ["why", "what"],
                                   "options": [["cat", "dog runs"], ["no"]],
                                   "format": ["cloze", "cloze"]}),
             "dev": pd.DataFrame({"question": ["why"], "options": [["cat", "dog"]],
                                  "subject": [""], "format": ["letters"]})}
    answers = pd.DataFrame({"split": ["eval", "eval", "dev"],
                            "direction": ["none", "prompt", "none"], "layer": [-1, -1, -1],
                            "alpha": [0.0, 1.0, 0.0], "item": [0, 0, 0]})
    work = capability_passes(answers, items, tiny_tokenizer, prompt_prefix="you ")
    # "Question: why\nAnswer:" is 5 tokens: (5 + 1) + (5 + 2), logits 1 + 2. The prompt
    # method's question is "you why": (6 + 1) + (6 + 2), logits 3. MMLU's lettered prompt
    # "why\nA. cat\nB. dog\nAnswer:" is 9 tokens, one logit scores both letters.
    assert work == Passes(tokens=13 + 15 + 9, logits=3 + 3 + 1, items=3)


def test_the_probe_is_a_gradient_pass_and_one_forward_per_dose_point(tiny_tokenizer):
    from steering_utils.specificity import ProbeTexts

    texts = ProbeTexts(tiny_tokenizer, ["the cat"], [" hate"], [" love you"])  # 3 and 4 tokens
    work = specificity_passes(texts, layer=1, n_layers=4, exact_passes=3)
    # Forward 7, backward through the 2 of 4 layers after layer 1 (3.5), 3 exact forwards (21);
    # the head at the 1 + 2 scored tokens: forward, backward and 3 exact passes.
    assert work == Passes(tokens=7 + 3.5 + 21, logits=3 * 5, items=2)


def test_flops_count_the_body_at_every_token_and_the_head_at_logits_only():
    assert Passes(tokens=10, logits=2).flops(body_params=100, head_params=1000) == 2 * (
        100 * 10 + 1000 * 2)
    assert matmul_rate(64, 128, rows=32, repeats=1) > 1e6


@pytest.mark.slow
def test_the_smoke_runs_floor_counts_the_rows_the_runner_generated(smoke_run):
    """The runner counts the rows each stage generates as it goes ("05_sweep done in 80.2 s:
    140 rows"); the floor counts them back from the artifacts, each row once."""
    from steering_utils.models import load_tokenizer
    from steering_utils.params import parse_params

    work, stdout = smoke_run
    run_dir = work / "runs" / "smoke"
    params = parse_params(json.loads((run_dir / "run_manifest.json").read_text())["params"])
    counted = run_work(run_dir, load_tokenizer(params.model), params,
                       model_sizes(params.model)[2])
    generated = {stage: int(rows.replace(",", "")) for stage, rows in
                 re.findall(r"^\s+(\S+)\s+done in [\d.]+ s: ([\d,]+) rows", stdout, re.M)}
    assert set(generated) == {"02_baseline", "05_sweep"}, stdout
    assert {stage: counted[stage]["generation"].items for stage in generated} == generated
    texts = pd.read_parquet(next(run_dir.glob("03_activations/*/contrast_texts.parquet")))
    assert counted["03_activations"]["activations"].items == len(texts)
    assert counted["05_sweep"]["capability"].items >= 2 * params.evaluation.capability.n_items
    specificity = json.loads(next(run_dir.glob("05_sweep/*/specificity.json")).read_text())
    assert counted["05_sweep"]["specificity"].items == 2 * specificity["n_pairs"]
    table = floor_report(run_dir)
    for stage in ("02_baseline", "03_activations", "05_sweep", "total"):
        assert re.search(rf"^{stage}\s+[\d.]+\s+[\d,]+", table, re.M), table
