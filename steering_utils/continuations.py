"""Every continuation of a run's eval, for readers: a tidy table and the report's browser data.

`continuations_table` gathers the eval sweep, the random-direction control and each method's
eval pick into one row per continuation (prompt, cell, sample, its seed, the text, every
score, perplexity, empty and loop flags). The unsteered rows, which the three share, appear
once. `write_continuations` saves it beside the report (`continuations.parquet`), and
`browser_data` packs it for the report's continuation browser: prompts and cells once, rows
as short arrays, capped at `MAX_EMBED_BYTES` by whole sample indices (every prompt and cell
keeps samples 0..k-1, the same seeded streams side by side) so that report.html stays light
on a large run; the payload says how many it shows of how many. `browser_json` makes that
payload safe inside `<script type="application/json">`: `<`, `>` and `&` are \\u escapes,
so a continuation holding `</script>` cannot end the block.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import read_table, write_table
from .metrics import is_empty, is_repetitive
from .stages import ALL_LAYERS, RANDOM_PREFIX, UNSTEERED, UNSTEERED_LAYER

CONTINUATIONS_FILE = "continuations.parquet"  # beside report.html in reports/<run>/
# report.html embeds at most this much continuation data (JSON bytes); the rest is in the
# table. The offline default embeds everything; Qwen3-8B's 25 samples a prompt do not fit.
MAX_EMBED_BYTES = 20_000_000
SCORE_COLUMNS = ("toxicity", "toxicity_second")
_EXPERIMENT_ORDER = {"sweep": 0, "control": 1, "methods_eval": 2}
_KEY = ["cell", "prompt_id", "sample"]


def _where(layer: int) -> str:
    return {ALL_LAYERS: "all layers", UNSTEERED_LAYER: "no edit"}.get(int(layer),
                                                                    f"layer {layer}")


def _cell_label(row) -> str:
    """'unsteered', 'CAA · layer 5 · α 2', 'random 7 · layer 5 · α 2', 'ActAdd pick · …'."""
    # A method's rows may carry no direction (the instruction prompt): ask the method.
    if (row.method if row.experiment == "methods_eval" else row.direction) == UNSTEERED:
        return "unsteered"
    if row.experiment == "control":
        return (f"random {str(row.direction).removeprefix(RANDOM_PREFIX)} · {_where(row.layer)}"
                f" · α {row.alpha:g}")
    if row.experiment == "methods_eval":
        from .plots import METHOD_LABELS

        return (f"{METHOD_LABELS.get(row.method, row.method)} pick · {_where(row.layer)}"
                f" · s {row.alpha:g}")
    return f"CAA · {_where(row.layer)} · α {row.alpha:g}"


def continuations_table(sweep: pd.DataFrame, control: pd.DataFrame,
                        methods_eval: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One row per continuation of the eval sweep, the control and the methods' eval picks."""
    # generation imports torch at the top; only the seed function is needed here.
    from .generation import row_seed

    parts = []
    for name, rows in (("sweep", sweep), ("control", control), ("methods_eval", methods_eval)):
        if rows is None or rows.empty:
            continue
        rows = rows.assign(experiment=name)
        if "method" not in rows:
            rows = rows.assign(method=np.where(rows["direction"] == UNSTEERED, UNSTEERED,
                                               "caa" if name == "sweep" else "random"))
        parts.append(rows)
    if not parts:
        return pd.DataFrame(columns=["experiment", "cell", "prompt_id", "sample"])
    rows = pd.concat(parts, ignore_index=True)
    key = ["experiment", "method", "direction", "layer", "alpha"]
    labels = rows[key].drop_duplicates()  # one label per cell, not per row: runs have 500k
    labels["cell"] = [_cell_label(r) for r in labels.itertuples()]
    rows = rows.merge(labels, on=key, how="left")
    # The unsteered rows are shared by the sweep, the control and the methods: keep one copy.
    rows = rows.drop_duplicates(_KEY, keep="first")
    unsteered = rows["cell"] == "unsteered"
    rows.loc[unsteered, "experiment"] = "sweep"
    order = rows.assign(_e=rows["experiment"].map(_EXPERIMENT_ORDER), _u=~unsteered)
    rows = order.sort_values(["_u", "_e", "method", "direction", "layer", "alpha", "prompt_id",
                              "sample"], kind="stable").drop(columns=["_e", "_u"])
    nll = rows["nll"].astype(float) if "nll" in rows else pd.Series(np.nan, index=rows.index)
    table = pd.DataFrame({
        "experiment": rows["experiment"].astype(str), "cell": rows["cell"].astype(str),
        "method": rows["method"].astype(str), "direction": rows["direction"].astype(str),
        "layer": rows["layer"].astype(int), "alpha": rows["alpha"].astype(float),
        "subset": rows["subset"].astype(str), "prompt_id": rows["prompt_id"].astype(str),
        "prompt": rows["prompt"].astype(str), "sample": rows["sample"].astype(int),
        "seed": [row_seed(seed, p, int(s)) for p, s in zip(rows["prompt_id"], rows["sample"])],
        "completion": rows["completion"],
        **{name: rows[name].astype(float) for name in SCORE_COLUMNS if name in rows},
        "nll": nll, "perplexity": np.exp(nll),
        "empty": rows["completion"].map(is_empty).astype(bool),
        "repetitive": rows["completion"].map(is_repetitive).astype(bool),
    })
    return table.reset_index(drop=True)


