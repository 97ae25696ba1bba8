"""Generation on vLLM, steered per request: the `generation.engine: vllm` path.

    out = generate_completions(model, tokenizer, jobs, vectors, gen, seed, positions="all")

Same job table in and same table out (a `completion` column) as
`generation.generate_completions`, the HF engine, which stays the reference;
`engines.make_engine` picks the engine from `generation.engine`.

Steering. Each job row is one vLLM request; its (layer, alpha, positions) travels in
`SamplingParams.extra_args`. Inside the worker a pre-hook on the model reads the
running batch (the V1 model runner's request order, tokens per request, tokens
already computed) and builds, per steered layer, one coefficient per token of the
flattened batch; a forward hook on that decoder layer subtracts coef[token] * v[layer].
So under continuous batching every token of a request (prompt and every decode
step) is shifted by its own alpha, and no other request's token is.

vLLM's Llama/Qwen decoder layers return `(hidden_states, residual)` and defer the add
to the next layer's fused add-norm (or the final norm): the residual stream that the
HF hook shifts is their sum. The shift goes into `residual`, so the next norm sees
hidden + residual - alpha * v, the HF stream up to the float order of the two adds.

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

from .params import GenerationParams, ModelParams, ParamsError

STEER_KEY = "steering_utils.steer"  # SamplingParams.extra_args key: (layer, alpha, positions)
# On a GPU the HF model of the same run stays loaded (perplexity, activations,
# capability): leave it room. STEERING_VLLM_GPU_MEMORY overrides.
GPU_MEMORY_FRACTION = 0.5
CPU_KV_CACHE_GIB = 2  # VLLM_CPU_KVCACHE_SPACE unless set: ample for 20-token continuations
# Longest prompt + continuation (STEERING_VLLM_MAX_MODEL_LEN overrides); with chunked
# prefill off it is also the most tokens one step may hold.
MAX_MODEL_LEN = 2048
KV_BLOCK_TOKENS = 32  # vLLM's CPU default (128) is longer than most prompts here

_ENGINES: dict[tuple, object] = {}


def max_model_len() -> int:
    """The most tokens (prompt + continuation) the engine holds: STEERING_VLLM_MAX_MODEL_LEN,
    else MAX_MODEL_LEN. Preflight checks the run's prompts against it."""
    raw = os.environ.get("STEERING_VLLM_MAX_MODEL_LEN", str(MAX_MODEL_LEN))
    try:
        return int(raw)
    except ValueError:
        raise ParamsError(f"STEERING_VLLM_MAX_MODEL_LEN={raw!r}: give a number of tokens, "
                          f"e.g. {MAX_MODEL_LEN}") from None


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


def load_engine(model, spec: ModelParams | None = None, **overrides):
    """A vLLM `LLM` for the model (cached per folder, dtype and options), steering installed.

    `model` is the HF model of the run (its dtype is used) or a folder; `spec` (the
    run's model params) names the folder when given. `overrides` go to `LLM(...)`;
    `enforce_eager=False` makes an unsteerable engine (CUDA graphs), for benchmarks.
    """
    folder, options = _model_folder(model, spec)
    dtype = overrides.pop("dtype", None) or _dtype_name(model)
    key = (folder, dtype, tuple(sorted({**options, **overrides}.items())))
    if key in _ENGINES:
        return _ENGINES[key]
    _prepare_environment()
    from vllm import LLM

    max_len = max_model_len()
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
        gpu_memory_utilization=float(os.environ.get("STEERING_VLLM_GPU_MEMORY",
                                                    GPU_MEMORY_FRACTION)),
        **options,
    )
    settings.update(overrides)
    llm = LLM(**settings)
    if settings["enforce_eager"]:
        llm.collective_rpc(_install_steering)
    _ENGINES[key] = llm
    return llm


# ---------------------------------------------------------------------------------
# Worker side: runs where the model lives (in this process here; collective_rpc
# cloudpickles these functions to worker processes otherwise).


class _SteeringState:
    """Per-step coefficients, built from the running batch before each model forward."""

    def __init__(self, runner, n_layers: int):
        self.runner = runner
        self.n_layers = n_layers
        # The edit of the next generate call (steering.LayerEdit's terms on the model's
        # device): (shift, gain, unit), each [n_layers, d] or None; None: no steering.
        self.terms = None
        self.all_layers = False
        self.acting: list[int] = []  # layers an all-layer edit acts at
        self.coefs: dict[int, object] = {}  # layer -> [num_tokens, 1] tensor, this step

    def before_forward(self, module, args, kwargs):
        self.coefs = {}
        if self.terms is None:
            return
        runner = self.runner
        req_ids = list(runner.input_batch.req_ids)
        if not req_ids:
            return  # warm-up and profiling runs carry no requests
        n_reqs = len(req_ids)
        cells = []
        for rid in req_ids:
            state = runner.requests.get(rid)
            extra = getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}
            layer, alpha, positions = extra.get(STEER_KEY, (-1, 0.0, "all"))
            cells.append((layer, alpha, positions == "generated",
                          state.num_prompt_tokens if state is not None else 0))
        alphas = np.array([c[1] for c in cells], dtype=np.float64)
        if not alphas.any():
            return
        # Requests are laid out one after another in the flattened batch, in req_ids order.
        starts = np.asarray(runner.query_start_loc.np[: n_reqs + 1], dtype=np.int64)
        counts = np.diff(starts)
        total = int(starts[-1])
        token_alpha = np.repeat(alphas, counts)
        generated_only = np.repeat([c[2] for c in cells], counts)
        if generated_only.any():
            # A token's position in its request: tokens computed before this step plus
            # its offset in this step's chunk. Prompt positions stay unsteered.
            computed = np.asarray(runner.input_batch.num_computed_tokens_cpu[:n_reqs])
            offset = np.arange(total) - np.repeat(starts[:-1], counts)
            position = np.repeat(computed, counts) + offset
            prompt_length = np.repeat([c[3] for c in cells], counts)
            token_alpha = np.where(generated_only & (position < prompt_length), 0.0, token_alpha)
        token_layer = np.repeat(np.array([c[0] for c in cells], dtype=np.int64), counts)
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        n_tokens = ids.shape[0] if ids is not None else total  # padded batches are longer
        import torch

        device = next(t for t in self.terms if t is not None).device
        if self.all_layers:  # every request's alpha at every layer the edit acts at
            coef = np.zeros(n_tokens, dtype=np.float32)
            coef[:total] = token_alpha
            shared = torch.from_numpy(coef).to(device)[:, None]
            self.coefs = {layer: shared for layer in self.acting}
            return
        for layer in np.unique(token_layer[token_alpha != 0]):
            coef = np.zeros(n_tokens, dtype=np.float32)
            coef[:total] = np.where(token_layer == layer, token_alpha, 0.0)
            self.coefs[int(layer)] = torch.from_numpy(coef).to(device)[:, None]


