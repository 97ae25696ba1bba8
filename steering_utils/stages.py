"""The stage table: what each stage of the study reads and writes (torch-free).

One table declares, per stage, the params fields it reads, the earlier stages it
reads and the files it writes (besides the `RECORDS` every stage folder holds, and the
report folder that `06_report` publishes). The runner, the notebooks, the artifacts
layer and the report take names from here, never from string literals of their own. A
stage's key (`artifacts.key_parts`) hashes its params fields, its notebook's code, the
package modules it runs (`sources`), its input stages' keys and contents, and the local
files it reads, so an artifact made under other params or other code is never read back.
"""

from __future__ import annotations

from dataclasses import dataclass

# An explicit override: keys already hash the code a stage runs (its notebook and modules),
# so bump this only to invalidate every artifact for a reason the code does not show (a
# library upgrade that changes outputs, say). Part of every stage's and shard's key.
# 3: rows and cells say `experiment` (grid/sweep/control), not `stage`;
# 4: activation sets carry token moments, 04 writes the token statistics (methods).
ARTIFACT_VERSION = 4
# Files every stage folder holds besides its outputs: the manifest (its own timings, key
# parts and the run it belongs to) and the done marker, written last (markers only: key,
# key parts, contents digest, timings).
RECORDS = {"manifest": "manifest.json", "done": "done.json"}
RUN_MANIFEST = "run_manifest.json"  # runs/<run_name>/: the manifest of the run, built once

# Fields that change how fast a stage runs, never what it writes (rows are seeded
# one by one, so a continuation does not depend on its batch).
EXECUTION_ONLY = ("generation.batch_size", "scorer.batch_size", "activations.batch_size",
                  "generation.vllm")  # the vLLM engine's context and memory share
# The `check` section (make check's deep mode) is read by no stage: it writes nothing.
# The `execution` section (in-process or Ray) is read by no stage for the same reason: it
# decides where shards are computed, never what they hold.


@dataclass(frozen=True)
class Stage:
    """One stage: a notebook `notebooks/<name>.ipynb` and its folder of artifacts."""

    name: str
    reads: tuple[str, ...]  # params fields, dotted: "data", "evaluation.toxic_threshold"
    inputs: tuple[str, ...]  # earlier stages whose artifacts it reads
    outputs: dict[str, str]  # artifact name -> file name inside the stage folder
    publishes: str | None = None  # a folder outside runs/ it replaces: reports/<run_name>/

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"


_GENERATE = ("seed", "model", "generation", "scorer")
RESULTS_FILE = "experiment_results.json"  # 06_report's, also in reports/<run_name>/
# The keys of the generation shards a stage used (`jobs.run_jobs` records them as it plans):
# what `--force` and `prune` read to know which shards a params version reaches.
SHARDS_FILE = "shards.json"

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("01_data", ("seed", "data"), (),
          {"prompts": "prompts.parquet", "dropped": "dropped_rows.json"}),
    Stage("02_baseline", _GENERATE, ("01_data",),
          {"baseline": "generations.parquet", "baseline_shards": SHARDS_FILE}),
    Stage("03_activations", ("model", "activations"), ("01_data", "02_baseline"),
          {"activations": "activations.safetensors", "contrast_texts": "contrast_texts.parquet",
           "contrast_counts": "contrast_counts.json"}),
    Stage("04_vectors", ("seed", "model", "activations", "vectors"), ("03_activations",),
          {"vectors": "vectors.safetensors", "comparison_vectors": "comparison_vectors.safetensors",
           "layer_stats": "layer_stats.parquet",
           "token_statistics": "token_statistics.safetensors"}),
    Stage("05_sweep", (*_GENERATE, "activations.pool_last_tokens", "sweep", "control",
                       "specificity", "methods", "evaluation"),
          ("01_data", "02_baseline", "03_activations", "04_vectors"),
          {"grid": "grid.parquet", "selection": "selection.json", "sweep": "sweep.parquet",
           "control": "control.parquet", "capability": "capability.parquet",
           "methods_grid": "methods_grid.parquet", "methods_selection": "methods_selection.json",
           "methods_eval": "methods_eval.parquet",
           "methods_capability": "methods_capability.parquet",
           "specificity": "specificity.json", "sweep_shards": SHARDS_FILE,
           "conditional": "conditional.json", "conditional_eval": "conditional_eval.parquet",
           "conditional_capability": "conditional_capability.parquet"}),
    Stage("06_report", ("evaluation", "methods", "report"),
          ("01_data", "02_baseline", "03_activations", "04_vectors", "05_sweep"),
          {"results": RESULTS_FILE}, publishes="<reports_root>/<run_name>/"),
)}

STAGE_NAMES: tuple[str, ...] = tuple(STAGES)


def producer(artifact: str) -> Stage:
    """The stage that writes an artifact; raises naming the known artifacts."""
    for stage in STAGES.values():
        if artifact in stage.outputs:
            return stage
    known = sorted(name for stage in STAGES.values() for name in stage.outputs)
    raise KeyError(f"unknown artifact {artifact!r}; artifacts: {', '.join(known)}")


def upstream(name: str) -> list[str]:
    """Every stage this one depends on, directly or not, in table order."""
    seen: set[str] = set()
    pending = list(STAGES[name].inputs)
    while pending:
        stage = pending.pop()
        if stage not in seen:
            seen.add(stage)
            pending.extend(STAGES[stage].inputs)
    return [stage for stage in STAGE_NAMES if stage in seen]

# Shared row labels (torch-free, so plots and metrics can use them without torch).
UNSTEERED_LAYER = -1  # layer value of rows generated without steering
ALL_LAYERS = -2  # layer value of rows whose method edits every layer
UNSTEERED = "none"  # direction of unsteered rows
CAA = "caa"  # direction of rows steered by the CAA vector
RANDOM_PREFIX = "random-"  # random-<seed>: the random-direction control


def hook_layer(layer: int) -> int:
    """A row's layer as a steering hook indexes it: UNSTEERED_LAYER and ALL_LAYERS name no
    single layer (an unsteered row is not shifted; an all-layer edit acts at every layer),
    so they index layer 0, whose entry such a row never reads."""
    layer = int(layer)
    if layer in (UNSTEERED_LAYER, ALL_LAYERS):
        return 0
    if layer < 0:
        raise ValueError(f"layer {layer}: a row's layer is 0 or more, UNSTEERED_LAYER "
                         f"({UNSTEERED_LAYER}) or ALL_LAYERS ({ALL_LAYERS})")
    return layer
