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
# - **Labels from another scorer.** The train and dev continuations are scored again by
#   `activations.label_scorer` (offline: tox-block's BiLSTM), not by `scorer.name`, which
#   evaluates the steered text in 05: labels from the judge would fit the vector to the
#   judge's quirks.
# - **Default contrast (`paired`)**: for each *train* challenging prompt, its most toxic vs
#   its least toxic sampled continuation (`generation.train_samples_per_prompt` samples per
#   train prompt in stage 02), kept only with a real gap: toxic side >=
#   `activations.pair_toxic_min` (0.5), clean side < `activations.pair_clean_max` (0.1). The
#   model reads prompt + continuation, and only the continuation's tokens (its last 32) are
#   pooled. The prompt is the same on both sides of a pair, so prompt toxicity cannot leak
#   into the vector. Prompts dropped by the filter are counted by reason; fewer than
#   `activations.min_pairs` train pairs stops the run here with the fix.
# - **Comparison (`activations.comparison`, default `completions`)**: the earlier contrast,
#   most vs least toxic continuations *across* prompts (same labels and thresholds), pooled
#   over the last 32 tokens of prompt + continuation. Its vectors are built beside the main
#   ones so stage 04 can show both held-out separations side by side.
#
# The same selection on the *dev* split gives held-out contrasts used to test the vectors.
# **Reads** `01_data`, `02_baseline`. **Writes** `activations.safetensors`, the contrast
# texts and `contrast_counts.json` (the label scorer, pairs kept and dropped by reason).

# %% tags=["parameters"]
params_file = "../params/default.yaml"
runs_root = "../runs"
reports_root = "../reports"

# %%
from steering_utils.session import open_stage

stage = open_stage(params_file, runs_root, "03_activations", reports_root)
params = stage.params
stage

# %%
from steering_utils.activations import (
    Gap,
    build_contrasts,
    capture_contrast,
    label_rows,
    save_activation_sets,
)
from steering_utils.artifacts import read_table, write_json, write_table
from steering_utils.models import load_model
from steering_utils.scoring import load_scorer

prompts = read_table(stage.input("prompts"))
baseline = read_table(stage.input("baseline"))
act = params.activations
labelled = label_rows(baseline, load_scorer(act.label_scorer))
contrast_texts, counts = build_contrasts(labelled, prompts, act, Gap.from_params(act))
counts["label_scorer"] = act.label_scorer
print("kept / dropped:", counts)
contrast_texts.groupby(["contrast", "set"]).size().rename("texts").to_frame()

# %%
model, tokenizer = load_model(params.model)
activations = capture_contrast(model, tokenizer, contrast_texts, act.pool_last_tokens,
                               act.batch_size)
save_activation_sets(activations, stage.out("activations"))
write_table(contrast_texts, stage.out("contrast_texts"))
write_json(counts, stage.out("contrast_counts"))
{name: tuple(tensors["pooled"].shape) for name, tensors in activations.items()}

# %%
stage.finish()
