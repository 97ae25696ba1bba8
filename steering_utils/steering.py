"""Steering: subtract alpha * v[layer] from decoder layer outputs, as a context manager.

    with steer(model, vectors, layer=12, alpha=1.0):
        model.generate(...)

`layer` and `alpha` are scalars or one value per batch row, so one batch can mix
cells of a layer x alpha sweep. Hooks are removed on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Literal

import torch

from .models import decoder_layers

Positions = Literal["all", "generated"]


class _LayerHook:
    """Adds -coef[row] * v to one layer's output; tracks positions for 'generated'."""

    def __init__(self, direction: torch.Tensor, coef: torch.Tensor, positions: Positions):
        self.direction = direction  # [d], fp32 on CPU; cast per call below
        self.coef = coef  # [batch] alpha per row, 0 where the row steers another layer
        self.positions = positions
        self.prompt_length: int | None = None
        self.seen = 0
        self._cast: dict[tuple, torch.Tensor] = {}

    def _delta(self, hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        if key not in self._cast:
            vec = self.direction.to(device=hidden.device, dtype=hidden.dtype)
            coef = self.coef.to(device=hidden.device, dtype=hidden.dtype)
            self._cast[key] = -(coef[:, None, None] * vec[None, None, :])
        return self._cast[key]

    def _position_mask(self, length: int, device) -> torch.Tensor | None:
        """[1, T, 1] mask of generated positions in this call, or None to steer all."""
        if self.positions == "all":
            return None
        # The first call in the context is the prompt (prefill). Later calls are
        # decode steps: length 1 under the KV cache (position = tokens seen so far),
        # or the whole sequence again without a cache.
        if self.prompt_length is None:
            self.prompt_length = length
        start = self.seen if length == 1 else 0
        self.seen = start + length
        positions = torch.arange(start, start + length, device=device)
        return (positions >= self.prompt_length)[None, :, None]

    def __call__(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        # One coefficient row broadcasts over any batch (a scalar alpha and layer).
        if self.coef.shape[0] != 1 and hidden.shape[0] != self.coef.shape[0]:
            raise ValueError(
                f"steer: batch of {hidden.shape[0]} rows but {self.coef.shape[0]} per-row "
                "alphas/layers; expand prompts yourself instead of num_return_sequences"
            )
        delta = self._delta(hidden)
        mask = self._position_mask(hidden.shape[1], hidden.device)
        if mask is not None:
            delta = delta * mask
        steered = hidden + delta
        if isinstance(output, tuple):
            return (steered, *output[1:])
        return steered


def _per_row(value, batch_size: int | None, name: str) -> tuple[list, bool]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        if batch_size is not None and len(value) != batch_size:
            raise ValueError(f"steer: {name} has {len(value)} rows, batch has {batch_size}")
        return list(value), True
    return [value], False


@contextmanager
def steer(
    model,
    vectors: torch.Tensor,
    layer: int | Sequence[int],
    alpha: float | Sequence[float],
    positions: Positions = "all",
    batch_size: int | None = None,
):
    """Steer `model` inside the block: h[layer] <- h[layer] - alpha * vectors[layer].

    vectors: [n_layers, d] (row i is layer i's direction) or a SteeringVectors.
    layer, alpha: scalars, or one value per batch row (then the batch size is fixed).
    positions: 'all' positions, or 'generated' tokens only (every decode step).
    """
    directions = getattr(vectors, "directions", vectors)
    layers = decoder_layers(model)
    layer_rows, layer_is_rows = _per_row(layer, batch_size, "layer")
    alpha_rows, alpha_is_rows = _per_row(alpha, batch_size, "alpha")
    if layer_is_rows and alpha_is_rows and len(layer_rows) != len(alpha_rows):
        raise ValueError(f"steer: {len(layer_rows)} layers but {len(alpha_rows)} alphas")
    n_rows = max(len(layer_rows), len(alpha_rows))
    if not layer_is_rows:
        layer_rows = layer_rows * n_rows
    if not alpha_is_rows:
        alpha_rows = alpha_rows * n_rows
    for index in set(layer_rows):
        if not 0 <= index < len(layers):
            raise ValueError(f"steer: layer {index} out of range (0..{len(layers) - 1})")
    if directions.shape[0] != len(layers):
        raise ValueError(
            f"steer: vectors have {directions.shape[0]} layers, model has {len(layers)}"
        )
    per_row = layer_is_rows or alpha_is_rows
    handles = []
    try:
        for index in sorted(set(layer_rows)):
            coef = torch.tensor(
                [a if row_layer == index else 0.0 for row_layer, a in zip(layer_rows, alpha_rows)],
                dtype=torch.float32,
            )
            if not torch.any(coef):
                continue  # alpha 0 leaves the layer untouched, bit for bit
            if not per_row:
                coef = coef[:1]
            hook = _LayerHook(directions[index].detach().float().cpu(), coef, positions)
            handles.append(layers[index].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()

