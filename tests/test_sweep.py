"""Sweep plumbing on a tiny random Qwen3: resumable shards, layer choice, reference NLL."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from steering_utils.generation import make_jobs
from steering_utils.params import parse_params
from steering_utils.scoring import load_scorer
from steering_utils.sweep import add_reference_nll, choose_layers, run_jobs, steered_cells
from tests.test_params import _default

PROMPTS = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(5)],
                        "text": ["the cat runs", "you are a stupid idiot", "we love the day",
                                 "she said that", "i hate bad people"]})


def _params(**generation):
    raw = _default()
    raw["generation"].update(max_new_tokens=5, **generation)
    return parse_params(raw)


def test_steered_cells_skip_alpha_zero():
    assert steered_cells([2, 5], [-1.0, 0, 1.0]) == [(2, -1.0), (2, 1.0), (5, -1.0), (5, 1.0)]


def test_run_jobs_resumes_from_shards_and_equals_a_fresh_run(tiny_qwen3, tiny_tokenizer,
                                                             tmp_path, monkeypatch):
    import steering_utils.sweep as sweep

    monkeypatch.setattr(sweep, "SHARD_ROWS", 8)  # several shards from a small table
    params = _params(batch_size=4)
    vectors = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 5
    jobs = make_jobs(PROMPTS, [(-1, 0.0), (1, 2.0)], samples=2)  # 20 rows, 3 shards
    scorers = {"primary": load_scorer("profanity-check"), "second": None}
    fresh = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, vectors, params, scorers, tmp_path / "a")
    shards = sorted((tmp_path / "a").glob("shard-*.parquet"))
    assert len(shards) == 3
    # An interrupted run: one shard finished, the rest lost.
    (tmp_path / "b").mkdir()
    shards[0].rename(tmp_path / "b" / shards[0].name)
    resumed = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, vectors, params, scorers, tmp_path / "b")
    pd.testing.assert_frame_equal(fresh, resumed)
    assert list(fresh["prompt_id"]) == list(jobs["prompt_id"])  # job order kept
    assert {"completion", "toxicity", "nll"} <= set(fresh.columns)


def test_choose_layers_prefers_the_least_toxic_fluent_layer():
    grid = pd.DataFrame({
        "layer": [-1, 0, 0, 5, 5, 9],
        "alpha": [0.0, 1.0, 2.0, 1.0, 2.0, 2.0],
        "mean_toxicity": [0.30, 0.20, 0.05, 0.15, 0.10, 0.01],
        "perplexity": [10.0, 10.5, 20.0, 11.0, 12.0, 40.0],
    })
    # Layer 9 and layer 0 at alpha 2 are least toxic but break fluency (+25% allowed).
    assert choose_layers(grid, 1, 0.25) == [5]
    assert choose_layers(grid, 2, 0.25) == [5, 0]
    assert choose_layers(grid, 1, 10.0) == [9]


def test_reference_model_nll_is_added_when_named(tiny_qwen3, tiny_tokenizer, tmp_path):
    folder = tmp_path / "ref"
    tiny_qwen3.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    raw = _default()
    rows = pd.DataFrame({"prompt": ["the cat", "we love"], "completion": [" runs", " the day"]})
    assert "nll_reference" not in add_reference_nll(rows, parse_params(raw))
    raw["evaluation"]["reference_model"] = {"name": "ref", "source": "local", "path": str(folder),
                                            "device": "cpu"}
    out = add_reference_nll(rows, parse_params(raw))
    assert out["nll_reference"].gt(0).all()


def test_unknown_stage_and_reading_ahead_are_refused(tmp_path):
    from steering_utils.artifacts import StageDir, stage_hash

    params = parse_params(_default())
    with pytest.raises(ValueError, match="unknown stage"):
        stage_hash(params, "07_extra")
    stage = StageDir(tmp_path, params, "03_activations")
    with pytest.raises(ValueError, match="only read earlier stages"):
        stage.input("05_sweep")
    with pytest.raises(RuntimeError, match="01_data has not finished .* run notebooks/01_data"):
        stage.input("01_data")


def test_opening_a_stage_invalidates_it_and_everything_downstream(tmp_path):
    from steering_utils.artifacts import STAGES, StageDir, is_complete, stage_hash

    params = parse_params(_default())
    for name in STAGES:
        StageDir(tmp_path, params, name).finish()
    assert all(is_complete(tmp_path / "default" / n, stage_hash(params, n)) for n in STAGES)
    StageDir(tmp_path, params, "03_activations")
    done = [n for n in STAGES if is_complete(tmp_path / "default" / n, stage_hash(params, n))]
    assert done == ["01_data", "02_baseline"]


def test_workers_split_the_shards_and_any_run_merges_them(tiny_qwen3, tiny_tokenizer, tmp_path,
                                                          monkeypatch):
    import steering_utils.sweep as sweep

    monkeypatch.setattr(sweep, "SHARD_ROWS", 6)
    params = _params(batch_size=4)
    vectors = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 5
    jobs = make_jobs(PROMPTS, [(-1, 0.0), (2, 1.0)], samples=2)  # 20 rows, 4 shards
    scorers = {"primary": load_scorer("profanity-check"), "second": None}
    single = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, vectors, params, scorers, tmp_path / "a")
    shared = tmp_path / "shared"
    for worker in ("0/2", "1/2"):
        monkeypatch.setenv("STEERING_WORKER", worker)
        if worker == "0/2":
            with pytest.raises(sweep.ShardsPending, match="2 of 4 shards .* other workers"):
                run_jobs(tiny_qwen3, tiny_tokenizer, jobs, vectors, params, scorers, shared)
        else:  # the last worker finds every shard present and merges
            merged = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, vectors, params, scorers, shared)
    pd.testing.assert_frame_equal(single, merged)
    monkeypatch.setenv("STEERING_WORKER", "2/2")
    with pytest.raises(ValueError, match="need 0 <= i < n"):
        sweep.worker_slot()
