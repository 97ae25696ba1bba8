"""The steering methods compared by the study, each one named edit with one strength knob.

Every method is an `Intervention`: a `LayerEdit` of the residual stream (see
`steering.py`) or, for the prompt baseline, an instruction put before the prompt.
All run through the same per-row hook, job tables and shards as CAA, so a method's
rows differ from CAA's only in the edit they carry. Strength s = 0 is the
unsteered model for every method.

| method          | edit at a layer, strength s                                    |
| --------------- | -------------------------------------------------------------- |
| caa             | h - s v                      (v: mean toxic - mean clean, train) |
| random          | h - s r                      (r: Gaussian, ||r|| = ||v||)        |
| actadd          | h - s a                      (a: one toxic minus one clean text) |
| ablation        | h - s (h . v^) v^            (s = 1 removes the v component)     |
| mean_transport  | (1 - s) h + s (mu_c + sd_c / sd_t (h - mu_t)), per unit          |
| prompt          | no edit: an instruction before the prompt (s = 1: on)            |
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

    @property
    def fingerprint(self) -> str:
        """Content hash of what the method does: keys every shard it steers."""
        digest = hashlib.sha256(json.dumps([self.method, self.prefix]).encode())
        if self.edit is not None:
            digest.update(str(self.edit.all_layers).encode())
            for tensor in (self.edit.shift, self.edit.gain, self.edit.unit):
                digest.update(b"-" if tensor is None else
                              tensor.detach().float().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

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


def ablation(directions: torch.Tensor, all_layers: bool) -> Intervention:
    """h - s (h . v^) v^: removes the fraction s of the component along each layer's v."""
    norms = directions.norm(dim=-1, keepdim=True)
    unit = torch.where(norms > 0, directions / norms.clamp(min=1e-12), torch.zeros_like(directions))
    return Intervention("ablation", LayerEdit(unit=unit.float(), all_layers=all_layers),
                        metadata={"layers": "all" if all_layers else "chosen"})


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


def prompt_baseline(instruction: str) -> Intervention:
    """No edit: `instruction` is put before every prompt (strength 1 = on)."""
    if not instruction.strip():
        raise ValueError("methods.prompt.instruction: empty; give the instruction text")
    return Intervention("prompt", None, prefix=instruction)
