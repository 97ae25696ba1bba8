"""Checks before a long run: `python -m steering_utils.preflight --params FILE` (make check).

Verifies, without loading weights, what the run will need: params valid, runs and
reports folders writable, model config and tokenizer reachable, layers in range,
prompts available in the numbers asked for and short enough for the model's context,
scorer loadable, device memory against an estimate, free disk. One line per check;
exits non-zero on the first real problem.
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
    from .data import SUBSETS, read_source

    counts = []
    for subset in SUBSETS:
        spec = getattr(params.data, subset)
        available = len(read_source(params.data, subset))
        wanted = spec.n_train + spec.n_dev + spec.n_eval
        if wanted > available:
            raise ParamsError(f"data.{subset}: n_train + n_dev + n_eval = {wanted} but the "
                              f"source has {available} prompts; lower the sizes")
        counts.append(f"{subset} {wanted}/{available}")
    act, k = params.activations, params.generation.samples_per_prompt
    if "paired" in (act.contrast, act.comparison) and k < 2:
        raise ParamsError("activations.contrast: 'paired' compares continuations of the same "
                          "prompt; set generation.samples_per_prompt >= 2 (or use 'completions')")
    if act.contrast == "paired":
        if params.data.challenging.n_train < 2:
            raise ParamsError("data.challenging.n_train: the paired contrast needs at least 2 "
                              "train prompts")
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
    from .models import load_model_config, load_tokenizer

    limit = context_length(load_model_config(params.model))
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
            f"(max_position_embeddings); lower max_new_tokens to at most "
            f"{limit - lengths[longest]} or use shorter prompts")
    return f"longest prompt {lengths[longest]} + {new} new tokens <= {limit} positions"


def _writable(folder: Path) -> None:
    """Raise OSError unless a file can be created in folder (root ignores mode bits: try it)."""
    with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
        pass


def check_folders(params: StudyParams, runs_root: Path, reports_root: Path) -> str:
    """The run's folders under runs/ and reports/ stay inside them and can be written."""
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


def check_capability(params: StudyParams) -> str:
    """The capability task exists and has enough items (offline files only)."""
    cap = params.evaluation.capability
    if cap.task in ("none", "mmlu_hub"):
        return f"task {cap.task} (checked when the sweep loads it)"
    from .capability import chance_accuracy, item_splits

    items = item_splits(cap.task, cap.n_items, params.seed)
    return (f"{cap.task}: {len(items['dev'])} dev + {len(items['eval'])} eval items, chance "
            f"{chance_accuracy(items['eval']):.2f}")


def check_tokenizer(params: StudyParams) -> str:
    """The tokenizer loads (downloads only its small files on a hub model)."""
    from .models import load_tokenizer

    tokenizer = load_tokenizer(params.model)
    return f"{type(tokenizer).__name__}, vocab {len(tokenizer)}"


def check_scorer(params: StudyParams) -> str:
    """The scorer(s) load and score a sentence."""
    from .scoring import load_scorer

    names = [params.scorer.name] + ([params.scorer.second] if params.scorer.second else [])
    for name in names:
        path = params.scorer.path if name == params.scorer.name else None
        load_scorer(name, path, params.scorer.batch_size).score(["a short test sentence"])
    return " and ".join(names) + " load and score"


def estimate_memory_gib(params: StudyParams, n_params: int, device: str) -> float:
    """Weights plus KV cache for one generation batch, in GiB (a planning estimate)."""
    from .models import load_model_config, pick_dtype

    config = load_model_config(params.model).get_text_config()
    dtype = str(pick_dtype(params.model.dtype, device)).replace("torch.", "")
    width = BYTES_PER_PARAM.get(dtype, 4)
    batch = 64 if params.generation.batch_size == "auto" else params.generation.batch_size
    tokens = 128 + params.generation.max_new_tokens
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * heads * head_dim * tokens * batch * width
    logits = batch * config.vocab_size * 4 * 2
    return (n_params * width + kv + logits) / 2**30


def check_device(params: StudyParams) -> str:
    """The device exists and has room for the model and a batch."""
    import torch

    from .models import load_model_config, pick_device

    device = pick_device(params.model.device)
    config = load_model_config(params.model).get_text_config()
    n_params = _approx_params(config)
    need = estimate_memory_gib(params, n_params, device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParamsError(f"model.device: {device} but CUDA is not available; use 'auto'")
        total = sum(torch.cuda.get_device_properties(i).total_memory
                    for i in range(torch.cuda.device_count())) / 2**30
        if need > total and not params.model.device_map:
            raise ParamsError(f"model.device: needs ~{need:.1f} GiB, GPUs have {total:.1f} GiB; "
                              "set model.device_map: auto or lower generation.batch_size")
        return f"{device}: ~{need:.1f} GiB needed of {total:.1f} GiB"
    if device == "mps" and not torch.backends.mps.is_available():
        raise ParamsError("model.device: mps is not available here; use 'auto'")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if need > total:
        raise ParamsError(f"model.device: needs ~{need:.1f} GiB, this machine has {total:.1f}")
    return f"{device}: ~{need:.1f} GiB needed of {total:.1f} GiB RAM"


def _approx_params(config) -> int:
    d, inter = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    per_layer = 4 * d * d + 3 * d * inter
    return config.num_hidden_layers * per_layer + 2 * config.vocab_size * d


def check_disk(params: StudyParams, runs_root: Path) -> str:
    """Free disk for the run's artifacts (generations and activations)."""
    runs_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(runs_root).free / 2**30
    if free < 1:
        raise ParamsError(f"disk: only {free:.2f} GiB free under {runs_root}; free some space")
    return f"{free:.0f} GiB free under {runs_root}"


def validate_run(params: StudyParams) -> None:
    """The cheap checks the runner makes before any stage starts (raises ParamsError)."""
    check_layers(params)
    check_sizes(params)
    check_context(params)
    check_capability(params)


def run_checks(params: StudyParams, runs_root: Path, echo: Callable[[str], None] = print,
               reports_root: Path = Path("reports")) -> bool:
    """Every preflight check, one line each; False at the first failure."""
    checks = [("params", lambda p: f"{p.run_name}: valid (hash {p.params_hash})"),
              ("folders", lambda p: check_folders(p, runs_root, reports_root)),
              ("layers", check_layers), ("data", check_sizes), ("context", check_context),
              ("capability", check_capability), ("tokenizer", check_tokenizer),
              ("scorer", check_scorer), ("device", check_device),
              ("disk", lambda p: check_disk(p, runs_root))]
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
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as err:
        print(f"FAIL  params     {err}")
        return 1
    apply_environment(params)
    return 0 if run_checks(params, args.runs_root, reports_root=args.reports_root) else 1


if __name__ == "__main__":
    sys.exit(main())
