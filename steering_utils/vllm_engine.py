"""Generation on vLLM, steered per request: the `generation.engine: vllm` path.

    out = generate_completions(model, tokenizer, jobs, vectors, gen, seed, positions="all")

Same job table in and same table out (a `completion` column) as
`generation.generate_completions`, the HF engine, which stays the reference;
`engines.make_engine` picks the engine from `generation.engine`.

Steering. Each job row is one vLLM request; its (layer, alpha, positions) travels in
`SamplingParams.extra_args`; hooks inside the worker (`vllm_hooks`) shift each token of a
request by its own alpha, under continuous batching.

Prefix caching stays on. A steered request carries a cache salt of its cell (layer,
alpha, positions, the direction's bytes): KV computed under one steering is never
served to another, nor to unsteered requests, while the k samples of one prompt in
one cell share their prompt's blocks. Unsteered rows carry no salt and share with
plain vLLM (their KV is plain KV).

CUDA graphs and torch.compile are off (`enforce_eager=True`): the coefficients are
rebuilt in Python every step, and a captured or compiled graph would keep the
first step's. On CPU eager is vLLM's own default path; on a GPU this gives up the
graph speed-up, which `benchmarks/vllm_vs_hf.py` measures on unsteered rows.

Sampling: temperature and top_p from params, one vLLM seed per (prompt, sample) from
`generation.row_seed`, as the HF engine derives it, so a row's continuation does not
depend on its batch. vLLM draws its noise per (request seed, step) over the whole
vocabulary, so rows of different alphas share it (common random numbers), though
the two engines' streams differ: at temperature > 0 one engine's samples are not the
other's. Greedy when temperature is 0.

vLLM pins transformers below the main environment's: it runs in the second
environment made by `make setup-vllm`, whose Jupyter kernel the runner picks for a
vllm run (`vllm_kernel.notebook_kernel`).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .params import GenerationParams, ModelParams, ParamsError, VLLMParams
from .stages import hook_layer
from .vllm_hooks import STEER_KEY, install_steering, set_edit

CPU_KV_CACHE_GIB = 2  # VLLM_CPU_KVCACHE_SPACE unless set: ample for 20-token continuations
KV_BLOCK_TOKENS = 32  # vLLM's CPU default (128) is longer than most prompts here

_ENGINES: dict[tuple, object] = {}


def check_model_source(spec: ModelParams) -> None:
    """ParamsError when vLLM cannot load this model spec the way the HF engine does."""
    if spec.source == "gguf":
        raise ParamsError("generation.engine: vllm loads safetensors, not model.source: gguf; "
                          "use engine: hf, or a local/hub copy in safetensors")
    if spec.device_map:
        raise ParamsError("generation.engine: vllm places the model itself; set "
                          "model.device_map: null (vLLM's tensor parallelism is not wired in)")


def cache_salt(direction, layer: int, alpha: float, positions: str) -> str | None:
    """Prefix-cache salt of one cell: None when unsteered (its KV is plain KV)."""
    if direction is None or alpha == 0:
        return None
    import torch

    vector = direction.detach().to("cpu", torch.float32).contiguous().numpy()
    digest = hashlib.sha256(vector.tobytes())
    digest.update(f"|{layer}|{float(alpha)!r}|{positions}".encode())
    return digest.hexdigest()[:32]


def _model_folder(model, spec: ModelParams | None) -> tuple[str, dict]:
    """(folder or hub id, extra LLM options) of the model vLLM loads."""
    if spec is not None:
        from .models import model_location

        check_model_source(spec)
        where, extra = model_location(spec)
        options = {"trust_remote_code": spec.trust_remote_code}
        if extra.get("revision"):
            options["revision"] = extra["revision"]
        return where, options
    where = str(model) if isinstance(model, str | Path) else getattr(model, "name_or_path", "")
    if not where or where.endswith(".gguf"):
        raise ParamsError("generation.engine: vllm needs the model's safetensors folder or hub "
                          "id; load the model with steering_utils.models.load_model")
    return where, {}


def _dtype_name(model) -> str:
    dtype = getattr(model, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def _prepare_environment() -> None:
    """Set what vLLM reads at import (each one an overridable default)."""
    import torch

    # In-process engine core: no spawned process (notebooks and scripts need no
    # __main__ guard) and the steering hooks live beside the model.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # The hooks read the V1 model runner's batch; vLLM picks the V2 runner where Triton
    # runs (CUDA), which lays its batch out differently.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    # vLLM's CPU worker drops torch to 1 thread unless OMP_NUM_THREADS is set.
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    # vLLM pins its OpenMP threads to cores; on CPUs shared with other processes a
    # pinned thread waits for its busy core.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def load_engine(model, spec: ModelParams | None = None, room: VLLMParams | None = None,
                **overrides):
    """A vLLM `LLM` for the model (cached per folder, dtype and options), steering installed.

    `model` is the HF model of the run (its dtype is used) or a folder; `spec` (the
    run's model params) names the folder when given; `room` (generation.vllm) sizes the
    engine: its context and GPU memory share (the defaults when None). `overrides` go to
    `LLM(...)`; `enforce_eager=False` makes an unsteerable engine (CUDA graphs), for
    benchmarks.
    """
    room = room or VLLMParams()
    folder, options = _model_folder(model, spec)
    dtype = overrides.pop("dtype", None) or _dtype_name(model)
    key = (folder, dtype, room.max_model_len, room.gpu_memory,
           tuple(sorted({**options, **overrides}.items())))
    if key in _ENGINES:
        return _ENGINES[key]
    _prepare_environment()
    from vllm import LLM

    max_len = room.max_model_len
    settings = dict(
        model=folder, tokenizer=folder, dtype=dtype, enforce_eager=True, seed=0,
        # The study passes every sampling setting itself: the model's saved defaults
        # (Qwen3's top_k 20, temperature 0.6) must not apply, as in the HF engine.
        generation_config="vllm",
        enable_prefix_caching=True, block_size=KV_BLOCK_TOKENS,
        # No partial prefills: after one, vLLM rewinds the request's seeded generator,
        # which CPU generators refuse ("CPU Generator does not use offset"); whole
        # prompts also keep a row's numbers independent of how its batch was cut.
        enable_chunked_prefill=False, max_model_len=max_len,
        max_num_batched_tokens=max(max_len, 4096),
        gpu_memory_utilization=room.gpu_memory,
        **options,
    )
    settings.update(overrides)
    llm = LLM(**settings)
    if settings["enforce_eager"]:
        llm.collective_rpc(install_steering)
    _ENGINES[key] = llm
    return llm


def _salt_basis(edit, layer: int):
    """The tensor a cell's cache salt hashes: the edit's terms at the layer (all of them
    for an all-layer edit), or None when there is no edit."""
    import torch

    if edit is None:
        return None
    parts = [t.flatten() if edit.all_layers else t[layer]
             for t in (edit.shift, edit.gain, edit.unit) if t is not None]
    return torch.cat([*parts, torch.tensor([float(edit.all_layers)])])


def _requests(encoded: list[list[int]], rows: pd.DataFrame, edit, gen: GenerationParams,
              seed: int, positions: str, stop_ids: list[int], **sampling):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from .generation import row_seed

    salts: dict[tuple[int, float], str | None] = {}
    prompts, params = [], []
    for ids, pid, sample, layer, alpha in zip(encoded, rows["prompt_id"], rows["sample"],
                                              rows["layer"], rows["alpha"]):
        alpha = float(alpha) if edit is not None else 0.0
        layer = hook_layer(layer)
        if (layer, alpha) not in salts:
            salts[layer, alpha] = cache_salt(_salt_basis(edit, layer), layer, alpha, positions)
        prompt = TokensPrompt(prompt_token_ids=list(ids))
        if salts[layer, alpha] is not None:
            prompt["cache_salt"] = salts[layer, alpha]
        prompts.append(prompt)
        params.append(SamplingParams(
            n=1, temperature=gen.temperature, top_p=gen.top_p if gen.temperature else 1.0,
            max_tokens=gen.max_new_tokens, seed=row_seed(seed, pid, int(sample)),
            stop_token_ids=stop_ids, detokenize=False,
            extra_args={STEER_KEY: (layer, alpha, positions)}, **sampling,
        ))
    return prompts, params


def _stop_ids(model, tokenizer) -> list[int]:
    """The HF engine's stop tokens: the model's generation config, else the tokenizer's EOS."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None]


def generate_outputs(model, tokenizer, jobs: pd.DataFrame, vectors, gen: GenerationParams,
                     seed: int, positions: str = "all", engine=None, desc: str = "generating",
                     spec: ModelParams | None = None, **sampling) -> list:
    """vLLM RequestOutputs of the job rows, in row order (tests and benchmarks read these)."""
    import torch

    from .steering import LayerEdit, as_edit

    llm = engine if engine is not None else load_engine(model, spec, gen.vllm)
    # SteeringVectors, a tensor of directions, or an intervention of the method comparison
    # (one without an edit, the prompt baseline, generates unsteered).
    edit = as_edit(vectors)
    if edit is not None and edit.front is not None:
        from .params import ENGINE_UNSUPPORTED_METHODS

        raise ParamsError("generation.engine: vllm cannot steer front positions (ActAdd: "
                          f"{', '.join(ENGINE_UNSUPPORTED_METHODS['vllm'])}); use engine: hf")
    if not llm.llm_engine.vllm_config.model_config.enforce_eager:
        if edit is not None and (jobs["alpha"] != 0).any():
            raise ValueError("vllm engine: this engine runs CUDA graphs and cannot steer; "
                             "load it with enforce_eager=True (the default)")
    else:
        n_layers = llm.collective_rpc(install_steering)[0]
        if edit is not None and edit.n_layers != n_layers:
            raise ValueError(f"vllm engine: vectors have {edit.n_layers} layers, "
                             f"model has {n_layers}")
        bad = sorted({int(x) for x in jobs["layer"] if int(x) >= n_layers})
        if bad:
            raise ValueError(f"vllm engine: layers {bad} out of range (0..{n_layers - 1})")
    encoded = tokenizer(list(jobs["prompt"]))["input_ids"]
    limit = llm.llm_engine.vllm_config.model_config.max_model_len
    longest = max(len(ids) for ids in encoded) + gen.max_new_tokens
    if longest > limit:
        raise ParamsError(f"generation.engine: vllm: a prompt plus max_new_tokens needs "
                          f"{longest} tokens, the engine holds {limit}; set "
                          f"generation.vllm.max_model_len: {longest} or shorten the prompts")
    cpu = None if edit is None else LayerEdit(
        *(None if t is None else t.detach().to("cpu", torch.float32)
          for t in (edit.shift, edit.gain, edit.unit)), all_layers=edit.all_layers)
    if llm.llm_engine.vllm_config.model_config.enforce_eager:
        llm.collective_rpc(set_edit, args=(cpu,))
    prompts, params = _requests(encoded, jobs, cpu, gen, seed, positions,
                                _stop_ids(model, tokenizer), **sampling)
    from tqdm.auto import tqdm

    def bar(*args, **kwargs):
        return tqdm(*args, **{**kwargs, "desc": desc, "unit": "seq"})

    # A disabled bar (TQDM_DISABLE=1: a Ray worker leaves progress to the driver) keeps no
    # time, and vLLM divides by its elapsed time: then vLLM gets no bar at all.
    with tqdm(total=0, file=io.StringIO()) as probe:
        quiet = probe.disable
    try:
        return llm.generate(prompts, params, use_tqdm=False if quiet else bar)
    finally:
        if llm.llm_engine.vllm_config.model_config.enforce_eager:
            llm.collective_rpc(set_edit, args=(None,))


def generate_completions(model, tokenizer, jobs: pd.DataFrame, vectors, gen: GenerationParams,
                         seed: int, positions: str = "all", desc: str = "generating",
                         spec: ModelParams | None = None, engine=None) -> pd.DataFrame:
    """The job table with a `completion` column, generated by vLLM; rows steered per request."""
    from .generation import JOB_COLUMNS

    missing = [c for c in JOB_COLUMNS if c not in jobs.columns]
    if missing:
        raise ValueError(f"generate_completions: job table lacks columns {missing}")
    if jobs.empty:
        return jobs.assign(completion=pd.Series(dtype=str))
    outputs = generate_outputs(model, tokenizer, jobs, vectors, gen, seed, positions,
                               engine=engine, desc=desc, spec=spec)
    # The HF engine decodes its new tokens the same way (special tokens, EOS, dropped).
    texts = tokenizer.batch_decode([list(o.outputs[0].token_ids) for o in outputs],
                                   skip_special_tokens=True)
    return jobs.assign(completion=np.array(texts, dtype=object).astype(str))
