"""Specificity: CAA's effect ranked among null directions of the same norm, layer and α.

The effect of a push h <- h - α·d at one layer is read by a deterministic likelihood probe on
held-out (toxic, clean) continuation pairs of the same prompt (the dev split's paired
contrast): Δ = [log p(toxic | prompt) - log p(clean | prompt)] under the push, minus its
unsteered value, averaged over pairs. Negative Δ: the push moved probability from the toxic
to the clean continuation. No sampling noise, so a few dozen pairs separate directions that
generation would need hundreds of prompts for.

First order, Δ ≈ -α·<g, d> with g the gradient of the log-ratio with respect to a shift of
the layer's output (summed over the pushed positions): one backward pass per text scores
every direction at once, so the null can have hundreds of members. Exact pushed forward
passes on a few directions validate it (their correlation is reported) and give the
dose-response over α.

Torch is imported lazily: results.py reads the typed result without it.

Null families, each scaled to ||v_layer||:
- isotropic: Gaussian directions, uniform on the sphere;
- covariance: Gaussian with the covariance of the residual stream's pooled train activations
  at the layer (both sides of the contrast), so the null pushes along the directions the
  stream actually varies in;
- shuffled: CAA vectors of the same train pairs with random side labels (each pair's
  difference flipped with probability 1/2): a permutation null of the labels.

CAA's rank counts null members at least as strong (reduction -Δ); the empirical p-value is
(1 + #{null >= CAA}) / (N + 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from .batching import map_batches
from .decisions import DevSelection

FAMILIES = ("isotropic", "covariance", "shuffled")
MAX_TOKENS = 512
SIGNIFICANCE = 0.05  # the p-value below which a family is beaten


# --- the typed result (results.py embeds it in experiment_results.json) ----------------------

class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NullFamily(_Record):
    """CAA against one null family at the tested α (first-order probe Δ, mean over pairs)."""

    family: str
    n: int = Field(ge=1, description="null directions")
    caa_delta: float = Field(description="CAA's Δ log p(toxic) - log p(clean); < 0: less toxic")
    rank: int = Field(ge=1, description="1 + null members at least as strong as CAA")
    p_value: float = Field(gt=0, le=1, description="(1 + #null >= CAA) / (N + 1), one-sided")
    null_mean: float
    null_sd: float
    null_q05: float
    null_q50: float
    null_q95: float
    null_deltas: list[float] = Field(description="each null direction's Δ (the histogram)")


class DosePoint(_Record):
    """One direction's Δ at one α: exact (pushed forward passes) and first order."""

    alpha: float
    family: str = Field(description="caa, a null family, or control (05's generated randoms)")
    direction: int = Field(ge=0, description="index within its family")
    exact_delta: float
    first_order_delta: float


class GenerationCheck(_Record):
    """A direction generated in 05 (CAA, the control's randoms): probe Δ vs generated toxicity."""

    direction: str
    exact_delta: float
    mean_toxicity: float = Field(description="challenging eval, generated at the tested α")


class Specificity(_Record):
    """CAA's rank among null directions, the probe's validation and its dose-response."""

    layer: int = Field(ge=0)
    alpha: float = Field(description="the tested α (the dev pick, else the control's largest)")
    positions: str
    n_pairs: int = Field(ge=1, description="held-out dev (toxic, clean) continuation pairs")
    covariance_rank: int = Field(ge=0, description="rank of the activations' covariance")
    families: list[NullFamily]
    caa_exact_delta: float = Field(description=(
        "CAA's Δ at the tested α from exact pushed passes (the families rank first order)"))
    probe_exact_r: float | None = Field(description=(
        "Pearson r of first-order vs exact Δ over (direction, pair) points at the tested α"))
    probe_exact_r_means: float | None = Field(description="the same over directions' means")
    dose: list[DosePoint]
    generation: list[GenerationCheck]
    unsteered_mean_toxicity: float | None
    seconds: float = Field(ge=0)
    specific: bool = Field(description=f"p < {SIGNIFICANCE} against every family")


# --- null directions -------------------------------------------------------------------------

def scale_rows(directions: np.ndarray, norm: float) -> np.ndarray:
    """Each row rescaled to `norm` (rows of zero norm stay zero)."""
    lengths = np.linalg.norm(directions, axis=1, keepdims=True)
    return directions / np.where(lengths > 0, lengths, 1.0) * norm


