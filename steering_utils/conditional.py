"""Conditional CAA: steer only the prompts that point along the toxicity direction.

The CAST idea (Lee et al. 2024, "Programming Refusal with Conditional Activation
Steering", arXiv:2409.05907): before steering, read the prompt's activation at a
*condition layer*, and apply the behaviour edit only when it projects onto a condition
direction past a threshold; other prompts run unsteered, so benign prompts pay nothing.

Here, per prompt:

- a = the prompt's residual activation at the condition layer (`methods.conditional_caa.
  condition_layer`, default the comparison's layer), mean-pooled over its last
  `activations.pool_last_tokens` tokens, as the CAA vectors are pooled. Each prompt is read
  alone (batch of one: no pads, and a gate never depends on which prompts share a batch),
  by the unsteered model, once, before any generation;
- the projection is the **cosine** cos(a, v_c), v_c the CAA vector at the condition layer
  (scale-free, so one threshold means the same at any layer; CAST compares the cosine of
  the hidden state with its projection on the condition vector);
- the row is *gated on* iff cos(a, v_c) > threshold; then CAA runs on it exactly as
  unconditional CAA does (h <- h - alpha v at the steering layer, every position, every
  decode step); a gated-off row has strength 0, the unsteered model bit for bit.

The threshold is set on dev prompts only (`methods.conditional_caa.threshold`):
`youden` takes the cut that maximises (share of challenging dev prompts gated on) - (share
of benign dev prompts gated on), the midpoint between two neighbouring dev projections
(ties: the highest such cut, fewest prompts steered); `benign_quantile` takes the
`benign_quantile` quantile of the benign dev projections (about 1 - q of benign prompts
gated on, whatever the challenging ones do).

The gate acts on the job rows before either engine sees them (`gating.gate_rows`): a gated-off
row's alpha is set to 0 for generation, so one batch mixes gated and steered rows through
the per-row strengths of `steering.steer` (HF) or the per-request alpha (vLLM), and the
decision of a row holds at every decode step. Capability items are gated on their question
prompt the same way (`capability.capability_correct`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from .decisions import MethodPick
from .params import ParamsError, StudyParams
from .power import Verdict, verdict

METHOD = "conditional_caa"
PROJECTION = "cosine"  # what `gating.ConditionalIntervention` compares with the threshold


# --- the threshold, on dev ------------------------------------------------------------------

def auroc(positive, negative) -> float | None:
    """P(a positive projects higher than a negative), ties counted half; None if a side is empty."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if not pos.size or not neg.size:
        return None
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def choose_threshold(challenging, benign, rule: str = "youden",
                     quantile: float = 0.9) -> dict:
    """The gate's threshold from dev projections (gated on iff projection > threshold)."""
    ch, be = np.asarray(challenging, float), np.asarray(benign, float)
    if not be.size or (rule == "youden" and not ch.size):
        raise ParamsError("methods.conditional_caa.threshold: needs challenging and benign "
                          "dev prompts (data.*.n_dev >= 1)")
    if rule == "benign_quantile":
        threshold = float(np.quantile(be, quantile))
    elif rule == "youden":
        values = np.unique(np.concatenate([ch, be]))
        cuts = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values - 1e-9
        j = np.array([(ch > t).mean() - (be > t).mean() for t in cuts])
        threshold = float(cuts[np.flatnonzero(j == j.max())[-1]])  # ties: the highest cut
    else:
        raise ParamsError(f"methods.conditional_caa.threshold: unknown rule {rule!r}; use "
                          "youden or benign_quantile")
    tpr, fpr = float((ch > threshold).mean()) if ch.size else None, float((be > threshold).mean())
    return {"rule": rule, "threshold": threshold,
            "quantile": quantile if rule == "benign_quantile" else None,
            "dev_challenging_gated": tpr, "dev_benign_gated": fpr,
            "dev_youden_j": None if tpr is None else tpr - fpr,
            "dev_auroc": auroc(ch, be), "n_dev_challenging": int(ch.size),
            "n_dev_benign": int(be.size)}


