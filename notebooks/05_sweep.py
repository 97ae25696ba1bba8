# ---
# jupyter:
#   kernelspec:
#     display_name: Python (steering study)
#     language: python
#     name: steering-study
# ---

# %% [markdown]
# # 05 · Sweep: decide on dev, confirm on eval, control with random directions
#
# **What this stage does.**
#
# 1. **Grid (dev split).** Every grid layer (`sweep.layers`, `sweep.layer_stride`) × every
#    `sweep.grid_alphas` value on the challenging (and benign) *dev* prompts.
# 2. **Decision (dev split).** The recommendation rule picks the layer *and* α on the dev
#    grid: the least toxic cell whose perplexity (on challenging and, where dev has them,
#    benign prompts), distinct-2 and empty-continuation rate stay within `evaluation.*`
#    limits of the unsteered model, and whose accuracy on the *dev* capability items drops
#    by at most `evaluation.max_capability_drop` points (with `evaluation.tie_se`, cells
#    within that many standard errors of it tie, and the lowest perplexity wins: the
#    one-standard-error rule). A pick at its layer's largest α
#    grows the grid there until a limit binds; the pick's bootstrap stability over dev
#    prompts is reported. Eval prompts and eval items are not looked at.
# 3. **Sweep (eval split).** At the chosen layer(s), every `sweep.alphas` value on the
#    challenging and benign *eval* prompts with k samples each: toxicity, perplexity under
#    the unsteered model (and under `evaluation.reference_model` when one is named),
#    distinct-n, empty and repetition rates. The dev-chosen cell is *confirmed* here.
# 4. **Control (eval split).** Random directions with the CAA vector's norm at the chosen
#    layer, at the same α (`control.*`): is the effect specific to the toxicity direction,
#    or does any push of that size lower the scorer's toxicity?
# 5. **Capability (eval items).** Multiple-choice accuracy under every eval cell and the
#    control at the chosen α.
# 6. **Methods compared at matched fluency (dev decides, eval confirms).** Every method of
#    `sweep.methods` (ActAdd at the prompt's front positions, Arditi's directional ablation
#    at every layer, affine concept editing, Linear-AcT fitted layer by layer, mean
#    transport, an instruction through the chat template, a random direction; settings
#    under `methods.*`, each beside its paper in docs/design.md) searches as many dev cells
#    as CAA's grid, over its own layers and a strength grid grown until the rule's limits
#    bind; on its dev Pareto front, the strength reaching the perplexity budget
#    (`methods.perplexity_budget`) is its matched point, generated on the eval prompts
#    against the same unsteered rows.
# 7. **Conditional CAA (CAST, section 8).** CAA only on prompts whose pooled activation at the
#    condition layer has a cosine with the CAA vector past a threshold set on dev; at its
#    pick, beside unconditional CAA, on challenging and benign eval prompts.
# 8. **Specificity against a null distribution (section 5b).** A likelihood probe on
#    held-out dev pairs (each prompt's most vs least toxic continuation): the change of
#    log p(toxic) − log p(clean) under the push, for CAA and for hundreds of null directions
#    of its norm at the control layer and the tested α (isotropic, drawn from the residual
#    stream's covariance, and CAA vectors with shuffled pair labels; `specificity.*`). First
#    order from one gradient per text, checked by exact pushed passes on a few directions;
#    CAA's exact passes over α give the dose-response. CAA's rank and p in each family.
#
# The alpha = 0 cells are the baseline rows of stage 02 (same seeds). Generation runs in
# content-keyed shards shared across stages: a param change recomputes only the shards it
# touches. **Reads** `01_data`, `02_baseline`, `03_activations` (the train
# contrast's activations, for the null directions, and its texts, for Linear-AcT's fit),
# `04_vectors`. **Writes** `grid`,
# `selection`, `sweep`, `control`, `capability`, `specificity`, `methods_grid`,
# `methods_selection`, `methods_eval`, `methods_capability`, `conditional`,
# `conditional_eval`, `conditional_capability`.

# %% tags=["parameters"]
params_file = "../params/default.yaml"
runs_root = "../runs"
reports_root = "../reports"

