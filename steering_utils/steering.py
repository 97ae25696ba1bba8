"""Steering: edit decoder layer outputs during a forward pass, as a context manager.

    with steer(model, vectors, layer=12, alpha=1.0):
        model.generate(...)

CAA subtracts alpha * v[layer]. Every method of the study is one affine edit of the
residual stream per layer (`LayerEdit`), scaled by the row's strength s:

    h <- h + s * (shift + gain * h - (h . unit) unit)

CAA: shift = -v. Ablation: unit = v / ||v|| (s = 1 removes the component along v).
Mean transport: gain = sd_clean / sd_toxic - 1, shift = mu_clean - (gain + 1) * mu_toxic
(s = 1 maps the toxic statistics onto the clean ones, per unit).

One term is positional: `front` ([n_layers, n, d], ActAdd) adds s * front[layer, i] at the
i-th real token of each row (left padding skipped, read from the model call's attention
mask), i < n, in calls that see the whole sequence (the prefill); decode steps under the
KV cache (calls of length 1 past position 0) are never edited by it. It ignores
`positions`: the front positions are the method.

`layer` and `alpha` are scalars or one value per batch row, so one batch can mix
cells of a layer x alpha sweep. An edit with `all_layers` acts at every layer it has
a row for, whatever the rows' layer. Hooks are removed on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from .models import decoder_layers

Positions = Literal["all", "generated"]


@dataclass(frozen=True)
class LayerEdit:
    """h <- h + s * (shift + gain * h - (h . unit) unit) at each layer; [n_layers, d] each.

    A missing term is zero. `all_layers`: act at every layer (rows' layers are ignored);
    otherwise only at each row's own layer.
    """

    shift: torch.Tensor | None = None
    gain: torch.Tensor | None = None
    unit: torch.Tensor | None = None
    all_layers: bool = False
    front: torch.Tensor | None = None  # [n_layers, n, d]: added at each row's first n tokens

    @property
    def n_layers(self) -> int:
        return next(t.shape[0] for t in (self.shift, self.gain, self.unit, self.front)
                    if t is not None)

    def acts_at(self, layer: int) -> bool:
        return any(t is not None and bool(torch.any(t[layer]))
                   for t in (self.shift, self.gain, self.unit, self.front))

    def at(self, layer: int) -> tuple:
        """(shift, gain, unit) rows of one layer: fp32 on CPU, None where absent."""
        return tuple(None if t is None else t[layer].detach().float().cpu()
                     for t in (self.shift, self.gain, self.unit))


def as_edit(steering) -> LayerEdit | None:
    """The LayerEdit of an intervention, of SteeringVectors (CAA: shift = -v) or of a tensor;
    None for no steering at all (None, or an intervention without an edit: the prompt
    baseline). Every engine asks this one question."""
    if steering is None:
        return None
    if hasattr(steering, "edit"):
        return steering.edit
    if isinstance(steering, LayerEdit):
        return steering
    return LayerEdit(shift=-getattr(steering, "directions", steering))


class _LayerHook:
    """Applies one layer's edit, scaled by coef[row]; tracks positions for 'generated'."""

    def __init__(self, terms: tuple, coef: torch.Tensor, positions: Positions,
                 front: torch.Tensor | None = None, calls: dict | None = None):
        self.terms = terms  # (shift, gain, unit): [d] each or None, fp32 on CPU
        self.coef = coef  # [batch] strength per row, 0 where the row steers another layer
        self.positions = positions
        self.front = front  # [n, d] or None, fp32 on CPU
        self.calls = calls if calls is not None else {}  # the model call's attention mask
        self.prompt_length: int | None = None
        self.seen = 0
        self._cast: dict[tuple, tuple] = {}

    def _front_delta(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[B, T, d]: coef * front[i] at each row's i-th real token, in full-sequence calls."""
        batch, length = hidden.shape[:2]
        mask, given = self.calls.get("attention_mask"), self.calls.get("position_ids")
        steps = torch.arange(length, device=hidden.device)[None, :]
        if torch.is_tensor(mask) and mask.dim() == 2 and mask.shape[1] == length:
            # The whole sequence, padded: positions count from each row's first real token.
            index = steps - mask.to(torch.long).argmax(dim=1).to(hidden.device)[:, None]
        elif length > 1:  # the whole sequence without padding (no mask, or an all-ones one)
            index = steps.expand(batch, -1)
        elif torch.is_tensor(given) and given.numel() == batch and not torch.any(given):
            index = torch.zeros(batch, 1, dtype=torch.long, device=hidden.device)  # 1-token prompt
        else:  # a decode step under the KV cache: never a front position
            return None
        front = self.front.to(device=hidden.device, dtype=hidden.dtype)
        inside = (index >= 0) & (index < front.shape[0])  # [B, T]
        added = front[index.clamp(0, front.shape[0] - 1)] * inside[..., None]
        coef = self.coef.to(device=hidden.device, dtype=hidden.dtype)[:, None, None]
        return coef * added

    def _delta(self, hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        if key not in self._cast:
            coef = self.coef.to(device=hidden.device, dtype=hidden.dtype)[:, None, None]
            self._cast[key] = (coef, *(None if t is None else
                                       t.to(device=hidden.device, dtype=hidden.dtype)
                                       for t in self.terms))
        coef, shift, gain, unit = self._cast[key]
        terms = []  # a shift alone stays [d] and broadcasts: no [B, T, d] temporary
        if shift is not None:
            terms.append(shift)
        if gain is not None:
            terms.append(gain * hidden)
        if unit is not None:
            terms.append(-(hidden @ unit)[..., None] * unit)
        return coef * sum(terms[1:], terms[0])

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
        steered = hidden
        if any(t is not None for t in self.terms):
            delta = self._delta(hidden)
            mask = self._position_mask(hidden.shape[1], hidden.device)
            if mask is not None:
                delta = delta * mask
            steered = hidden + delta
        if self.front is not None:
            front = self._front_delta(hidden)
            if front is not None:
                steered = steered + front
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
    vectors,
    layer: int | Sequence[int],
    alpha: float | Sequence[float],
    positions: Positions = "all",
    batch_size: int | None = None,
):
    """Steer `model` inside the block: h[layer] <- h[layer] - alpha * vectors[layer] for CAA.

    vectors: [n_layers, d] (row i is layer i's direction), a SteeringVectors, a LayerEdit
    or an intervention carrying one (`.edit`); an intervention without an edit (the
    prompt baseline) leaves the model untouched.
    layer, alpha: scalars, or one value per batch row (then the batch size is fixed).
    positions: 'all' positions, or 'generated' tokens only (every decode step).
    """
    edit = as_edit(vectors)
    if edit is None:  # nothing to steer with (the prompt baseline)
        yield
        return
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
    if edit.n_layers != len(layers):
        raise ValueError(f"steer: vectors have {edit.n_layers} layers, model has {len(layers)}")
    if edit.all_layers:
        targets = [index for index in range(len(layers)) if edit.acts_at(index)]
    else:
        targets = sorted(set(layer_rows))
        for index in targets:
            if not 0 <= index < len(layers):
                raise ValueError(f"steer: layer {index} out of range (0..{len(layers) - 1})")
    per_row = layer_is_rows or alpha_is_rows
    handles = []
    calls: dict = {}  # the current model call's attention mask (front positions read it)
    try:
        if edit.front is not None:
            def remember_mask(module, args, kwargs):
                calls["attention_mask"] = kwargs.get(
                    "attention_mask", args[1] if len(args) > 1 else None)
                calls["position_ids"] = kwargs.get("position_ids")
            handles.append(model.register_forward_pre_hook(remember_mask, with_kwargs=True))
        for index in targets:
            coef = torch.tensor(
                [a if edit.all_layers or row_layer == index else 0.0
                 for row_layer, a in zip(layer_rows, alpha_rows)],
                dtype=torch.float32,
            )
            if not torch.any(coef):
                continue  # alpha 0 leaves the layer untouched, bit for bit
            if not per_row:
                coef = coef[:1]
            front = None if edit.front is None else edit.front[index].detach().float().cpu()
            hook = _LayerHook(edit.at(index), coef, positions, front, calls)
            handles.append(layers[index].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()

