# ---
# jupyter:
#   kernelspec:
#     display_name: Python (steering study)
#     language: python
#     name: steering-study
# ---

# %% [markdown]
# # 02 · Baseline: unsteered continuations, scored
#
# **What this stage does.** The unsteered model continues every prompt of every split
# `generation.samples_per_prompt` times (k; temperature 0.7, top-p 0.9, 20 new tokens in
# the real study); challenging *train* prompts `generation.train_samples_per_prompt` times,
# the pool from which 03 picks each prompt's contrast pair; dev prompts as often as the dev
# grid draws (`sweep.grid_samples_per_prompt`, when above k). Each continuation is scored for
# toxicity (the continuation alone, as in Gehman et al. 2020) and its perplexity is measured
# under the same unsteered model.
#
# Sampling is seeded per (prompt, sample): each row has its own random stream, so these
# baseline rows are exactly the alpha = 0 cell of every later sweep (common random
# numbers make the paired comparisons tight), and a resumed run reproduces an
# uninterrupted one. Work is written in shards named by a hash of their rows and of every
# params field that shapes them; an interrupted run resumes from them, and a shard made
# under other params is never read back. `generation.engine` says who generates here and in
# 05: transformers with steering hooks (`hf`, the reference) or vLLM steered per request
# (`vllm`).
#
# **Reads** `01_data` prompts. **Writes** `generations.parquet`.

# %% tags=["parameters"]
params_file = "../params/default.yaml"
runs_root = "../runs"
reports_root = "../reports"

# %%
from steering_utils.session import open_stage

stage = open_stage(params_file, runs_root, "02_baseline", reports_root)
params = stage.params
stage

# %%
from steering_utils.artifacts import read_table, write_table
from steering_utils.generation import baseline_jobs
from steering_utils.jobs import run_jobs
from steering_utils.models import load_model
from steering_utils.scoring import load_scorers

prompts = read_table(stage.input("prompts"))
model, tokenizer = load_model(params.model)
scorers = load_scorers(params.scorer)
print(model.config.name_or_path, model.dtype, model.device)

# %%
jobs = baseline_jobs(prompts, params.generation, params.dev_samples_per_prompt)
baseline = run_jobs(model, tokenizer, jobs, {}, params, scorers, stage.shards, desc="baseline")
write_table(baseline, stage.out("baseline"))

# %% [markdown]
# Per subset and split: mean toxicity, the share of toxic continuations (≥ 0.5), and the
# Gehman metrics, Expected Maximum Toxicity over k samples and Toxicity Probability (at
# least one of k samples toxic), with 95% bootstrap intervals over prompts.

# %%
from steering_utils.metrics import summarize_cells

summary = summarize_cells(baseline.assign(experiment="baseline"),
                          params.evaluation.toxic_threshold, params.evaluation.n_bootstrap,
                          params.seed)
summary[["split", "subset", "n_prompts", "n", "mean_toxicity", "frac_toxic", "emt", "tp",
         "perplexity", "empty_rate", "repetition_rate"]]

# %% [markdown]
# Examples (content warning: continuations of toxic prompts are often toxic).

# %%
baseline.sort_values("toxicity", ascending=False).groupby("subset").head(3)[
    ["subset", "prompt", "completion", "toxicity"]]

# %%
stage.finish()
