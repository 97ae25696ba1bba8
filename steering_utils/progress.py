"""A stage's rows as the runner sees them: one progress line per stage and the run's ETA.

The kernel and the runner are two processes. The runner names a small JSON file for each
stage in the kernel's environment (`PROGRESS_ENV`); `jobs.run_jobs` announces each job
table there (`start_rows`: its rows, how many were reused from shards) and counts rows as
their shards land (`add_rows`). The runner polls the file (`read_rows`) and shows one bar
per stage over all its tables (`StageProgress`), or, when stdout is not a terminal (CI
logs), a line at most every `EVERY_S` seconds when rows moved (every 5 x `EVERY_S` if not).
A notebook run in Lab has no such variable: nothing is written and the usual tqdm bars show.
The file is replaced atomically, read errors count as "nothing new", and the runner stops
polling when papermill returns, so a crashed kernel cannot hang the runner.

The whole-run ETA (`run_eta`) is arithmetic on the params' job counts (`workload.job_counts`):
the remaining stages' rows times the measured seconds per row, plus each stage's fixed cost
(kernel start, model and scorer loading, writing) measured on the stages already run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .params import StudyParams

PROGRESS_ENV = "STEERING_PROGRESS_FILE"
EVERY_S = 60.0  # a progress line at most this often when stdout is not a terminal
POLL_S = 1.0
ROW_STAGES = ("02_baseline", "05_sweep")  # the stages whose job tables report rows
MODEL_STAGES = ("02_baseline", "03_activations", "05_sweep")  # load the model: a larger fixed cost

_tables: list[dict] = []  # this kernel's tables, in the order they started


def format_duration(seconds: float) -> str:
    """'3 h 05 min', '12 min', '40 s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def start_rows(table: str, total: int, reused: int = 0) -> None:
    """Announce a job table of `total` rows, `reused` of them already done (no-op outside a run)."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    now = time.time()
    _tables.append({"table": table, "total": int(total), "reused": int(reused),
                    "done": int(reused), "started": now, "updated": now})
    _write(Path(path))


def add_rows(n: int) -> None:
    """Count `n` more rows of the latest table as done (no-op outside a run)."""
    path = os.environ.get(PROGRESS_ENV)
    if not path or not _tables:
        return
    _tables[-1]["done"] += int(n)
    _tables[-1]["updated"] = time.time()
    _write(Path(path))


def _write(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"pid": os.getpid(), "tables": _tables}))
        os.replace(tmp, path)  # the runner never reads half a file
    except OSError:
        pass  # progress is a courtesy: it must never fail a stage


@dataclass
class Rows:
    """The rows of one stage as last reported: done, total, computed here, seconds computing."""

    done: int = 0
    total: int = 0
    computed: int = 0
    seconds: float = 0.0
    tables: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        """Rows computed per second (reused rows excluded); None before any."""
        return self.computed / self.seconds if self.computed and self.seconds > 0 else None


def read_rows(path: Path) -> Rows | None:
    """The stage's rows summed over its tables; None when the file is missing or unreadable."""
    try:
        tables = json.loads(Path(path).read_text())["tables"]
        return Rows(done=sum(t["done"] for t in tables), total=sum(t["total"] for t in tables),
                    computed=sum(t["done"] - t["reused"] for t in tables),
                    seconds=sum(t["updated"] - t["started"] for t in tables
                                if t["done"] > t["reused"]),
                    tables=[t["table"] for t in tables])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def progress_line(stage: str, rows: Rows, expected: int = 0) -> str:
    """'05_sweep        412/1480 rows  2.1 rows/s  stage ETA 8 min' (rate and ETA once known)."""
    total = max(rows.total, expected)
    line = f"  {stage:<15} {rows.done}/{total} rows"
    if rows.rate:
        line += f"  {rows.rate:.2f} rows/s"
        if total > rows.done:
            line += f"  stage ETA {format_duration((total - rows.done) / rows.rate)}"
    return line


def stage_work(params: StudyParams, counts: dict[str, int] | None) -> dict[str, float]:
    """Row-equivalents each stage computes: generated rows, plus forward passes (activation
    texts, capability answers) at 1 / (max_new_tokens + 2) row each, since a generated row is
    max_new_tokens decoding steps, a scoring and a perplexity pass."""
    if not counts:
        return {}
    forward = 1 / (params.generation.max_new_tokens + 2)
    return {"02_baseline": counts["baseline"],
            "03_activations": counts["activations"] * forward,
            "05_sweep": (counts["grid"] + counts["sweep"] + counts["control"] + counts["methods"]
                         + counts["capability"] * forward)}