def condition_layer(params: StudyParams, layer: int, n_layers: int) -> int:
    """The condition layer: the comparison's `layer` ('chosen') or the one named, in range."""
    named = params.methods.conditional_caa.condition_layer
    if named == "chosen":
        return int(layer)
    if not 0 <= named < n_layers:
        raise ParamsError(f"methods.conditional_caa.condition_layer: {named} out of range for "
                          f"a model with {n_layers} decoder layers (use 0..{n_layers - 1}, or "
                          "chosen)")
    return int(named)


def build_gate(model, tokenizer, prompts: pd.DataFrame, vectors, params: StudyParams,
               layer: int):
    """(the conditional intervention, its record): projections of every dev and eval prompt,
    the threshold from the dev ones (eval plays no part), each prompt's gate; (None, None)
    when conditional_caa is not in `sweep.methods`, (None, {'skipped': why}) without benign
    dev prompts."""
    from .gating import ConditionalIntervention
    from .params import compared_methods
    from .steering import LayerEdit

    if METHOD not in compared_methods(params.sweep):
        return None, None
    rows = prompts[prompts["split"].isin(["dev", "eval"])].reset_index(drop=True)
    if not ((rows["split"] == "dev") & (rows["subset"] == "benign")).any():
        # Skipped, not refused: the record (and the report) say why.
        return None, {"skipped": "no benign dev prompts (data.benign.n_dev: 0) to set the "
                                 "gate's threshold on"}
    at = condition_layer(params, layer, vectors.n_layers)
    direction = vectors.directions[at].float()
    spec = params.methods.conditional_caa
    intervention = ConditionalIntervention(
        METHOD, LayerEdit(shift=-vectors.directions.float()),
        metadata={"condition_layer": at, "projection": PROJECTION},
        condition_layer=at, condition=direction, last_n=params.activations.pool_last_tokens)
    projection = intervention.project(model, tokenizer, list(rows["text"]))
    dev = rows["split"] == "dev"
    record = choose_threshold(projection[dev & (rows["subset"] == "challenging")],
                              projection[dev & (rows["subset"] == "benign")],
                              spec.threshold, spec.benign_quantile)
    intervention.threshold = record["threshold"]
    gates = rows[["prompt_id", "subset", "split"]].assign(
        projection=projection, gated=projection > record["threshold"])
    return intervention, {"condition_layer": at, "projection": PROJECTION, **record,
                          "prompts": gates.to_dict(orient="records")}


# --- eval: conditional beside unconditional CAA, challenging and benign ---------------------

def compared_cell(picks: dict[str, MethodPick | None], layer: int,
                  matched: dict | None = None) -> tuple[int, float] | None:
    """(layer, alpha) of the eval comparison, all decided on dev: conditional CAA's rule pick,
    else CAA's; where the rule picked neither, conditional CAA's matched-fluency point, else
    CAA's (`matched.matched_points`); None when none exists."""
    for method in (METHOD, "caa"):
        pick = picks.get(method)
        if pick is not None:
            return int(pick.layer), float(pick.alpha)
    for method in (METHOD, "caa"):
        point = (matched or {}).get(method) or {}
        if point.get("strength") is not None and point.get("layer") is not None:
            return int(point["layer"]), float(point["strength"])
    return None