def isotropic_directions(n: int, dim: int, norm: float, seed: int) -> np.ndarray:
    """[n, dim] Gaussian directions (uniform on the sphere), each of `norm`."""
    rng = np.random.default_rng([seed, 1])
    return scale_rows(rng.standard_normal((n, dim)), norm)


def gaussian_like(samples: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, d] draws of N(0, S), S the sample covariance of `samples` ([m, d], ddof 1).

    Drawn as X_c^T z / sqrt(m - 1) with z ~ N(0, I_m): exact for any rank, no d x d matrix.
    """
    centered = samples - samples.mean(0, keepdims=True)
    z = rng.standard_normal((n, len(samples)))
    return z @ centered / np.sqrt(max(len(samples) - 1, 1))


def covariance_directions(samples: np.ndarray, n: int, norm: float, seed: int) -> np.ndarray:
    """[n, d] directions drawn from the covariance of `samples`, each of `norm`."""
    return scale_rows(gaussian_like(samples, n, np.random.default_rng([seed, 2])), norm)


def shuffled_directions(toxic: np.ndarray, clean: np.ndarray, n: int, norm: float,
                        seed: int) -> np.ndarray:
    """[n, d] CAA vectors of pairs (toxic[i], clean[i]) with random side labels, each of `norm`."""
    m = min(len(toxic), len(clean))
    differences = toxic[:m] - clean[:m]
    signs = np.random.default_rng([seed, 3]).choice([-1.0, 1.0], size=(n, m))
    return scale_rows(signs @ differences / m, norm)


def empirical_rank(effect: float, null: np.ndarray) -> tuple[int, float]:
    """(rank of `effect` among the null, larger is stronger; one-sided empirical p-value).

    rank = 1 + #{null > effect} (ties favour the effect); p = (1 + #{null >= effect}) / (N + 1)
    (ties count against it), so p >= 1/(N+1) and is uniform-ish for an effect from the null.
    """
    null = np.asarray(null, dtype=float)
    return int(1 + np.sum(null > effect)), float((1 + np.sum(null >= effect)) / (len(null) + 1))


def null_family(family: str, caa_delta: float, null_deltas: np.ndarray) -> NullFamily:
    """CAA's rank and p among one family (strength is the reduction -Δ)."""
    rank, p = empirical_rank(-caa_delta, -np.asarray(null_deltas))
    q05, q50, q95 = np.quantile(null_deltas, [0.05, 0.5, 0.95])
    return NullFamily(family=family, n=len(null_deltas), caa_delta=float(caa_delta), rank=rank,
                      p_value=p, null_mean=float(np.mean(null_deltas)),
                      null_sd=float(np.std(null_deltas, ddof=1)) if len(null_deltas) > 1
                      else 0.0, null_q05=float(q05), null_q50=float(q50), null_q95=float(q95),
                      null_deltas=[float(x) for x in null_deltas])


# --- the likelihood probe --------------------------------------------------------------------

class ProbeTexts:
    """Token ids of the pairs' texts: rows 2i (toxic) and 2i+1 (clean) share pair i's prompt."""

    def __init__(self, tokenizer, contexts: list[str], toxic: list[str], clean: list[str]):
        if not (len(contexts) == len(toxic) == len(clean)) or not contexts:
            raise ValueError("ProbeTexts: contexts, toxic and clean need one non-empty row each")
        self.sequences, self.counts = [], []
        for context, *texts in zip(contexts, toxic, clean):
            ctx = tokenizer(context)["input_ids"]
            for text in texts:
                cont = tokenizer(text, add_special_tokens=False)["input_ids"]
                ids = (ctx + cont)[-MAX_TOKENS:]
                self.sequences.append(ids)
                self.counts.append(min(len(cont), len(ids) - 1))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def n_pairs(self) -> int:
        return len(self.sequences) // 2

    def lengths(self, rows: np.ndarray) -> list[int]:
        """Tokens of each row (row r reads text r % n_texts: one text under several pushes)."""
        return [len(self.sequences[r % len(self.sequences)]) for r in rows]

    def padded(self, rows: np.ndarray):
        """(ids, mask, counts): the left-padded batch of `rows` (row r reads text r % n)."""
        import torch

        seqs = [self.sequences[r % len(self.sequences)] for r in rows]
        width = max(len(seq) for seq in seqs)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        counts = torch.tensor([self.counts[r % len(self.sequences)] for r in rows])
        return ids, mask, counts


