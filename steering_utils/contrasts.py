"""Clean contrast pairs and what their vectors are worth: the gap filter, split-half
stability, paired held-out accuracy.

A pair is one prompt's most vs least toxic continuation, as judged by the *label* scorer
(not the one that evaluates). It is kept only when the toxic side scores >= `toxic_min`
and the clean side < `clean_max`: with k = 2 most "pairs" were two similar samples, so a
gap is what makes the label real. Pairs come in matched order (toxic row i and clean row
i share a prompt), which the paired statistics below rely on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

PAIR_COLUMNS = ["side", "prompt_id", "context", "text", "toxicity"]


def filter_pairs(rows: pd.DataFrame, toxic_min: float, clean_max: float,
                 score: str = "label_toxicity") -> tuple[pd.DataFrame, dict]:
    """(pairs with a real gap, counts of prompts kept and dropped by reason).

    `rows`: one prompt's continuations per `prompt_id` (columns prompt, completion,
    sample and `score`; empty continuations already removed). Per prompt the side with
    the highest `score` is toxic, the lowest clean (ties broken by sample index). Pairs
    are ordered by gap, widest first, then by prompt id; `toxicity` is the `score`.
    Dropped reasons: a single continuation, all sides tied, no side >= toxic_min, no side
    < clean_max, or neither.
    """
    kept = []
    counts = {"prompts": 0, "single_continuation": 0, "tied": 0, "no_toxic_side": 0,
              "no_clean_side": 0, "no_toxic_nor_clean_side": 0}
    for prompt_id, group in rows.groupby("prompt_id", sort=True):
        counts["prompts"] += 1
        if len(group) < 2:
            counts["single_continuation"] += 1
            continue
        ranked = group.sort_values([score, "sample"], kind="stable")
        clean, toxic = ranked.iloc[0], ranked.iloc[-1]
        has_toxic, has_clean = toxic[score] >= toxic_min, clean[score] < clean_max
        if not toxic[score] > clean[score]:
            counts["tied"] += 1
        elif not (has_toxic or has_clean):
            counts["no_toxic_nor_clean_side"] += 1
        elif not has_toxic:
            counts["no_toxic_side"] += 1
        elif not has_clean:
            counts["no_clean_side"] += 1
        else:
            kept.append((float(toxic[score] - clean[score]), prompt_id, toxic, clean))
    kept.sort(key=lambda pair: (-pair[0], pair[1]))
    counts["pairs_kept"] = len(kept)
    records = [{"side": side, "prompt_id": pid, "context": row["prompt"],
                "text": row["completion"], "toxicity": float(row[score])}
               for _, pid, toxic, clean in kept
               for side, row in (("toxic", toxic), ("clean", clean))]
    return pd.DataFrame.from_records(records, columns=PAIR_COLUMNS), counts


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def split_half_cosine(toxic: torch.Tensor, clean: torch.Tensor, n_resamples: int,
                      seed: int) -> pd.DataFrame:
    """Per layer, the cosine between CAA vectors of two random disjoint halves of the pairs
    (mean, SD, 5th and 95th percentile over `n_resamples` splits); NaN under 2 pairs.

    `toxic`, `clean`: pooled activations [n, L, d], row i of each from the same prompt.
    Near 1: the direction is a property of the data, not of which prompts were drawn.
    """
    n, n_layers = toxic.shape[0], toxic.shape[1]
    columns = ["split_half_cosine", "split_half_cosine_sd", "split_half_cosine_p05",
               "split_half_cosine_p95"]
    if n < 2:
        return pd.DataFrame({c: [float("nan")] * n_layers for c in columns})
    diff = (toxic - clean).double()  # the pair's own difference: paired halves
    rng = np.random.default_rng(seed)
    cosines = np.empty((n_resamples, n_layers))
    for r in range(n_resamples):
        order = torch.from_numpy(rng.permutation(n))
        half = n // 2
        a = diff[order[:half]].mean(0)
        b = diff[order[half:2 * half]].mean(0)
        cosines[r] = (_unit(a) * _unit(b)).sum(-1).clamp(-1.0, 1.0).numpy()
    return pd.DataFrame({
        columns[0]: cosines.mean(0), columns[1]: cosines.std(0, ddof=1),
        columns[2]: np.percentile(cosines, 5, axis=0),
        columns[3]: np.percentile(cosines, 95, axis=0),
    })


def paired_accuracy(directions: torch.Tensor, toxic: torch.Tensor, clean: torch.Tensor,
                    n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per layer, the share of held-out pairs whose toxic side projects further onto the
    direction than its clean side (ties count one half), with a 95% percentile bootstrap
    interval over pairs; NaN without pairs.

    `directions`: [L, d]; `toxic`, `clean`: [n, L, d], row i of each from the same prompt.
    0.5 is chance: a direction that ignores toxicity wins half the pairs.
    """
    n_layers, n = directions.shape[0], toxic.shape[0]
    columns = ["paired_accuracy", "paired_accuracy_ci_lo", "paired_accuracy_ci_hi",
               "n_heldout_pairs"]
    if n == 0:
        return pd.DataFrame({**{c: [float("nan")] * n_layers for c in columns[:3]},
                             columns[3]: [0] * n_layers})
    margin = torch.einsum("nld,ld->nl", (toxic - clean).double(), directions.double()).numpy()
    wins = (margin > 0) + 0.5 * (margin == 0)  # [n, L]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_bootstrap, n))
    boot = wins[draws].mean(1)  # [B, L]
    return pd.DataFrame({
        columns[0]: wins.mean(0), columns[1]: np.percentile(boot, 2.5, axis=0),
        columns[2]: np.percentile(boot, 97.5, axis=0), columns[3]: [n] * n_layers,
    })


