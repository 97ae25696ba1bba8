"""experiment_results.json: its typed shape (`ExperimentResults`), and how a run builds it.

The pydantic models below are the one definition of the document: the JSON Schema in
`steering_utils/schemas/` is generated from them (`python -m steering_utils.results`
rewrites it; a test checks the committed file), `validate_results` checks a document
against them, and the report and its figures read them. Tables are tidy, one record per
row: `Cell` holds the columns of `metrics.summarize_cells` plus what a run adds to a cell
(steering strength, capability), `LayerStats` the columns of `vectors.layer_stats`, and
`cells_table()` / `layers_table()` / `capability_table()` give them back as the DataFrames
that notebooks, figures and report share. An interval is two columns, `<name>_ci_lo` and
`<name>_ci_hi`, everywhere. A missing number is null, never NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import claims, metrics
from .artifacts import StageDir, done_record, read_json, read_table, write_json
from .conditional import ConditionalSteering
from .metrics import SelectionRule, finite
from .params import MethodName
from .power import Verdict
from .specificity import Specificity
from .stages import (
    ALL_LAYERS,
    CAA,
    RANDOM_PREFIX,
    RESULTS_FILE,
    UNSTEERED,
    UNSTEERED_LAYER,
)

SCHEMA_FILE = Path(__file__).parent / "schemas" / "experiment_results.schema.json"
_MAX_ERRORS = 12

Probability = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]
Layer = Annotated[int, Field(ge=UNSTEERED_LAYER, description=(
    f"{UNSTEERED_LAYER} marks unsteered (alpha 0) cells, shared by every layer"))]
SteeredLayer = Annotated[int, Field(ge=0)]
Subset = Literal["challenging", "benign"]
Experiment = Literal["grid", "sweep", "control"]


class _Record(BaseModel):
    # NaN and inf cannot travel in JSON: a missing number is null.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Degeneracy(_Record):
    """One way a cell's output collapsed against the unsteered cell
    (`metrics.degenerate_checks`): such a cell is never stated as a toxicity reduction."""

    criterion: Literal["repetition_rate", "empty_rate", "distinct_2", "perplexity"]
    value: float
    limit: float = Field(description="repetition, empty rate, perplexity: above it is "
                                     "degenerate; distinct-2: below it")


Degenerate = Annotated[list[Degeneracy], Field(description=(
    "empty: the output is text; else each criterion on which it collapsed (a loop in most "
    "continuations, distinct-2 under half the unsteered, perplexity over 4x, half empty)"))]


class Cell(_Record):
    """One (experiment, split, subset, layer, alpha) cell of generated continuations."""

    experiment: Experiment = Field(description=(
        "grid: layer x alpha on dev, where the cell is chosen; sweep: every alpha at the chosen "
        "layers on eval; control: random directions of the CAA vector's norm on eval"))
    split: Literal["dev", "eval"]
    subset: Subset
    layer: Layer
    alpha: float
    n: Count = Field(description="continuations")
    n_prompts: Count
    n_scored: Count
    n_perplexity: Count | None = None
    mean_toxicity: Probability
    mean_toxicity_ci_lo: Probability
    mean_toxicity_ci_hi: Probability
    frac_toxic: Probability
    frac_toxic_ci_lo: Probability
    frac_toxic_ci_hi: Probability
    emt: Probability = Field(description="expected maximum toxicity over a prompt's k samples")
    emt_ci_lo: Probability
    emt_ci_hi: Probability
    tp: Probability = Field(description="share of prompts with a toxic sample (toxicity "
                                        "probability)")
    tp_ci_lo: Probability
    tp_ci_hi: Probability
    perplexity: float | None
    perplexity_ci_lo: float | None
    perplexity_ci_hi: float | None
    distinct_1: Probability
    distinct_2: Probability
    distinct_3: Probability
    empty_rate: Probability
    repetition_rate: Probability
    delta_mean_toxicity: float | None = Field(description="paired by prompt, vs alpha 0")
    delta_mean_toxicity_ci_lo: float | None
    delta_mean_toxicity_ci_hi: float | None
    p_bootstrap: Probability | None
    p_wilcoxon: Probability | None
    mean_toxicity_second: Probability | None = None
    perplexity_reference: float | None = None
    relative_norm: float | None = Field(None, description="alpha * ||v|| / mean ||h||")
    capability_acc: Probability | None = None
    capability_acc_ci_lo: Probability | None = None
    capability_acc_ci_hi: Probability | None = None
    degenerate: Degenerate = []

    @property
    def samples_per_prompt(self) -> int:
        """k, continuations per prompt: EMT and TP are Gehman et al.'s metrics only at k >= 2
        (at k = 1 they are the mean toxicity and the toxic fraction)."""
        return round(self.n / self.n_prompts) if self.n_prompts else 0


class LayerStats(_Record):
    """One decoder layer's steering vector: norms and held-out separation."""

    layer: SteeredLayer
    vector_norm: Annotated[float, Field(ge=0)]
    activation_norm: Annotated[float, Field(ge=0)]
    relative_norm: float | None
    separation_auc: Probability | None
    comparison_vector_norm: float | None = None
    comparison_cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    comparison_separation_auc: Probability | None = None
    comparison_auc_on_main_dev: Probability | None = None
    split_half_cosine: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        None, description="mean cosine of the vectors of two random halves of the train pairs")
    split_half_cosine_sd: Annotated[float, Field(ge=0)] | None = None
    split_half_cosine_p05: Annotated[float, Field(ge=-1, le=1)] | None = None
    split_half_cosine_p95: Annotated[float, Field(ge=-1, le=1)] | None = None
    loo_accuracy: Probability | None = Field(
        None, description="share of train pairs won under the vector fitted without them")
    loo_accuracy_ci_lo: Probability | None = None
    loo_accuracy_ci_hi: Probability | None = None
    paired_accuracy: Probability | None = Field(
        None, description="share of held-out dev pairs whose toxic side projects further")
    paired_accuracy_ci_lo: Probability | None = None
    paired_accuracy_ci_hi: Probability | None = None
    n_heldout_pairs: Count | None = None


