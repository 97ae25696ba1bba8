"""The dev decision's typed records: checks, picks, why no pick, stability, the alpha range.

The functions that decide (`metrics.recommend`, `metrics.why_no_pick`,
`metrics.pick_stability`, `sweep.decide_on_dev`, `matched.extend_search`) return these
models from their first computation; 05 writes them to JSON with
`model_dump(mode="json")` and 06 reads them back with `model_validate`. They sit below
`results`, which holds them in `ExperimentResults` (and re-exports their names), so that
`metrics` can build them. Pure pydantic: no numbers are computed here.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from .stages import ALL_LAYERS, UNSTEERED_LAYER

Probability = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]
SteeredLayer = Annotated[int, Field(ge=0)]
MethodLayer = Annotated[int, Field(ge=ALL_LAYERS, description=(
    f"{ALL_LAYERS}: the method edits every layer; {UNSTEERED_LAYER}: no edit (prompt)"))]


class Record(BaseModel):
    """A record of experiment_results.json: no unknown fields, no NaN or inf (null instead)."""

    # NaN and inf cannot travel in JSON: a missing number is null.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Degeneracy(Record):
    """One way a cell's output collapsed against the unsteered cell
    (`metrics.degenerate_checks`): such a cell is never stated as a toxicity reduction."""

    criterion: Literal["repetition_rate", "empty_rate", "distinct_2", "perplexity"]
    value: float
    limit: float = Field(description="repetition, empty rate, perplexity: above it is "
                                     "degenerate; distinct-2: below it")


Degenerate = Annotated[list[Degeneracy], Field(description=(
    "empty: the output is text; else each criterion on which it collapsed (a loop in most "
    "continuations, distinct-2 under half the unsteered, perplexity over 4x, half empty)"))]


class Check(Record):
    value: float | None
    limit: float | None
    ok: bool


class CellVerdict(Record):
    """One of the least toxic dev cells the rule turned down, with every criterion's check."""

    layer: Annotated[int, Field(ge=ALL_LAYERS)]
    alpha: float
    mean_toxicity: Probability
    checks: dict[str, Check]
    degenerate: Degenerate
    failed: list[str] = Field(description="criteria it broke (checks' keys, 'degenerate')")


class NoPick(Record):
    """No cell qualified on dev: why (`metrics.why_no_pick`)."""

    reason: Literal["no_steered_cell", "none_less_toxic", "limits"] = Field(description=(
        "none_less_toxic: no steered cell is less toxic than unsteered; limits: every less "
        "toxic cell broke a limit of the rule (best_cells say which)"))
    reference_mean_toxicity: Probability
    best_cells: list[CellVerdict] = Field(description="the least toxic cells below the "
                                                      "reference, least toxic first")


class TieBreak(Record):
    """The one-standard-error rule's tie (`metrics.recommend` with `tie_se` > 0): the cells
    within `tie_se` standard errors of the least toxic admissible cell's mean toxicity are
    statistically tied, and the tie goes to the lowest perplexity, then the gentlest alpha
    (Hastie, Tibshirani & Friedman, ESL section 7.10)."""

    least_toxic_layer: Annotated[int, Field(ge=ALL_LAYERS)]
    least_toxic_alpha: float
    least_toxic_mean_toxicity: Probability
    standard_error: float = Field(ge=0, description="the least toxic cell's mean-toxicity SE "
                                                    "over prompts")
    tie_se: float = Field(gt=0, description="the band's width in standard errors")
    band: float = Field(description="cells at most this toxic (and within the limits) tie")
    tied: list[dict[str, float]] = Field(description="the tied cells (layer, alpha), the "
                                                     "least toxic first")


class _Pick(Record):
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
    tie: TieBreak | None = Field(None, description="null: the least toxic admissible cell "
                                                   "(tie_se = 0, or no standard error)")