def loo_paired_accuracy(toxic: torch.Tensor, clean: torch.Tensor, n_bootstrap: int,
                        seed: int) -> pd.DataFrame:
    """Per layer, paired accuracy of each train pair under the vector fitted *without* it
    (leave-one-out: the mean difference of the other pairs), with a 95% percentile
    bootstrap interval over pairs; NaN under 2 pairs. Held-out pairs from the train
    prompts, for when the dev split yields too few gapped pairs."""
    n, n_layers = toxic.shape[0], toxic.shape[1]
    columns = ["loo_accuracy", "loo_accuracy_ci_lo", "loo_accuracy_ci_hi"]
    if n < 2:
        return pd.DataFrame({c: [float("nan")] * n_layers for c in columns})
    diff = (toxic - clean).double()
    others = (diff.sum(0, keepdim=True) - diff) / (n - 1)  # [n, L, d]: v without pair i
    margin = (diff * others).sum(-1).numpy()
    wins = (margin > 0) + 0.5 * (margin == 0)
    boot = wins[np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))].mean(1)
    return pd.DataFrame({columns[0]: wins.mean(0), columns[1]: np.percentile(boot, 2.5, axis=0),
                         columns[2]: np.percentile(boot, 97.5, axis=0)})


def vector_quality(directions: torch.Tensor, sets: dict, n_resamples: int,
                   seed: int) -> pd.DataFrame:
    """Per layer: split-half cosine of the train pairs' vector (with its spread over
    resamples), leave-one-out paired accuracy on the train pairs and paired accuracy on
    the held-out dev pairs (bootstrap CIs; NaN when 03 found too few dev pairs).
    `sets`: 03's activation sets."""
    train = sets["train_toxic"]["pooled"], sets["train_clean"]["pooled"]
    stability = split_half_cosine(*train, n_resamples, seed)
    loo = loo_paired_accuracy(*train, n_resamples, seed + 2)
    empty = sets["train_toxic"]["pooled"][:0]
    toxic = sets.get("dev_toxic", {}).get("pooled", empty)
    clean = sets.get("dev_clean", {}).get("pooled", empty)
    accuracy = paired_accuracy(directions, toxic, clean, n_resamples, seed + 1)
    return pd.concat([stability, loo, accuracy], axis=1)
