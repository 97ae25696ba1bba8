"""The steering methods compared by the study, each one named edit with one strength knob.

Every method is an `Intervention`: a `LayerEdit` of the residual stream (see
`steering.py`) or, for the prompt baselines, text put around the prompt. All run
through the same per-row hook, job tables and shards as CAA, so a method's rows differ
from CAA's only in the edit they carry. Strength s = 0 is the unsteered model for every
method. h is a decoder layer's output (the residual stream after that layer).

Method, edit at strength s, source (docs/design.md, "Methods compared", has the details):

- caa: h - s v at the layer (v: mean toxic - mean clean, train). Rimsky et al. 2024.
- random: h - s r at the layer (r: Gaussian, ||r|| = ||v||). The control.
- actadd: h[i] - s (a_toxic[i] - a_clean[i]) at the prompt's first n tokens, prefill only,
  at its own layer. Turner et al. 2023.
- actadd_pooled: h - s (mean a_toxic - mean a_clean) at every position. Earlier variant.
- ablation: h - s (h . r^) r^ at EVERY layer and position, one r^. Arditi et al. 2024.
- ablation_layer: h - s (h . v_l^) v_l^ at the layer (or each layer its own). Earlier variant.
- ace: h - s r^ (h . r^ - mu_clean) at the layer. Marshall, Scherlis & Belrose 2024.
- linear_act: (1 - s) h + s (w h + b) per unit at several layers, w, b fitted on sorted
  samples layer by layer on the transported model. Rodriguez et al. 2024.
- mean_transport: (1 - s) h + s (mu_c + sd_c / sd_t (h - mu_t)) per unit at one layer:
  Linear-AcT's Gaussian form.
- prompt: no edit; the instruction as system message, the prompt as user message, via the
  tokenizer's chat template. prompt_raw: the instruction as plain text before the prompt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

from .steering import LayerEdit

_EPS = 1e-6  # floor of a standard deviation (a unit that never varies is left alone)


@dataclass
class Intervention:
    """One method's edit (None for the prompt baseline), its prompt prefix and its provenance."""

    method: str
    edit: LayerEdit | None
    prefix: str = ""
    metadata: dict = field(default_factory=dict)
    suffix: str = ""  # after the prompt (the chat template's end of turn)
    layer: int | None = None  # a layer of the method's own (ActAdd), else the comparison's

    @property
    def fingerprint(self) -> str:
        """Content hash of what the method does: keys every shard it steers."""
        digest = hashlib.sha256(json.dumps([self.method, self.prefix]).encode())
        if self.suffix:  # only when present: the keys of older methods' shards stay
            digest.update(b"suffix" + self.suffix.encode())
        if self.edit is not None:
            digest.update(str(self.edit.all_layers).encode())
            for tensor in (self.edit.shift, self.edit.gain, self.edit.unit):
                digest.update(b"-" if tensor is None else
                              tensor.detach().float().contiguous().cpu().numpy().tobytes())
            if self.edit.front is not None:
                digest.update(b"front" + self.edit.front.detach().float().contiguous()
                              .cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def wrap(self, text: str) -> str:
        """The text the model reads for a prompt (or a capability question)."""
        return self.prefix + text + self.suffix

    @property
    def all_layers(self) -> bool:
        return self.edit is not None and self.edit.all_layers


def additive(method: str, directions: torch.Tensor, metadata: dict | None = None
             ) -> Intervention:
    """h - s * directions[layer] (CAA, ActAdd, a random direction)."""
    return Intervention(method, LayerEdit(shift=-directions.float()), metadata=metadata or {})


def actadd_directions(toxic: dict, clean: dict) -> torch.Tensor:
    """[n_layers, d]: pooled activation of the one toxic text minus the one clean text."""
    if len(toxic["pooled"]) != 1 or len(clean["pooled"]) != 1:
        raise ValueError("actadd: needs exactly one toxic and one clean text")
    return (toxic["pooled"][0] - clean["pooled"][0]).float()


def _units(directions: torch.Tensor) -> torch.Tensor:
    norms = directions.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, directions / norms.clamp(min=1e-12),
                       torch.zeros_like(directions)).float()


def ablation(directions: torch.Tensor, all_layers: bool,
             method: str = "ablation_layer") -> Intervention:
    """h - s (h . v_l^) v_l^ with each layer's own v_l: at the row's layer, or at every layer
    (`all_layers`). The study's earlier ablation, kept as `ablation_layer`."""
    return Intervention(method, LayerEdit(unit=_units(directions), all_layers=all_layers),
                        metadata={"layers": "all" if all_layers else "chosen"})