def read_continuations(stage) -> pd.DataFrame:
    """The continuations table of an open 06_report stage (reads 05's sweep, control, methods)."""
    def table(name: str) -> pd.DataFrame:
        path = stage.input(name)
        return read_table(path) if Path(path).is_file() else pd.DataFrame()

    return continuations_table(table("sweep"), table("control"), table("methods_eval"),
                               stage.params.seed)


def write_continuations(table: pd.DataFrame, folder: str | Path) -> Path:
    """folder/continuations.parquet; its path."""
    path = Path(folder) / CONTINUATIONS_FILE
    write_table(table, path)
    return path


def _round(values: pd.Series, digits: int) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in values]


def browser_data(table: pd.DataFrame, scorer_labels: dict[str, str],
                 max_bytes: int | None = None) -> dict:
    """The browser's payload: prompts, cells, score names and rows ([prompt, cell, sample,
    text, score..., perplexity]), capped at about max_bytes (MAX_EMBED_BYTES) by whole sample
    indices."""
    max_bytes = MAX_EMBED_BYTES if max_bytes is None else max_bytes
    scores = [(name, scorer_labels.get(name, name)) for name in SCORE_COLUMNS
              if name in table and table[name].notna().any()]  # no second scorer: no column
    prompts = table.drop_duplicates("prompt_id")
    prompts = prompts.assign(_b=prompts["subset"] != "challenging").sort_values(
        ["_b", "prompt_id"])  # challenging prompts first
    prompt_index = {p: i for i, p in enumerate(prompts["prompt_id"])}
    cells = table.drop_duplicates("cell")
    cell_index = {c: i for i, c in enumerate(cells["cell"])}
    columns = [_round(table[name], 3) for name, _ in scores]
    columns.append(_round(table["perplexity"], 2))
    rows = [[prompt_index[p], cell_index[c], int(s), "" if not isinstance(t, str) else t, *v]
            for p, c, s, t, *v in zip(table["prompt_id"], table["cell"], table["sample"],
                                      table["completion"], *columns)]
    sizes = np.array([len(json.dumps(r, ensure_ascii=False)) + 1 for r in rows], dtype=np.int64)
    samples = table["sample"].to_numpy()
    keep = np.ones(len(rows), dtype=bool)
    cap = None
    if sizes.sum() > max_bytes:
        by_sample = pd.Series(sizes).groupby(samples).sum().sort_index().cumsum()
        fits = by_sample[by_sample <= max_bytes]
        cap = int(fits.index.max()) + 1 if not fits.empty else 1
        keep = samples < cap
        if sizes[keep].sum() > max_bytes:  # even sample 0 alone is too much: whole prompts
            order = np.array([r[0] for r in rows])
            per_prompt = pd.Series(sizes[keep]).groupby(order[keep]).sum().sort_index().cumsum()
            last = per_prompt[per_prompt <= max_bytes]
            n_prompts = int(last.index.max()) + 1 if not last.empty else 0
            keep &= order < n_prompts
    shown = [r for r, k in zip(rows, keep) if k]
    return {
        "total": len(rows), "shown": len(shown), "samples_cap": cap,
        "prompts_shown": len({r[0] for r in shown}),
        "max_sample": int(samples.max()) if len(samples) else 0,
        "scores": [list(s) for s in scores] + [["perplexity", "perplexity"]],
        "cells": [{"label": c, "experiment": e} for c, e in zip(cells["cell"],
                                                                 cells["experiment"])],
        "prompts": [[p, s, t] for p, s, t in zip(prompts["prompt_id"], prompts["subset"],
                                                 prompts["prompt"])],
        "rows": shown,
    }


def browser_json(data: dict) -> str:
    """JSON for a `<script type="application/json">` block: no `<`, `>` or `&` left raw, so
    no text inside can close the block or open a comment."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