def expected_rows(counts: dict[str, int] | None) -> dict[str, int]:
    """Rows each row stage's job tables hold, from the job counts."""
    if not counts:
        return {}
    return {"02_baseline": counts["baseline"],
            "05_sweep": counts["grid"] + counts["sweep"] + counts["control"] + counts["methods"]}


@dataclass
class RunClock:
    """What the runner measured so far: seconds per row and each kind of stage's fixed cost."""

    work: dict[str, float]
    seconds_per_row: float | None = None
    fixed: dict[str, list[float]] = field(default_factory=lambda: {"model": [], "light": []})

    def record(self, stage: str, wall: float, rows: Rows | None) -> None:
        """A stage that ran: its wall time, and its rows when it reported some."""
        row_time = rows.seconds if rows and rows.rate else 0.0
        if rows and rows.rate:
            self.seconds_per_row = 1 / rows.rate
        kind = "model" if stage in MODEL_STAGES else "light"
        if stage not in ROW_STAGES or row_time:  # a row stage whose rows were all reused
            self.fixed[kind].append(max(wall - row_time, 0.0))  # tells nothing of its cost

    def fixed_cost(self, stage: str) -> float:
        kind = "model" if stage in MODEL_STAGES else "light"
        seen = self.fixed[kind] or self.fixed["model"] or self.fixed["light"] or [0.0]
        return sum(seen) / len(seen)

    def eta(self, remaining: list[str]) -> float | None:
        """Seconds the remaining stages will take; None before a row rate was measured."""
        if self.seconds_per_row is None:
            return None
        return sum(self.fixed_cost(s) + self.work.get(s, 0.0) * self.seconds_per_row
                   for s in remaining)

    def eta_line(self, remaining: list[str]) -> str | None:
        """'  ETA             ~6 min for 4 stages left (...)'; None when nothing to say."""
        seconds = self.eta(remaining)
        if not remaining or seconds is None:
            return None
        rows = sum(self.work.get(s, 0.0) for s in remaining)
        return (f"  {'ETA':<15} ~{_eta_text(seconds)} for the {len(remaining)} stage(s) "
                f"left: ~{rows:,.0f} rows at {self.seconds_per_row:.2f} s/row, plus "
                f"~{format_duration(sum(self.fixed_cost(s) for s in remaining))} of fixed costs "
                "(kernels, loading); less if shards are reused")


def _eta_text(seconds: float) -> str:
    """'7.5 min' under ten minutes (a smoke run's ETA can be checked), else format_duration."""
    return f"{seconds / 60:.1f} min" if 60 <= seconds < 600 else format_duration(seconds)


class StageProgress:
    """Polls a stage's progress file while papermill runs it: one tqdm bar on a terminal,
    else a line at most every `every_s` seconds. `rows` holds the last report."""

    def __init__(self, stage: str, path: Path, expected: int, echo=print,
                 tty: bool | None = None, every_s: float = EVERY_S, poll_s: float = POLL_S):
        self.stage, self.path, self.expected, self.echo = stage, Path(path), expected, echo
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.every_s, self.poll_s = every_s, poll_s
        self.rows: Rows | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._bar = None
        self._printed = time.time()  # the stage's "runs" line was just printed

    def __enter__(self) -> StageProgress:
        self.path.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._update()
        if self._bar is not None:
            self._bar.close()

    def _poll(self) -> None:
        shown = -1  # rows done at the last line
        while not self._stop.wait(self.poll_s):
            self._update()
            if self.tty or not self.rows or self.rows.done >= max(self.rows.total, self.expected):
                continue
            waited = time.time() - self._printed
            # A line when rows moved, or after a long quiet spell (a log that shows life).
            if waited >= self.every_s and (self.rows.done != shown or waited >= 5 * self.every_s):
                self.echo(progress_line(self.stage, self.rows, self.expected))
                self._printed, shown = time.time(), self.rows.done

    def _update(self) -> None:
        rows = read_rows(self.path)
        if rows is None:
            return
        self.rows = rows
        if self.tty:
            from tqdm.auto import tqdm

            if self._bar is None:  # reused rows as its start, so its rate is of computed rows
                self._bar = tqdm(desc=f"  {self.stage:<15}", unit="row", leave=False,
                                 file=sys.stdout, total=max(rows.total, self.expected),
                                 initial=rows.done - rows.computed)
            self._bar.total = max(rows.total, self.expected)
            self._bar.n = rows.done
            self._bar.refresh()

    def summary(self) -> str:
        """': 56 rows (12 reused), 0.71 rows/s' for the stage's done line; '' without rows."""
        rows = self.rows
        if rows is None or not rows.total:
            return ""
        reused = rows.done - rows.computed
        text = f": {rows.done} rows" + (f" ({reused} reused)" if reused else "")
        return text + (f", {rows.rate:.2f} rows/s" if rows.rate else "")