def directional_ablation(direction: torch.Tensor, n_layers: int, source_layer: int
                         ) -> Intervention:
    """Arditi et al. 2024: ONE direction r^ projected out at every layer and position,
    h <- h - s (h . r^) r^ (s = 1: r^ r^T h removed).

    r^ = direction / ||direction|| (CAA's direction at `source_layer`, the comparison's
    layer). Arditi et al. ablate every residual activation, also the embeddings and the
    stream between attention and MLP; here the hook edits each decoder layer's output, which
    at s = 1 leaves the same stream between layers (the next layer reads it) but lets a
    layer's MLP read its own attention's write along r^.
    """
    if not torch.any(direction):
        raise ValueError(f"ablation: CAA's direction at layer {source_layer} is zero")
    unit = _units(direction[None])[0]
    return Intervention("ablation", LayerEdit(unit=unit.expand(n_layers, -1).clone(),
                                              all_layers=True),
                        metadata={"layers": "all", "direction_layer": int(source_layer)})


def ace(directions: torch.Tensor, clean_mean: torch.Tensor) -> Intervention:
    """Affine concept editing (Marshall, Scherlis & Belrose 2024, "Refusal in LLMs is an
    affine function"): the projection on r^ is set to the clean side's mean projection,
    h <- h - s r^ (h . r^ - mu_clean), mu_clean = r^ . mean(clean activations).

    So shift = mu_clean r^ and unit = r^ (LayerEdit: h + s (shift - (h . r^) r^)); at s = 1
    every token's projection on r^ is exactly mu_clean. Unlike zeroing the projection
    (`ablation`), the clean side is left where it was on average. Per layer: r^_l from
    CAA's v_l, mu_clean_l from the train contrast's clean side (per-token mean).
    """
    unit = _units(directions)
    mu = (unit * clean_mean.float()).sum(-1, keepdim=True)
    return Intervention("ace", LayerEdit(shift=(mu * unit).float(), unit=unit),
                        metadata={"reference": "clean mean projection"})


def actadd_front(toxic: torch.Tensor, clean: torch.Tensor, layer: int,
                 metadata: dict | None = None) -> Intervention:
    """ActAdd as Turner et al. 2023 define it: at the method's own `layer`, the i-th token of
    the prompt gets h[i] - s (a_toxic[i] - a_clean[i]), i < n, during the prefill only.

    toxic, clean: [n_layers, n, d] per-position activations of the two steering texts,
    padded to equal length (`activations.capture_positions`). Decode steps are untouched
    (the prompt's KV then already carries the edit), as in the paper's injection.
    """
    if toxic.shape != clean.shape:
        raise ValueError(f"actadd: texts' activations differ in shape {tuple(toxic.shape)} vs "
                         f"{tuple(clean.shape)}; pad them to equal length")
    front = torch.zeros_like(toxic, dtype=torch.float32)
    front[layer] = -(toxic[layer] - clean[layer]).float()
    return Intervention("actadd", LayerEdit(front=front), layer=int(layer),
                        metadata={**(metadata or {}), "positions": int(toxic.shape[1])})


def token_statistics(sets: dict) -> dict[str, torch.Tensor]:
    """Per side ('toxic', 'clean'): mean and standard deviation per unit over every pooled
    token of the train contrast ([n_layers, d] each), from the captured token moments."""
    out = {}
    for side in ("toxic", "clean"):
        moments = sets[f"train_{side}"]
        count = moments["token_count"].sum()
        if count < 2:
            raise ValueError(f"mean_transport: the train {side} texts have {int(count)} "
                             "pooled tokens; raise activations.n_per_side")
        mean = moments["token_sum"] / count
        var = (moments["token_sq_sum"] / count - mean**2).clamp(min=0) * count / (count - 1)
        out[f"{side}_mean"], out[f"{side}_std"] = mean.float(), var.sqrt().float()
    return out


def mean_transport(stats: dict[str, torch.Tensor], all_layers: bool) -> Intervention:
    """Per unit, the affine map of the toxic token statistics onto the clean ones.

    T(h) = mu_c + (sd_c / sd_t) (h - mu_t); strength s interpolates h + s (T(h) - h),
    so gain = sd_c / sd_t - 1 and shift = mu_c - (sd_c / sd_t) mu_t. The Gaussian
    (moment-matching) form of Linear-AcT's per-unit transport, estimated on train.
    """
    ratio = stats["clean_std"] / stats["toxic_std"].clamp(min=_EPS)
    ratio = torch.where(stats["toxic_std"] > _EPS, ratio, torch.ones_like(ratio))
    shift = stats["clean_mean"] - ratio * stats["toxic_mean"]
    return Intervention("mean_transport",
                        LayerEdit(shift=shift.float(), gain=(ratio - 1).float(),
                                  all_layers=all_layers),
                        metadata={"layers": "all" if all_layers else "chosen"})


