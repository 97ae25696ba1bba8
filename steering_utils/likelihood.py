"""Log-likelihood of continuations given contexts: perplexity and multiple choice.

Only the positions that are scored go through the vocabulary-wide log-softmax: the
model computes logits for the last `keep` positions (`logits_to_keep`), so the pass
at batch 32 x 512 tokens of a 151,936-token vocabulary holds a few MiB of log-probs
instead of ~23 GiB (`logprob_spike_gib`). On out-of-memory the batch halves and the
rows not yet scored are retried, as the generation pass does.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import torch

from .activations import position_ids
from .batching import map_batches
from .models import input_device

MAX_TOKENS = 512


def logprob_spike_gib(batch: int, positions: int, vocab: int, logit_bytes: int = 2) -> float:
    """GiB held at once by a log-softmax over `positions` x vocab logits per row (logits in
    the model's dtype, their fp32 copy, the fp32 log-probs)."""
    return batch * positions * vocab * (logit_bytes + 4 + 4) / 2**30


@functools.lru_cache(maxsize=32)
def _takes_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _last_logits(model, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """[B, keep, V] logits of the last `keep` positions (left-padded ids and mask)."""
    device = input_device(model)
    extra = {"logits_to_keep": keep} if _takes_logits_to_keep(type(model)) else {}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                   position_ids=position_ids(mask).to(device), use_cache=False, **extra).logits
    return logits[:, -keep:]


def _left_padded(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask


def _map_batched(model, sequences: list[list[int]], pad: int, batch_size: int, desc: str,
                 score_batch, blocks=None) -> list:
    """[score_batch(ids, mask) row i for each sequence i]: left-padded, length-sorted batches
    (`batching.map_batches`); on out-of-memory the batch halves and only the rows not yet
    scored are retried.

    A batch never mixes two `blocks` (a label per row, e.g. its shard): padding changes a
    row's float rounding, so a row's numbers then depend on its own block's rows only.
    """
    def run(index):
        ids, mask = _left_padded([sequences[i] for i in index], pad)
        return score_batch(index, ids, mask)

    key = (str(getattr(model.config, "name_or_path", "")), desc)
    with torch.inference_mode():
        return map_batches(run, [len(seq) for seq in sequences], batch_size, key=key,
                           groups=blocks, desc=desc, unit="seq")


def continuation_logprobs(model, tokenizer, contexts: list[str], continuations: list[str],
                          batch_size: int = 16, desc: str = "log-likelihood", blocks=None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(sum of log p(continuation tokens | context), number of continuation tokens) per pair.

    `blocks` (a label per pair): batches never mix two blocks (see `_map_batched`)."""
    if len(contexts) != len(continuations):
        raise ValueError("continuation_logprobs: contexts and continuations differ in length")
    sequences, counts = [], []
    for context, continuation in zip(contexts, continuations):
        ctx = tokenizer(context)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = (ctx + cont)[-MAX_TOKENS:]
        sequences.append(ids)
        counts.append(min(len(cont), len(ids) - 1))
    counts = np.array(counts, dtype=int)
    if not sequences:
        return np.zeros(0), counts

    def score_batch(index, ids, mask):
        # Keep the positions that predict each row's continuation (the last n tokens).
        keep = int(counts[index].max()) + 1
        logits = _last_logits(model, ids, mask, keep)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = ids[:, ids.shape[1] - keep + 1:, None].to(logprobs.device)
        token_lp = logprobs.gather(-1, targets)[..., 0].cpu()
        return [token_lp[row, token_lp.shape[1] - counts[i]:].sum().item() if counts[i] else 0.0
                for row, i in enumerate(index)]

    sums = _map_batched(model, sequences, tokenizer.pad_token_id, batch_size, desc, score_batch,
                        blocks)
    return np.array(sums, dtype=float), counts


def next_token_logprobs(model, tokenizer, contexts: list[str], token_ids: list[int],
                        batch_size: int = 16, desc: str = "next token") -> np.ndarray:
    """[n_contexts, n_tokens] log p(token | context) of each candidate token, one forward each."""
    sequences = [tokenizer(context)["input_ids"][-MAX_TOKENS:] for context in contexts]
    if not sequences:
        return np.zeros((0, len(token_ids)))
    candidates = torch.tensor(token_ids)

    def score_batch(index, ids, mask):
        logprobs = torch.log_softmax(_last_logits(model, ids, mask, 1)[:, 0].float(), dim=-1)
        return logprobs[:, candidates.to(logprobs.device)].cpu().numpy().astype(float)

    rows = _map_batched(model, sequences, tokenizer.pad_token_id, batch_size, desc, score_batch)
    return np.stack(rows).reshape(len(sequences), len(token_ids))


def continuation_nll(model, tokenizer, contexts: list[str], continuations: list[str],
                     batch_size: int = 16, blocks=None) -> np.ndarray:
    """Mean negative log-likelihood per continuation token (NaN for empty continuations)."""
    sums, counts = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size,
                                         desc="perplexity", blocks=blocks)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, -sums / np.maximum(counts, 1), np.nan)
