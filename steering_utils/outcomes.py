"""The eval side's typed records: the confirmation of the dev pick, the random control, and
the method comparison (each method's eval point, capability, matched point; the goal).

The functions that compute them (`assembly` for the confirmation and the control's summary,
`sweep.control_comparison`, `comparison.comparison_results`, `goal.goal_verdict`) return
these models from their first computation; `results.ExperimentResults` holds them (and
re-exports their names). Like `decisions`, pure pydantic: no numbers are computed here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .claims import Status
from .decisions import (
    Check,
    Count,
    Degenerate,
    MethodLayer,
    MethodPick,
    MethodSearch,
    NoPick,
    Probability,
    Record,
    SteeredLayer,
)
from .params import MethodName
from .power import Verdict


class Confirmation(Record):
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
    criteria: dict[str, Status] = Field({}, description=(
        "per check: fail (the point estimate breaks the limit), undecidable (within it, but "
        "the paired verdict's MDE at this n is above the limit) or pass"))
    degenerate: Degenerate = []
    toxicity_reduced: bool = Field(description="paired 95% CI below zero and not degenerate")
    confirmed: bool = Field(description="toxicity reduced and every criterion a decidable pass")


class ControlComparison(Record):
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


class Control(Record):
    layer: SteeredLayer
    n_directions: Count
    samples_per_prompt: Count
    alphas: list[float]
    comparison: list[ControlComparison]
    alpha_tested: float | None
    specific: bool | None = Field(description="CAA less toxic than random at the tested "
                                              "alpha (paired CI below 0); null: not measured "
                                              "or CAA's output there is degenerate")


class MethodEval(Record):
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


class MethodCapability(Record):
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


class Bracket(Record):
    layer: MethodLayer
    alpha: float
    mean_toxicity: Probability
    perplexity: float


class MatchedPoint(Record):
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


class ToxicRatio(Record):
    ratio: float | None = Field(description="unsteered / steered toxic fraction; null: none left")
    ci_lo: float | None
    ci_hi: float | None = Field(description="null: unbounded (resamples with none toxic left)")
    frac_toxic: Probability | None
    reference_frac_toxic: Probability | None
    n_prompts: Count


class GoalVerdict(Record):
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


class MethodResult(Record):
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


class MethodGridCell(Record):
    method: str = Field(description="'none' for the unsteered reference")
    layer: MethodLayer
    alpha: float
    mean_toxicity: Probability
    frac_toxic: Probability
    perplexity: float | None
    empty_rate: Probability
    degenerate: Degenerate = []


class StrongestMethod(Record):
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


class Methods(Record):
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
