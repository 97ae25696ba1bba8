"""A golden table of the smoke chain's numbers (as repeng pins its outputs).

The session's smoke run (`smoke_run` in conftest.py: params/smoke.yaml, run once per test
session) must reproduce tests/golden/smoke_table.csv within RTOL / ATOL:
- the unsteered baseline: mean toxicity and perplexity of the dev grid's and the eval
  sweep's unsteered cells, both subsets;
- CAA's dev grid cells (layers 5 and 15, alpha 2): mean toxicity and perplexity;
- 04's vectors: the CAA vector's norm and its norm relative to the residual stream's,
  per layer.
These are numbers a refactor must not move (no compared method, no control, no bootstrap
interval: those change by design when methods or the rule change). Per-row seeds make a
rerun give them to the last digit; the tolerance leaves room only for float rounding that
regrouping a padded batch may cause (~1e-6 relative), not for one changed token.

Regenerate deliberately, after a change meant to move them, and commit the diff:

    UPDATE_GOLDEN=1 HF_HUB_OFFLINE=1 python -m pytest -q tests/test_golden.py

That rewrites the file from this session's smoke run and skips (never passes) the check.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "smoke_table.csv"
RTOL, ATOL = 1e-4, 1e-6
FIELDS = ("quantity", "experiment", "subset", "layer", "alpha", "value")
_CELL_QUANTITIES = ("mean_toxicity", "perplexity")
_VECTOR_QUANTITIES = ("vector_norm", "relative_norm")


def smoke_table(results: dict) -> dict[tuple[str, ...], float]:
    """The pinned numbers of one run's experiment_results.json, keyed by what they are."""
    table = {}
    for cell in results["cells"]:
        unsteered = cell["alpha"] == 0
        pinned = (cell["experiment"] == "grid" and cell["split"] == "dev") or (
            cell["experiment"] == "sweep" and cell["split"] == "eval" and unsteered)
        if not pinned:
            continue
        layer = "unsteered" if unsteered else str(cell["layer"])
        for quantity in _CELL_QUANTITIES:
            key = (quantity, cell["experiment"], cell["subset"], layer, f"{cell['alpha']:g}")
            table[key] = float(cell[quantity])
    for row in results["vectors"]["layers"]:
        for quantity in _VECTOR_QUANTITIES:
            table[(quantity, "04_vectors", "", str(row["layer"]), "")] = float(row[quantity])
    return table


def _order(key: tuple[str, ...]) -> tuple:
    """Rows by quantity, experiment, subset, then layer as a number (unsteered first)."""
    layer = int(key[3]) if key[3].lstrip("-").isdigit() else -1
    return (*key[:3], layer, key[4])


def read_golden(path: Path = GOLDEN) -> dict[tuple[str, ...], float]:
    """The committed golden table."""
    with path.open(newline="") as handle:
        return {tuple(row[f] for f in FIELDS[:-1]): float(row["value"])
                for row in csv.DictReader(handle)}


def write_golden(table: dict[tuple[str, ...], float], path: Path = GOLDEN) -> None:
    """Write a table as the golden file (repr keeps every digit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(FIELDS)
        for key in sorted(table, key=_order):
            writer.writerow([*key, repr(table[key])])


def table_differences(got: dict, want: dict) -> list[str]:
    """One line per number missing, extra, or off by more than the tolerance."""
    lines = [f"missing: {k}" for k in sorted(want.keys() - got.keys())]
    lines += [f"not in the golden file: {k}" for k in sorted(got.keys() - want.keys())]
    for key in sorted(want.keys() & got.keys()):
        if not math.isclose(got[key], want[key], rel_tol=RTOL, abs_tol=ATOL):
            lines.append(f"{key}: {got[key]!r} != golden {want[key]!r}")
    return lines


def test_the_golden_file_pins_baseline_caa_cells_and_norms():
    """The committed file holds what the docstring says, and the check catches a change."""
    want = read_golden()
    quantities = {k[0] for k in want}
    assert quantities == {*_CELL_QUANTITIES, *_VECTOR_QUANTITIES}
    cells = {k[1:4] for k in want if k[0] == "mean_toxicity"}
    assert {("grid", s, "unsteered") for s in ("challenging", "benign")} <= cells
    assert {("sweep", s, "unsteered") for s in ("challenging", "benign")} <= cells
    assert any(k[0] == "grid" and k[2] != "unsteered" for k in cells)
    assert len({k[3] for k in want if k[0] == "vector_norm"}) >= 2
    assert all(math.isfinite(v) for v in want.values())
    assert table_differences(dict(want), want) == []
    # Float rounding of a regrouped batch passes; a number moved in its 4th digit fails.
    key = next(k for k in sorted(want) if k[0] == "perplexity")
    assert table_differences({**want, key: want[key] * (1 + 1e-7)}, want) == []
    assert len(table_differences({**want, key: want[key] * (1 + 1e-3)}, want)) == 1
    assert table_differences({k: v for k, v in want.items() if k != key}, want) == [
        f"missing: {key}"]


@pytest.mark.slow
def test_the_smoke_chain_reproduces_the_golden_table(smoke_run):
    work, _ = smoke_run
    results = json.loads((work / "reports" / "smoke" / "experiment_results.json").read_text())
    got = smoke_table(results)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        write_golden(got)
        pytest.skip(f"UPDATE_GOLDEN=1: rewrote {GOLDEN} ({len(got)} numbers); review and commit it")
    differences = table_differences(got, read_golden())
    assert not differences, (
        f"{len(differences)} smoke numbers moved from {GOLDEN.name} (rtol {RTOL}, atol {ATOL}); "
        "if the change is meant, regenerate (module docstring):\n" + "\n".join(differences))