class _LayerShift:
    """Forward hook on one decoder layer: stream h += coef[token] * (shift + gain * h -
    (h . unit) unit) at this layer (CAA: shift = -v, so h -= coef * v)."""

    def __init__(self, state: _SteeringState, index: int):
        self.state = state
        self.index = index

    def _delta(self, coef, stream):
        shift, gain, unit = (None if t is None else t[self.index].to(stream.dtype)
                             for t in self.state.terms)
        coef = coef.to(stream.dtype)[: stream.shape[0]]
        terms = [] if shift is None else [shift]  # a shift alone stays [d] and broadcasts
        if gain is not None:
            terms.append(gain * stream)
        if unit is not None:
            terms.append(-(stream @ unit)[:, None] * unit)
        return coef * sum(terms[1:], terms[0])

    def __call__(self, module, args, output):
        coef = self.state.coefs.get(self.index)
        if coef is None:
            return output
        if isinstance(output, tuple) and len(output) == 2 and output[1] is not None:
            hidden, residual = output
            # The stream is hidden + residual (added by the next norm): shift the residual.
            only_shift = self.state.terms[1] is None and self.state.terms[2] is None
            stream = residual if only_shift else hidden + residual
            return hidden, residual + self._delta(coef, stream)
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + self._delta(coef, hidden)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered


def _install_steering(worker) -> int:
    """Hooks on the worker's model (once); returns the number of decoder layers."""
    from .models import decoder_layers

    runner = worker.model_runner
    if getattr(runner, "_steering_state", None) is not None:
        return runner._steering_state.n_layers
    batch = getattr(runner, "input_batch", None)
    if not (hasattr(batch, "req_ids") and hasattr(runner, "query_start_loc")
            and hasattr(runner, "requests")):
        raise RuntimeError(
            f"vllm engine: {type(runner).__name__} does not expose the V1 runner's batch "
            "(input_batch.req_ids, query_start_loc, requests) that steering reads; run with "
            "VLLM_USE_V2_MODEL_RUNNER=0 and vllm 0.32")
    model = runner.get_model()
    layers = decoder_layers(model)
    state = _SteeringState(runner, len(layers))
    model.register_forward_pre_hook(state.before_forward, with_kwargs=True)
    for index, layer in enumerate(layers):
        layer.register_forward_hook(_LayerShift(state, index))
    runner._steering_state = state
    return len(layers)


def _set_directions(worker, edit) -> None:
    """The edit of the next generate call (a steering.LayerEdit of CPU tensors); None: the
    hooks do nothing."""
    state = worker.model_runner._steering_state
    if edit is None:
        state.terms, state.all_layers, state.acting = None, False, []
        return
    param = next(worker.model_runner.get_model().parameters())
    state.terms = tuple(None if t is None else t.to(device=param.device, dtype=param.dtype)
                        for t in (edit.shift, edit.gain, edit.unit))
    state.all_layers = edit.all_layers
    state.acting = [layer for layer in range(state.n_layers) if edit.acts_at(layer)]


# ---------------------------------------------------------------------------------


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
        layer = max(int(layer), 0)
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

    llm = engine if engine is not None else load_engine(model, spec)
    # SteeringVectors, a tensor of directions, or an intervention of the method comparison
    # (one without an edit, the prompt baseline, generates unsteered).
    edit = as_edit(vectors)
    if not llm.llm_engine.vllm_config.model_config.enforce_eager:
        if edit is not None and (jobs["alpha"] != 0).any():
            raise ValueError("vllm engine: this engine runs CUDA graphs and cannot steer; "
                             "load it with enforce_eager=True (the default)")
    else:
        n_layers = llm.collective_rpc(_install_steering)[0]
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
                          f"STEERING_VLLM_MAX_MODEL_LEN={longest} or shorten the prompts")
    cpu = None if edit is None else LayerEdit(
        *(None if t is None else t.detach().to("cpu", torch.float32)
          for t in (edit.shift, edit.gain, edit.unit)), all_layers=edit.all_layers)
    if llm.llm_engine.vllm_config.model_config.enforce_eager:
        llm.collective_rpc(_set_directions, args=(cpu,))
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
            llm.collective_rpc(_set_directions, args=(None,))


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
