"""The study's one batching loop: length-sorted batches that halve on out-of-memory.

Generation, log-likelihood, activation capture and toxicity scoring all run rows through
a model in batches. Rows are sorted by length so a batch carries little padding, and a
batch never mixes two `groups` (a label per row: a shard, a length bucket), since padding
changes a row's float rounding. On an out-of-memory error (CUDA, MPS, XPU, the CPU
allocator) the batch halves and only the rows not yet done are retried; the batch that
fitted is remembered per key, so the next pass starts there. Results come back in input
order whatever the batches were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

# (model, pass, ...) -> the batch that fitted after an out-of-memory error, for later passes
_FITTING_BATCH: dict[tuple, int] = {}


def is_out_of_memory(err: BaseException) -> bool:
    """Is `err` an out-of-memory error that a smaller batch may avoid (accelerate's test:
    CUDA, HIP, XPU, MPS and CPU-allocator messages)?"""
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(err, Exception) and should_reduce_batch_size(err)


def run_with_backoff(run: Callable[[int], None], start: int, key: tuple) -> None:
    """Calls run(batch) at the batch that last fitted for `key` (else `start`); after an
    out-of-memory error, accelerate's `find_executable_batch_size` halves the batch and
    calls run again, so `run` must skip the rows it has finished. The batch that fitted
    is remembered for the next pass under the same key.

    The decorator collects garbage on every call (~0.5 s with a study's tables in memory,
    once per shard), so it takes over only after a first try ran out of memory.
    """
    from accelerate.utils import find_executable_batch_size

    batch = min(start, _FITTING_BATCH.get(key, start))
    try:
        run(batch)
        return
    except Exception as err:  # re-raised unless it is an out-of-memory error
        if batch == 1 or not is_out_of_memory(err):
            raise
    # Outside `except`: the failed batch's tensors are freed before the retry.
    tried = [batch]

    def retry(size: int) -> None:
        tried.append(size)
        run(size)
        _FITTING_BATCH[key] = size

    find_executable_batch_size(retry, starting_batch_size=batch // 2,
                               reduce_batch_size_fn=lambda: tried[-1] // 2)()


def length_order(lengths: Sequence[int], groups: Sequence | None = None) -> np.ndarray:
    """Row indices by group, then length (stable: equal lengths keep input order)."""
    lengths = np.asarray(lengths)
    groups = np.zeros(len(lengths), dtype=int) if groups is None else np.asarray(groups)
    return np.lexsort((lengths, groups))


def map_batches(run_batch: Callable[[np.ndarray], Sequence], lengths: Sequence[int],
                batch_size: int, *, key: tuple | None = None, groups: Sequence | None = None,
                key_per_group: bool = False, desc: str | None = None,
                unit: str = "row") -> list:
    """[run_batch's result for row i, for each input row i]: `run_batch(index)` gets the
    input indices of one batch (length-sorted, never two `groups`) and returns one result
    per index, in that order.

    With a `key` (the model and the pass, e.g. (name, "perplexity")) an out-of-memory error
    halves the batch and retries the rows not yet done (`run_with_backoff`); with
    `key_per_group` each group remembers its own fitting batch (short prompts keep a
    larger one). Without a key an out-of-memory error is raised: the batch was fixed.
    `desc` shows a progress bar in `unit`s.
    """
    lengths = np.asarray(lengths)
    groups = np.zeros(len(lengths), dtype=int) if groups is None else np.asarray(groups)
    if len(groups) != len(lengths):
        raise ValueError(f"map_batches: {len(groups)} group labels for {len(lengths)} rows")
    order = length_order(lengths, groups)
    results: list = [None] * len(lengths)
    done = np.zeros(len(lengths), dtype=bool)

    with tqdm(total=len(lengths), desc=desc, unit=unit, disable=desc is None) as bar:
        def run(batch: int, labels=None) -> None:
            for label in np.unique(groups) if labels is None else labels:
                todo = order[(groups[order] == label) & ~done[order]]
                for first in range(0, len(todo), batch):
                    index = todo[first : first + batch]
                    out = run_batch(index)
                    if len(out) != len(index):
                        raise ValueError(f"map_batches: {len(out)} results for a batch of "
                                         f"{len(index)} rows")
                    for i, result in zip(index, out):
                        results[i] = result
                    done[index] = True
                    bar.update(len(index))

        if key is None:
            run(batch_size)
        elif key_per_group:
            for label in np.unique(groups):
                name = label.item() if isinstance(label, np.generic) else label
                run_with_backoff(lambda batch, label=label: run(batch, [label]), batch_size,
                                 (*key, name))
        else:
            run_with_backoff(run, batch_size, key)
    return results