def _batch_key(model, probe: str) -> tuple:
    """The batching helper's key (the batch that fitted is remembered per model and pass)."""
    return (str(getattr(model.config, "name_or_path", "")), probe)


def _logprobs(model, layer: int, ids, mask, counts, shift, positions: str):
    """[B] sum of log p(continuation) per row with shift[row] ([B, d]) added at `layer`'s
    output on the pushed positions (all real tokens, or the continuation's: 'generated')."""
    import torch

    from .activations import pool_mask, position_ids
    from .likelihood import _takes_logits_to_keep
    from .models import decoder_layers, input_device

    device = input_device(model)
    pushed = (mask if positions == "all" else pool_mask(mask, counts)).float().to(device)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + pushed[..., None].to(hidden) * shift.to(hidden)[:, None, :]
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    keep = int(counts.max()) + 1  # only the positions that predict continuation tokens
    extra = {"logits_to_keep": keep} if _takes_logits_to_keep(type(model)) else {}
    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=position_ids(mask).to(device), use_cache=False,
                       **extra).logits
    finally:
        handle.remove()
    logits = logits[:, -keep:-1]
    logprobs = torch.log_softmax(logits.double() if logits.dtype == torch.float64
                                 else logits.float(), dim=-1)
    targets = ids[:, ids.shape[1] - keep + 1:, None].to(device)
    token_lp = logprobs.gather(-1, targets)[..., 0]
    first = (keep - 1 - counts.to(device))[:, None]  # each row's first continuation token
    scored = torch.arange(keep - 1, device=device)[None, :] >= first
    return (token_lp * scored).sum(1)


