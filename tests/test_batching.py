"""The one batching loop (steering_utils.batching): length-sorted batches, groups kept
apart, results in input order, and the out-of-memory back-off.

The batch function here is a real function that raises the error types torch raises
(torch.cuda.OutOfMemoryError, MPS's RuntimeError); the passes that use the loop are
tested against it with the tiny models in test_generation, test_real_run (likelihood),
test_activations and test_scoring.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steering_utils import batching
from steering_utils.batching import is_out_of_memory, map_batches

LENGTHS = [5, 1, 9, 3, 3, 7, 2, 8, 1, 6, 4, 9, 2]


@pytest.fixture(autouse=True)
def _forget_fitting_batches():
    batching._FITTING_BATCH.clear()
    yield
    batching._FITTING_BATCH.clear()


class Recorder:
    """A batch function: each row's result is (its index, its length); batches above
    `limit` rows raise `error` (as a GPU would, before any row is done)."""

    def __init__(self, lengths, limit=None, error=None):
        self.lengths, self.limit, self.error = lengths, limit, error
        self.batches: list[list[int]] = []
        self.tried: list[int] = []

    def __call__(self, index):
        self.tried.append(len(index))
        if self.limit is not None and len(index) > self.limit:
            raise self.error
        self.batches.append([int(i) for i in index])
        return [(int(i), self.lengths[i]) for i in index]


def test_results_come_back_in_input_order_from_length_sorted_batches():
    run = Recorder(LENGTHS)
    out = map_batches(run, LENGTHS, 4)
    assert out == [(i, n) for i, n in enumerate(LENGTHS)]
    flat = [i for batch in run.batches for i in batch]
    assert flat == list(np.argsort(LENGTHS, kind="stable"))  # by length, ties in input order
    assert [len(b) for b in run.batches] == [4, 4, 4, 1]
    assert all(LENGTHS[a] <= LENGTHS[b] for a, b in zip(flat, flat[1:]))


def test_a_batch_never_mixes_two_groups():
    groups = ["b" if i % 3 else "a" for i in range(len(LENGTHS))]
    run = Recorder(LENGTHS)
    out = map_batches(run, LENGTHS, 4, groups=groups)
    assert out == [(i, n) for i, n in enumerate(LENGTHS)]
    for batch in run.batches:
        assert len({groups[i] for i in batch}) == 1
    lengths_a = [LENGTHS[i] for b in run.batches for i in b if groups[i] == "a"]
    assert lengths_a == sorted(lengths_a)
    with pytest.raises(ValueError, match="group labels"):
        map_batches(run, LENGTHS, 4, groups=["a"])


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 23.18 GiB"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: "
                 "1.2 GB, max allowed: 18.13 GB). Tried to allocate 1.5 GB on private pool."),
])
def test_out_of_memory_halves_the_batch_keeps_the_order_and_remembers_the_fit(error):
    assert is_out_of_memory(error)
    run = Recorder(LENGTHS, limit=3, error=error)
    out = map_batches(run, LENGTHS, 16, key=("model", "pass"))
    assert out == [(i, n) for i, n in enumerate(LENGTHS)]
    assert run.tried[:3] == [13, 8, 4] and max(len(b) for b in run.batches) == 2
    flat = [i for batch in run.batches for i in batch]
    assert sorted(flat) == list(range(len(LENGTHS)))  # every row run exactly once
    assert batching._FITTING_BATCH == {("model", "pass"): 2}
    again = Recorder(LENGTHS, limit=3, error=error)
    map_batches(again, LENGTHS, 16, key=("model", "pass"))
    assert max(again.tried) == 2  # the next pass starts at the batch that fitted


def test_rows_done_before_the_error_are_not_run_again():
    class FailsOnTheLongRows(Recorder):
        def __call__(self, index):
            if len(index) > 2 and max(self.lengths[i] for i in index) > 6:
                self.tried.append(len(index))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            return super().__call__(index)

    run = FailsOnTheLongRows(LENGTHS)
    out = map_batches(run, LENGTHS, 4, key=("model", "long"))
    assert out == [(i, n) for i, n in enumerate(LENGTHS)]
    flat = [i for batch in run.batches for i in batch]
    assert len(flat) == len(set(flat)) == len(LENGTHS)
    assert [len(b) for b in run.batches[:2]] == [4, 4]  # the short rows went at 4


def test_per_group_keys_back_off_each_group_on_its_own():
    groups = [n // 5 for n in LENGTHS]  # a long and a short bucket

    class LongRowsNeedSmallBatches(Recorder):
        def __call__(self, index):
            if groups[index[0]] == 1 and len(index) > 1:
                self.tried.append(len(index))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            return super().__call__(index)

    run = LongRowsNeedSmallBatches(LENGTHS)
    out = map_batches(run, LENGTHS, 8, key=("m", "generate"), groups=groups, key_per_group=True)
    assert out == [(i, n) for i, n in enumerate(LENGTHS)]
    assert batching._FITTING_BATCH == {("m", "generate", 1): 1}  # group 0 fitted at 8
    assert max(len(b) for b in run.batches if groups[b[0]] == 0) == 7


def test_without_a_key_or_for_other_errors_nothing_is_retried():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory.")
    run = Recorder(LENGTHS, limit=3, error=oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        map_batches(run, LENGTHS, 8)  # a fixed batch is the user's
    assert run.tried == [8]
    bug = Recorder(LENGTHS, limit=3, error=ValueError("a bug, not memory"))
    with pytest.raises(ValueError, match="a bug"):
        map_batches(bug, LENGTHS, 8, key=("model", "bug"))
    assert bug.tried == [8] and not batching._FITTING_BATCH
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(ValueError, match="2 results for a batch of 4"):
        map_batches(lambda index: [0, 0], LENGTHS, 4)