# %%
from steering_utils.session import open_stage

stage = open_stage(params_file, runs_root, "05_sweep", reports_root)
params = stage.params
stage

# %%
from steering_utils.artifacts import read_table, write_json, write_table
from steering_utils.jobs import run_jobs
from steering_utils.models import load_model
from steering_utils.scoring import load_scorers
from steering_utils.stages import CAA
from steering_utils.sweep import check_relative_push
from steering_utils.vectors import SteeringVectors

prompts = read_table(stage.input("prompts"))
baseline = read_table(stage.input("baseline"))
vectors = SteeringVectors.load(stage.input("vectors"))
# Before any generation: every alpha within sweep.max_relative_push of ||h|| at its layers.
print("largest |alpha|·||v||/||h||:",
      round(check_relative_push(params, read_table(stage.input("layer_stats"))), 3))
model, tokenizer = load_model(params.model)
scorers = load_scorers(params.scorer)
positions = params.sweep.positions

# %% [markdown]
# ### 1 · Layer × alpha grid on the dev split

# %%
from steering_utils.sweep import grid_jobs, with_reference

jobs, grid_reference = grid_jobs(prompts, baseline, params, vectors.n_layers)
steered = run_jobs(model, tokenizer, jobs, {CAA: vectors}, params, scorers, stage.shards,
                   positions, desc="grid")
grid = with_reference(steered, grid_reference, "grid")

# %% [markdown]
# ### 2 · The decision, on dev only
#
# If the pick is its layer's largest α, the grid grows there (α doubled, `sweep.extend_alphas`)
# until a limit binds, so the rule and not the grid's edge sets α. Then the dev prompts are
# resampled (`sweep.stability_resamples`) and the same rule re-applied: the share of
# resamples that pick the same cell is the decision's stability.

# %%
import time

from steering_utils.capability import CapabilityProbe, item_splits
from steering_utils.sweep import decide_on_dev, dev_generator, push_ratios, selection_record

cap = params.evaluation.capability
items = item_splits(cap.task, cap.n_items, params.seed, cap.path)
dev_capability = (CapabilityProbe(model, tokenizer, items["dev"], vectors,
                                  params.activations.batch_size, "dev", cap.task, CAA)
                  if items else None)
started = time.perf_counter()
grid, selection = decide_on_dev(
    grid, params, dev_capability,
    dev_generator(model, tokenizer, prompts, baseline, params, vectors, scorers, stage.shards),
    push_ratios(read_table(stage.input("layer_stats"))))
selection.decision_seconds = round(time.perf_counter() - started, 2)
write_table(grid, stage.out("grid"))
write_json(selection_record(selection), stage.out("selection"))
chosen = selection.chosen_layers
print("recommended on dev:", selection.recommendation and
      selection.recommendation.model_dump(include={"layer", "alpha", "mean_toxicity"}))
print("alpha range:", selection.alpha_range.model_dump(include={"stopped_by", "added_cells"}))
print("stability:", selection.stability and
      selection.stability.model_dump(include={"cell_share", "layer_share"}))
print("sweep layers:", chosen)

# %%
from steering_utils.plots import plot_grid_heatmap

plot_grid_heatmap(selection.summary, chosen)

# %% [markdown]
# ### 3 · Alpha sweep at the chosen layer(s), eval split

# %%
from steering_utils.sweep import add_reference_nll, sweep_jobs

jobs, sweep_reference = sweep_jobs(prompts, baseline, params, chosen, selection)
steered = run_jobs(model, tokenizer, jobs, {CAA: vectors}, params, scorers, stage.shards,
                   positions, desc="sweep")
sweep = with_reference(steered, sweep_reference, "sweep")
sweep = add_reference_nll(sweep, params)  # only when evaluation.reference_model is set
write_table(sweep, stage.out("sweep"))

# %%
from steering_utils.metrics import summarize_cells

cells = summarize_cells(sweep, params.evaluation.toxic_threshold, params.evaluation.n_bootstrap,
                        params.seed)
