"""Batched, seeded sampling of continuations, steered per row.

Each row of a job table (prompt, sample index, layer, alpha) is sampled with its
own counter-based random stream, seeded by (seed, prompt id, sample index). So a
row's continuation does not depend on which rows share its batch, the batch size,
or the cell (common random numbers across alphas: paired comparisons are tighter),
and a resumed run reproduces an uninterrupted one. Greedy when temperature is 0.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from .batching import map_batches
from .models import input_device
from .params import GenerationParams
from .stages import CAA, UNSTEERED, hook_layer
from .steering import steer

JOB_COLUMNS = ("prompt_id", "prompt", "sample", "layer", "alpha")
_MASK64 = (1 << 64) - 1
_CANDIDATES = 1024  # tokens ranked per step before falling back to a full sort


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    # Logical shift on int64 (torch's >> is arithmetic).
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic), same on any device."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def row_seed(seed: int, prompt_id: str, sample: int) -> int:
    """Stable 63-bit seed of one (prompt, sample) stream, independent of process and batch."""
    digest = hashlib.blake2b(f"{seed}|{prompt_id}|{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededSampler:
    """Logits processor: temperature + top-p sampling with one random stream per row.

    It returns -inf everywhere but the sampled token, so `generate` runs greedy
    (do_sample=False) and picks it. Inverse-CDF sampling over the nucleus, with
    u = SplitMix64(row seed, step): no global RNG is touched.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.temperature = temperature
        self.top_p = top_p
        self.prompt_length: int | None = None  # padded; the step count must not depend on it

    def uniforms(self, step: int, device) -> torch.Tensor:
        counter = self.seeds.to(device) ^ _splitmix64(torch.tensor(step, dtype=torch.int64))
        bits = _shift_right(_splitmix64(counter.to(device)), 11)  # 53 random bits
        return bits.to(torch.float64) / float(1 << 53)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return scores
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        # The nucleus almost always lies in the top few hundred tokens: take the
        # top-k and fall back to a full sort only when their mass is short of top_p.
        sorted_probs, order = torch.topk(probs, min(_CANDIDATES, probs.shape[-1]), dim=-1)
        if (sorted_probs.sum(-1) < self.top_p).any():
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        # Keep the smallest prefix whose mass reaches top_p (always the top token).
        keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < self.top_p
        cdf = torch.cumsum(sorted_probs * keep, dim=-1).double()
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_length
        u = self.uniforms(step, scores.device) * cdf[:, -1]
        pick = torch.searchsorted(cdf, u[:, None], right=True).clamp(max=cdf.shape[1] - 1)
        token = order.gather(1, pick)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter(1, token, 0.0)


def make_jobs(prompts: pd.DataFrame, cells: list[tuple[int, float]], samples: int,
              direction: str = CAA) -> pd.DataFrame:
    """Job table: every prompt x cell (layer, alpha) x sample, with the prompts' columns.

    `direction` names the steering direction of the steered rows (the CAA vector, or
    a control's random direction); unsteered rows (alpha 0) get direction 'none'.
    """
    if prompts.empty:
        raise ValueError("make_jobs: no prompts")
    grid = pd.DataFrame(
        [(layer, alpha, s) for layer, alpha in cells for s in range(samples)],
        columns=["layer", "alpha", "sample"],
    )
    jobs = prompts.merge(grid, how="cross")
    jobs["prompt"] = jobs["text"]
    jobs["direction"] = np.where(jobs["alpha"] == 0, UNSTEERED, direction)
    return jobs.reset_index(drop=True)


