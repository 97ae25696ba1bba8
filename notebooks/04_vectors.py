# ---
# jupyter:
#   kernelspec:
#     display_name: Python (steering study)
#     language: python
#     name: steering-study
# ---

# %% [markdown]
# # 04 · CAA steering vectors
#
# **What this stage does.** For every layer ℓ the steering vector is the difference of the
# mean pooled activations, v_ℓ = mean(toxic) − mean(non-toxic), from the *train* contrast
# only. Steering later subtracts α·v_ℓ from layer ℓ's output.
#
# Residual norms grow with depth, so the same α pushes much harder at a late layer than
# at an early one; we record ‖v_ℓ‖ and the mean per-token residual norm ‖h_ℓ‖ and report
# α‖v_ℓ‖/‖h_ℓ‖ beside α. We test each vector on the held-out *dev* contrast: the AUROC of
# the projection onto v_ℓ separating toxic from non-toxic texts (0.5 = chance). The
# comparison contrast's vector is tested the same way, on its own held-out set and on
# the main one, with its cosine to the main vector.
#
# It also keeps the per-unit token statistics of the train contrast (mean and standard
# deviation of every residual unit over the pooled tokens, each side), which the mean
# transport method of the comparison in 05 maps between.
#
# **Reads** `03_activations`. **Writes** `vectors.safetensors`,
# `comparison_vectors.safetensors`, `layer_stats.parquet`, `token_statistics.safetensors`.

# %% tags=["parameters"]
params_file = "../params/default.yaml"
runs_root = "../runs"
reports_root = "../reports"

# %%
from steering_utils.session import open_stage

stage = open_stage(params_file, runs_root, "04_vectors", reports_root)
params = stage.params
stage

# %%
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

# %% [markdown]
# How much to trust each layer's vector: its **split-half cosine** (the vectors of two
# random halves of the train pairs, `vectors.n_resamples` splits: near 1, the direction is a
# property of the data; mean and 5-95% range) and its **paired held-out accuracy** (the
# share of dev pairs whose toxic side projects further onto v than its clean side; 0.5 is
# chance) with a 95% bootstrap interval over pairs. Dev has k samples per prompt, so few
# of its prompts give a gapped pair; the **leave-one-out** accuracy tests each train pair
# against the vector fitted without it.

# %%
from steering_utils.contrasts import vector_quality

stats = stats.join(vector_quality(vectors.directions, sets, params.vectors.n_resamples,
                                  params.seed))
write_table(stats, stage.out("layer_stats"))
stats.round(3)

# %%
from steering_utils.activations import save_activation_sets
from steering_utils.interventions import token_statistics

save_activation_sets({"train": token_statistics(sets)}, stage.out("token_statistics"))

# %%
from steering_utils.plots import plot_layer_stats

plot_layer_stats(stats)

# %%
stage.finish()
