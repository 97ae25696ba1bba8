"""The memory model of a run: GiB of weights, the generation batch and the likelihood passes.

    plan = memory_plan(params, config, device)   # {"weights": ..., "total": ...}

Read from the model's config alone (no weights loaded), so `make check` can say before a
long run whether the model and a batch fit the device. `approx_params` counts a
decoder-only LM's parameters from its config (GQA and tied embeddings counted).
"""

from __future__ import annotations

from .params import StudyParams

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}

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
    n_params = approx_params(text) if n_params is None else n_params
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


def approx_params(config) -> int:
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