class Recommendation(_Pick):
    """The cell the rule chose on the dev grid (dev numbers; eval ones are the confirmation)."""

    split: Literal["dev"] = "dev"
    layer: SteeredLayer
    alpha: float
    holds_under_second_scorer: bool | None = None


class MethodPick(_Pick):
    """The cell the rule picked on the method's dev grid (dev numbers)."""

    layer: MethodLayer
    alpha: float = Field(description="the method's strength s")


class PickShare(Record):
    """One cell the rule picked in some bootstrap resamples of the dev prompts."""

    layer: SteeredLayer | None = Field(description="null: the rule picked nothing")
    alpha: float | None
    share: Probability


class StabilityProjection(Record):
    """The pick's stability were the dev set `draw_scale` times as large."""

    draw_scale: float
    cell_share: Probability
    layer_share: Probability


class Stability(Record):
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
    projections: list[StabilityProjection] = Field(
        default_factory=list, description="an unstable pick's stability on 2x, 4x, 8x as many "
        "dev prompts like these (`sweep.stability_projections`; empty: stable)")


class AlphaBound(Record):
    """The next alpha above the pick at its layer, and why the rule did not take it."""

    alpha: float
    mean_toxicity: Probability
    failed: list[str] = Field(description="criteria it broke (empty: within them, more toxic)")
    checks: dict[str, Check]


AlphaStop = Literal["limit", "more_toxic", "tied", "max_grid_alpha", "max_relative_push",
                    "grid_edge", "no_pick"]


class AlphaRange(Record):
    """What set the pick's alpha: a limit of the rule, or the grid (`sweep.decide_on_dev`)."""

    layer: SteeredLayer | None
    alpha: float | None
    stopped_by: AlphaStop = Field(description=(
        "limit / more_toxic / tied: the rule chose alpha below the grid's edge (tied: the "
        "next alpha was within the limits and the tie band, at a higher perplexity); "
        "max_grid_alpha, "
        "max_relative_push, grid_edge: the grid stopped before any limit bound"))
    bound_by: AlphaBound | None
    extension_enabled: bool
    added_cells: list[dict[str, float]] = Field(description="dev cells the extension added")
    max_grid_alpha: float


class MethodSearch(Record):
    """One method's dev search on CAA's budget (`matched.plan_search`, `extend_search`)."""

    layer_rule: Literal["searched", "all_layers", "own_layers", "no_edit"] = Field(description=(
        "searched: CAA's candidate layers (thinned to the budget); all_layers: one edit at "
        "every layer; own_layers: the layers its vector exists at; no_edit: the prompt"))
    layers: list[MethodLayer]
    strengths: list[float] = Field(description="its strength grid before any extension")
    budget: Count = Field(description="dev cells allowed (methods.dev_cells, else CAA's count)")
    cells_searched: Count = Field(description="dev cells generated, extension included")
    added_cells: list[dict[str, float]] = Field(description="cells the extension added")
    stopped_by: Literal["limit", "more_toxic", "tied", "max_grid_alpha", "max_relative_push",
                        "grid_edge", "no_pick", "fixed_strength"] = Field(description=(
        "limit / more_toxic / tied: the rule set the strength below the grid's edge; "
        "grid_edge: extension off; fixed_strength: an on/off method; as "
        "sweep.decide_on_dev otherwise"))
    bound_by: AlphaBound | None = None


class DevSelection(Record):
    """CAA's dev decision (`sweep.select_on_dev`, `sweep.decide_on_dev`): 05's selection.json,
    and, in memory only, the challenging dev cells the rule read (`summary`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    split: Literal["dev"] = "dev"
    recommendation: Recommendation | None
    chosen_layers: list[int] = Field(description="the sweep's layers, the pick's first")
    control_layer: int
    alpha_range: AlphaRange | None = None
    stability: Stability | None = None
    decision_seconds: float | None = None
    # Recomputed from the grid where it is needed again; never written.
    summary: pd.DataFrame | None = Field(None, exclude=True, repr=False)
