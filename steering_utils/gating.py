"""The per-prompt gate of conditional steering (CAST): steer a row only when its prompt's
activation points along the condition direction.

`ConditionalIntervention` is CAA's edit (h <- h - s v) plus a gate: the prompt's
activation at the condition layer, mean-pooled over its last `last_n` tokens, read by the
unsteered model with the prompt alone (batch of one: no pads, no dependence on which
prompts share a batch), and its cosine with the condition direction (the CAA vector at
that layer). A row is gated on iff the cosine exceeds `threshold`.

`gate_rows` applies the gate to job rows before any engine sees them: a gated-off row
gets alpha 0, so a batch mixes gated and steered rows through the per-row strengths of
`steering.steer` (HF; alpha 0 leaves a row bit for bit unsteered, at prefill and at every
decode step) or the per-request alpha of `vllm_engine`. How the threshold is chosen, and
the study around it, is `conditional.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .interventions import Intervention

PROJECTION = "cosine"


@dataclass
class ConditionalIntervention(Intervention):
    """CAA's edit (shift = -v) with a per-prompt gate: cos(a_prompt, v_c) > threshold."""

    condition_layer: int = 0
    condition: torch.Tensor | None = None  # [d]: the CAA vector at the condition layer
    threshold: float = 0.0
    last_n: int = 32
    projections: dict = field(default_factory=dict, repr=False)  # text -> cosine (a cache)

    @property
    def fingerprint(self) -> str:
        """CAA's edit and the whole gate: a changed threshold or layer is another shard."""
        digest = hashlib.sha256(Intervention.fingerprint.fget(self).encode())
        digest.update(f"|{self.condition_layer}|{self.threshold!r}|{self.last_n}|".encode())
        digest.update(self.condition.detach().float().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def project(self, model, tokenizer, texts: list[str]) -> np.ndarray:
        """cos(pooled activation at the condition layer, v_c) per text (cached by text)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.projections))
        if missing:
            found = prompt_projections(model, tokenizer, missing, self.condition,
                                       self.condition_layer, self.last_n)
            self.projections.update(zip(missing, found.tolist()))
        return np.array([self.projections[t] for t in texts], dtype=float)

    def gate(self, model, tokenizer, texts: list[str]) -> np.ndarray:
        """Per text: steer it (projection past the threshold) or not."""
        return self.project(model, tokenizer, texts) > self.threshold


def prompt_projections(model, tokenizer, texts: list[str], direction: torch.Tensor,
                       layer: int, last_n: int) -> np.ndarray:
    """cos(a, direction) per text; a: the text's activation at `layer`, mean-pooled over its
    last `last_n` tokens, each text read alone (no pads, no batch dependence)."""
    from .activations import capture_activations

    if not texts:
        return np.zeros(0)
    pooled = capture_activations(model, tokenizer, list(texts), last_n, batch_size=1,
                                 layers=[layer], desc=None)["pooled"][:, 0].double()
    v = direction.detach().double().cpu()
    norms = pooled.norm(dim=-1) * v.norm()
    cos = (pooled @ v) / norms.clamp(min=1e-30)
    return cos.numpy()


def gate_rows(vectors, model, tokenizer, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows an engine should generate: with a gated intervention, alpha 0 on every row
    whose prompt is gated off (the caller restores the cell's alpha); else `rows` as is."""
    gate = getattr(vectors, "gate", None)
    if gate is None or rows.empty:
        return rows
    on = gate(model, tokenizer, list(rows["prompt"]))
    return rows.assign(alpha=np.where(on, rows["alpha"].astype(float), 0.0))