cells[["subset", "layer", "alpha", "n_prompts", "mean_toxicity", "delta_mean_toxicity",
       "p_bootstrap", "emt", "tp", "perplexity", "distinct_2", "empty_rate"]].round(3)

# %% [markdown]
# ### 4 · Control: random directions of the same norm

# %%
from steering_utils.sweep import control_table

randoms, control = control_table(model, tokenizer, prompts, baseline, vectors, params, scorers,
                                 selection.control_layer, stage.shards)
write_table(control, stage.out("control"))
control.groupby(["direction", "alpha"])["toxicity"].mean().unstack("alpha").round(3)

# %% [markdown]
# ### 5 · Capability under steering, eval items

# %%
from steering_utils.sweep import capability_table

capability = capability_table(model, tokenizer, items, dev_capability, selection, params,
                              {CAA: vectors, **randoms})
write_table(capability, stage.out("capability"))
capability.groupby(["split", "direction", "layer", "alpha"])["correct"].mean().rename(
    "accuracy").to_frame()

# %% [markdown]
# ### 5b · Specificity: CAA among null directions of its norm (likelihood probe)

# %%
from steering_utils.activations import load_activation_sets
from steering_utils.specificity import run_specificity

specificity = run_specificity(model, tokenizer, prompts, baseline,
                              load_activation_sets(stage.input("activations")), vectors,
                              selection, params, sweep, control, randoms)
write_json(specificity and specificity.model_dump(mode="json"), stage.out("specificity"))
specificity and [(f.family, f.n, f.rank, round(f.p_value, 4), round(f.caa_delta, 3),
                  round(f.null_q05, 3), round(f.null_q95, 3)) for f in specificity.families]

# %% [markdown]
# ### 6 · Methods on equal dev budgets, matched at one perplexity budget
#
# Each method searches as many dev cells as CAA's grid (`methods.dev_cells`; null: CAA's
# count) over CAA's candidate layers, or its own layer rule (all layers at once; the one
# layer a random direction exists at; none for the prompt), on the same dev prompts and
# seeds. Where the rule's pick sits at its grid's largest strength, the grid grows there
# until a limit binds, as CAA's did. Then, on each method's dev Pareto front, the strength
# that reaches the perplexity budget (`methods.perplexity_budget`, +10%) is its matched point.

# %%
import pandas as pd

from steering_utils import comparison as cmp
from steering_utils import conditional as cond
from steering_utils.matched import candidate_layers, matched_points
from steering_utils.params import resolve_layers

methods_layer = selection.control_layer
statistics = load_activation_sets(stage.input("token_statistics"))["train"]
# Linear-AcT is fitted here, layer by layer on the model already transported at the earlier
# layers (a few passes over 03's train contrast).
# Conditional CAA's gate: every dev and eval prompt's projection, the threshold set on dev.
gate, gate_record = cond.build_gate(model, tokenizer, prompts, vectors, params, methods_layer)
linear_act = cmp.fit_linear_act(model, tokenizer, params, read_table(stage.input("contrast_texts")))
interventions = cmp.build_interventions(params, vectors, statistics,
                                        cmp.actadd_activations(model, tokenizer, params), randoms,
                                        methods_layer, tokenizer=tokenizer, linear_act=linear_act,
                                        conditional=gate)
candidates = candidate_layers(params, resolve_layers(params.sweep.layers,
                                                     params.sweep.layer_stride, vectors.n_layers))
plans = cmp.method_plans(params, interventions, candidates, vectors.activation_norms)
jobs, reused = cmp.grid_jobs(prompts, baseline, grid, params, methods_layer, interventions,
                             plans)
steered = run_jobs(model, tokenizer, jobs, interventions, params, scorers, stage.shards,
                   positions, desc="methods grid") if len(jobs) else jobs
methods_grid = pd.concat([reused, steered], ignore_index=True)
# Probes share CAA's measured cells (the unsteered accuracy is measured once).
probes = ({m: dev_capability.sibling(m, iv) for m, iv in interventions.items()}
          if dev_capability else {})