def log_ratio_gradients(model, texts: ProbeTexts, layer: int, positions: str = "all",
                        batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(unsteered log-ratio per pair [n], its gradient w.r.t. a shift of `layer`'s output on
    the pushed positions [n, d]): one backward pass per batch of texts."""
    import torch

    from .models import input_device

    hidden = model.config.get_text_config().hidden_size
    dtype = next(model.parameters()).dtype

    def run_batch(index: np.ndarray) -> list:
        ids, mask, counts = texts.padded(index)
        shift = torch.zeros(len(index), hidden, dtype=dtype, device=input_device(model),
                            requires_grad=True)
        out = _logprobs(model, layer, ids, mask, counts, shift, positions)
        (grad,) = torch.autograd.grad(out.sum(), shift)  # rows are independent
        return list(zip(out.detach().double().cpu().numpy(), grad.double().cpu().numpy()))

    rows = np.arange(len(texts.sequences))
    with torch.enable_grad():
        done = map_batches(run_batch, texts.lengths(rows), batch_size,
                           key=_batch_key(model, "probe-gradient"))
    lp = np.array([value for value, _ in done])
    grads = np.stack([grad for _, grad in done])
    return lp[0::2] - lp[1::2], grads[0::2] - grads[1::2]


def exact_log_ratios(model, texts: ProbeTexts, layer: int, shifts: np.ndarray,
                     positions: str = "all", batch_size: int = 16) -> np.ndarray:
    """[k, n pairs] log-ratio with shifts[j] ([k, d]) added at `layer` (pushed forward passes)."""
    import torch

    from .models import input_device

    n_texts = len(texts.sequences)
    rows = np.arange(len(shifts) * n_texts)  # row = direction * n_texts + text
    device = input_device(model)
    dtype = next(model.parameters()).dtype
    table = torch.as_tensor(np.asarray(shifts), dtype=dtype, device=device)

    def run_batch(index: np.ndarray) -> np.ndarray:
        ids, mask, counts = texts.padded(index)
        shift = table[torch.as_tensor(index // n_texts, device=device)]
        return _logprobs(model, layer, ids, mask, counts, shift,
                         positions).double().cpu().numpy()

    with torch.inference_mode():
        out = map_batches(run_batch, texts.lengths(rows), batch_size,
                          key=_batch_key(model, "probe-pushed"))
    lp = np.asarray(out, dtype=float).reshape(len(shifts), n_texts)
    return lp[:, 0::2] - lp[:, 1::2]


def probe_pairs(baseline: pd.DataFrame, prompts: pd.DataFrame, n_pairs: int) -> pd.DataFrame:
    """Held-out pairs (prompt_id, context, toxic, clean): per dev challenging prompt, its most
    vs least toxic baseline continuation (the paired contrast of the dev split)."""
    from .activations import contrast_texts

    table, _ = contrast_texts(baseline, prompts, "paired", n_pairs, "dev", required=1)
    toxic = table[table["side"] == "toxic"].set_index("prompt_id")
    clean = table[table["side"] == "clean"].set_index("prompt_id")
    return pd.DataFrame({"context": toxic["context"], "toxic": toxic["text"],
                         "clean": clean.loc[toxic.index, "text"]}).reset_index()


def null_directions(train_toxic, train_clean, caa: np.ndarray, counts: dict[str, int],
                    seed: int) -> tuple[dict[str, np.ndarray], int]:
    """({family: [N, d] directions of ||caa||}, rank of the covariance) from the train
    contrast's pooled activations at the layer ([n, d] each side, rows paired by index)."""
    norm = float(np.linalg.norm(caa))
    toxic, clean = np.asarray(train_toxic, float), np.asarray(train_clean, float)
    both = np.concatenate([toxic, clean])
    rank = int(np.linalg.matrix_rank(both - both.mean(0))) if len(both) > 1 else 0
    makers = {"isotropic": lambda n: isotropic_directions(n, len(caa), norm, seed),
              "covariance": lambda n: covariance_directions(both, n, norm, seed),
              "shuffled": lambda n: shuffled_directions(toxic, clean, n, norm, seed)}
    return {f: makers[f](counts[f]) for f in FAMILIES if counts.get(f, 0) > 0}, rank


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = np.ravel(x), np.ravel(y)
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def measure_specificity(model, tokenizer, pairs: pd.DataFrame, caa: np.ndarray,
                        nulls: dict[str, np.ndarray], layer: int, alpha: float,
                        alphas: list[float], n_exact: int, positions: str = "all",
                        batch_size: int = 16, covariance_rank: int = 0,
                        generated: dict[str, tuple[np.ndarray, float]] | None = None,
                        unsteered_toxicity: float | None = None) -> Specificity:
    """CAA's rank among each null family at `alpha`, validated by exact passes on `n_exact`
    directions per family at `alpha`, with CAA's dose-response over `alphas` (exact and
    first order).

    caa: [d] the CAA vector at `layer`; nulls: {family: [N, d]} of the same norm;
    generated: {name: (direction [d], generated mean toxicity at alpha)} checked too.
    """
    import time

    started = time.time()
    generated = generated or {}
    texts = ProbeTexts(tokenizer, list(pairs["context"]), list(pairs["toxic"]),
                       list(pairs["clean"]))
    base, grads = log_ratio_gradients(model, texts, layer, positions, batch_size)
    # First order: Δ_i(d, α) = -α <g_i, d>; the mean over pairs uses the mean gradient.
    mean_grad = grads.mean(0)
    families = []
    for family in FAMILIES:
        directions = nulls.get(family)
        if directions is None or len(directions) == 0:
            continue
        families.append(null_family(family, float(-alpha * mean_grad @ caa),
                                    -alpha * directions @ mean_grad))
    # Exact passes: CAA, the first n_exact of each family, the generated directions.
    exact = [("caa", 0, caa)]
    exact += [(family, i, nulls[family][i]) for family in FAMILIES if family in nulls
              for i in range(min(n_exact, len(nulls[family])))]
    # CAA's generated rows check its own exact pass; the control's randoms add theirs.
    others = [name for name in generated if name != "caa"]
    exact += [("control", i, generated[name][0]) for i, name in enumerate(others)]
    row_of = {"caa": 0, **{name: len(exact) - len(others) + i for i, name in enumerate(others)}}
    stack = np.stack([d for _, _, d in exact])
    dose, r_points, r_means, checks = [], None, None, []
    for a in sorted({float(alpha), *map(float, alphas)}):
        # Every exact direction at the tested α; CAA alone at the others (the dose-response:
        # CAA's exact curve against the null's first-order band, which is linear in α).
        k = len(exact) if a == float(alpha) else 1
        delta = exact_log_ratios(model, texts, layer, -a * stack[:k], positions,
                                 batch_size) - base
        first = -a * stack[:k] @ grads.T  # [k, n pairs]
        dose += [DosePoint(alpha=a, family=f, direction=i, exact_delta=float(delta[j].mean()),
                           first_order_delta=float(first[j].mean()))
                 for j, (f, i, _) in enumerate(exact[:k])]
        if a == float(alpha):
            r_points, r_means = _pearson(first, delta), _pearson(first.mean(1), delta.mean(1))
            caa_exact = float(delta[0].mean())
            checks = [GenerationCheck(direction=name, mean_toxicity=tox,
                                      exact_delta=float(delta[row_of[name]].mean()))
                      for name, (_, tox) in generated.items()]
    return Specificity(layer=layer, alpha=float(alpha), positions=positions,
                       n_pairs=texts.n_pairs, covariance_rank=covariance_rank, families=families,
                       caa_exact_delta=caa_exact, probe_exact_r=r_points,
                       probe_exact_r_means=r_means, dose=dose,
                       generation=checks, unsteered_mean_toxicity=unsteered_toxicity,
                       seconds=time.time() - started,
                       specific=bool(families) and all(f.p_value < SIGNIFICANCE
                                                       for f in families))


def tested_alpha(selection: DevSelection, params) -> float:
    """The α the null is tested at: the dev pick's at the control layer, else the control's
    largest, else the sweep's largest."""
    from .sweep import control_alphas

    pick = selection.recommendation
    if pick and pick.layer == selection.control_layer:
        return float(pick.alpha)
    return float(max(control_alphas(params) or params.sweep.alphas))


def _generated_toxicity(rows: pd.DataFrame, alpha: float) -> float | None:
    rows = rows[(rows["subset"] == "challenging") & (rows["alpha"] == alpha)]
    return float(rows["toxicity"].mean()) if len(rows) else None


def run_specificity(model, tokenizer, prompts: pd.DataFrame, baseline: pd.DataFrame,
                    activations: dict, vectors, selection: DevSelection, params,
                    sweep: pd.DataFrame, control: pd.DataFrame,
                    randoms: dict) -> Specificity | None:
    """05's specificity test at the control layer and tested α (None when
    `specificity.probe_pairs` is 0, every family has 0 directions, or the dev split has no
    (toxic, clean) pair: one sample per prompt, say).

    activations: 03's sets (train_toxic/train_clean pooled, for the covariance and shuffled
    nulls); sweep/control/randoms: 05's generated rows and the control's directions, whose
    generated toxicity is listed beside their probe Δ.
    """
    from .sweep import specificity_alphas

    spec = params.specificity
    counts = spec.null_directions.model_dump()
    if spec.probe_pairs == 0 or not any(counts.values()):
        return None
    layer = int(selection.control_layer)
    alpha = tested_alpha(selection, params)
    caa = vectors.directions[layer].double().numpy()
    nulls, rank = null_directions(activations["train_toxic"]["pooled"][:, layer].double().numpy(),
                                  activations["train_clean"]["pooled"][:, layer].double().numpy(),
                                  caa, counts, params.seed)
    samples = params.control.samples_per_prompt
    generated = {}
    caa_rows = sweep[(sweep["layer"] == layer) & (sweep["sample"] < samples)]
    for name, direction, rows in [
            ("caa", caa, caa_rows),
            *((name, steer.directions[layer].double().numpy(),
               control[control["direction"] == name]) for name, steer in randoms.items())]:
        toxicity = _generated_toxicity(rows, alpha)
        if toxicity is not None:
            generated[name] = (direction, toxicity)
    try:
        pairs = probe_pairs(baseline, prompts, spec.probe_pairs)
    except ValueError as err:  # k = 1, or no dev prompt with two continuations that differ
        print(f"specificity: skipped, no held-out pairs ({err})")
        return None
    unsteered = control[control["alpha"] == 0] if len(control) else sweep[sweep["alpha"] == 0]
    return measure_specificity(
        model, tokenizer, pairs, caa, nulls, layer, alpha, specificity_alphas(params),
        spec.exact_directions, params.sweep.positions, params.activations.batch_size, rank,
        generated, _generated_toxicity(unsteered, 0.0))
