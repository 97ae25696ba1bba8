"""Residual-stream activations at decoder layer outputs, mean-pooled over the last real tokens."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .models import decoder_layers, input_device

MAX_TOKENS = 256  # longer texts keep their last tokens (left truncation)


def pool_mask(attention_mask: torch.Tensor, last_n: int) -> torch.Tensor:
    """[B, T] float mask of the last `last_n` real (non-pad) tokens of each row."""
    from_end = torch.flip(torch.cumsum(torch.flip(attention_mask, [1]), 1), [1])
    return (attention_mask.bool() & (from_end <= last_n)).float()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (torch.cumsum(attention_mask, 1) - 1).clamp(min=0)


def capture_activations(model, tokenizer, texts: list[str], last_n: int = 32,
                        batch_size: int = 16, layers: list[int] | None = None,
                        desc: str = "activations") -> dict[str, torch.Tensor]:
    """{'pooled': [n, L, d] mean of the last `last_n` real tokens, 'token_norm': [n, L] mean
    per-token residual norm over the same tokens}, fp32 on CPU, rows in input order."""
    if not texts:
        raise ValueError("capture_activations: no texts")
    modules = decoder_layers(model)
    layers = list(range(len(modules))) if layers is None else layers
    lengths = np.array([len(ids) for ids in tokenizer(texts)["input_ids"]])
    order = np.argsort(lengths, kind="stable")  # bucket by length: little padding
    hidden_size = model.config.get_text_config().hidden_size
    pooled = torch.zeros(len(texts), len(layers), hidden_size)
    token_norm = torch.zeros(len(texts), len(layers))
    state: dict = {}

    def hook(slot):
        def capture(module, args, output):
            hidden = (output[0] if isinstance(output, tuple) else output).float()
            weights = state["mask"].to(hidden.device)
            count = weights.sum(1).clamp(min=1)
            state["pooled"][:, slot] = ((hidden * weights[..., None]).sum(1) / count[:, None]).cpu()
            state["norm"][:, slot] = ((hidden.norm(dim=-1) * weights).sum(1) / count).cpu()
        return capture

    handles = [modules[layer].register_forward_hook(hook(slot)) for slot, layer in
               enumerate(layers)]
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        with torch.inference_mode(), tqdm(total=len(texts), desc=desc, unit="text") as bar:
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                batch = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True,
                                  truncation=True, max_length=MAX_TOKENS)
                mask = batch["attention_mask"]
                state.update(mask=pool_mask(mask, last_n),
                             pooled=torch.zeros(len(index), len(layers), hidden_size),
                             norm=torch.zeros(len(index), len(layers)))
                device = input_device(model)
                model(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device),
                      position_ids=position_ids(mask).to(device), use_cache=False)
                pooled[index] = state["pooled"]
                token_norm[index] = state["norm"]
                bar.update(len(index))
    finally:
        tokenizer.truncation_side = side
        for handle in handles:
            handle.remove()
    return {"pooled": pooled, "token_norm": token_norm}



def contrast_sets(baseline: pd.DataFrame, prompts: pd.DataFrame, contrast: str,
                  n_per_side: int) -> dict[str, list[str]]:
    """Texts of the train contrast (for the vectors) and a held-out dev contrast (to test them).

    The dev contrast takes at most n_per_side a side, fewer when the dev split is small.
    """
    toxic, clean = contrast_texts(baseline, prompts, contrast, n_per_side, "train")
    sets = {"train_toxic": toxic, "train_clean": clean}
    if contrast == "completions":
        is_dev = (baseline["subset"] == "challenging") & (baseline["split"] == "dev")
        available = int(is_dev.sum())
    else:
        available = 2 * int(min(((prompts["subset"] == s) & (prompts["split"] == "dev")).sum()
                                for s in ("challenging", "benign")))
    n_dev = min(n_per_side, available // 2)
    if n_dev >= 2:
        sets["dev_toxic"], sets["dev_clean"] = contrast_texts(baseline, prompts, contrast, n_dev,
                                                              "dev")
    return sets


def save_activation_sets(sets: dict[str, dict[str, torch.Tensor]], path) -> None:
    """One safetensors file, keys '<set>.<tensor>' (e.g. 'train_toxic.pooled')."""
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    flat = {f"{name}.{key}": t.contiguous() for name, tensors in sets.items()
            for key, t in tensors.items()}
    partial = path.with_name(path.name + ".partial")
    save_file(flat, str(partial))
    partial.replace(path)


def load_activation_sets(path) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of save_activation_sets."""
    from safetensors.torch import load_file

    sets: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        name, field = key.split(".", 1)
        sets.setdefault(name, {})[field] = tensor
    return sets


def contrast_texts(baseline: pd.DataFrame, prompts: pd.DataFrame, contrast: str,
                   n_per_side: int, split: str) -> tuple[list[str], list[str]]:
    """(toxic texts, non-toxic texts) of one split for a CAA contrast.

    'completions': prompt + continuation of the most vs the least toxic baseline
    continuations of challenging prompts (same prompt distribution, so the
    difference is the continuation's toxicity). 'prompts': challenging vs benign
    prompt texts.
    """
    field = "activations.n_per_side"
    if contrast == "completions":
        rows = baseline[(baseline["subset"] == "challenging") & (baseline["split"] == split)]
        rows = rows.sort_values("toxicity", kind="stable")
        if len(rows) < 2 * n_per_side:
            raise ValueError(f"{field}: {n_per_side} per side needs {2 * n_per_side} {split} "
                             f"continuations, baseline has {len(rows)}; lower it or raise "
                             "data.challenging.n_{split} / generation.samples_per_prompt")
        texts = (rows["prompt"] + rows["completion"]).tolist()
        return texts[-n_per_side:], texts[:n_per_side]
    if contrast == "prompts":
        toxic = prompts[(prompts["subset"] == "challenging") & (prompts["split"] == split)]
        clean = prompts[(prompts["subset"] == "benign") & (prompts["split"] == split)]
        if min(len(toxic), len(clean)) < n_per_side:
            raise ValueError(f"{field}: {n_per_side} per side but the {split} split has "
                             f"{len(toxic)} challenging and {len(clean)} benign prompts")
        return toxic["text"].tolist()[:n_per_side], clean["text"].tolist()[:n_per_side]
    raise ValueError(f"activations.contrast: unknown contrast {contrast!r}")