def baseline_jobs(prompts: pd.DataFrame, generation: GenerationParams,
                  dev_samples: int = 1) -> pd.DataFrame:
    """The unsteered jobs of stage 02: `samples_per_prompt` per prompt,
    `train_samples_per_prompt` per challenging train prompt (the contrast pairs' pool), and
    at least `dev_samples` per dev prompt (the dev grid's draws: its alpha-0 cell is these
    rows, so it has as many samples per prompt as the steered cells it is compared with).

    Samples are seeded per (prompt, sample), so the first `samples_per_prompt` of a prompt
    are the same rows with or without the extra ones.
    """
    from .stages import UNSTEERED_LAYER

    k = generation.samples_per_prompt
    wanted = pd.Series(k, index=prompts.index)
    wanted[prompts["split"] == "dev"] = max(k, dev_samples)  # never fewer than k
    pool = (prompts["subset"] == "challenging") & (prompts["split"] == "train")
    wanted[pool] = generation.train_samples_per_prompt or k
    parts = [make_jobs(prompts[wanted == samples], [(UNSTEERED_LAYER, 0.0)], int(samples))
             for samples in sorted(wanted.unique())]
    return pd.concat(parts, ignore_index=True)


_LENGTH_BUCKET = 64  # prompt tokens: `auto` remembers the batch that fitted per bucket


def start_batch_size(requested: int | str, on_cuda: bool) -> int:
    """The batch generation starts at: the requested one, or for 'auto' 256 on CUDA, else 32."""
    return (256 if on_cuda else 32) if requested == "auto" else int(requested)


@contextmanager
def _only_our_generation_config(model, config):
    """The model's saved sampling defaults cannot leak into `config` inside the block.

    transformers 4.57 fills every field of a passed GenerationConfig that sits at its
    global default from the model's generation_config.json: Qwen3's do_sample=True,
    temperature 0.6, top_k 20 turned our greedy path into sampling from the global RNG.
    With the model's own config swapped for ours there is nothing to fill from.
    """
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


def _generate_batch(model, tokenizer, rows: pd.DataFrame, vectors, gen: GenerationParams,
                    seed: int, positions: str) -> list[str]:
    from transformers import GenerationConfig, LogitsProcessorList

    encoded = tokenizer(list(rows["prompt"]), return_tensors="pt", padding=True)
    encoded = {k: v.to(input_device(model)) for k, v in encoded.items()}
    seeds = [row_seed(seed, pid, s) for pid, s in zip(rows["prompt_id"], rows["sample"])]
    config = GenerationConfig(
        max_new_tokens=gen.max_new_tokens,
        do_sample=False,  # SeededSampler has already sampled
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=model.generation_config.eos_token_id,
    )
    processors = LogitsProcessorList([SeededSampler(seeds, gen.temperature, gen.top_p)])
    alphas = rows["alpha"].astype(float).tolist()
    layers = [hook_layer(layer) for layer in rows["layer"]]
    steered = vectors is not None and any(alphas)
    with torch.inference_mode(), _only_our_generation_config(model, config):
        if steered:
            with steer(model, vectors, layers, alphas, positions=positions, batch_size=len(rows)):
                out = model.generate(**encoded, generation_config=config,
                                     logits_processor=processors)
        else:
            out = model.generate(**encoded, generation_config=config, logits_processor=processors)
    new_tokens = out[:, encoded["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def generate_completions(model, tokenizer, jobs: pd.DataFrame, vectors, gen: GenerationParams,
                         seed: int, positions: str = "all",
                         desc: str = "generating") -> pd.DataFrame:
    """The job table with a `completion` column; rows steered by their (layer, alpha)."""
    missing = [c for c in JOB_COLUMNS if c not in jobs.columns]
    if missing:
        raise ValueError(f"generate_completions: job table lacks columns {missing}")
    if jobs.empty:
        return jobs.assign(completion=pd.Series(dtype=str))
    lengths = np.array([len(ids) for ids in tokenizer(list(jobs["prompt"]))["input_ids"]])
    requested = gen.batch_size
    batch_size = start_batch_size(requested, input_device(model).type == "cuda")
    # `auto` backs off per length bucket of 64 prompt tokens (short prompts keep their larger
    # batch); a fixed batch is the user's, so out-of-memory is raised.
    key = (model.config.name_or_path, "generate") if requested == "auto" else None
    completions = map_batches(
        lambda index: _generate_batch(model, tokenizer, jobs.iloc[index], vectors, gen, seed,
                                      positions),
        lengths, batch_size, key=key, groups=lengths // _LENGTH_BUCKET, key_per_group=True,
        desc=desc, unit="seq")
    return jobs.assign(completion=np.array(completions, dtype=object).astype(str))
