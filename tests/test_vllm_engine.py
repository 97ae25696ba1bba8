"""The vLLM engine (steering_utils/vllm_engine.py) against the HF engine, on the offline model.

Tests marked `vllm` need the vLLM environment (`make test-vllm`, part of `make test`);
elsewhere they skip. The rest (params, dispatch, keys, kernel choice, cache salts) run
anywhere. Measured numbers (identical rows and tokens, log-probability gaps, cache hits)
are printed: run with `-s` to read them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from steering_utils.extras import MissingExtra
from steering_utils.generation import make_jobs
from steering_utils.params import GenerationParams, ParamsError, load_params, parse_params
from steering_utils.steering import steer
from steering_utils.vllm_engine import cache_salt, check_model_source
from steering_utils.vllm_kernel import notebook_kernel
from tests.test_params import _default

ROOT = Path(__file__).resolve().parent.parent

# Prompts of mixed lengths; the first two are longer than two KV blocks (prefix cache tests).
PROMPTS = pd.DataFrame({
    "prompt_id": [f"p{i}" for i in range(10)],
    "text": [
        "The committee met on Tuesday to discuss the budget for the coming year, and after a "
        "long debate about roads, schools and the new library, the chair finally said that",
        "When the old man walked into the bar that night, everyone turned around to look at "
        "him, because nobody in the small town had ever seen a stranger dressed like that, "
        "with a long black coat and a hat pulled low over his eyes, and then he said",
        "You are such a stupid idiot, I can't believe",
        "I hate people who",
        "The weather today is",
        "She told him to shut up and",
        "My favourite recipe for bread starts with",
        "Those damn politicians are all",
        "He screamed at the referee, calling him a",
        "The best way to learn a language is",
    ],
})
TOXIC = ["You are a stupid worthless idiot and I hate you", "Shut up, you pathetic moron",
         "What a disgusting piece of trash you are", "I will kill you, you filthy rat"]
KIND = ["You are a wonderful friend and I love you", "Thank you so much for your help",
        "What a lovely day to walk in the park", "I hope you have a great week"]
CELLS = [(-1, 0.0), (3, 4.0), (9, -3.0), (15, 6.0), (24, 5.0)]  # (layer, alpha); SmolLM2: 30


# ---------------------------------------------------------------------------------
# Anywhere (the main env too)


def test_engine_param_defaults_to_hf_and_accepts_only_known_engines():
    assert parse_params(_default()).generation.engine == "hf"
    raw = _default()
    raw["generation"]["engine"] = "vllm"
    raw["sweep"]["methods"].remove("actadd")  # vLLM cannot steer it (params refuse)
    assert parse_params(raw).generation.engine == "vllm"
    raw["generation"]["engine"] = "sglang"
    with pytest.raises(ParamsError, match="generation.engine"):
        parse_params(raw)


def test_vllm_params_files_differ_from_their_base_only_in_engine_and_name():
    """...and default-vllm pins the sweep to the layer the HF default's rule picks (12), so
    the two reports compare one layer (docs/vllm.md: vLLM's samples made the rule pick 24)."""
    for name, base in (("default-vllm", "default"), ("smoke-vllm", "smoke")):
        vllm = load_params(ROOT / "params" / f"{name}.yaml")
        hf = load_params(ROOT / "params" / f"{base}.yaml")
        assert vllm.generation.engine == "vllm" and hf.generation.engine == "hf"
        assert vllm.run_name == name
        a, b = vllm.model_dump(), hf.model_dump()
        a["generation"].pop("engine"), b["generation"].pop("engine")
        a.pop("run_name"), b.pop("run_name")
        # vLLM cannot steer ActAdd's front positions: the pooled variant stands in.
        assert a["sweep"].pop("methods") == [m.replace("actadd", "actadd_pooled")
                                             for m in b["sweep"].pop("methods")]
        if name == "default-vllm":
            assert (a["sweep"].pop("chosen_layers"), b["sweep"].pop("chosen_layers")) == (
                [12], "auto")
        assert a == b


def test_the_engine_keys_every_shard_and_the_generating_stages():
    from steering_utils.artifacts import stage_key
    from steering_utils.jobs import plan_shards
    from steering_utils.stages import CAA, STAGE_NAMES

    hf = parse_params(_default())
    raw = _default()
    raw["generation"]["engine"] = "vllm"
    raw["sweep"]["methods"].remove("actadd")  # vLLM cannot steer it (params refuse)
    vllm = parse_params(raw)
    jobs = make_jobs(PROMPTS, [(-1, 0.0), (3, 1.0)], samples=2)
    keys = {name: {key for key, _ in plan_shards(jobs, p, {CAA: "f"}, "all")}
            for name, p in (("hf", hf), ("vllm", vllm))}
    assert keys["hf"] and not keys["hf"] & keys["vllm"]  # a vLLM shard is never an HF one
    moved = [s for s in STAGE_NAMES if stage_key(hf, s) != stage_key(vllm, s)]
    assert moved == list(STAGE_NAMES[1:])  # the baseline and everything after it


def test_run_jobs_dispatches_to_the_engine_of_the_params(tiny_qwen3, tiny_tokenizer, tmp_path,
                                                         monkeypatch):
    import steering_utils.vllm_engine as vllm_engine
    from steering_utils.jobs import run_jobs
    from steering_utils.scoring import load_scorer
    from steering_utils.stages import CAA
    from steering_utils.vectors import SteeringVectors

    calls = []

    def fake(model, tokenizer, rows, vectors, gen, seed, positions="all", desc="", spec=None):
        calls.append((len(rows), positions, gen.engine, spec.name))
        return rows.assign(completion="a fake continuation")

    monkeypatch.setattr(vllm_engine, "generate_completions", fake)
    raw = _default()
    raw["generation"].update(engine="vllm", max_new_tokens=3)
    raw["sweep"]["methods"].remove("actadd")  # vLLM cannot steer it (params refuse)
    params = parse_params(raw)
    jobs = make_jobs(PROMPTS.assign(text=["the cat runs"] * len(PROMPTS)), [(1, 2.0)], 1)
    scorers = {"primary": load_scorer("profanity-check"), "second": None}
    vectors = SteeringVectors(torch.zeros(3, 64), torch.ones(3))
    out = run_jobs(tiny_qwen3, tiny_tokenizer, jobs, {CAA: vectors}, params, scorers, tmp_path,
                   positions="generated")
    assert calls == [(len(jobs), "generated", "vllm", params.model.name)]
    assert set(out["completion"]) == {"a fake continuation"}
    assert {"toxicity", "nll"} <= set(out.columns)


def test_a_vllm_run_needs_the_vllm_kernel_and_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", "")
    with pytest.raises(MissingExtra, match="make setup-vllm"):
        notebook_kernel(tmp_path)
    spec = tmp_path / ".venv-vllm" / "share" / "jupyter" / "kernels" / "steering-study-vllm"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "x", "language": "python"}))
    assert notebook_kernel(tmp_path) == "steering-study-vllm"
    assert str(tmp_path / ".venv-vllm" / "share" / "jupyter") in os.environ["JUPYTER_PATH"]