class Vectors(_Record):
    contrast: str
    comparison_contrast: str | None = None
    n_per_side: Count
    contrast_counts: dict[str, Any] | None = None
    layers: list[LayerStats]


class CapabilityCell(_Record):
    split: Literal["dev", "eval"]
    group: Literal["caa", "random"] = Field(description="random pools the control's directions")
    layer: Layer
    alpha: float
    acc: Probability
    acc_ci_lo: Probability
    acc_ci_hi: Probability
    n_items: Count


class Capability(_Record):
    task: str
    chance: Probability
    n_items: Count
    cells: list[CapabilityCell]


class Check(_Record):
    value: float | None
    limit: float | None
    ok: bool


class CellVerdict(_Record):
    """One of the least toxic dev cells the rule turned down, with every criterion's check."""

    layer: Annotated[int, Field(ge=ALL_LAYERS)]
    alpha: float
    mean_toxicity: Probability
    checks: dict[str, Check]
    degenerate: Degenerate
    failed: list[str] = Field(description="criteria it broke (checks' keys, 'degenerate')")


class NoPick(_Record):
    """No cell qualified on dev: why (`metrics.why_no_pick`)."""

    reason: Literal["no_steered_cell", "none_less_toxic", "limits"] = Field(description=(
        "none_less_toxic: no steered cell is less toxic than unsteered; limits: every less "
        "toxic cell broke a limit of the rule (best_cells say which)"))
    reference_mean_toxicity: Probability
    best_cells: list[CellVerdict] = Field(description="the least toxic cells below the "
                                                      "reference, least toxic first")


