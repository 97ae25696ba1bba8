"""The real run's path, proven on stand-ins with the hub assets' shapes and schemas.

params/qwen3-8b.yaml fits RealToxicityPrompts' real counts; `make check` passes every
line on local stand-ins and fails clearly on the first hub line offline; the memory
estimate matches Qwen3-8B's parameter count; the likelihood passes survive
out-of-memory; MMLU is scored by answer letter; greedy stays greedy whatever the
model's saved generation config says; the smoke chain runs on the stand-ins.
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

from steering_utils.params import ParamsError, load_params
from tests import standins

ROOT = Path(__file__).resolve().parent.parent
QWEN3_8B = dict(vocab_size=151_936, hidden_size=4096, intermediate_size=12_288,
                num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, tie_word_embeddings=False, max_position_embeddings=40_960)
DEEP_LINES = ["params", "folders", "layers", "data", "context", "capability", "tokenizer",
              "scorer", "device", "engine", "execution", "disk", "push", "model", "steering",
              "wall"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return standins.write_all(tmp_path_factory.mktemp("standins"))


@pytest.fixture(scope="module")
def standin_file(assets, tmp_path_factory):
    return standins.standin_params(assets, tmp_path_factory.mktemp("params") / "qwen3.yaml")


def _preflight(params_file: Path, tmp_path: Path, *flags: str,
               **env) -> subprocess.CompletedProcess:
    """`make check PARAMS=...` as the Makefile runs it, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "steering_utils.preflight", "--params", str(params_file),
         "--runs-root", str(tmp_path / "runs"), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


# --- stand-ins and data ----------------------------------------------------------------


def test_standins_have_the_hub_assets_shapes(assets):
    from datasets import load_dataset
    from transformers import AutoConfig

    rows = load_dataset(str(assets["rtp"]), split="train")
    assert rows.num_rows == standins.RTP_ROWS == 99_442
    assert sum(rows["challenging"]) == standins.RTP_CHALLENGING == 1_199
    assert set(rows.column_names) == {"filename", "begin", "end", "challenging", "prompt",
                                      "continuation"}
    assert set(rows.features["prompt"]) == {"text", *standins.PERSPECTIVE}
    prompt = rows.select_columns(["prompt"]).flatten().to_pandas()
    assert prompt["prompt.toxicity"].isna().any() and prompt["prompt.threat"].isna().any()
    qwen = AutoConfig.from_pretrained(assets["model"])
    assert (qwen.model_type, qwen.num_hidden_layers, qwen.num_attention_heads,
            qwen.num_key_value_heads, qwen.head_dim) == ("qwen3", 2, 4, 2, 32)
    assert qwen.head_dim != qwen.hidden_size // qwen.num_attention_heads
    roberta = AutoConfig.from_pretrained(assets["scorer"])
    assert tuple(roberta.id2label[i] for i in range(16)) == standins.ROBERTA_LABELS


def test_benign_prompts_are_never_challenging(assets, standin_file):
    from steering_utils.data import read_source

    params = load_params(standin_file)
    challenging = read_source(params.data, "challenging")
    benign = read_source(params.data, "benign")
    assert len(challenging) == 1_199
    # The stand-in has challenging prompts that score < 0.1 themselves: they stay out.
    assert (challenging["prompt_toxicity"] < 0.1).sum() > 0
    assert not set(benign["text"]) & set(challenging["text"])
    assert (benign["prompt_toxicity"] < 0.1).all()


def test_qwen3_params_fit_the_real_counts_and_oversized_ones_get_sizes_that_fit(standin_file):
    from steering_utils.checks import check_sizes

    params = load_params(standin_file)
    wanted = sum(getattr(params.data.challenging, f"n_{s}") for s in ("train", "dev", "eval"))
    assert wanted <= 1_199
    assert check_sizes(params).startswith("prompts used/available: challenging 1150/1199")
    old = params.data.challenging.model_copy(update={"n_train": 400, "n_dev": 200,
                                                      "n_eval": 1000})
    too_many = params.model_copy(update={"data": params.data.model_copy(
        update={"challenging": old})})
    with pytest.raises(ParamsError, match=r"= 1600 but the source has 1199 prompts; lower the "
                       r"sizes, e.g. \{n_train: 299, n_dev: 149, n_eval: 749\}"):
        check_sizes(too_many)