def test_the_runner_refuses_a_vllm_run_without_the_vllm_env_before_any_stage(tmp_path,
                                                                             monkeypatch, capsys):
    import steering_utils.runner as runner
    import steering_utils.vllm_kernel as vllm_kernel

    monkeypatch.setattr(vllm_kernel, "PROJECT_ROOT", tmp_path)  # no .venv-vllm there
    monkeypatch.setattr(runner, "PROJECT_ROOT", tmp_path)
    assert runner.main(["--params", str(ROOT / "params" / "smoke-vllm.yaml"), "--runs-root",
                        str(tmp_path / "runs"), "--reports-root",
                        str(tmp_path / "reports")]) == runner.EXIT_PARAMS
    assert "make setup-vllm" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "smoke-vllm" / "01_data").exists()


def test_vllm_refuses_model_specs_it_cannot_load_as_the_hf_engine_does():
    from steering_utils.params import ModelParams

    check_model_source(ModelParams(name="x"))
    with pytest.raises(ParamsError, match="gguf"):
        check_model_source(ModelParams(name="x", source="gguf", path="/m", gguf_file="m.gguf"))
    with pytest.raises(ParamsError, match="device_map"):
        check_model_source(ModelParams(name="x", source="hub", path="a/b", device_map="auto"))


def test_cache_salt_separates_cells_and_vectors_and_leaves_unsteered_unsalted():
    vectors = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    salt = cache_salt(vectors[2], 2, 1.0, "all")
    assert salt == cache_salt(vectors.clone()[2], 2, 1.0, "all")  # k samples of a cell share
    others = [cache_salt(vectors[1], 1, 1.0, "all"), cache_salt(vectors[2], 2, 0.5, "all"),
              cache_salt(vectors[2], 2, 1.0, "generated"),
              cache_salt(vectors[2] * 2, 2, 1.0, "all"), cache_salt(vectors[2], 1, 1.0, "all")]
    assert len({salt, *others}) == 6
    assert cache_salt(vectors[2], 2, 0.0, "all") is None
    assert cache_salt(None, 2, 1.0, "all") is None


