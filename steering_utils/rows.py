"""Making rows: one group of job rows generated, scored and measured for perplexity, here.

    out = compute_rows(model, tokenizer, rows, shards, directions, params, scorers, positions, desc)

The one function that shapes a generated row (the code part of every shard's key,
`sources.rows_code`, is this module and what it reaches). Who generates is the params'
engine (`engines.make_engine`); where it runs (this process or a Ray actor) is the
executor's business (`executors`), which calls this function.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .engines import make_engine
from .params import StudyParams
from .stages import UNSTEERED

RESULT_COLUMNS = ("completion", "toxicity", "toxicity_second", "nll")


def group_shards(todo: list[tuple[str, np.ndarray]],
                 max_rows: int) -> list[list[tuple[str, np.ndarray]]]:
    """Consecutive shards packed into groups of at most `max_rows` rows (a shard is never cut)."""
    groups: list[list[tuple[str, np.ndarray]]] = []
    for item in todo:
        if not groups or sum(len(r) for _, r in groups[-1]) + len(item[1]) > max_rows:
            groups.append([])
        groups[-1].append(item)
    return groups


def compute_rows(model, tokenizer, rows: pd.DataFrame, shards: list[np.ndarray],
                 directions: dict, params: StudyParams, scorers: dict, positions: str,
                 desc: str) -> pd.DataFrame:
    """The rows with completion, toxicity (and toxicity_second) and nll, computed here.

    `shards` partitions `rows.index`. The rows of all shards are generated together
    (rows are seeded one by one, so a continuation does not depend on its batch); scores
    and perplexity are computed shard by shard, since a padded batch's float rounding
    depends on its rows: a shard's numbers then never depend on the shards it was grouped
    with, and a local, a Ray and a resumed run, which group shards differently, agree.
    """
    from .gating import gate_rows
    from .likelihood import continuation_nll
    from .scoring import score_rows

    engine = make_engine(params)
    parts = []
    for direction, part in rows.groupby("direction", sort=True):
        vectors = None if direction == UNSTEERED else directions[direction]
        # A gated method (conditional CAA) steers only its gated-on rows: the others run
        # at alpha 0 in the same batches, and keep their cell's alpha in the output.
        generated = engine.generate(model, tokenizer, gate_rows(vectors, model, tokenizer, part),
                                    vectors, positions, desc=f"{desc} {direction}")
        parts.append(generated.assign(alpha=part["alpha"]))
    generated = pd.concat(parts)
    out = pd.concat([score_rows(generated.loc[index], scorers) for index in shards])
    blocks = np.concatenate([np.full(len(index), number) for number, index in enumerate(shards)])
    out["nll"] = continuation_nll(model, tokenizer, list(out["prompt"]), list(out["completion"]),
                                  blocks=blocks)
    return out.loc[rows.index]
