"""CAA steering vectors: per-layer mean(toxic) - mean(non-toxic), saved as safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch


@dataclass
class SteeringVectors:
    """One direction per decoder layer, with the norms a reader needs to judge alpha."""

    directions: torch.Tensor  # [n_layers, d], fp32
    activation_norms: torch.Tensor  # [n_layers], mean per-token residual norm ||h||
    metadata: dict = field(default_factory=dict)  # model, contrast, sizes, params hash

    @property
    def norms(self) -> torch.Tensor:
        return self.directions.norm(dim=-1)

    @property
    def fingerprint(self) -> str:
        """Content hash of the directions: keys every artifact steered by them."""
        import hashlib

        data = self.directions.detach().float().contiguous().cpu().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    @property
    def n_layers(self) -> int:
        return self.directions.shape[0]

    def relative_norm(self, layer: int, alpha: float) -> float:
        """|alpha| * ||v[layer]|| / mean ||h[layer]||: how hard a cell pushes."""
        return float(abs(alpha) * self.norms[layer] / self.activation_norms[layer])

    def save(self, path: str | Path) -> Path:
        """Write directions, norms and JSON metadata to one safetensors file (atomic)."""
        from safetensors.torch import save_file

        from .artifacts import atomic_path

        with atomic_path(path) as partial:
            save_file(
                {"directions": self.directions.contiguous(), "norms": self.norms.contiguous(),
                 "activation_norms": self.activation_norms.contiguous()},
                str(partial), metadata={"json": json.dumps(self.metadata, sort_keys=True)},
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVectors:
        """Read vectors written by `save` (safetensors: no code runs on load)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads(handle.metadata().get("json", "{}"))
            return cls(handle.get_tensor("directions"), handle.get_tensor("activation_norms"),
                       metadata)


def compute_caa_vectors(toxic: dict[str, torch.Tensor], clean: dict[str, torch.Tensor],
                        normalize: bool = False, metadata: dict | None = None) -> SteeringVectors:
    """CAA vectors from pooled activations of toxic and non-toxic texts ([n, L, d] each)."""
    if len(toxic["pooled"]) == 0 or len(clean["pooled"]) == 0:
        raise ValueError("compute_caa_vectors: both contrast sets need at least one text")
    directions = toxic["pooled"].mean(0) - clean["pooled"].mean(0)
    if normalize:
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    token_norm = torch.cat([toxic["token_norm"], clean["token_norm"]]).mean(0)
    meta = {"n_toxic": len(toxic["pooled"]), "n_clean": len(clean["pooled"]),
            "layers": list(range(directions.shape[0])), "normalized": normalize,
            **(metadata or {})}
    return SteeringVectors(directions.float(), token_norm.float(), meta)


def separation_auc(vectors: SteeringVectors, toxic: torch.Tensor, clean: torch.Tensor) -> list:
    """Per layer, AUROC of the projection onto v separating held-out toxic from clean texts
    (NaN when a side is empty)."""
    from sklearn.metrics import roc_auc_score

    if len(toxic) == 0 or len(clean) == 0:
        return [float("nan")] * vectors.n_layers
    unit = vectors.directions / vectors.norms[:, None].clamp(min=1e-12)
    projections = torch.einsum("nld,ld->nl", torch.cat([toxic, clean]), unit).numpy()
    labels = np.r_[np.ones(len(toxic)), np.zeros(len(clean))]
    return [float(roc_auc_score(labels, projections[:, layer]))
            for layer in range(vectors.n_layers)]


def layer_stats(vectors: SteeringVectors, dev_toxic: dict | None = None,
                dev_clean: dict | None = None, comparison: SteeringVectors | None = None,
                comparison_dev: tuple[dict, dict] | None = None) -> pd.DataFrame:
    """Per layer: ||v||, mean ||h||, their ratio, held-out AUROC (NaN without a dev set).

    With a comparison vector (another contrast), also its norm, its cosine with v,
    its AUROC on its own held-out set and on v's held-out set (the same yardstick).
    """
    nan = [float("nan")] * vectors.n_layers
    has_dev = dev_toxic is not None and dev_clean is not None
    auc = separation_auc(vectors, dev_toxic["pooled"], dev_clean["pooled"]) if has_dev else nan
    table = pd.DataFrame({
        "layer": range(vectors.n_layers),
        "vector_norm": vectors.norms.numpy(),
        "activation_norm": vectors.activation_norms.numpy(),
        "relative_norm": (vectors.norms / vectors.activation_norms).numpy(),
        "separation_auc": auc,
    })
    if comparison is not None:
        cosine = torch.nn.functional.cosine_similarity(vectors.directions,
                                                       comparison.directions, dim=-1)
        own = (separation_auc(comparison, comparison_dev[0]["pooled"],
                              comparison_dev[1]["pooled"]) if comparison_dev else nan)
        same = (separation_auc(comparison, dev_toxic["pooled"], dev_clean["pooled"])
                if has_dev else nan)
        table = table.assign(comparison_vector_norm=comparison.norms.numpy(),
                             comparison_cosine=cosine.numpy(),
                             comparison_separation_auc=own, comparison_auc_on_main_dev=same)
    return table
