# ---
# jupyter:
#   kernelspec:
#     display_name: Python (steering study)
#     language: python
#     name: steering-study
# ---

# %% [markdown]
# # 03 · Activations of the contrast sets
#
# **What this stage does.** It captures the residual stream at the output of every decoder
# layer for the contrast texts and mean-pools it over at most
# `activations.pool_last_tokens` (32) real tokens; padding is excluded and positions are
# counted over real tokens, so a text pools to the same vector alone or in a padded batch.
#
# - **Default contrast (`paired`)**: for each *train* challenging prompt, its most toxic vs
#   its least toxic sampled continuation (k samples per prompt in stage 02). The model reads
#   prompt + continuation, and only the continuation's tokens (its last 32) are pooled. The
#   prompt is the same on both sides of a pair, so prompt toxicity cannot leak into the
#   vector. Prompts whose continuations tie in toxicity, and empty continuations, are
#   dropped and counted.
# - **Comparison (`activations.comparison`, default `completions`)**: the earlier contrast,
#   most vs least toxic continuations *across* prompts, pooled over the last 32 tokens of
#   prompt + continuation. Its vectors are built beside the main ones so stage 04 can show
#   both held-out separations side by side.
#
# The same selection on the *dev* split gives held-out contrasts used to test the vectors.
# **Reads** `01_data`, `02_baseline`. **Writes** `activations.safetensors`, the contrast
# texts and `contrast_counts.json` (texts dropped and used per side).

# %% tags=["parameters"]
params_file = "../params/default.yaml"
runs_root = "../runs"
reports_root = "../reports"

# %%
from steering_utils.artifacts import open_stage

stage = open_stage(params_file, runs_root, "03_activations", reports_root)
params = stage.params
stage

# %%
import pandas as pd

from steering_utils.activations import capture_contrast, contrast_table, save_activation_sets
from steering_utils.artifacts import read_table, write_json, write_table
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
contrast_texts.groupby(["contrast", "set"]).size().rename("texts").to_frame()

# %%
model, tokenizer = load_model(params.model)
activations = capture_contrast(model, tokenizer, contrast_texts, act.pool_last_tokens,
                               act.batch_size)
save_activation_sets(activations, stage.out("activations"))
write_table(contrast_texts, stage.out("contrast_texts"))
write_json(dropped, stage.out("contrast_counts"))
{name: tuple(tensors["pooled"].shape) for name, tensors in activations.items()}

# %%
stage.finish()