def no_pick(cells: pd.DataFrame, rule: SelectionRule) -> NoPick:
    """Why the rule picked nothing on one subset's dev cells (with their alpha-0 cell)."""
    return NoPick.model_validate(_json_safe(metrics.why_no_pick(cells, rule)))


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return finite(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


class _Pick(_Record):
    """What `metrics.recommend` says of the cell it picked on a dev grid (dev numbers)."""

    mean_toxicity: Probability
    reference_mean_toxicity: Probability
    toxicity_reduction: float | None
    perplexity: float | None
    perplexity_increase: float | None
    capability_acc: Probability | None
    reference_capability_acc: Probability | None
    capability_drop_points: float | None
    checks: dict[str, Check]
    candidates_tried: Count


class Recommendation(_Pick):
    """The cell the rule chose on the dev grid (dev numbers; eval ones are the confirmation)."""

    split: Literal["dev"] = "dev"
    layer: SteeredLayer
    alpha: float
    holds_under_second_scorer: bool | None = None


class PickShare(_Record):
    """One cell the rule picked in some bootstrap resamples of the dev prompts."""

    layer: SteeredLayer | None = Field(description="null: the rule picked nothing")
    alpha: float | None
    share: Probability


class Stability(_Record):
    """The dev pick re-decided on resamples of the dev prompts (`metrics.pick_stability`)."""

    n_resamples: Count
    seed: int
    draw_scale: float = Field(1.0, description="prompts drawn per resample / dev prompts")
    chosen: dict[str, float] | None = Field(description="{layer, alpha} of the full-dev pick")
    cell_share: Probability = Field(description="resamples that pick the same cell")
    layer_share: Probability = Field(description="resamples that pick the same layer")
    no_pick_share: Probability
    stable: bool = Field(description="cell_share >= 0.8")
    alternatives: list[PickShare] = Field(description="every resample's pick, most often first")


class AlphaBound(_Record):
    """The next alpha above the pick at its layer, and why the rule did not take it."""

    alpha: float
    mean_toxicity: Probability
    failed: list[str] = Field(description="criteria it broke (empty: within them, more toxic)")
    checks: dict[str, Check]


class AlphaRange(_Record):
    """What set the pick's alpha: a limit of the rule, or the grid (`sweep.decide_on_dev`)."""

    layer: SteeredLayer | None
    alpha: float | None
    stopped_by: Literal["limit", "more_toxic", "max_grid_alpha", "max_relative_push",
                        "grid_edge", "no_pick"] = Field(description=(
        "limit / more_toxic: the rule chose alpha below the grid's edge; max_grid_alpha, "
        "max_relative_push, grid_edge: the grid stopped before any limit bound"))
    bound_by: AlphaBound | None
    extension_enabled: bool
    added_cells: list[dict[str, float]] = Field(description="dev cells the extension added")
    max_grid_alpha: float


class Confirmation(_Record):
    """The dev-chosen cell measured on eval: every criterion of the rule, checked again."""

    split: Literal["eval"] = "eval"
    layer: SteeredLayer
    alpha: float
    mean_toxicity: Probability
    mean_toxicity_ci_lo: Probability | None
    mean_toxicity_ci_hi: Probability | None
    reference_mean_toxicity: Probability
    toxicity_reduction: float | None
    delta_mean_toxicity: float | None
    delta_mean_toxicity_ci_lo: float | None
    delta_mean_toxicity_ci_hi: float | None
    p_bootstrap: Probability | None
    perplexity: float | None
    reference_perplexity: float | None
    perplexity_increase: float | None
    capability_acc: Probability | None
    reference_capability_acc: Probability | None
    capability_drop_points: float | None
    empty_rate: Probability
    reference_empty_rate: Probability
    distinct_2: Probability
    reference_distinct_2: Probability
    checks: dict[str, Check]
    criteria: dict[str, claims.Status] = Field({}, description=(
        "per check: fail (the point estimate breaks the limit), undecidable (within it, but "
        "the paired verdict's MDE at this n is above the limit) or pass"))
    degenerate: Degenerate = []
    toxicity_reduced: bool = Field(description="paired 95% CI below zero and not degenerate")
    confirmed: bool = Field(description="toxicity reduced and every criterion a decidable pass")


class ControlComparison(_Record):
    """CAA vs the random directions at one alpha, paired by prompt (negative: CAA less toxic)."""

    alpha: float
    layer: SteeredLayer
    caa_mean_toxicity: Probability
    random_mean_toxicity: Probability
    random_by_direction: dict[str, Probability]
    diff: float | None
    diff_ci_lo: float | None
    diff_ci_hi: float | None
    p_bootstrap: Probability | None
    p_wilcoxon: Probability | None
    n_prompts: Count
    caa_degenerate: bool = Field(False, description="CAA's output at this alpha collapsed")
    random_degenerate: bool = Field(False, description="the random directions' output did")


class Control(_Record):
    layer: SteeredLayer
    n_directions: Count
    samples_per_prompt: Count
    alphas: list[float]
    comparison: list[ControlComparison]
    alpha_tested: float | None
    specific: bool | None = Field(description="CAA less toxic than random at the tested "
                                              "alpha (paired CI below 0); null: not measured "
                                              "or CAA's output there is degenerate")


class ScorerAgreement(_Record):
    second: str | None
    n: Count
    spearman: Annotated[float, Field(ge=-1, le=1)] | None


class Example(_Record):
    subset: Subset
    prompt_id: str
    prompt: str
    layer: Layer
    alpha: float
    completion: str
    toxicity: Probability


class ParetoCell(_Record):
    layer: Layer
    alpha: float


class Manifest(_Record):
    run_name: Annotated[str, Field(min_length=1)]
    params: dict[str, Any]
    params_hash: str
    versions: dict[str, str]
    git_commit: str | None
    device: str
    seed: int
    timings: dict[str, Annotated[float, Field(ge=0)]]
    created_utc: str
    python: str
    platform: str


class ModelInfo(_Record):
    name: str
    source: str
    n_layers: Annotated[int, Field(ge=1)]
    hidden_size: Annotated[int, Field(ge=1)]


class ScorerInfo(_Record):
    name: str
    second: str | None


class SplitCounts(_Record):
    train: Count
    dev: Count
    eval: Count


class Splits(_Record):
    challenging: SplitCounts
    benign: SplitCounts


class Rule(_Record):
    """The limits a steered cell must keep to be chosen (params.evaluation)."""

    max_perplexity_increase: float
    max_capability_drop: float
    max_distinct_drop: float
    max_empty_increase: float


MethodLayer = Annotated[int, Field(ge=ALL_LAYERS, description=(
    f"{ALL_LAYERS}: the method edits every layer; {UNSTEERED_LAYER}: no edit (prompt)"))]


class MethodEval(_Record):
    """One method's dev pick (or the unsteered reference) on the challenging eval prompts."""

    n: Count
    n_prompts: Count
    mean_toxicity: Probability
    mean_toxicity_ci_lo: Probability | None
    mean_toxicity_ci_hi: Probability | None
    frac_toxic: Probability
    frac_toxic_ci_lo: Probability | None
    frac_toxic_ci_hi: Probability | None
    emt: Probability
    emt_ci_lo: Probability | None
    emt_ci_hi: Probability | None
    tp: Probability
    tp_ci_lo: Probability | None
    tp_ci_hi: Probability | None
    perplexity: float | None
    perplexity_ci_lo: float | None
    perplexity_ci_hi: float | None
    delta_mean_toxicity: float | None = Field(description="paired by prompt, vs unsteered")
    delta_mean_toxicity_ci_lo: float | None
    delta_mean_toxicity_ci_hi: float | None
    p_bootstrap: Probability | None
    p_wilcoxon: Probability | None
    distinct_1: Probability
    distinct_2: Probability
    empty_rate: Probability
    repetition_rate: Probability
    degenerate: Degenerate = []


class MethodCapability(_Record):
    """Eval accuracy under a method's pick; the drop is paired over items vs unsteered."""

    acc: Probability
    acc_ci_lo: Probability
    acc_ci_hi: Probability
    reference_acc: Probability
    drop_points: float
    drop_points_ci_lo: float | None
    drop_points_ci_hi: float | None
    p_bootstrap: Probability | None
    n_items: Count


class MethodPick(_Pick):
    """The cell the rule picked on the method's dev grid (dev numbers)."""

    layer: MethodLayer
    alpha: float = Field(description="the method's strength s")


class MethodSearch(_Record):
    """One method's dev search on CAA's budget (`matched.plan_search`, `extend_search`)."""

    layer_rule: Literal["searched", "all_layers", "own_layers", "no_edit"] = Field(description=(
        "searched: CAA's candidate layers (thinned to the budget); all_layers: one edit at "
        "every layer; own_layers: the layers its vector exists at; no_edit: the prompt"))
    layers: list[MethodLayer]
    strengths: list[float] = Field(description="its strength grid before any extension")
    budget: Count = Field(description="dev cells allowed (methods.dev_cells, else CAA's count)")
    cells_searched: Count = Field(description="dev cells generated, extension included")
    added_cells: list[dict[str, float]] = Field(description="cells the extension added")
    stopped_by: Literal["limit", "more_toxic", "max_grid_alpha", "max_relative_push",
                        "grid_edge", "no_pick", "fixed_strength"] = Field(description=(
        "limit / more_toxic: the rule set the strength below the grid's edge; grid_edge: "
        "extension off; fixed_strength: an on/off method; as sweep.decide_on_dev otherwise"))
    bound_by: AlphaBound | None = None


class Bracket(_Record):
    layer: MethodLayer
    alpha: float
    mean_toxicity: Probability
    perplexity: float


class MatchedPoint(_Record):
    """A method at the matched perplexity budget on its dev front (`matched.matched_point`),
    with its eval perplexity against the same budget."""

    status: Literal["interpolated", "front_point", "below_budget", "unreachable", "no_front",
                    "no_reference"] = Field(description=(
        "interpolated: the budget lies between two front points at one layer (or the unsteered "
        "point and the first); front_point: the last front point under the budget; "
        "below_budget: every front point is under it (the method never spends it); "
        "unreachable / no_front / no_reference: no matched point"))
    layer: MethodLayer | None
    strength: float | None
    dev_mean_toxicity: Probability | None = None
    dev_frac_toxic: Probability | None = None
    dev_perplexity: float | None = None
    dev_perplexity_increase: float | None = None
    perplexity_limit: float | None = Field(description="unsteered dev perplexity x (1 + budget)")
    bracket: list[Bracket] = Field([], description="the front points around the budget")
    eval_perplexity_increase: float | None = None
    eval_benign_perplexity_increase: float | None = None
    within_budget_on_eval: bool | None = None


class ToxicRatio(_Record):
    ratio: float | None = Field(description="unsteered / steered toxic fraction; null: none left")
    ci_lo: float | None
    ci_hi: float | None = Field(description="null: unbounded (resamples with none toxic left)")
    frac_toxic: Probability | None
    reference_frac_toxic: Probability | None
    n_prompts: Count


class GoalVerdict(_Record):
    """The study's goal for the dev-chosen method at its matched point, on eval."""

    method: MethodName | None
    chosen_on: Literal["dev"] = "dev"
    target_ratio: float
    perplexity_budget: float
    status: Literal["met", "not_met", "undecidable"]
    criteria: dict[str, Literal["pass", "fail", "undecidable"]] = Field(description=(
        "toxic_ratio, perplexity, benign_perplexity, capability"))
    dev_mean_toxicity: Probability | None = None
    confirmed_on_eval: bool | None = Field(None, description=(
        "the dev choice holds on eval: its paired toxicity reduction shown, within the "
        "budget on challenging and benign prompts"))
    toxic_ratio: ToxicRatio | None
    verdicts: list[Verdict] = []
    summary: str


class MethodResult(_Record):
    method: MethodName
    picked: bool = Field(description="false: no cell of its dev grid met the rule")
    strengths: list[float]
    dev: MethodPick | None
    eval: MethodEval | None
    capability: MethodCapability | None
    toxic_fraction_ratio: float | None = Field(description="unsteered toxic fraction / the "
                                                           "method's, on eval")
    within_limits_on_eval: bool | None = Field(description="eval perplexity and capability "
                                                           "within the rule's limits, and "
                                                           "the output not degenerate")
    no_pick: NoPick | None = Field(None, description="when nothing qualified on dev: why")
    search: MethodSearch | None = Field(None, description="its dev search (null: older runs)")
    matched: MatchedPoint | None = Field(None, description=(
        "its point at the perplexity budget; eval, capability and the ratio are this point's "
        "(null: older runs, where they are the dev pick's)"))


class MethodGridCell(_Record):
    method: str = Field(description="'none' for the unsteered reference")
    layer: MethodLayer
    alpha: float
    mean_toxicity: Probability
    frac_toxic: Probability
    perplexity: float | None
    empty_rate: Probability
    degenerate: Degenerate = []


class StrongestMethod(_Record):
    """The least toxic method pick on dev (chosen there), with its eval confirmation."""

    method: MethodName
    chosen_on: Literal["dev"] = "dev"
    dev_mean_toxicity: Probability
    dev_reference_mean_toxicity: Probability
    frac_toxic: Probability | None = Field(description="eval; null: the pick has no eval cell")
    reference_frac_toxic: Probability | None
    toxic_fraction_ratio: float | None
    perplexity_increase: float | None
    within_limits_on_eval: bool | None
    confirmed_on_eval: bool = Field(description=(
        "within every limit on eval and the paired reduction's 95% CI below zero"))


class Methods(_Record):
    """The method comparison at the chosen layer: dev picks, confirmed on challenging eval."""

    layer: SteeredLayer
    subset: Literal["challenging"] = "challenging"
    samples_per_prompt: Count
    reference: MethodEval | None
    methods: list[MethodResult]
    grid_cells: list[MethodGridCell] = Field(description="every method's dev cells")
    strongest: StrongestMethod | None = Field(None, description=(
        "older runs: the least toxic dev pick on dev; superseded by `goal`"))
    perplexity_budget: float | None = Field(None, description="the matched-fluency budget")
    pairwise: list[Verdict] = Field([], description=(
        "every pair of methods at their matched points, paired by prompt (challenging eval)"))
    goal: GoalVerdict | None = Field(None, description=(
        "the dev-chosen method against the goal, on eval"))


class ExperimentResults(_Record):
    """Every number of a run's report, with the manifest that made it."""

    model_config = ConfigDict(title="experiment_results.json")

    manifest: Manifest
    model: ModelInfo
    scorer: ScorerInfo
    splits: Splits
    vectors: Vectors
    chosen_layers: Annotated[list[SteeredLayer], Field(min_length=1)]
    rule: Rule
    cells: list[Cell]
    capability: Capability | None
    scorer_agreement: ScorerAgreement | None
    recommendation: Recommendation | None
    no_recommendation: NoPick | None = Field(None, description=(
        "when no CAA cell qualified on the dev grid: why (the sweep still runs at the grid's "
        "best layers, for reference)"))
    confirmation: Confirmation | None
    stability: Stability | None = Field(None, description=(
        "bootstrap stability of the dev pick (null: not measured)"))
    alpha_range: AlphaRange | None = Field(None, description=(
        "what set the pick's alpha: a limit, or the grid's edge (null: not recorded)"))
    control: Control | None
    specificity: Specificity | None = Field(None, description=(
        "CAA's likelihood-probe effect ranked among null directions of its norm"))
    methods: Methods | None
    conditional: ConditionalSteering | None = Field(None, description=(
        "conditional CAA (CAST) beside CAA at the same cell, challenging and benign eval "
        "(null: not run, or no dev pick to compare at)"))
    verdicts: list[Verdict] = Field([], description=(
        "every comparison of the report with its CI and verdict: shown, or not shown with the "
        "minimum detectable effect at this n (`claims.claim_verdicts`)"))
    pareto: list[ParetoCell] = Field(description="sweep cells (challenging) on the toxicity-"
                                                 "perplexity Pareto front")
    examples: list[Example]

    def cells_table(self, experiment: Experiment | None = None,
                    subset: Subset | None = None) -> pd.DataFrame:
        """The cells as one tidy table (columns of `Cell`), optionally one experiment/subset."""
        rows = [c.model_dump() for c in self.cells
                if experiment in (None, c.experiment) and subset in (None, c.subset)]
        return _table(rows, Cell)

    def layers_table(self) -> pd.DataFrame:
        """Per-layer vector stats (the columns of `vectors.layer_stats`)."""
        return _table([layer.model_dump() for layer in self.vectors.layers], LayerStats)

    def capability_table(self) -> pd.DataFrame:
        """Accuracy per (split, group, layer, alpha); empty without a capability task."""
        cells = self.capability.cells if self.capability else []
        return _table([c.model_dump() for c in cells], CapabilityCell)

    def cell(self, experiment: Experiment, subset: Subset, layer: int | None,
             alpha: float) -> Cell | None:
        """The cell at (layer, alpha); at alpha 0 the shared unsteered cell, whatever the layer."""
        for c in self.cells:
            if (c.experiment == experiment and c.subset == subset and c.alpha == alpha
                    and (alpha == 0 or c.layer == layer)):
                return c
        return None


def _table(rows: list[dict], model: type[BaseModel]) -> pd.DataFrame:
    # Missing numbers read as NaN in a table, as they do in the stage tables.
    return pd.DataFrame(rows, columns=list(model.model_fields)).fillna(np.nan).infer_objects()


def _records(table: pd.DataFrame, model: type[BaseModel]) -> list[dict]:
    """A table's rows as JSON-able records of the model's fields (NaN as None)."""
    fields = [name for name in model.model_fields if name in table.columns]
    plain = table[fields].astype(object).where(table[fields].notna(), None)
    return plain.to_dict(orient="records")


# --- the schema and validation --------------------------------------------------------------

class ResultsError(ValueError):
    """A results document that does not match ExperimentResults (and the generated schema)."""


def results_schema() -> dict:
    """The JSON Schema (draft 2020-12) of experiment_results.json, generated from the models."""
    schema = ExperimentResults.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://steering-study.invalid/experiment_results.schema.json",
            "description": ("Generated from steering_utils.results.ExperimentResults by "
                            "`python -m steering_utils.results`; do not edit by hand."),
            **schema}


