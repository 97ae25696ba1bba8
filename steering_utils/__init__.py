"""steering_utils: contrastive activation addition (CAA) for toxicity reduction.

One module per job: params, data, models, steering, generation, likelihood,
scoring, activations, vectors, metrics, capability, sweep, artifacts, manifest,
plots, report, runner, preflight. Heavy libraries (torch, transformers, keras)
are imported inside the functions that need them, so this import is fast.
"""

__version__ = "0.1.0"
