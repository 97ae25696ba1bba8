"""experiment_results.json: its typed shape (`ExperimentResults`), schema and I/O.

A run builds it in `assembly.build_results` (06_report).

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

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .artifacts import write_json
from .conditional import ConditionalSteering
from .decisions import (  # the dev decision's records (05 builds them; below this module)
    AlphaRange,
    Count,
    Degenerate,
    NoPick,
    Probability,
    Recommendation,
    Stability,
    SteeredLayer,
)
from .decisions import Record as _Record
from .outcomes import (  # the eval side's records (06 builds them; below this module)
    Confirmation,
    Control,
    Methods,
)
from .power import Verdict
from .specificity import Specificity
from .stages import (
    RESULTS_FILE,
    UNSTEERED_LAYER,
)

SCHEMA_FILE = Path(__file__).parent / "schemas" / "experiment_results.schema.json"
_MAX_ERRORS = 12

Layer = Annotated[int, Field(ge=UNSTEERED_LAYER, description=(
    f"{UNSTEERED_LAYER} marks unsteered (alpha 0) cells, shared by every layer"))]
Subset = Literal["challenging", "benign"]
Experiment = Literal["grid", "sweep", "control"]


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
    tie_se: float = 0.0


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


def table_records(table: pd.DataFrame, model: type[BaseModel]) -> list[dict]:
    """A table's rows as JSON-able records of the model's fields (NaN as None).

    The model is the one declaration of the table's columns: a column it does not declare
    raises (a new statistic must be added to the model, never dropped on the way)."""
    unknown = [name for name in table.columns if name not in model.model_fields]
    if unknown:
        raise ResultsError(f"{model.__name__} declares no column {unknown}: add the field to "
                           f"steering_utils/results.py (or drop the column before)")
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


def main() -> None:
    """Rewrite the committed JSON Schema from the models."""
    SCHEMA_FILE.write_text(json.dumps(results_schema(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
