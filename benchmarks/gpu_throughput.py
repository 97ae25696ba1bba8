"""Tokens/s of plain vs steered generation on CUDA in bf16 (offline SmolLM2)."""

from __future__ import annotations

import time

import torch

from steering_utils.data import load_prompts
from steering_utils.generation import generate_completions, make_jobs
from steering_utils.models import load_model
from steering_utils.params import ModelParams, load_params
from steering_utils.stages import UNSTEERED_LAYER


def main() -> None:
    params = load_params("params/default.yaml")
    model, tokenizer = load_model(ModelParams(name="s", source="offline_smollm2", device="cuda",
                                              dtype="bfloat16"))
    prompts = load_prompts(params.data, params.seed)
    rows = prompts[prompts.subset == "challenging"].head(256)
    vectors = torch.randn(model.config.num_hidden_layers, model.config.hidden_size)
    for batch in (64, 256):
        gen = params.generation.model_copy(update={"batch_size": batch})
        for name, cell, vec in (("plain", (UNSTEERED_LAYER, 0.0), None),
                                ("steered", (12, 1.0), vectors)):
            jobs = make_jobs(rows, [cell], 1)
            generate_completions(model, tokenizer, jobs.head(batch), vec, gen, 0)  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            generate_completions(model, tokenizer, jobs, vec, gen, 0, desc=name)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            tokens = len(jobs) * gen.max_new_tokens
            print(f"batch {batch:>4}  {name:<8} {tokens / seconds:10.0f} tokens/s")


if __name__ == "__main__":
    main()
