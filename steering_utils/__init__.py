"""steering_utils: contrastive activation addition (CAA) for toxicity reduction.

One module per job, named by the noun it owns (README's module map; docs/architecture.md).
Start with `stages` (what runs, reading and writing what), then a notebook's py:percent source
(`notebooks/05_sweep.py`), then `results` (what a run produces). Heavy libraries (torch,
transformers, keras) are imported inside the functions that need them, so this import is
fast.
"""

__version__ = "0.1.0"
