# ---
# jupyter:
#   kernelspec:
#     display_name: Python (steering study)
#     language: python
#     name: steering-study
# ---

# %% [markdown]
# # 07 · Explore: steer the run's model by hand
#
# **Not a stage.** `make report` never runs this notebook and it writes nothing: it opens a
# *finished* run (its params file, or its folder `runs/<run_name>`) and lets you type a
# prompt, pick a layer, a method and α, and read the continuation with its toxicity
# (the run's scorers) and its perplexity under the unsteered model.
#
# Each click makes one row exactly as the sweep makes its rows (`rows.compute_rows`: the
# same generation, per-row seed, steering hook, scorers and perplexity). A prompt of the
# run, with the same sample, seed, layer and α, gives back the sweep's continuation; a
# typed prompt gets a random stream of its own, the same for the same text, so moving α
# or the layer changes only the steering (common random numbers). α may be any number:
# the slider spans what the run tried, the box beside it takes any value.
#
# **Reads** `01_data` (prompts), `04_vectors` (directions, token statistics), `05_sweep`'s
# dev decision when it finished (the layer and α the form starts at). **Writes** nothing.
#
# Model text is untrusted and can be offensive; the form shows it escaped.

# %% tags=["parameters"]
params_file = "../params/default.yaml"
runs_root = "../runs"

# %%
from steering_utils.explore import explore

form = explore(params_file, runs_root)
form

# %% [markdown]
# The same call without the form, for a table of rows: `form.explorer.run(prompt, layer,
# alpha, method, sample, seed)` returns the continuation with its scores.
