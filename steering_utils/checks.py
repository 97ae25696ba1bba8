"""The checks a run must pass before it starts, one function a check, one line each.

Cheap ones (`validate_run`: engine, executor, layers, sizes, context, capability, CPU
precision) run in the runner and when a notebook opens its stage (`session.open_stage`);
the rest (folders, tokenizer, scorer, device memory, disk, the push limit) in `make check`
(`preflight`). Each returns the line `make check` prints, or raises naming the field and
the fix. Rules that need only the params themselves live in `params` as validators, so a
notebook gets them when it loads the params.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .memory import approx_params, memory_plan
from .params import ParamsError, StudyParams, compared_methods, resolve_layers, run_path
from .reportdir import check_replaceable, check_roots


def check_layers(params: StudyParams) -> str:
    """Every layer named in params exists in the model (config only, no weights)."""
    from .models import load_model_config, num_decoder_layers

    n_layers = num_decoder_layers(load_model_config(params.model))
    grid = resolve_layers(params.sweep.layers, params.sweep.layer_stride, n_layers)
    if params.sweep.chosen_layers != "auto":
        resolve_layers(params.sweep.chosen_layers, 1, n_layers, "sweep.chosen_layers")
    condition = params.methods.conditional_caa.condition_layer
    if condition != "chosen":
        resolve_layers([condition], 1, n_layers, "methods.conditional_caa.condition_layer")
    if params.sweep.chosen_layers == "auto" and params.sweep.n_chosen > len(grid):
        raise ParamsError(f"sweep.n_chosen: {params.sweep.n_chosen} > {len(grid)} grid layers")
    return f"{n_layers} decoder layers; grid steers {len(grid)} of them"


def check_sizes(params: StudyParams) -> str:
    """Enough prompts in each source for its splits (what the splits need of each other and
    of the contrast is checked when the params load: `params.StudyParams`)."""
    from .data import SUBSETS, read_source, too_few_prompts

    counts = []
    for subset in SUBSETS:
        spec = getattr(params.data, subset)
        available = len(read_source(params.data, subset))
        wanted = spec.n_train + spec.n_dev + spec.n_eval
        if wanted > available:
            raise ParamsError(too_few_prompts(subset, spec, available))
        counts.append(f"{subset} {wanted}/{available}")
    skipped = ("; conditional_caa will be skipped: no benign dev prompts to set its gate's "
               "threshold on (data.benign.n_dev: 0)"
               if "conditional_caa" in compared_methods(params.sweep)
               and params.data.benign.n_dev == 0 else "")
    return "prompts used/available: " + ", ".join(counts) + skipped


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
            + (f" (or set generation.vllm.max_model_len: {lengths[longest] + new})"
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
        return f"task {cap.task} (loaded in deep mode: --deep)" if cap.task != "none" else \
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


def check_cpu_precision(params: StudyParams) -> str:
    """device: auto on a machine without a GPU must not start a bf16 multi-billion model."""
    from .models import load_model_config, pick_device

    device = pick_device(params.model.device)
    n_params = approx_params(load_model_config(params.model).get_text_config())
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
