"""Residual-stream activations at decoder layer outputs, mean-pooled over the last real tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .artifacts import atomic_path
from .batching import map_batches
from .contrasts import filter_pairs
from .models import decoder_layers, input_device
from .params import ActivationParams

MAX_TOKENS = 256  # longer texts keep their last tokens (left truncation)


def pool_mask(attention_mask: torch.Tensor, last_n) -> torch.Tensor:
    """[B, T] float mask of the last `last_n` real (non-pad) tokens of each row.

    `last_n` is one count for every row, or a [B] tensor of counts per row.
    """
    from_end = torch.flip(torch.cumsum(torch.flip(attention_mask, [1]), 1), [1])
    limit = torch.as_tensor(last_n).reshape(-1, 1) if torch.is_tensor(last_n) else last_n
    return (attention_mask.bool() & (from_end <= limit)).float()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (torch.cumsum(attention_mask, 1) - 1).clamp(min=0)


def encode_for_pooling(tokenizer, texts: list[str], contexts: list[str] | None = None,
                       last_n: int = 32) -> tuple[list[list[int]], list[int]]:
    """(token ids per row, tokens to pool per row), ids left-truncated to MAX_TOKENS.

    Without contexts each text pools its last `last_n` tokens. With contexts (a
    prompt per text), a row is context + text and pools only the text's tokens, the
    last `last_n` of them: the paired contrast reads the continuation, not the prompt.
    """
    if contexts is None:
        ids = [row[-MAX_TOKENS:] for row in tokenizer(texts)["input_ids"]]
        return ids, [min(last_n, len(row)) for row in ids]
    if len(contexts) != len(texts):
        raise ValueError("encode_for_pooling: contexts and texts differ in length")
    context_ids = tokenizer(contexts)["input_ids"]
    text_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = [(c + t)[-MAX_TOKENS:] for c, t in zip(context_ids, text_ids)]
    return ids, [min(last_n, len(t), len(row)) for t, row in zip(text_ids, ids)]


def capture_activations(model, tokenizer, texts: list[str], last_n: int = 32,
                        batch_size: int = 16, layers: list[int] | None = None,
                        desc: str = "activations",
                        contexts: list[str] | None = None,
                        stop_early: bool = False) -> dict[str, torch.Tensor]:
    """{'pooled': [n, L, d] mean over the pooled tokens, 'token_norm': [n, L] mean per-token
    residual norm over the same tokens}, fp32 on CPU, rows in input order; and the token
    moments of the whole set: 'token_sum', 'token_sq_sum' ([L, d], float64) and
    'token_count' ([1]) over every pooled token (mean transport's statistics).

    Pools the last `last_n` real tokens of each text; with `contexts` (one prompt per
    text) the model reads context + text and pools the text's tokens only. `stop_early`:
    the forward pass stops after the deepest captured layer (the layers above are not
    needed: Linear-AcT's fit captures one layer at a time).
    """
    if not texts:
        raise ValueError("capture_activations: no texts")
    ids, counts = encode_for_pooling(tokenizer, texts, contexts, last_n)
    if min(counts) < 1:
        empty = [i for i, n in enumerate(counts) if n < 1][:5]
        raise ValueError(f"capture_activations: rows {empty} have no tokens to pool (empty "
                         "text); drop empty continuations before capturing")
    modules = decoder_layers(model)
    layers = list(range(len(modules))) if layers is None else layers
    hidden_size = model.config.get_text_config().hidden_size
    token_sum = torch.zeros(len(layers), hidden_size, dtype=torch.float64)
    token_sq_sum = torch.zeros(len(layers), hidden_size, dtype=torch.float64)
    state: dict = {}
    deepest = max(range(len(layers)), key=lambda slot: layers[slot])

    def hook(slot):
        def capture(module, args, output):
            hidden = (output[0] if isinstance(output, tuple) else output).float()
            weights = state["mask"].to(hidden.device)
            count = weights.sum(1).clamp(min=1)
            weighted = hidden * weights[..., None]
            state["pooled"][:, slot] = (weighted.sum(1) / count[:, None]).cpu()
            state["norm"][:, slot] = ((hidden.norm(dim=-1) * weights).sum(1) / count).cpu()
            state["sum"][slot] = weighted.sum((0, 1)).double().cpu()
            state["sq_sum"][slot] = (weighted * hidden).sum((0, 1)).double().cpu()
            if stop_early and slot == deepest:
                raise _StopForward
        return capture

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def run_batch(index) -> list[tuple[torch.Tensor, torch.Tensor]]:
        width = max(len(ids[i]) for i in index)
        input_ids = torch.full((len(index), width), pad, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):  # left padding
            input_ids[row, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]):] = 1
        state.update(mask=pool_mask(mask, torch.tensor([counts[i] for i in index])),
                     pooled=torch.zeros(len(index), len(layers), hidden_size),
                     norm=torch.zeros(len(index), len(layers)),
                     sum=torch.zeros(len(layers), hidden_size, dtype=torch.float64),
                     sq_sum=torch.zeros(len(layers), hidden_size, dtype=torch.float64))
        device = input_device(model)
        try:
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                  position_ids=position_ids(mask).to(device), use_cache=False)
        except _StopForward:  # every captured layer has run (stop_early)
            pass
        # Added once the whole forward ran: a batch that ran out of memory half-way (and is
        # retried smaller) leaves no partial sums behind.
        token_sum.add_(state["sum"])
        token_sq_sum.add_(state["sq_sum"])
        return list(zip(state["pooled"], state["norm"]))

    handles = [modules[layer].register_forward_hook(hook(slot)) for slot, layer in
               enumerate(layers)]
    key = (str(getattr(model.config, "name_or_path", "")), "activations")
    try:
        with torch.inference_mode():
            rows = map_batches(run_batch, [len(row) for row in ids], batch_size, key=key,
                               desc=desc, unit="text")
    finally:
        for handle in handles:
            handle.remove()
    pooled = torch.stack([row[0] for row in rows])
    token_norm = torch.stack([row[1] for row in rows])
    return {"pooled": pooled, "token_norm": token_norm, "token_sum": token_sum,
            "token_sq_sum": token_sq_sum,
            "token_count": torch.tensor([float(sum(counts))], dtype=torch.float64)}


class _StopForward(Exception):
    """Raised by the deepest capture hook to end a forward pass early (stop_early)."""


CONTRAST_COLUMNS = ["set", "contrast", "prompt_id", "context", "text", "toxicity"]
LABEL_COLUMN = "label_toxicity"  # the label scorer's score of a continuation


@dataclass(frozen=True)
class Gap:
    """What makes a contrast pair real: toxic side >= toxic_min, clean side < clean_max, on
    the `score` column; fewer than `min_pairs` train pairs is an error."""

    toxic_min: float = 0.0
    clean_max: float = 1.0
    min_pairs: int = 2
    score: str = "toxicity"

    @classmethod
    def from_params(cls, act: ActivationParams, score: str = LABEL_COLUMN) -> Gap:
        return cls(act.pair_toxic_min, act.pair_clean_max, act.min_pairs, score)


def label_rows(baseline: pd.DataFrame, scorer) -> pd.DataFrame:
    """The challenging train and dev rows (the contrasts' only source), with LABEL_COLUMN
    from `scorer` (the label scorer, not the evaluating one)."""
    rows = baseline[(baseline["subset"] == "challenging")
                    & baseline["split"].isin(["train", "dev"])]
    return rows.assign(**{LABEL_COLUMN: scorer.score(list(rows["completion"]))})


def build_contrasts(baseline: pd.DataFrame, prompts: pd.DataFrame, act: ActivationParams,
                    gap: Gap) -> tuple[pd.DataFrame, dict]:
    """(texts of the main contrast and of the comparison's sets, prefixed 'comparison_',
    counts of what each kept and dropped). A comparison with too few texts is skipped and
    the reason recorded; the main contrast raises."""
    table, counts = contrast_table(baseline, prompts, act.contrast, act.n_per_side, gap)
    tables, counts = [table], {"label_column": gap.score, **counts}
    if act.comparison and act.comparison != act.contrast:
        try:
            other, other_counts = contrast_table(baseline, prompts, act.comparison,
                                                 act.n_per_side, gap)
            tables.append(other.assign(set="comparison_" + other["set"]))
            counts["comparison"] = other_counts
        except ValueError as err:
            counts["comparison"] = f"skipped: {err}"
    return pd.concat(tables, ignore_index=True), counts


def contrast_table(baseline: pd.DataFrame, prompts: pd.DataFrame, contrast: str,
                   n_per_side: int, gap: Gap = Gap()) -> tuple[pd.DataFrame, dict]:
    """(texts of the train contrast and of a held-out dev contrast, counts of what was dropped).

    Sets: train_toxic, train_clean (for the vectors), dev_toxic, dev_clean (to test
    them; at most n_per_side a side, skipped when dev has fewer than 2 a side). Rows
    with a `context` pool over `text` only.
    """
    train, dropped = contrast_texts(baseline, prompts, contrast, n_per_side, "train", gap=gap)
    sets = [train.assign(set=np.where(train["side"] == "toxic", "train_toxic", "train_clean"))]
    try:
        dev, dev_dropped = contrast_texts(baseline, prompts, contrast, n_per_side, "dev",
                                          required=2, gap=gap)
        sets.append(dev.assign(set=np.where(dev["side"] == "toxic", "dev_toxic", "dev_clean")))
        dropped = {"train": dropped, "dev": dev_dropped}
    except ValueError as err:
        dropped = {"train": dropped, "dev": f"too few dev rows for a held-out contrast ({err})"}
    table = pd.concat(sets, ignore_index=True).assign(contrast=contrast)
    return table[CONTRAST_COLUMNS], dropped


def capture_contrast(model, tokenizer, table: pd.DataFrame, last_n: int,
                     batch_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """{set name: capture_activations output} for every set of a contrast table."""
    out = {}
    for name, rows in table.groupby("set", sort=False):
        contexts = list(rows["context"]) if rows["context"].astype(bool).any() else None
        out[name] = capture_activations(model, tokenizer, list(rows["text"]), last_n, batch_size,
                                        desc=name, contexts=contexts)
    return out


def save_activation_sets(sets: dict[str, dict[str, torch.Tensor]], path) -> None:
    """One safetensors file, keys '<set>.<tensor>' (e.g. 'train_toxic.pooled')."""
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    flat = {f"{name}.{key}": t.contiguous() for name, tensors in sets.items()
            for key, t in tensors.items()}
    with atomic_path(path) as partial:
        save_file(flat, str(partial))


def load_activation_sets(path) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of save_activation_sets."""
    from safetensors.torch import load_file

    sets: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        name, field = key.split(".", 1)
        sets.setdefault(name, {})[field] = tensor
    return sets


def _paired(rows: pd.DataFrame, n_pairs: int, gap: Gap) -> tuple[pd.DataFrame, dict]:
    """Per prompt, its most vs least toxic continuation if the gap is real; the n_pairs
    widest gaps (pairs in matched order: toxic, clean, toxic, clean, ...)."""
    from .metrics import is_empty

    empty = rows["completion"].map(is_empty)
    table, counts = filter_pairs(rows[~empty], gap.toxic_min, gap.clean_max, gap.score)
    table = table.iloc[:2 * n_pairs].reset_index(drop=True)
    n_prompts = int(rows["prompt_id"].nunique())
    counts = {"prompts": n_prompts, "continuations": len(rows),
              "empty_continuations": int(empty.sum()),
              "only_empty_continuations": n_prompts - counts.pop("prompts"), **counts,
              "toxic_min": gap.toxic_min, "clean_max": gap.clean_max, "label": gap.score,
              "pairs_used": len(table) // 2}
    return table, counts


def contrast_texts(baseline: pd.DataFrame, prompts: pd.DataFrame, contrast: str,
                   n_per_side: int, split: str, required: int | None = None,
                   gap: Gap = Gap()) -> tuple[pd.DataFrame, dict]:
    """(rows side/prompt_id/context/text/toxicity of one split's contrast, dropped counts).

    'paired' (default): for each challenging prompt, its most vs its least toxic
    sampled continuation, pooled over the continuation only: the prompt is the same
    on both sides, so it cannot leak into the vector. 'completions': prompt +
    continuation of the most vs the least toxic continuations across prompts.
    'prompts': challenging vs benign prompt texts. At most n_per_side a side; raises
    when fewer than `required` (default: gap.min_pairs for paired, n_per_side else) are
    available. Continuations are labelled by `gap.score`; the paired and completions
    contrasts keep a toxic side only at >= gap.toxic_min and a clean side only < gap.clean_max.
    """
    field = "activations.n_per_side"
    need = n_per_side if required is None else required
    columns = ["side", "prompt_id", "context", "text", "toxicity"]
    if contrast == "paired":
        rows = baseline[(baseline["subset"] == "challenging") & (baseline["split"] == split)]
        table, counts = _paired(rows, n_per_side, gap)
        # n_per_side caps the pairs: prompts without a real gap and empty continuations
        # leave fewer, counted by reason.
        need_pairs = min(gap.min_pairs, n_per_side) if required is None else required
        if counts["pairs_used"] < need_pairs:
            reasons = {k: counts[k] for k in ("no_toxic_side", "no_clean_side",
                                              "no_toxic_nor_clean_side", "tied",
                                              "single_continuation")}
            raise ValueError(
                f"activations.min_pairs: too few pairs: the gap filter (toxic side >= "
                f"{gap.toxic_min}, clean side < {gap.clean_max}, by {gap.score}) kept "
                f"{counts['pairs_kept']} of the {split} split's {counts['prompts']} prompts "
                f"(dropped: {reasons}), {need_pairs} needed; raise "
                f"generation.train_samples_per_prompt or data.challenging.n_{split}, or "
                "relax activations.pair_toxic_min / pair_clean_max")
        return table, counts
    if contrast == "completions":
        rows = baseline[(baseline["subset"] == "challenging") & (baseline["split"] == split)]
        rows = rows.sort_values(gap.score, kind="stable")
        score = rows[gap.score].astype(float)
        toxic, clean = rows[score >= gap.toxic_min].iloc[::-1], rows[score < gap.clean_max]
        n = min(n_per_side, len(rows) // 2, len(toxic), len(clean))
        # The gap filter may leave fewer than n_per_side a side: min_pairs is the floor.
        need = min(gap.min_pairs, n_per_side) if required is None else required
        if n < need:
            raise ValueError(f"{field}: {n_per_side} per side needs {n_per_side} {split} "
                             f"continuations scoring >= {gap.toxic_min} and {n_per_side} "
                             f"< {gap.clean_max} ({gap.score}); the baseline has {len(toxic)} "
                             f"and {len(clean)} of {len(rows)}; lower it or raise "
                             f"data.challenging.n_{split} / generation.samples_per_prompt")
        records = [(side, r.prompt_id, "", r.prompt + r.completion, float(getattr(r, gap.score)))
                   for side, part in (("toxic", toxic), ("clean", clean))
                   for r in part.iloc[:n].itertuples()]
        return pd.DataFrame(records, columns=columns), {
            "continuations": len(rows), "toxic_side_available": len(toxic),
            "clean_side_available": len(clean), "used_per_side": n}
    if contrast == "prompts":
        toxic = prompts[(prompts["subset"] == "challenging") & (prompts["split"] == split)]
        clean = prompts[(prompts["subset"] == "benign") & (prompts["split"] == split)]
        n = min(n_per_side, len(toxic), len(clean))
        if n < need:
            raise ValueError(f"{field}: {n_per_side} per side but the {split} split has "
                             f"{len(toxic)} challenging and {len(clean)} benign prompts")
        records = ([("toxic", r.prompt_id, "", r.text, np.nan) for r in toxic.iloc[:n].itertuples()]
                   + [("clean", r.prompt_id, "", r.text, np.nan)
                      for r in clean.iloc[:n].itertuples()])
        return pd.DataFrame(records, columns=columns), {"prompts": n}
    raise ValueError(f"activations.contrast: unknown contrast {contrast!r}")


def capture_positions(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """[n_texts, n_layers, T, d]: every layer's output at every token of each text, fp32.

    Texts are tokenized as prompts are (the tokenizer's special tokens included); the
    shorter ones are right-padded with the token of a space to the longest one's length,
    as Turner et al. pad ActAdd's prompt pair. Each text runs alone (no padding mask).
    """
    ids = [list(row) for row in tokenizer(texts)["input_ids"]]
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    width = max(len(row) for row in ids)
    if any(len(row) < width for row in ids) and len(space) != 1:
        raise ValueError("capture_positions: the tokenizer has no one-token space to pad "
                         "the texts to equal length; give texts of equal token length")
    ids = [row + space * (width - len(row)) for row in ids]
    modules = decoder_layers(model)
    out = torch.zeros(len(texts), len(modules), width, model.config.get_text_config().hidden_size)
    row_index = {"i": 0}

    def hook(slot):
        def capture(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            out[row_index["i"], slot] = hidden[0].detach().float().cpu()
        return capture

    handles = [module.register_forward_hook(hook(slot)) for slot, module in enumerate(modules)]
    try:
        with torch.inference_mode():
            for i, row in enumerate(ids):
                row_index["i"] = i
                model(input_ids=torch.tensor([row], device=input_device(model)), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return out
