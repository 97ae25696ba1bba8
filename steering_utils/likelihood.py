"""Log-likelihood of continuations given contexts: perplexity and multiple choice."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import position_ids
from .models import input_device

MAX_TOKENS = 512


def continuation_logprobs(model, tokenizer, contexts: list[str], continuations: list[str],
                          batch_size: int = 16, desc: str = "log-likelihood"
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(sum of log p(continuation tokens | context), number of continuation tokens) per pair."""
    if len(contexts) != len(continuations):
        raise ValueError("continuation_logprobs: contexts and continuations differ in length")
    pairs = []
    for context, continuation in zip(contexts, continuations):
        ctx = tokenizer(context)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = (ctx + cont)[-MAX_TOKENS:]
        pairs.append((ids, min(len(cont), len(ids) - 1)))
    sums = np.zeros(len(pairs))
    counts = np.array([n for _, n in pairs])
    order = np.argsort([len(ids) for ids, _ in pairs], kind="stable")
    pad = tokenizer.pad_token_id
    device = input_device(model)
    with torch.inference_mode(), tqdm(total=len(pairs), desc=desc, unit="seq") as bar:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            width = max(len(pairs[i][0]) for i in index)
            ids = torch.full((len(index), width), pad, dtype=torch.long)
            mask = torch.zeros((len(index), width), dtype=torch.long)
            for row, i in enumerate(index):  # left padding
                seq = pairs[i][0]
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=position_ids(mask).to(device), use_cache=False).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token_lp = logprobs.gather(-1, ids[:, 1:, None].to(logprobs.device))[..., 0].cpu()
            for row, i in enumerate(index):
                n = counts[i]
                sums[i] = token_lp[row, width - 1 - n:].sum().item() if n else 0.0
            bar.update(len(index))
    return sums, counts


def continuation_nll(model, tokenizer, contexts: list[str], continuations: list[str],
                     batch_size: int = 16) -> np.ndarray:
    """Mean negative log-likelihood per continuation token (NaN for empty continuations)."""
    sums, counts = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size,
                                         desc="perplexity")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, -sums / np.maximum(counts, 1), np.nan)