def validate_results(document: dict) -> ExperimentResults:
    """The typed results; raises ResultsError naming every field that breaks the models."""
    try:
        return ExperimentResults.model_validate(document)
    except ValidationError as err:
        problems = [f"{'/'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}"
                    for e in err.errors()]
        shown = "\n  - ".join(problems[:_MAX_ERRORS])
        more = f"\n  ... and {len(problems) - _MAX_ERRORS} more" if len(problems) > _MAX_ERRORS \
            else ""
        raise ResultsError(
            f"experiment results do not match steering_utils.results.ExperimentResults "
            f"({len(problems)} problem(s)):\n  - {shown}{more}\n"
            "Rebuild them with steering_utils.results.build_results, or fix the fields "
            "above.") from None


def load_results(path: str | Path) -> ExperimentResults:
    """experiment_results.json, validated."""
    return validate_results(json.loads(Path(path).read_text()))


def write_results(results: ExperimentResults, folder: Path) -> Path:
    """folder/experiment_results.json (the report's, or 06_report's stage folder), atomically."""
    return write_json(results.model_dump(mode="json"), Path(folder) / RESULTS_FILE)


# --- building the document from a run's artifacts -------------------------------------------

def capability_summary(capability: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Accuracy per (split, group, layer, alpha) with a 95% bootstrap interval over items.

    group is 'caa' for unsteered and CAA cells, 'random' for the control's directions
    (pooled over directions).
    """
    columns = list(CapabilityCell.model_fields)
    if capability.empty:
        return pd.DataFrame(columns=columns)
    table = capability.assign(group=np.where(
        capability["direction"].astype(str).str.startswith(RANDOM_PREFIX), "random", CAA))
    rows = []
    for (split, group, layer, alpha), cell in table.groupby(["split", "group", "layer", "alpha"],
                                                            sort=True):
        values = cell["correct"].astype(float).to_numpy()
        lo, hi = metrics.bootstrap_ci(values, n_boot=n_boot, seed=seed)
        rows.append({"split": split, "group": group, "layer": int(layer), "alpha": float(alpha),
                     "acc": float(values.mean()), "acc_ci_lo": lo, "acc_ci_hi": hi,
                     "n_items": int(cell["item"].nunique())})
    return pd.DataFrame(rows, columns=columns)


def _with_capability(cells: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Each cell's accuracy on its split's items (the unsteered one for alpha 0)."""
    if accuracy.empty:
        return cells.assign(capability_acc=np.nan, capability_acc_ci_lo=np.nan,
                            capability_acc_ci_hi=np.nan)
    group = np.where(cells["experiment"] == "control", "random", CAA)
    unsteered = cells["alpha"] == 0
    keys = cells.assign(group=np.where(unsteered, CAA, group),
                        layer=np.where(unsteered, UNSTEERED_LAYER, cells["layer"]))
    on = ["split", "group", "layer", "alpha"]
    found = keys[on].merge(accuracy, on=on, how="left")
    return cells.assign(capability_acc=found["acc"].to_numpy(),
                        capability_acc_ci_lo=found["acc_ci_lo"].to_numpy(),
                        capability_acc_ci_hi=found["acc_ci_hi"].to_numpy())


def _second_scorer_holds(sweep: pd.DataFrame, layer: int, alpha: float, n_boot: int,
                         seed: int) -> bool | None:
    """Does the second scorer also see a reduction (paired 95% CI below zero)?"""
    if "toxicity_second" not in sweep:
        return None
    rows = sweep[sweep["subset"] == "challenging"]
    treated = rows[(rows["layer"] == layer) & (rows["alpha"] == alpha)]
    control = rows[rows["alpha"] == 0]
    if treated.empty or control.empty:
        return None
    test = metrics.paired_test(treated.groupby("prompt_id")["toxicity_second"].mean(),
                               control.groupby("prompt_id")["toxicity_second"].mean(),
                               n_boot=n_boot, seed=seed)
    return bool(test["diff"] < 0 and test["diff_ci"][1] < 0)


def _examples(sweep: pd.DataFrame, layer: int, n_examples: int, seed: int) -> list[dict]:
    rows = sweep[(sweep["subset"] == "challenging") & (sweep["sample"] == 0)
                 & ((sweep["layer"] == layer) | (sweep["alpha"] == 0))]
    ids = sorted(rows["prompt_id"].unique())
    chosen = np.random.default_rng(seed).permutation(ids)[:n_examples]
    picked = rows[rows["prompt_id"].isin(chosen)].sort_values(["prompt_id", "alpha"])
    return [{"subset": r.subset, "prompt_id": r.prompt_id, "prompt": r.prompt,
             "layer": int(r.layer), "alpha": float(r.alpha), "completion": r.completion,
             "toxicity": float(r.toxicity)} for r in picked.itertuples()]


def _eval_confirmation(recommendation: dict | None, cells: pd.DataFrame,
                       rule: SelectionRule, verdicts: dict[str, Verdict] | None = None
                       ) -> dict | None:
    """The dev-chosen cell measured on eval: every criterion of the rule, checked again, each
    pass / fail / undecidable at this n by its paired verdict (`claims.criteria_status`)."""
    if recommendation is None:
        return None
    # Benign perplexity is a criterion too (the rule holds dev to it; eval checks it again).
    challenging = metrics.with_benign_fluency(cells[cells["experiment"] == "sweep"])
    reference = challenging[challenging["alpha"] == 0]
    cell = challenging[(challenging["layer"] == recommendation["layer"])
                       & (challenging["alpha"] == recommendation["alpha"])]
    if reference.empty or cell.empty:
        return None
    reference, cell = reference.iloc[0], cell.iloc[0]
    checks = metrics.fluency_checks(cell, reference, rule)
    ref_acc, cell_acc = finite(reference["capability_acc"]), finite(cell["capability_acc"])
    capability = metrics.capability_check(cell_acc, ref_acc, rule)
    if capability is not None:
        checks["capability_acc"] = capability
    degenerate = list(cell.get("degenerate", []))
    reduced = finite(cell["delta_mean_toxicity_ci_hi"]) is not None and \
        cell["delta_mean_toxicity_ci_hi"] < 0 and not degenerate
    ref_tox, ref_ppl, ppl = (float(reference["mean_toxicity"]), finite(reference["perplexity"]),
                             finite(cell["perplexity"]))
    picked = {name: finite(cell[name]) for name in (
        "mean_toxicity_ci_lo", "mean_toxicity_ci_hi", "delta_mean_toxicity",
        "delta_mean_toxicity_ci_lo", "delta_mean_toxicity_ci_hi", "p_bootstrap")}
    return {
        "layer": recommendation["layer"], "alpha": recommendation["alpha"],
        "mean_toxicity": float(cell["mean_toxicity"]), **picked,
        "reference_mean_toxicity": ref_tox,
        "toxicity_reduction": ((ref_tox - float(cell["mean_toxicity"])) / ref_tox
                               if ref_tox else None),
        "perplexity": ppl, "reference_perplexity": ref_ppl,
        "perplexity_increase": None if ref_ppl is None or ppl is None else ppl / ref_ppl - 1.0,
        "capability_acc": cell_acc, "reference_capability_acc": ref_acc,
        "capability_drop_points": (None if cell_acc is None or ref_acc is None
                                   else (ref_acc - cell_acc) * 100.0),
        "empty_rate": float(cell["empty_rate"]),
        "reference_empty_rate": float(reference["empty_rate"]),
        "distinct_2": float(cell["distinct_2"]),
        "reference_distinct_2": float(reference["distinct_2"]),
        "checks": checks, "criteria": (criteria := claims.criteria_status(checks,
                                                                          verdicts or {})),
        "degenerate": degenerate, "toxicity_reduced": bool(reduced),
        "confirmed": bool(reduced and all(v == "pass" for v in criteria.values())),
    }


def _degenerate_at(cells: pd.DataFrame, experiment: str, layer: int, alpha: float) -> bool:
    """Is the challenging cell (experiment, layer, alpha) flagged degenerate?"""
    found = cells[(cells["experiment"] == experiment) & (cells["subset"] == "challenging")
                  & (cells["layer"] == layer) & (cells["alpha"] == alpha)]
    return bool(found["degenerate"].map(len).gt(0).any())


def _control_summary(params, selection: dict, sweep: pd.DataFrame,
                     control: pd.DataFrame, cells: pd.DataFrame) -> dict | None:
    """CAA vs random directions at matched alpha, and whether the effect is specific (never
    where CAA's output is degenerate: a broken text's low score is no evidence)."""
    from .sweep import control_comparison

    if control.empty:
        return None
    ev = params.evaluation
    layer = selection["control_layer"]
    steered = control[control["alpha"] != 0]
    comparison = [{**{k: finite(v) if isinstance(v, float) else v for k, v in c.items()},
                   "caa_degenerate": _degenerate_at(cells, "sweep", layer, c["alpha"]),
                   "random_degenerate": _degenerate_at(cells, "control", layer, c["alpha"])}
                  for c in control_comparison(sweep, control, layer, ev.toxic_threshold,
                                              ev.n_bootstrap, params.seed)]
    rec = selection["recommendation"]
    alphas = [c["alpha"] for c in comparison]
    tested = (rec["alpha"] if rec and rec["alpha"] in alphas else max(alphas, default=None))
    at = next((c for c in comparison if c["alpha"] == tested), None)
    high = None if at is None or at["caa_degenerate"] else finite(at["diff_ci_hi"])
    return {"layer": int(layer), "n_directions": int(steered["direction"].nunique()),
            "samples_per_prompt": int(params.control.samples_per_prompt),
            "alphas": sorted(float(a) for a in steered["alpha"].unique()),
            "comparison": comparison, "alpha_tested": tested,
            "specific": None if high is None else bool(high < 0)}


def _vectors_record(params, vectors, stats: pd.DataFrame, contrast_counts) -> dict:
    comparison = "comparison_separation_auc" in stats
    return {"contrast": params.activations.contrast,
            "comparison_contrast": params.activations.comparison if comparison else None,
            "n_per_side": int(vectors.metadata.get("n_toxic", 0)),
            "contrast_counts": contrast_counts, "layers": _records(stats, LayerStats)}


def _methods_summary(stage: StageDir) -> dict | None:
    """The method comparison (see `comparison.comparison_results`), or None when not run."""
    from .comparison import comparison_results
    from .goal import comparison_verdicts

    record = read_json(stage.input("methods_selection"))
    if not record.get("picks"):
        return None
    # The unsteered dev accuracy is measured once, in 05's capability table; it is the
    # yardstick of each method's dev capability check (see why a method had no pick).
    capability = read_table(stage.input("capability"))
    unsteered_dev = capability[(capability["split"] == "dev")
                               & (capability["direction"] == UNSTEERED)]
    methods_capability = read_table(stage.input("methods_capability"))
    methods_eval = read_table(stage.input("methods_eval"))
    out = comparison_results(stage.params, read_table(stage.input("methods_grid")),
                             methods_eval,
                             pd.concat([methods_capability, unsteered_dev], ignore_index=True)
                             if not unsteered_dev.empty else methods_capability, record)
    if out is not None:  # every pair at the matched points, and the goal (eval only)
        out.update(comparison_verdicts(stage.params, record, methods_eval, methods_capability))
    return out


def _conditional_summary(stage: StageDir) -> dict | None:
    """Conditional CAA beside CAA (`conditional.summarize`), or None when not run."""
    from .conditional import summarize

    record = read_json(stage.input("conditional"))
    if not record or record.get("cell") is None:
        return None
    capability = read_table(stage.input("conditional_capability"))
    return summarize(read_table(stage.input("conditional_eval")), record, capability,
                     stage.params).model_dump(mode="json")


def build_results(stage: StageDir) -> ExperimentResults:
    """The experiment_results.json document for a run whose stages 01-05 are complete."""
    from .data import split_sizes
    from .manifest import run_manifest
    from .vectors import SteeringVectors

    params = stage.params
    ev = params.evaluation
    prompts = read_table(stage.input("prompts"))
    vectors = SteeringVectors.load(stage.input("vectors"))
    stats = read_table(stage.input("layer_stats"))
    grid = read_table(stage.input("grid"))
    sweep = read_table(stage.input("sweep"))
    control = read_table(stage.input("control"))
    capability = read_table(stage.input("capability"))
    selection = read_json(stage.input("selection"))
    chosen = selection["chosen_layers"]
    rule = SelectionRule.from_params(ev)

    summarize = functools.partial(metrics.summarize_cells, threshold=ev.toxic_threshold,
                                  n_boot=ev.n_bootstrap, seed=params.seed)
    cells = pd.concat([summarize(rows) for rows in (grid, sweep, control) if not rows.empty],
                      ignore_index=True)
    norms = vectors.norms.numpy() / vectors.activation_norms.numpy()
    steered = cells["layer"] != UNSTEERED_LAYER
    cells["relative_norm"] = np.where(steered, cells["alpha"].abs()
                                      * norms[cells["layer"].where(steered, 0)], 0.0)
    if "nll_reference" in sweep:
        reference_ppl = np.exp(sweep.groupby(["subset", "layer", "alpha"])["nll_reference"]
                               .mean()).rename("perplexity_reference").reset_index()
        cells = cells.merge(reference_ppl.assign(experiment="sweep"), how="left",
                            on=["experiment", "subset", "layer", "alpha"])
    accuracy = capability_summary(capability, ev.n_bootstrap, params.seed)
    cells = _with_capability(cells, accuracy)
    cells["degenerate"] = metrics.flag_degenerate(cells)

    challenging = cells[(cells["experiment"] == "sweep") & (cells["subset"] == "challenging")]
    recommendation = selection["recommendation"]
    if recommendation is not None:
        recommendation = {**recommendation, "holds_under_second_scorer": _second_scorer_holds(
            sweep, recommendation["layer"], recommendation["alpha"], ev.n_bootstrap,
            params.seed)}
    # A degenerate cell is no trade-off worth taking: it never sits on the front.
    front = metrics.pareto_front(challenging[challenging["degenerate"].map(len) == 0])
    no_recommendation = None
    if selection["recommendation"] is None:
        dev = metrics.with_benign_fluency(cells[cells["experiment"] == "grid"])
        no_recommendation = no_pick(dev, rule)

    agreement = None
    if "toxicity_second" in sweep:
        agreement = {"second": params.scorer.second, "n": int(len(sweep)),
                     "spearman": finite(metrics.spearman(sweep["toxicity"],
                                                         sweep["toxicity_second"]))}
    # The run's manifest (built when the run started), with each input stage's own time.
    manifest = {**run_manifest(stage.run, params), "timings": {
        name: done_record(stage.input_folder(name))["seconds"] for name in stage.spec.inputs}}
    contrast_counts = read_json(stage.input("contrast_counts"))
    control_record = _control_summary(params, selection, sweep, control, cells)
    specificity = read_json(stage.input("specificity"))
    verdicts, eval_verdicts = claims.claim_verdicts(
        params, selection, chosen, grid, sweep, control, capability,
        None if specificity is None else Specificity.model_validate(specificity),
        control_record and control_record["alpha_tested"],
        read_table(stage.input("methods_eval")))
    cap_items = capability[(capability["split"] == "eval")
                           & (capability["direction"] == UNSTEERED)]
    return validate_results({
        "manifest": manifest,
        "model": {"name": params.model.name, "source": params.model.source,
                  "n_layers": vectors.n_layers, "hidden_size": int(vectors.directions.shape[1])},
        "scorer": {"name": params.scorer.name, "second": params.scorer.second},
        "splits": split_sizes(prompts),
        "vectors": _vectors_record(params, vectors, stats, contrast_counts),
        "chosen_layers": [int(x) for x in chosen],
        "rule": dataclasses.asdict(rule),
        "cells": _records(cells, Cell),
        "capability": None if capability.empty else {
            "task": str(capability["task"].iloc[0]), "chance": float(capability["chance"].iloc[0]),
            "n_items": int(len(cap_items)), "cells": _records(accuracy, CapabilityCell)},
        "scorer_agreement": agreement,
        "recommendation": recommendation,
        "no_recommendation": (None if no_recommendation is None
                              else no_recommendation.model_dump(mode="json")),
        "confirmation": _eval_confirmation(selection["recommendation"], cells, rule,
                                           eval_verdicts),
        "stability": _json_safe(selection.get("stability")),
        "alpha_range": _json_safe(selection.get("alpha_range")),
        "control": control_record,
        "specificity": specificity,
        "methods": _methods_summary(stage),
        "conditional": _conditional_summary(stage),
        "verdicts": [v.model_dump(mode="json") for v in verdicts],
        "pareto": [{"layer": int(r.layer), "alpha": float(r.alpha)} for r in front.itertuples()],
        "examples": _examples(sweep, chosen[0], params.report.n_examples, params.seed),
    })


def main() -> None:
    """Rewrite the committed JSON Schema from the models."""
    SCHEMA_FILE.write_text(json.dumps(results_schema(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