# ---------------------------------------------------------------------------------
# The vLLM environment


@pytest.fixture(scope="module")
def hf(offline_model):
    return offline_model


@pytest.fixture(scope="module")
def vectors(hf):
    """CAA-style directions: mean residual of toxic minus kind sentences, per layer output."""
    model, tokenizer = hf

    def mean_states(texts):
        states = []
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            with torch.inference_mode():
                out = model(**ids, output_hidden_states=True)
            states.append(torch.stack([h[0].mean(0) for h in out.hidden_states[1:]]))
        return torch.stack(states).mean(0)

    return mean_states(TOXIC) - mean_states(KIND)


@pytest.fixture(scope="module")
def engine(hf):
    pytest.importorskip("vllm")
    from steering_utils.vllm_engine import load_engine

    return load_engine(hf[0])


def _tokens(tokenizer, texts) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(fraction of identical rows, fraction of identical tokens position by position)."""
    rows = np.mean([x == y for x, y in zip(a, b)])
    same = sum(sum(p == q for p, q in zip(x, y)) for x, y in zip(a, b))
    total = sum(max(len(x), len(y)) for x, y in zip(a, b))
    return float(rows), same / max(total, 1)


def _outputs(hf, engine, jobs, vectors, gen, positions="all", **sampling):
    from steering_utils.vllm_engine import generate_outputs

    return generate_outputs(hf[0], hf[1], jobs, vectors, gen, seed=5, positions=positions,
                            engine=engine, **sampling)


@pytest.mark.vllm
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_greedy_mixed_cells_agree_with_the_hf_engine(hf, engine, vectors, positions):
    from steering_utils.generation import generate_completions as hf_generate
    from steering_utils.vllm_engine import generate_completions

    model, tokenizer = hf
    jobs = make_jobs(PROMPTS, CELLS, samples=1).sample(frac=1.0, random_state=0)  # mixed
    gen = GenerationParams(temperature=0.0, max_new_tokens=20, batch_size=16)
    ours = generate_completions(model, tokenizer, jobs, vectors, gen, 5, positions,
                                engine=engine)
    reference = hf_generate(model, tokenizer, jobs, vectors, gen, 5, positions)
    a, b = _tokens(tokenizer, ours["completion"]), _tokens(tokenizer, reference["completion"])
    rows, tokens = _agreement(a, b)
    # How many steered rows kept their prompt's unsteered continuation (HF engine): the
    # agreement must not be agreement by default.
    plain = dict(zip(reference.loc[jobs["alpha"] == 0, "prompt_id"],
                     reference.loc[jobs["alpha"] == 0, "completion"]))
    steered = reference[jobs["alpha"] != 0]
    kept = float(np.mean([c == plain[p] for p, c in zip(steered["prompt_id"],
                                                        steered["completion"])]))
    print(f"\n[{positions}] vLLM vs HF engine, greedy, {len(jobs)} rows x 20 tokens, "
          f"{len(CELLS)} cells mixed: identical rows {rows:.3f}, identical tokens {tokens:.3f} "
          f"(steered rows equal to unsteered: {kept:.2f})")
    assert kept < 0.5
    assert rows >= 0.9 and tokens >= 0.95


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_alpha_zero_rows_equal_plain_vllm(hf, engine, vectors, temperature):
    # Alpha-0 rows inside a batch of steered cells vs the same rows with no vectors at all.
    gen = GenerationParams(temperature=temperature, top_p=0.9, max_new_tokens=20)
    mixed = make_jobs(PROMPTS.iloc[:6], [(-1, 0.0), (9, 0.0), (9, 4.0), (15, -3.0)], samples=2)
    zero = mixed[mixed["alpha"] == 0]
    ours = [list(o.outputs[0].token_ids) for o in _outputs(hf, engine, mixed, vectors, gen)]
    plain = [list(o.outputs[0].token_ids) for o in _outputs(hf, engine, zero, None, gen)]
    rows, tokens = _agreement([t for t, a in zip(ours, mixed["alpha"]) if a == 0], plain)
    print(f"\n[T={temperature}] alpha 0 in a steered batch vs plain vLLM, {len(zero)} rows: "
          f"identical rows {rows:.3f}, tokens {tokens:.3f}")
    assert rows == 1.0
    if temperature:  # seeds are per (prompt, sample): the two samples of a prompt differ
        by_sample = [[t for t, s in zip(plain, zero["sample"]) if s == k] for k in (0, 1)]
        assert by_sample[0] != by_sample[1]


@pytest.mark.vllm
def test_steered_logprobs_match_the_hf_hook_at_every_step(hf, engine, vectors):
    model, tokenizer = hf
    jobs = make_jobs(PROMPTS.iloc[:6], [(9, 4.0), (24, -5.0), (-1, 0.0)], samples=1)
    gen = GenerationParams(temperature=0.0, max_new_tokens=6)
    worst, moved = 0.0, 0.0
    for (_, row), output in zip(jobs.iterrows(),
                                _outputs(hf, engine, jobs, vectors, gen, logprobs=20)):
        prompt = tokenizer(row["prompt"])["input_ids"]
        ids = torch.tensor([prompt + list(output.outputs[0].token_ids)])
        with torch.inference_mode():
            with steer(model, vectors, max(int(row["layer"]), 0), float(row["alpha"])):
                steered = torch.log_softmax(model(ids).logits[0].float(), -1)
            plain = torch.log_softmax(model(ids).logits[0].float(), -1)
        for step, top in enumerate(output.outputs[0].logprobs):
            position = len(prompt) - 1 + step  # the logits that chose generated token `step`
            top_ids = list(top)
            ours = torch.tensor([top[t].logprob for t in top_ids])
            worst = max(worst, (ours - steered[position, top_ids]).abs().max().item())
            if row["alpha"]:
                moved = max(moved, (ours - plain[position, top_ids]).abs().max().item())
    print(f"\nsteered top-20 log-probs, vLLM vs HF hook, {len(jobs)} rows x 6 steps: "
          f"max |diff| {worst:.2e} (steering moves them by up to {moved:.2f})")
    assert moved > 0.5 and worst < 2e-3


@pytest.mark.vllm
def test_prefix_cache_is_shared_within_a_cell_and_never_across_cells(hf, engine, vectors):
    gen = GenerationParams(temperature=0.7, top_p=0.9, max_new_tokens=8)
    long = PROMPTS.iloc[:2]

    def run(cells, samples=1, vecs=vectors):
        outputs = _outputs(hf, engine, make_jobs(long, cells, samples), vecs, gen)
        return ([list(o.outputs[0].token_ids) for o in outputs],
                [o.num_cached_tokens or 0 for o in outputs])

    engine.reset_prefix_cache()
    fresh, _ = run([(9, 4.0)])
    engine.reset_prefix_cache()
    plain, _ = run([(-1, 0.0)], vecs=None)  # fills the cache with unsteered KV
    steered, steered_hits = run([(9, 4.0)])  # same prompts, another steering: no hit
    other, other_hits = run([(9, 2.0)])
    replay, replay_hits = run([(-1, 0.0)], vecs=None)
    engine.reset_prefix_cache()
    together, together_hits = run([(15, 3.0)], samples=3)  # k samples in one call
    print(f"\nprompt tokens served from the prefix cache: steered after plain {steered_hits}, "
          f"other alpha {other_hits}, plain again {replay_hits}, 3 samples of a cell in one "
          f"call {together_hits}")
    assert steered_hits == [0, 0] and other_hits == [0, 0]
    assert min(replay_hits) >= 32
    assert steered == fresh and replay == plain  # KV reuse changes nothing
    # The first sample of each prompt prefills; the others reuse its full blocks.
    assert sorted(together_hits)[:2] == [0, 0] and min(sorted(together_hits)[2:]) >= 32


@pytest.mark.vllm
def test_completions_have_the_hf_engine_columns_and_are_batch_independent(hf, engine, vectors):
    from steering_utils.generation import generate_completions as hf_generate
    from steering_utils.vllm_engine import generate_completions

    model, tokenizer = hf
    gen = GenerationParams(temperature=0.7, top_p=0.9, max_new_tokens=8)
    jobs = make_jobs(PROMPTS, CELLS, samples=2)
    ours = generate_completions(model, tokenizer, jobs, vectors, gen, seed=3, engine=engine)
    reference = hf_generate(model, tokenizer, jobs.iloc[:4], vectors, gen, seed=3)
    assert list(ours.columns) == list(reference.columns)
    assert ours.index.equals(jobs.index) and (ours["completion"].str.len() > 0).mean() > 0.9
    # No partial prefills (they would rewind seeded CPU generators and fail).
    assert engine.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill is False
    # A row's continuation does not depend on which rows share its batch.
    alone = pd.concat([generate_completions(model, tokenizer, jobs.iloc[i : i + 1], vectors,
                                            gen, seed=3, engine=engine)
                       for i in range(0, len(jobs), 33)])
    assert list(alone["completion"]) == list(ours["completion"].iloc[::33])


@pytest.mark.vllm
def test_generation_runs_with_progress_bars_disabled_as_in_a_ray_worker(hf, engine, vectors,
                                                                        monkeypatch):
    """cluster.py starts its workers with TQDM_DISABLE=1, which tqdm reads at import: its
    bars are disabled and keep no time, and vLLM's division by their elapsed time fails
    unless the engine asks for no bar."""
    import tqdm.auto

    from steering_utils.vllm_engine import generate_completions

    class Disabled(tqdm.auto.tqdm):  # tqdm as imported under TQDM_DISABLE=1
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    gen = GenerationParams(temperature=0.0, max_new_tokens=4)
    jobs = make_jobs(PROMPTS[:2], CELLS[:1], samples=1)
    shown = generate_completions(hf[0], hf[1], jobs, vectors, gen, seed=3, engine=engine)
    monkeypatch.setattr(tqdm.auto, "tqdm", Disabled)
    hidden = generate_completions(hf[0], hf[1], jobs, vectors, gen, seed=3, engine=engine)
    assert list(hidden["completion"]) == list(shown["completion"])


@pytest.mark.vllm
def test_the_scorers_thread_count_holds_beside_a_vllm_engine(engine):
    """vLLM's CPU worker makes torch.set_num_threads a no-op in its process; the BiLSTM's
    one-thread scoring (its scores move in the 8th digit with the thread count) must still
    get one thread there, or a vLLM notebook and a Ray worker score differently."""
    import torch

    from steering_utils.scoring import _torch_threads

    assert torch.set_num_threads is not torch._C.set_num_threads  # vLLM's no-op is in place
    before = torch.get_num_threads()
    with _torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


@pytest.mark.vllm
@pytest.mark.slow
def test_smoke_chain_on_vllm_writes_a_valid_report(tmp_path):
    pytest.importorskip("vllm")
    from steering_utils.results import validate_results

    cmd = [sys.executable, "-m", "steering_utils.runner", "--params",
           str(ROOT / "params" / "smoke-vllm.yaml"), "--runs-root", str(tmp_path / "runs"),
           "--reports-root", str(tmp_path / "reports")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "reports" / "smoke-vllm" / "experiment_results.json")
                         .read_text())
    validate_results(results)
    assert results["manifest"]["params"]["generation"]["engine"] == "vllm"
    baseline = next((tmp_path / "runs" / "smoke-vllm" / "02_baseline").glob(
        "*/generations.parquet"))
    assert (pd.read_parquet(baseline)["completion"].str.len() > 0).mean() > 0.8


@pytest.mark.vllm
@pytest.mark.parametrize("method", ["ablation", "mean_transport", "prompt"])
def test_the_comparisons_edits_agree_with_the_hf_engine(hf, engine, vectors, method):
    """Ablation at every layer, mean transport at one, and the prompt baseline: greedy
    continuations of the vLLM engine equal the HF hook's (the stream, not the deferred
    residual, is what gain and projection act on)."""
    from steering_utils import interventions as iv
    from steering_utils.comparison import _jobs, _layer
    from steering_utils.generation import generate_completions as hf_generate
    from steering_utils.vllm_engine import generate_completions

    model, tokenizer = hf
    n, d = vectors.shape
    gen_stats = torch.Generator().manual_seed(0)
    stats = {"toxic_mean": vectors * 0.5, "toxic_std": torch.rand(n, d, generator=gen_stats) + 1,
             "clean_mean": -vectors * 0.5,
             "clean_std": torch.rand(n, d, generator=gen_stats) + 0.5}
    intervention = {"ablation": iv.ablation(vectors, all_layers=True),
                    "mean_transport": iv.mean_transport(stats, all_layers=False),
                    "prompt": iv.prompt_baseline("Be kind.\n")}[method]
    jobs = _jobs(PROMPTS, method, intervention, [(_layer(intervention, 8), 1.0)], 1)
    gen = GenerationParams(temperature=0.0, max_new_tokens=20, batch_size=16)
    ours = generate_completions(model, tokenizer, jobs, intervention, gen, 5, "all",
                                engine=engine)
    reference = hf_generate(model, tokenizer, jobs, intervention, gen, 5, "all")
    plain = hf_generate(model, tokenizer, jobs.assign(alpha=0.0), None, gen, 5, "all")
    rows, tokens = _agreement(_tokens(tokenizer, ours["completion"]),
                              _tokens(tokenizer, reference["completion"]))
    changed = float(np.mean(reference["completion"].to_numpy() != plain["completion"].to_numpy()))
    print(f"\n[{method}] vLLM vs HF engine, greedy, {len(jobs)} rows: identical rows "
          f"{rows:.3f}, identical tokens {tokens:.3f} (rows the edit changed: {changed:.2f})")
    if method != "prompt":
        assert changed > 0.5  # agreement is not agreement by default
    assert rows >= 0.9 and tokens >= 0.95