methods_grid, searches = cmp.search_methods(
    methods_grid, params, plans, probes,
    cmp.method_generator(model, tokenizer, prompts, params, interventions, scorers, stage.shards),
    selection.alpha_range)
methods_grid = methods_grid.assign(experiment="methods_grid")
write_table(methods_grid, stage.out("methods_grid"))
methods_dev_cells = cmp.method_cells(methods_grid, params)
picks = cmp.select_methods(methods_dev_cells, params, probes, methods_grid)
matched = matched_points(methods_dev_cells, list(interventions),
                         params.methods.perplexity_budget, plans)
write_json(cmp.picks_record(picks, methods_layer, searches, matched),
           stage.out("methods_selection"))
pd.DataFrame({m: {"cells": searches[m].cells_searched, "stopped_by": searches[m].stopped_by,
                  "matched": matched[m]["status"], "layer": matched[m]["layer"],
                  "strength": matched[m]["strength"]} for m in interventions}).T

# %% [markdown]
# ### 7 · Each method's matched point on the eval split (challenging and benign)

# %%
from steering_utils.capability import CAPABILITY_COLUMNS, capability_rows

jobs, reused = cmp.eval_jobs(prompts, baseline, sweep, params, picks, interventions, matched)
steered = run_jobs(model, tokenizer, jobs, interventions, params, scorers, stage.shards,
                   positions, desc="methods eval") if len(jobs) else jobs
methods_eval = pd.concat([reused, steered], ignore_index=True).assign(experiment="methods_eval")
write_table(methods_eval, stage.out("methods_eval"))
methods_capability = (capability_rows(model, tokenizer, items["eval"],
                                      cmp.capability_cells(picks, matched), interventions,
                                      params.activations.batch_size, "eval", cap.task)
                      if items else pd.DataFrame(columns=CAPABILITY_COLUMNS))
methods_dev = (dev_capability.table(tuple(m for m in interventions if m != CAA))
               if dev_capability else None)
write_table(pd.concat([methods_dev, methods_capability], ignore_index=True),
            stage.out("methods_capability"))
cmp.method_cells(methods_eval[methods_eval["subset"] == "challenging"], params)[
    ["method", "layer", "alpha", "mean_toxicity", "frac_toxic", "perplexity", "distinct_2",
     "empty_rate"]].round(3)

# %% [markdown]
# ### 8 · Conditional CAA (CAST) beside CAA: its effect on challenging prompts, its cost on benign
#
# At conditional CAA's dev pick (else CAA's), both arms run on every eval prompt, challenging
# and benign, with the comparison's k; rows already made (the sweep's, the comparison's)
# serve. The gate's threshold came from dev prompts only; its eval shares are reported.

# %%
cell = cond.compared_cell(picks, methods_layer, matched) if gate is not None else None
conditional_eval, conditional_capability = cond.empty_rows(), cond.empty_capability()
if cell is not None:
    jobs, reused = cond.eval_jobs(prompts, baseline, pd.concat([sweep, methods_eval]), params,
                                  cell)
    steered = run_jobs(model, tokenizer, jobs, {CAA: vectors, cond.METHOD: gate}, params,
                       scorers, stage.shards, positions, desc="conditional eval") if len(
                           jobs) else jobs
    conditional_eval = cond.with_gates(pd.concat([reused, steered], ignore_index=True),
                                       gate_record).assign(experiment="conditional_eval")
    if items:
        conditional_capability = cond.eval_capability(
            model, tokenizer, items["eval"], pd.concat([capability, methods_capability]),
            cell, {CAA: vectors, cond.METHOD: gate}, params.activations.batch_size, cap.task)
        gate_record["items"] = cond.item_gates(gate, model, tokenizer,
                                               items["eval"]).to_dict(orient="records")
write_table(conditional_eval, stage.out("conditional_eval"))
write_table(conditional_capability, stage.out("conditional_capability"))
write_json(gate_record and cond.record(gate_record, cell, picks, matched), stage.out("conditional"))
conditional_eval.groupby(["subset", "method"])[["toxicity", "nll", "gated"]].mean().round(3)

# %%
stage.finish()