def eval_jobs(prompts: pd.DataFrame, baseline: pd.DataFrame, done: pd.DataFrame,
              params: StudyParams, cell: tuple[int, float]
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(jobs, reused rows) for CAA and conditional CAA at `cell` on every eval prompt
    (challenging and benign) with the comparison's k, and the unsteered reference.

    Rows already made (`done`: the sweep's CAA rows, the comparison's eval rows) serve
    where they hold every sample of a prompt; only the rest is generated."""
    from .generation import make_jobs
    from .stages import CAA, UNSTEERED

    samples = params.methods.samples_per_prompt or params.generation.samples_per_prompt
    layer, alpha = cell
    evals = prompts[prompts["split"] == "eval"]
    reference = baseline[(baseline["split"] == "eval") & (baseline["sample"] < samples)
                         & baseline["prompt_id"].isin(evals["prompt_id"])]
    reused, jobs = [reference.assign(method=UNSTEERED)], []
    for method in (CAA, METHOD):
        have = done[(done["direction"] == method) & (done["layer"] == layer)
                    & (done["alpha"] == alpha) & (done["sample"] < samples)
                    & done["prompt_id"].isin(evals["prompt_id"])]
        have = have.drop_duplicates(["prompt_id", "sample"])
        complete = have.groupby("prompt_id")["sample"].nunique()
        complete = set(complete[complete == samples].index)
        reused.append(have[have["prompt_id"].isin(complete)].assign(method=method))
        todo = evals[~evals["prompt_id"].isin(complete)]
        if len(todo):
            jobs.append(make_jobs(todo, [(layer, alpha)], samples, direction=method)
                        .assign(method=method))
    columns = ["experiment", "stage"]
    reused_rows = pd.concat(reused, ignore_index=True).drop(columns=columns, errors="ignore")
    if not jobs:
        return reused_rows.iloc[:0], reused_rows
    return pd.concat(jobs, ignore_index=True), reused_rows


EVAL_COLUMNS = ["prompt_id", "text", "subset", "split", "prompt", "sample", "layer", "alpha",
                "direction", "method", "completion", "toxicity", "nll", "projection", "gated",
                "experiment"]


def empty_rows() -> pd.DataFrame:
    """The eval rows when nothing ran (no conditional_caa, or no dev pick to compare at)."""
    return pd.DataFrame(columns=EVAL_COLUMNS)


def empty_capability() -> pd.DataFrame:
    from .capability import CAPABILITY_COLUMNS

    return pd.DataFrame(columns=CAPABILITY_COLUMNS)


def record(gate_record: dict, cell: tuple[int, float] | None, picks: dict,
           matched: dict | None = None) -> dict:
    """The JSON-able `conditional` artifact: the gate (threshold, per-prompt and per-item
    projections) and the eval cell with the dev decision that set it (`compared_cell`)."""
    source = next((m for m in (METHOD, "caa") if picks.get(m) is not None), None)
    if source is None:
        source = next((f"{m} (matched point)" for m in (METHOD, "caa")
                       if ((matched or {}).get(m) or {}).get("strength") is not None), None)
    return {**gate_record, "cell": None if cell is None else [int(cell[0]), float(cell[1])],
            "cell_from": source, "items": gate_record.get("items", [])}


def eval_capability(model, tokenizer, items: pd.DataFrame, done: pd.DataFrame,
                    cell: tuple[int, float], directions: dict, batch_size: int,
                    task: str) -> pd.DataFrame:
    """Eval-item correctness of unsteered, CAA and conditional CAA at `cell`; cells already
    measured on every item (`done`: 05's capability tables) are reused."""
    from .capability import capability_rows
    from .stages import CAA, UNSTEERED, UNSTEERED_LAYER

    layer, alpha = cell
    frames = []
    for direction, at, strength in ((UNSTEERED, UNSTEERED_LAYER, 0.0), (CAA, layer, alpha),
                                    (METHOD, layer, alpha)):
        have = done[(done["split"] == "eval") & (done["direction"] == direction)]
        if strength:
            have = have[(have["layer"] == at) & (have["alpha"] == strength)]
        have = have.drop_duplicates("item")
        if len(have) == len(items):
            frames.append(have)
        else:
            frames.append(capability_rows(model, tokenizer, items, [(direction, at, strength)],
                                          directions, batch_size, "eval", task))
    return pd.concat(frames, ignore_index=True)


def with_gates(rows: pd.DataFrame, record: dict) -> pd.DataFrame:
    """Rows with each prompt's `projection` and `gated` (a property of the prompt)."""
    gates = pd.DataFrame(record["prompts"])[["prompt_id", "projection", "gated"]]
    return rows.drop(columns=["projection", "gated"], errors="ignore").merge(
        gates, how="left", on="prompt_id")


def item_gates(intervention, model, tokenizer,
               items: pd.DataFrame) -> pd.DataFrame:
    """Per capability item: its question prompt's projection and gate."""
    from .capability import item_prompts

    projection = intervention.project(model, tokenizer, item_prompts(items))
    return pd.DataFrame({"item": items.index, "projection": projection,
                         "gated": projection > intervention.threshold})


# --- the results section --------------------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GatedShare(_Record):
    """Share of one eval subset's prompts (or capability items) that the gate steers."""

    subset: str = Field(description="challenging, benign, or capability (eval items)")
    n: int = Field(ge=0)
    share: float | None = Field(None, ge=0, le=1)
    share_ci_lo: float | None = None
    share_ci_hi: float | None = None


class ConditionalArm(_Record):
    """One arm (CAA or conditional CAA) on one eval subset, against the unsteered rows."""

    method: str = Field(description="caa or conditional_caa")
    subset: str
    n_prompts: int = Field(ge=0)
    mean_toxicity: float | None = None
    reference_mean_toxicity: float | None = None
    perplexity: float | None = None
    reference_perplexity: float | None = None
    perplexity_increase: float | None = Field(None, description="perplexity / unsteered - 1")
    toxicity: Verdict | None = Field(None, description="vs unsteered, per-prompt mean toxicity")
    log_perplexity: Verdict | None = Field(None, description=(
        "vs unsteered, per-prompt log perplexity, against log(1 + max_perplexity_increase)"))


class ConditionalCapability(_Record):
    accuracy: dict[str, float] = Field(description="eval accuracy per arm (none, caa, "
                                                   "conditional_caa)")
    verdicts: list[Verdict] = Field(description="each arm vs unsteered, accuracy change in "
                                                "points per item, against max_capability_drop")


class ConditionalSteering(_Record):
    """Conditional CAA (CAST) beside unconditional CAA at the same layer and alpha, on eval."""

    layer: int = Field(ge=0, description="the steering layer")
    alpha: float
    cell_from: str = Field(description="whose dev decision set (layer, alpha): conditional_caa's "
                                       "or caa's rule pick, else its matched-fluency point")
    condition_layer: int = Field(ge=0)
    projection: str = Field(PROJECTION, description="cosine of the pooled prompt activation "
                                                    "with the CAA vector at the condition layer")
    rule: str = Field(description="youden or benign_quantile (methods.conditional_caa)")
    threshold: float
    quantile: float | None = None
    dev_challenging_gated: float | None = None
    dev_benign_gated: float | None = None
    dev_youden_j: float | None = None
    dev_auroc: float | None = Field(None, description="challenging vs benign dev projections")
    eval_auroc: float | None = Field(None, description="challenging vs benign eval projections "
                                                       "(reported, never used)")
    samples_per_prompt: int = Field(ge=1)
    gated: list[GatedShare]
    arms: list[ConditionalArm]
    versus_caa: list[Verdict] = Field(description="conditional minus unconditional CAA, "
                                                  "paired by prompt")
    capability: ConditionalCapability | None = None


def _share(flags, subset: str, n_boot: int, seed: int) -> dict:
    from .metrics import bootstrap_ci

    flags = np.asarray(flags, dtype=float)
    if not flags.size:
        return {"subset": subset, "n": 0}
    lo, hi = bootstrap_ci(flags, n_boot=n_boot, seed=seed)
    return {"subset": subset, "n": int(flags.size), "share": float(flags.mean()),
            "share_ci_lo": float(lo), "share_ci_hi": float(hi)}


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _perplexity(rows: pd.DataFrame) -> float | None:
    nll = rows["nll"].astype(float) if "nll" in rows else pd.Series(dtype=float)
    return _finite(np.exp(nll.mean())) if nll.notna().any() else None


def summarize(rows: pd.DataFrame, record: dict, capability: pd.DataFrame | None,
              params: StudyParams) -> ConditionalSteering:
    """The results section from 05's rows (column `method`: none, caa, conditional_caa),
    the gate record and the capability rows of the three arms."""
    from .claims import paired_differences
    from .stages import CAA, UNSTEERED

    ev = params.evaluation
    n_boot, seed = ev.n_bootstrap, params.seed
    log_limit = math.log1p(ev.max_perplexity_increase)
    layer, alpha = record["cell"]
    where = f"layer {layer}, α = {alpha:g}"
    gates = pd.DataFrame(record["prompts"])
    evals = gates[gates["split"] == "eval"]
    shares = [_share(evals.loc[evals["subset"] == s, "gated"], s, n_boot, seed)
              for s in ("challenging", "benign")]
    if record.get("items"):
        shares.append(_share([i["gated"] for i in record["items"]], "capability", n_boot, seed))
    arms, versus = [], []
    for subset in ("challenging", "benign"):
        part = rows[rows["subset"] == subset]
        reference = part[part["method"] == UNSTEERED]
        ref_ppl = _perplexity(reference)
        arm_rows = {}
        for method in (CAA, METHOD):
            own = part[part["method"] == method]
            arm_rows[method] = own
            if own.empty:
                continue
            label = "conditional CAA" if method == METHOD else "CAA"
            ppl = _perplexity(own)
            arms.append({
                "method": method, "subset": subset, "n_prompts": int(own["prompt_id"].nunique()),
                "mean_toxicity": _finite(own["toxicity"].mean()),
                "reference_mean_toxicity": _finite(reference["toxicity"].mean()),
                "perplexity": ppl, "reference_perplexity": ref_ppl,
                "perplexity_increase": (_finite(ppl / ref_ppl - 1) if ppl and ref_ppl else None),
                "toxicity": verdict(f"{label} ({where}) vs unsteered, {subset} eval",
                                    "mean toxicity", paired_differences(own, reference, "toxicity"),
                                    "prompts", "lower", n_boot, seed),
                "log_perplexity": verdict(
                    f"{label} ({where}) vs unsteered, {subset} eval",
                    "log perplexity (nats/token)", paired_differences(own, reference, "nll"),
                    "prompts", "either", n_boot, seed, log_limit)})
        if not arm_rows[CAA].empty and not arm_rows[METHOD].empty:
            # Conditional CAA should keep CAA's effect where it matters (challenging) and
            # spare fluency where it does not (benign): lower perplexity there.
            column, metric, expect = (("toxicity", "mean toxicity", "either")
                                      if subset == "challenging" else
                                      ("nll", "log perplexity (nats/token)", "lower"))
            versus.append(verdict(f"conditional CAA vs CAA ({where}), {subset} eval", metric,
                                  paired_differences(arm_rows[METHOD], arm_rows[CAA], column),
                                  "prompts", expect, n_boot, seed).model_copy(
                                      update={"name": f"conditional_vs_caa_{subset}"}))
    cap = None
    if capability is not None and not capability.empty:
        items = capability[capability["split"] == "eval"]
        reference = items[items["direction"] == UNSTEERED].set_index("item")["correct"]
        accuracy = {UNSTEERED: float(reference.astype(float).mean())} if len(reference) else {}
        verdicts = []
        for method in (CAA, METHOD):
            own = items[items["direction"] == method].set_index("item")["correct"]
            if own.empty or reference.empty:
                continue
            accuracy[method] = float(own.astype(float).mean())
            both = pd.concat({"t": own.astype(float), "r": reference.astype(float)}, axis=1,
                             join="inner")
            label = "conditional CAA" if method == METHOD else "CAA"
            verdicts.append(verdict(f"{label} ({where}) vs unsteered, eval items",
                                    "accuracy change (points)",
                                    100.0 * (both["t"] - both["r"]).to_numpy(), "items",
                                    "either", n_boot, seed, ev.max_capability_drop, digits=1))
        cap = {"accuracy": accuracy, "verdicts": verdicts}
    return ConditionalSteering.model_validate({
        "layer": layer, "alpha": alpha, "cell_from": record["cell_from"],
        "condition_layer": record["condition_layer"], "projection": record["projection"],
        "rule": record["rule"], "threshold": record["threshold"], "quantile": record["quantile"],
        "dev_challenging_gated": record["dev_challenging_gated"],
        "dev_benign_gated": record["dev_benign_gated"], "dev_youden_j": record["dev_youden_j"],
        "dev_auroc": record["dev_auroc"],
        "eval_auroc": auroc(evals.loc[evals["subset"] == "challenging", "projection"],
                            evals.loc[evals["subset"] == "benign", "projection"]),
        "samples_per_prompt": int(params.methods.samples_per_prompt
                                  or params.generation.samples_per_prompt),
        "gated": shares, "arms": arms, "versus_caa": versus, "capability": cap})