def quantile_maps(toxic: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, b) [..., d]: per unit, least squares of the sorted clean samples on the sorted
    toxic ones (Linear-AcT's estimator: a 1-D optimal transport map restricted to affine).

    toxic [n, ..., d], clean [m, ..., d]; with n != m both sides are read at the same
    min(n, m) quantiles. A unit whose toxic samples do not vary gets w = 1 (a shift).
    """
    toxic, clean = toxic.double(), clean.double()
    if toxic.shape[0] < 2 or clean.shape[0] < 2:
        raise ValueError("linear_act: needs at least 2 samples a side; raise "
                         "activations.n_per_side")
    if toxic.shape[0] == clean.shape[0]:
        a, b = toxic.sort(dim=0).values, clean.sort(dim=0).values
    else:
        m = min(toxic.shape[0], clean.shape[0])
        q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        a, b = torch.quantile(toxic, q, dim=0), torch.quantile(clean, q, dim=0)
    da, db = a - a.mean(0), b - b.mean(0)
    var = (da * da).sum(0)
    flat = var <= 1e-12 * (1 + (a * a).sum(0))
    w = torch.where(flat, torch.ones_like(var), (da * db).sum(0) / var.clamp(min=1e-300))
    return w.float(), (b.mean(0) - w * a.mean(0)).float()


def linear_act(gain: torch.Tensor, shift: torch.Tensor, layers: list[int]) -> Intervention:
    """Linear-AcT's transport: h <- h + s (T(h) - h), T(h) = w h + b per unit, at `layers`
    (gain = w - 1, shift = b; zero rows at every other layer)."""
    return Intervention("linear_act", LayerEdit(shift=shift.float(), gain=gain.float(),
                                                all_layers=True),
                        metadata={"layers": [int(layer) for layer in layers]})


def fit_linear_act(capture, layers: list[int], n_layers: int, hidden_size: int
                   ) -> Intervention:
    """Linear-AcT (Rodriguez et al. 2024) estimated sequentially: layer by layer in order,
    each map fitted (`quantile_maps`) on the activations of the model already transported
    (at s = 1) at every earlier layer of `layers`.

    capture(edit, layer) -> (toxic [n, d], clean [m, d]): the train contrast's pooled
    activations at `layer` with `edit` (a LayerEdit, or None) applied.
    """
    gain = torch.zeros(n_layers, hidden_size)
    shift = torch.zeros(n_layers, hidden_size)
    for number, layer in enumerate(sorted(layers)):
        edit = None if number == 0 else LayerEdit(shift=shift.clone(), gain=gain.clone(),
                                                  all_layers=True)
        toxic, clean = capture(edit, layer)
        w, b = quantile_maps(toxic, clean)
        gain[layer], shift[layer] = w - 1, b
    return linear_act(gain, shift, sorted(layers))


def prompt_baseline(instruction: str, method: str = "prompt_raw") -> Intervention:
    """No edit: `instruction` is put before every prompt as plain text (strength 1 = on)."""
    if not instruction.strip():
        raise ValueError("methods.prompt.instruction: empty; give the instruction text")
    return Intervention(method, None, prefix=instruction)


_SLOT = "<<STEERING-PROMPT-SLOT>>"  # stands for the prompt while the chat template is rendered


def chat_prompt(tokenizer, instruction: str) -> Intervention:
    """The prompt baseline through the tokenizer's chat template: the instruction as the
    system message, the prompt as the user message, the assistant's turn opened
    (add_generation_prompt). Without a chat template: the raw-text baseline, so noted."""
    if not instruction.strip():
        raise ValueError("methods.prompt.instruction: empty; give the instruction text")
    if not getattr(tokenizer, "chat_template", None):
        raw = prompt_baseline(instruction, "prompt")
        raw.metadata["template"] = "none (the tokenizer has no chat template): raw text"
        return raw
    messages = [{"role": "system", "content": instruction.strip()},
                {"role": "user", "content": _SLOT}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text.count(_SLOT) != 1:
        raise ValueError("methods.prompt: the chat template does not show the user message "
                         "once; use prompt_raw")
    prefix, suffix = text.split(_SLOT)
    bos = getattr(tokenizer, "bos_token", None)
    ids = tokenizer("x")["input_ids"]
    if bos and prefix.startswith(bos) and ids and ids[0] == tokenizer.bos_token_id:
        prefix = prefix[len(bos):]  # the tokenizer adds it again: never two
    return Intervention("prompt", None, prefix=prefix, suffix=suffix,
                        metadata={"template": "chat", "instruction": instruction.strip()})
