"""The size of a run from its params alone: rows each pass computes, and the wall time.

    counts = job_counts(params, n_layers)            # {"baseline": ..., "generated": ...}
    seconds, detail = project_wall_time(params, counts, rates)

The runner's progress and ETA (`progress.run_eta`) and `make check`'s deep projection
(`smoke`) read the same counts.
"""

from __future__ import annotations

from .params import StudyParams
from .progress import format_duration


def job_counts(params: StudyParams, n_layers: int) -> dict[str, int]:
    """Rows each pass of the full run computes, from the params alone (before any stage)."""
    from .params import resolve_layers

    data, k = params.data, params.generation.samples_per_prompt
    sweep, cap = params.sweep, params.evaluation.capability
    n_prompts = sum(getattr(data, s).n_train + getattr(data, s).n_dev + getattr(data, s).n_eval
                    for s in ("challenging", "benign"))
    grid_layers = resolve_layers(sweep.layers, sweep.layer_stride, n_layers)
    chosen = sweep.n_chosen if sweep.chosen_layers == "auto" else len(sweep.chosen_layers)
    grid_alphas = sum(1 for a in sweep.grid_alphas if a != 0)
    alphas = sum(1 for a in sweep.alphas if a != 0)
    from .sweep import control_alphas

    control = params.control
    counts = {
        "baseline": n_prompts * k + data.challenging.n_train * (
            (params.generation.train_samples_per_prompt or k) - k)
        + (data.challenging.n_dev + data.benign.n_dev) * (params.dev_samples_per_prompt - k),
        "grid": ((data.challenging.n_dev + data.benign.n_dev) * len(grid_layers) * grid_alphas
                 * sweep.grid_samples_per_prompt),
        "sweep": (data.challenging.n_eval + data.benign.n_eval) * chosen * alphas * k,
        "control": (data.challenging.n_eval * control.n_directions
                    * len(control_alphas(params)) * control.samples_per_prompt),
    }
    from .matched import candidate_layers, dev_budget
    from .params import compared_methods

    others = [m for m in compared_methods(sweep) if m != "caa"]
    methods = params.methods
    # Dev: each method's search on CAA's budget (at most; the prompt has one cell, a method
    # held by the push limit fewer); eval: every method's matched point (CAA's too, rarely a
    # sweep cell) on the challenging and benign eval prompts.
    budget = dev_budget(params, len(candidate_layers(params, grid_layers)) * grid_alphas)
    counts["methods"] = (
        data.challenging.n_dev * (methods.grid_samples_per_prompt or sweep.grid_samples_per_prompt)
        * sum(1 if m == "prompt" else budget for m in others)
        + (data.challenging.n_eval + data.benign.n_eval) * (methods.samples_per_prompt or k)
        * (len(others) + 1))
    counts["generated"] = sum(counts.values())
    # Dev: the reference and the cells the rule tries (about two, and one a method); eval:
    # every sweep cell, the reference, each random direction at the chosen alpha, each method.
    cells = 3 + 1 + chosen * alphas + control.n_directions + 2 * len(others)
    counts["capability"] = 0 if cap.task == "none" else cap.n_items * cells
    act = params.activations
    dev_rows = data.challenging.n_dev * k if act.contrast != "prompts" else \
        2 * min(data.challenging.n_dev, data.benign.n_dev)
    counts["activations"] = 2 * act.n_per_side + 2 * min(act.n_per_side, dev_rows // 2)
    return counts


def project_wall_time(params: StudyParams, counts: dict[str, int], rates: dict[str, float]
                      ) -> tuple[float, str]:
    """(seconds, one-line breakdown) of the full run from measured per-row seconds.

    rates: seconds per generated row (`generate`), per scored row (`score`), per
    perplexity row (`perplexity`, also used for an activation text: one forward pass
    each) and per capability item and cell (`capability`).
    """
    nll_passes = 2 if params.evaluation.reference_model is not None else 1
    parts = {
        "generation": counts["generated"] * rates["generate"],
        "scoring": counts["generated"] * rates["score"],
        "perplexity": counts["generated"] * rates["perplexity"] * nll_passes,
        "capability": counts["capability"] * rates["capability"],
        "activations": counts["activations"] * rates["perplexity"],
    }
    total = sum(parts.values())
    detail = ", ".join(f"{name} {format_duration(sec)}" for name, sec in parts.items())
    return total, detail