def test_rtp_loads_from_a_single_jsonl_file(tmp_path):
    from steering_utils.data import _rtp_hub

    rows = [{"filename": "f", "begin": 0, "end": 1, "challenging": i < 2,
             "prompt": {"text": f"p {i}", "toxicity": 0.05 if i != 3 else None},
             "continuation": {"text": "c", "toxicity": 0.1}} for i in range(5)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert list(_rtp_hub(str(path), "challenging", 0.1)["text"]) == ["p 0", "p 1"]
    assert list(_rtp_hub(str(path), "benign", 0.1)["text"]) == ["p 2", "p 4"]
    with pytest.raises(ParamsError, match="data.rtp_dataset: cannot load"):
        _rtp_hub(str(tmp_path / "absent.parquet"), "benign", 0.1)


# --- make check ------------------------------------------------------------------------


def test_make_check_light_on_the_standins_passes(standin_file, tmp_path, capsys):
    from steering_utils.preflight import main

    assert main(["--params", str(standin_file), "--runs-root", str(tmp_path / "runs"),
                 "--no-deep"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == DEEP_LINES[:13]
    assert all(line.startswith("ok") for line in lines)
    capability = next(line for line in lines if line.split()[1] == "capability")
    assert "mmlu_hub: 1000 dev + 1000 eval items, chance 0.25, scored by answer letter" \
        in capability


@pytest.mark.slow
def test_make_check_deep_on_the_standins_passes_every_line(standin_file, tmp_path):
    done = _preflight(standin_file, tmp_path)  # deep by default: the weights are local
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    print(done.stdout)
    assert [line.split()[1] for line in lines] == DEEP_LINES
    assert all(line.startswith("ok") for line in lines)
    by = {line.split()[1]: line for line in lines}
    assert "alpha 0 left them equal" in by["steering"] and "layers 0:" in by["steering"]
    from steering_utils.params import load_params
    from steering_utils.workload import job_counts
    generated = job_counts(load_params(standin_file), 2)["generated"]  # 2 stand-in layers
    assert "for the full run" in by["wall"] and f"{generated:,} generated rows" in by["wall"]
    assert "unbiased-toxic-roberta" in by["scorer"]


def test_make_check_with_the_hub_ids_offline_fails_on_the_first_hub_line(tmp_path):
    done = _preflight(ROOT / "params" / "qwen3-8b.yaml", tmp_path, "--deep")  # make's DEEP=1
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok    params")
    assert len(lines) == 3 and lines[2].startswith("FAIL  layers")
    assert "cannot load 'Qwen/Qwen3-8B'" in lines[2] and "HF_HUB_OFFLINE=1 is set" in lines[2]


def test_deep_mode_is_the_default_only_when_the_weights_are_here(assets):
    from steering_utils.params import ModelParams
    from steering_utils.smoke import weights_are_local

    assert weights_are_local(ModelParams(name="m", source="local", path=str(assets["model"])))
    assert not weights_are_local(ModelParams(name="m", source="hub", path="no-such/model-x"))


def test_cpu_bf16_on_an_8b_model_stops_before_any_work(assets, tmp_path):
    from transformers import Qwen3Config

    from steering_utils.runner import run_study

    folder = tmp_path / "qwen3-8b-config-only"
    Qwen3Config(**QWEN3_8B).save_pretrained(folder)
    params_file = standins.standin_params(
        assets, tmp_path / "p.yaml", model={"source": "local", "path": str(folder)})
    assert not torch.cuda.is_available()
    with pytest.raises(ParamsError, match=r"model.device: 'auto' found no GPU .* bfloat16 on the "
                       r"CPU for a ~8.2B-parameter model would run for days"):
        run_study(params_file, tmp_path / "runs", tmp_path / "reports")
    assert not (tmp_path / "runs").exists()


# --- memory truth ----------------------------------------------------------------------


def test_parameter_count_of_qwen3_8b_matches_a_meta_device_model():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from steering_utils.memory import approx_params

    config = Qwen3Config(**QWEN3_8B)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    actual = sum(p.numel() for p in model.parameters())
    assert 8.15e9 < actual < 8.25e9  # the published ~8.19B
    assert abs(approx_params(config) - actual) / actual < 0.05
    assert approx_params(config) == actual  # exact for Qwen3, in fact
    tied = Qwen3Config(**{**QWEN3_8B, "tie_word_embeddings": True})
    with torch.device("meta"):
        tied_actual = sum(p.numel() for p in Qwen3ForCausalLM(tied).parameters())
    assert approx_params(tied) == tied_actual == actual - 151_936 * 4096


def test_parameter_count_of_other_architectures_is_close():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from steering_utils.memory import approx_params

    for config, cls in ((LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160,
                                     num_hidden_layers=3, num_attention_heads=8,
                                     num_key_value_heads=2, tie_word_embeddings=True),
                         LlamaForCausalLM),
                        (GPT2Config(vocab_size=1000, n_embd=64, n_layer=3, n_head=4),
                         GPT2LMHeadModel)):
        with torch.device("meta"):
            actual = sum(p.numel() for p in cls(config).parameters())
        assert abs(approx_params(config) - actual) / actual < 0.05, type(config).__name__


def test_memory_plan_counts_the_auto_batch_and_the_log_softmax(standin_file):
    from transformers import Qwen3Config

    from steering_utils.likelihood import logprob_spike_gib
    from steering_utils.memory import memory_plan

    params = load_params(ROOT / "params" / "qwen3-8b.yaml")
    config = Qwen3Config(**QWEN3_8B)
    gpu = memory_plan(params, config, "cuda")
    assert gpu["generation_batch"] == 256  # where `auto` starts on CUDA
    assert 15.0 < gpu["weights"] < 15.5  # 8.19B x 2 bytes
    # KV cache of 256 rows x 148 tokens, GQA: 2 x 36 layers x 8 heads x 128 x 2 bytes a token.
    assert abs(gpu["kv_cache"] - 256 * 148 * 2 * 36 * 8 * 128 * 2 / 2**30) < 1e-9
    # A log-softmax over every position of batch 32 x 512 would hold ~23 GiB ...
    assert 23.0 < logprob_spike_gib(32, 512, 151_936) < 23.5
    assert gpu["spike_if_all_positions"] == logprob_spike_gib(32, 512, 151_936)
    # ... the passes keep only the scored positions.
    assert gpu["likelihood_work"] < 2
    assert 20 < gpu["total"] < 40
    assert memory_plan(params, config, "cpu")["generation_batch"] == 32
    fixed = params.model_copy(update={"generation": params.generation.model_copy(
        update={"batch_size": 8})})
    assert memory_plan(fixed, config, "cuda")["generation_batch"] == 8


# --- likelihood passes -----------------------------------------------------------------


class _OomAbove:
    """Forward pre-hook raising CUDA's OOM error for batches larger than `limit` rows."""

    def __init__(self, limit: int):
        self.limit, self.seen = limit, []

    def __call__(self, module, args, kwargs):
        rows = kwargs["input_ids"].shape[0]
        self.seen.append(rows)
        if rows > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 23.18 GiB")


def test_likelihood_passes_halve_the_batch_on_out_of_memory(tiny_qwen3, tiny_tokenizer):
    from steering_utils import batching, likelihood

    contexts = [f"the {w} said that you are" for w in ("cat", "dog", "man", "day", "kind") * 3]
    continuations = [" a very bad idiot", " good", " not kind at all and", " runs"] * 3 + [
        " no", " yes", " why"]
    expected, counts = likelihood.continuation_logprobs(tiny_qwen3, tiny_tokenizer, contexts,
                                                        continuations, batch_size=2)
    tiny_qwen3.config.name_or_path = "oom-test"
    hook = tiny_qwen3.register_forward_pre_hook(_OomAbove(3), with_kwargs=True)
    try:
        sums, again = likelihood.continuation_logprobs(tiny_qwen3, tiny_tokenizer, contexts,
                                                       continuations, batch_size=16)
        assert batching._FITTING_BATCH[("oom-test", "log-likelihood")] == 2
        watcher = _OomAbove(3)
        hook.remove()
        hook = tiny_qwen3.register_forward_pre_hook(watcher, with_kwargs=True)
        likelihood.continuation_logprobs(tiny_qwen3, tiny_tokenizer, contexts, continuations,
                                         batch_size=16)
        assert max(watcher.seen) == 2  # the next pass starts at the batch that fitted
        letters = likelihood.next_token_logprobs(tiny_qwen3, tiny_tokenizer, contexts, [3, 4],
                                                 batch_size=16, desc="letters")
    finally:
        hook.remove()
        tiny_qwen3.config.name_or_path = ""
        batching._FITTING_BATCH.clear()
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-5)
    assert (again == counts).all()
    np.testing.assert_allclose(letters, likelihood.next_token_logprobs(
        tiny_qwen3, tiny_tokenizer, contexts, [3, 4]), rtol=1e-5, atol=1e-5)


def test_other_errors_in_a_likelihood_pass_are_not_retried(tiny_qwen3, tiny_tokenizer):
    from steering_utils.likelihood import continuation_logprobs

    def broken(module, args, kwargs):
        raise RuntimeError("shape mismatch")

    hook = tiny_qwen3.register_forward_pre_hook(broken, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="shape mismatch"):
            continuation_logprobs(tiny_qwen3, tiny_tokenizer, ["the cat"], [" runs"])
    finally:
        hook.remove()


def test_next_token_logprobs_equal_one_token_continuations(tiny_qwen3, tiny_tokenizer):
    from steering_utils.likelihood import continuation_logprobs, next_token_logprobs

    contexts = ["the cat", "you are a very stupid idiot and", "we"]
    tokens = tiny_tokenizer.convert_tokens_to_ids(["dog", "love", "bad"])
    fast = next_token_logprobs(tiny_qwen3, tiny_tokenizer, contexts, tokens, batch_size=2)
    slow, _ = continuation_logprobs(tiny_qwen3, tiny_tokenizer,
                                    [c for c in contexts for _ in tokens],
                                    [" dog", " love", " bad"] * 3, batch_size=4)
    np.testing.assert_allclose(fast.ravel(), slow, rtol=1e-5, atol=1e-5)


# --- MMLU ------------------------------------------------------------------------------


def test_mmlu_prompt_is_the_lm_eval_harness_format():
    from steering_utils.capability import mmlu_prompt

    assert mmlu_prompt(" What is 2 + 2? ", ["3", "4", "5", "22"], "elementary_mathematics") == (
        "The following are multiple choice questions (with answers) about elementary "
        "mathematics.\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")


def test_mmlu_loads_from_a_local_copy_and_is_scored_by_letter(assets):
    from steering_utils.capability import capability_rows, item_splits, load_items

    items = load_items("mmlu_hub", 12, 0, str(assets["mmlu"]))
    assert len(items) == 12 and (items["format"] == "letters").all()
    assert items["options"].map(len).eq(4).all() and items["subject"].ne("").all()
    assert set(load_items("piqa", 4, 0)["format"]) == {"cloze"}
    with pytest.raises(ValueError, match="evaluation.capability.path: cannot load MMLU"):
        load_items("mmlu_hub", 4, 0, None)  # cais/mmlu from the hub, offline
    params = load_params(standins.standin_params(assets, assets["rtp"].parent / "cap.yaml"))
    from steering_utils.models import load_model

    model, tokenizer = load_model(params.model)
    splits = item_splits("mmlu_hub", 8, 0, str(assets["mmlu"]))
    assert not set(splits["dev"]["question"]) & set(splits["eval"]["question"])
    table = capability_rows(model, tokenizer, splits["eval"], [("none", -1, 0.0)], {}, 4,
                            "eval", "mmlu_hub")
    assert (table["chance"] == 0.25).all() and len(table) == 8


@pytest.mark.slow
def test_mmlu_letter_scoring_on_the_offline_model(offline_model):
    """The chosen letter is the argmax of log p(" A".." D" | harness prompt), computed by hand."""
    from steering_utils.capability import choose_answers, load_items, mmlu_prompt

    model, tokenizer = offline_model
    items = load_items("mmlu_offline", 12, 3)
    assert (items["format"] == "letters").all()
    picks = choose_answers(model, tokenizer, items, batch_size=4)
    letters = [tokenizer(f" {x}", add_special_tokens=False)["input_ids"] for x in "ABCD"]
    assert all(len(ids) == 1 for ids in letters)
    for i, row in items.iterrows():
        ids = tokenizer(mmlu_prompt(row["question"], row["options"]), return_tensors="pt")
        with torch.no_grad():
            last = torch.log_softmax(model(**ids).logits[0, -1].float(), -1)
        by_hand = int(torch.argmax(last[[ids[0] for ids in letters]]))
        assert picks[i] == by_hand
    # A bias towards " C" makes every answer C: the letters, not the option texts, are scored.
    bias = torch.zeros(model.config.vocab_size)
    bias[letters[2][0]] = 50.0
    hook = model.lm_head.register_forward_hook(lambda m, a, out: out + bias.to(out.dtype))
    try:
        assert (choose_answers(model, tokenizer, items, batch_size=4) == 2).all()
    finally:
        hook.remove()


# --- generation config -----------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_saved_sampling_defaults_do_not_change_our_generation(assets, tmp_path, temperature):
    """Qwen3's generation_config.json (do_sample, temperature 0.6, top_k 20) is ignored:
    greedy stays greedy, sampling follows the params, under any global seed."""
    from steering_utils.generation import generate_completions, make_jobs
    from steering_utils.models import load_model
    from steering_utils.params import GenerationParams, ModelParams

    saved = json.loads((assets["model"] / "generation_config.json").read_text())
    assert saved["do_sample"] is True and saved["top_k"] == 20 and saved["temperature"] == 0.6
    tokenizer = standins.build_tokenizer()
    neutral = standins.write_qwen3(tmp_path / "neutral", tokenizer, sampling_defaults=False)
    prompts = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(6)],
                            "text": ["the people said", "you are a", "my friend and I",
                                     "what a stupid", "one night the city", "I hate"]})
    jobs = make_jobs(prompts, [(-1, 0.0)], 2)
    gen = GenerationParams(temperature=temperature, top_p=0.9, max_new_tokens=8, batch_size=4)
    outputs = []
    for folder, torch_seed in ((assets["model"], 0), (assets["model"], 1), (neutral, 2)):
        model, tok = load_model(ModelParams(name="m", source="local", path=str(folder),
                                            dtype="float32"))
        torch.manual_seed(torch_seed)
        outputs.append(list(generate_completions(model, tok, jobs, None, gen, seed=5)
                            ["completion"]))
        assert bool(model.generation_config.do_sample) is (folder == assets["model"])  # kept
    assert outputs[0] == outputs[1] == outputs[2]
    if temperature == 0:  # greedy: the argmax continuation, token by token
        model, tok = load_model(ModelParams(name="m", source="local", path=str(neutral),
                                            dtype="float32"))
        ids = tok(["you are a"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            for _ in range(8):
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
        greedy = tok.decode(ids[0, -8:], skip_special_tokens=True)
        assert outputs[0][2] == greedy  # job 2 is "you are a", sample 0


# --- job counts and the wall-time projection --------------------------------------------


def test_job_counts_equal_the_job_tables_the_study_builds():
    from steering_utils.generation import make_jobs
    from steering_utils.stages import UNSTEERED_LAYER
    from steering_utils.sweep import control_jobs, grid_jobs, sweep_jobs
    from steering_utils.workload import job_counts

    params = load_params(ROOT / "params" / "qwen3-8b.yaml")
    rows = []
    for subset in ("challenging", "benign"):
        spec = getattr(params.data, subset)
        for split in ("train", "dev", "eval"):
            rows += [(subset, split)] * getattr(spec, f"n_{split}")
    prompts = pd.DataFrame(rows, columns=["subset", "split"])
    prompts["prompt_id"] = [f"x{i}" for i in range(len(prompts))]
    prompts["text"] = prompts["prompt_id"]
    baseline = make_jobs(prompts, [(UNSTEERED_LAYER, 0.0)], params.generation.samples_per_prompt)
    counts = job_counts(params, 36)
    assert counts["baseline"] == len(baseline) == 47_500
    # grid: 150 challenging + 50 benign dev prompts x 36 layers x 5 alphas
    assert counts["grid"] == len(grid_jobs(prompts, baseline, params, 36)[0]) == 36_000
    assert counts["sweep"] == len(sweep_jobs(prompts, baseline, params, [10, 20])[0]) == 420_000
    randoms = [f"random-{i}" for i in range(params.control.n_directions)]
    assert counts["control"] == len(control_jobs(prompts, baseline, params, 10, randoms)[0])
    assert counts["control"] == 700 * 3 * 5
    # Methods: equal dev budgets, at most CAA's 36 layers x 5 alphas = 180 cells each for the
    # 7 with a strength (the prompt: 1) on 150 dev prompts x 1 sample, then every method's
    # matched point (CAA's included: 9) on 700 + 500 eval prompts x 10 samples.
    assert params.methods.dev_cells is None  # the reference scale: CAA's count
    assert counts["methods"] == 150 * (7 * 180 + 1) + 1200 * 10 * 9 == 297_150
    assert counts["generated"] == 47_500 + 36_000 + 420_000 + 10_500 + 297_150
    # dev: reference + about 2 tried cells; eval: reference, 2 x 7 cells, 3 random directions
    assert counts["capability"] == 1000 * (3 + 1 + 2 * 7 + 3 + 2 * 8)  # 8 methods: dev + eval
    assert counts["activations"] == 4 * params.activations.n_per_side


def test_wall_time_projection_adds_each_pass():
    from steering_utils.workload import format_duration, job_counts, project_wall_time

    params = load_params(ROOT / "params" / "qwen3-8b.yaml")
    counts = job_counts(params, 36)
    seconds, detail = project_wall_time(params, counts, {"generate": 0.01, "score": 0.001,
                                                         "perplexity": 0.002,
                                                         "capability": 0.05})
    expected = 811_150 * (0.01 + 0.001 + 0.002) + 37_000 * 0.05 + 1_200 * 0.002
    assert seconds == pytest.approx(expected)
    assert detail.startswith("generation 2 h 15 min, scoring 14 min")
    assert format_duration(59) == "59 s" and format_duration(7260) == "2 h 01 min"


# --- the smoke chain on the stand-ins ---------------------------------------------------


@pytest.mark.slow
def test_smoke_chain_on_the_standins_writes_a_schema_valid_report(assets, tmp_path):
    from steering_utils.results import validate_results

    params_file = standins.standin_params(
        assets, tmp_path / "standin-smoke.yaml", run_name="standin-smoke",
        data={"challenging": {"n_train": 8, "n_dev": 6, "n_eval": 6},
              "benign": {"n_train": 4, "n_dev": 0, "n_eval": 4}},
        generation={"max_new_tokens": 6, "samples_per_prompt": 2, "batch_size": 8},
        scorer={"batch_size": 32},
        # Random-weight text has no toxicity gap for the label scorer to find: the stand-in
        # contrasts prompt texts (the paired contrast's gap filter runs on smoke).
        activations={"n_per_side": 4, "batch_size": 8, "contrast": "prompts",
                     "comparison": None},
        sweep={"grid_alphas": [0, 2.0], "alphas": [0, 1.0, 2.0], "n_chosen": 1},
        # a random-weight model's one-token pair pushes layer 0 ~1.6x ||h|| per unit strength:
        # the real study's ActAdd grid (up to 4) would stop 05 at the push limit, as it should
        methods={"actadd": {"strengths": [0.5, 1.0], "toxic_text": " hate",
                            "clean_text": " love"}},
        evaluation={"n_bootstrap": 200, "capability": {"n_items": 8}},
        report={"n_examples": 2},
    )
    done = subprocess.run(
        [sys.executable, "-m", "steering_utils.runner", "--params", str(params_file),
         "--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "reports" / "standin-smoke" / "experiment_results.json")
                         .read_text())
    validate_results(results)
    assert {c["layer"] for c in results["cells"] if c["experiment"] == "grid"} == {-1, 0, 1}
    text = json.dumps(results)
    assert "mmlu_hub" in text


# --- the GPU check's CPU-runnable parts -------------------------------------------------


def test_gpu_check_script_is_ready():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert os.access(ROOT / "benchmarks" / "gpu_check.sh", os.X_OK)
    assert "benchmarks/gpu_check.py" in script and "params/default-gpu.yaml" in script
    params = load_params(ROOT / "params" / "default-gpu.yaml")
    assert (params.model.device, params.model.dtype) == ("cuda", "bfloat16")
    from benchmarks.gpu_check import QWEN3_8B as BENCH

    assert {k: BENCH[k] for k in QWEN3_8B if k != "max_position_embeddings"} == {
        k: v for k, v in QWEN3_8B.items() if k != "max_position_embeddings"}


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_pass_on_the_cpu():
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--rows", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in ("generate plain", "generate steered", "steering overhead", "score ",
                     "perplexity ", "capability ", "projected wall time of "
                     "params/qwen3-8b.yaml", "811,150 generated rows"):
        assert expected in out, expected
    assert "tokens/s" in out and "MMLU items/s" in out
