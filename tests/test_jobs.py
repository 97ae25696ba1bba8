"""The job runner on a tiny random Qwen3: content-keyed shards that resume, and are never stale."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from steering_utils.engines import HFEngine
from steering_utils.generation import make_jobs
from steering_utils.jobs import run_jobs
from steering_utils.params import parse_params
from steering_utils.scoring import load_scorer
from steering_utils.stages import CAA
from steering_utils.vectors import SteeringVectors
from tests.test_params import _default

PROMPTS = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(5)],
                        "text": ["the cat runs", "you are a stupid idiot", "we love the day",
                                 "she said that", "i hate bad people"]})


def _params(seed: int = 0, **generation):
    raw = _default()
    raw["seed"] = seed
    raw["generation"].update({"max_new_tokens": 5, "batch_size": 4, **generation})
    return parse_params(raw)


def _vectors(seed: int = 0) -> SteeringVectors:
    directions = torch.randn(3, 64, generator=torch.Generator().manual_seed(seed)) * 5
    return SteeringVectors(directions, torch.ones(3))


@pytest.fixture(scope="module")
def scorers():
    return {"primary": load_scorer("profanity-check"), "second": None}


def _run(model, tokenizer, jobs, params, scorers, folder, vectors=None):
    return run_jobs(model, tokenizer, jobs, {CAA: vectors or _vectors()}, params, scorers, folder)


def _calls(monkeypatch) -> list[int]:
    """Row counts of every generation group the runner computes (not reads back)."""
    import steering_utils.rows as rows_module

    calls: list[int] = []
    compute = rows_module.compute_rows

    def counting(model, tokenizer, rows, *args, **kwargs):
        calls.append(len(rows))
        return compute(model, tokenizer, rows, *args, **kwargs)

    monkeypatch.setattr(rows_module, "compute_rows", counting)
    return calls


def test_shards_resume_and_equal_a_fresh_run(tiny_qwen3, tiny_tokenizer, tmp_path, monkeypatch,
                                            scorers):
    import steering_utils.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "SHARD_ROWS", 4)
    monkeypatch.setattr(HFEngine, "group_rows", 4)
    params = _params()
    jobs = make_jobs(PROMPTS, [(-1, 0.0), (1, 2.0)], samples=2)  # 2 cells x 10 rows
    fresh = _run(tiny_qwen3, tiny_tokenizer, jobs, params, scorers, tmp_path / "a")
    shards = sorted((tmp_path / "a").glob("*.parquet"))
    assert len(shards) == 6  # 3 shards a cell
    (tmp_path / "b").mkdir()  # an interrupted run: one shard finished, the rest lost
    shards[0].rename(tmp_path / "b" / shards[0].name)
    kept = len(pd.read_parquet(tmp_path / "b" / shards[0].name))
    calls = _calls(monkeypatch)
    resumed = _run(tiny_qwen3, tiny_tokenizer, jobs, params, scorers, tmp_path / "b")
    pd.testing.assert_frame_equal(fresh, resumed)
    assert sum(calls) == len(jobs) - kept  # only the lost shards are generated again
    assert list(fresh["prompt_id"]) == list(jobs["prompt_id"])  # job order kept
    assert {"completion", "toxicity", "nll", "direction"} <= set(fresh.columns)
    assert set(fresh["direction"]) == {"none", CAA}


@pytest.mark.parametrize("change", ["temperature", "seed", "vectors", "max_new_tokens"])
def test_a_changed_recipe_never_reads_old_shards(tiny_qwen3, tiny_tokenizer, tmp_path,
                                                 monkeypatch, scorers, change):
    jobs = make_jobs(PROMPTS, [(1, 2.0)], samples=1)
    params, vectors = _params(), _vectors()
    _run(tiny_qwen3, tiny_tokenizer, jobs, params, scorers, tmp_path, vectors)
    new_params = {"temperature": _params(temperature=0.3), "seed": _params(seed=7),
                  "vectors": params, "max_new_tokens": _params(max_new_tokens=3)}[change]
    new_vectors = _vectors(1) if change == "vectors" else vectors
    calls = _calls(monkeypatch)
    again = _run(tiny_qwen3, tiny_tokenizer, jobs, new_params, scorers, tmp_path, new_vectors)
    assert sum(calls) == len(jobs)  # same rows, same count: recomputed, not the old shards
    clean = _run(tiny_qwen3, tiny_tokenizer, jobs, new_params, scorers, tmp_path / "clean",
                 new_vectors)
    pd.testing.assert_frame_equal(again, clean)


def test_batch_size_is_not_part_of_the_key(tiny_qwen3, tiny_tokenizer, tmp_path, monkeypatch,
                                           scorers):
    jobs = make_jobs(PROMPTS, [(1, 2.0)], samples=1)
    _run(tiny_qwen3, tiny_tokenizer, jobs, _params(), scorers, tmp_path)
    calls = _calls(monkeypatch)
    _run(tiny_qwen3, tiny_tokenizer, jobs, _params(batch_size=2), scorers, tmp_path)
    assert calls == []


def test_changing_one_alpha_recomputes_only_that_cell(tiny_qwen3, tiny_tokenizer, tmp_path,
                                                      monkeypatch, scorers):
    params = _params()
    before = make_jobs(PROMPTS, [(1, 1.0), (1, 2.0), (2, 1.0)], samples=1)
    _run(tiny_qwen3, tiny_tokenizer, before, params, scorers, tmp_path / "run")
    after = make_jobs(PROMPTS, [(1, 1.5), (1, 2.0), (2, 1.0)], samples=1)  # same row count
    calls = _calls(monkeypatch)
    changed = _run(tiny_qwen3, tiny_tokenizer, after, params, scorers, tmp_path / "run")
    assert calls == [len(PROMPTS)]  # the alpha-1.5 cell only
    clean = _run(tiny_qwen3, tiny_tokenizer, after, params, scorers, tmp_path / "clean")
    pd.testing.assert_frame_equal(changed, clean)


def test_rows_of_other_directions_need_their_vectors(tiny_qwen3, tiny_tokenizer, tmp_path,
                                                     scorers):
    jobs = make_jobs(PROMPTS, [(1, 2.0)], samples=1, direction="random-0")
    with pytest.raises(ValueError, match=r"steer along \['random-0'\]"):
        _run(tiny_qwen3, tiny_tokenizer, jobs, _params(), scorers, tmp_path)


def test_a_shard_holding_other_rows_is_refused(tiny_qwen3, tiny_tokenizer, tmp_path, scorers):
    jobs = make_jobs(PROMPTS, [(1, 2.0)], samples=1)
    _run(tiny_qwen3, tiny_tokenizer, jobs, _params(), scorers, tmp_path)
    shard = next(tmp_path.glob("*.parquet"))
    table = pd.read_parquet(shard)
    table.loc[0, "prompt_id"] = "someone-else"
    table.to_parquet(shard)
    with pytest.raises(RuntimeError, match="does not hold the rows its key names"):
        _run(tiny_qwen3, tiny_tokenizer, jobs, _params(), scorers, tmp_path)


def test_a_shard_does_not_depend_on_the_shards_grouped_with_it(tiny_qwen3, tiny_tokenizer,
                                                                tmp_path, monkeypatch, scorers):
    """Local, Ray and resumed runs group shards differently: every number of a shard must
    come out the same, bit for bit (padding inside a perplexity batch changes its rounding,
    so scores and perplexity are computed shard by shard)."""
    import steering_utils.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "SHARD_ROWS", 3)
    params = _params()
    jobs = make_jobs(PROMPTS, [(-1, 0.0), (1, 2.0), (2, -1.0)], samples=2)  # 30 rows, 12 shards
    together = _run(tiny_qwen3, tiny_tokenizer, jobs, params, scorers, tmp_path / "together")
    groups = []
    for rows in (3, 7):  # one shard a group; shards of different cells and lengths mixed
        monkeypatch.setattr(HFEngine, "group_rows", rows)
        calls = _calls(monkeypatch)
        grouped = _run(tiny_qwen3, tiny_tokenizer, jobs, params, scorers, tmp_path / str(rows))
        pd.testing.assert_frame_equal(grouped, together, check_exact=True)
        groups.append(len(calls))
    assert groups == [12, 5]
