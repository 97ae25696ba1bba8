"""reports/<run>/ is replaced as a whole, so a reader never sees a mix of two runs.

`publish_report` builds experiment_results.json, figures/ and report.html in a hidden
sibling folder (`reports/.<run>.tmp-<pid>/`), then swaps it in: the old folder is
renamed aside, the new one renamed in, the old one deleted. A reader sees the old
complete report, the new complete one, or (for the instant between two renames)
none; `recover` puts the old one back if a process died in that instant. Run names
never start with a dot, so these hidden names cannot be a run's folder.

A report from other params is moved aside to `reports/<run>.stale-<hash>/` when a run
starts (`set_aside_stale`), so it is never shown as the current one. Executed
notebooks are written under `runs/<run>/notebooks/` while the run goes and copied in
as one folder once the report stage has finished (`attach_notebooks`).

Nothing here deletes a folder the study did not make: a report folder carries
`.steering-report.json` (run name, params hash), and a folder at `reports/<run>/` (or
`<run>.stale-<hash>/`) without it is never replaced, moved or written into
(`FolderConflict`, naming it and the fix). The runs and reports roots must be disjoint
(`check_roots`): a report swap inside the runs root would delete finished stages.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .params import STALE_SUFFIX
from .runlock import pid_alive
from .stages import RESULTS_FILE

if TYPE_CHECKING:
    import pandas as pd

    from .results import ExperimentResults

FAILED_FILE = "failed_experiment_results.json"
PARTIAL_FILE = "partial_experiment_results.json"
NOTEBOOKS_DIR = "notebooks"
MARKER_FILE = ".steering-report.json"  # {"run_name", "params_hash"}: this folder is ours


class FolderConflict(RuntimeError):
    """A folder the run would replace or write into is not the study's own; the message names
    it and the fix. Raised before any work, with nothing deleted."""


def check_roots(runs_root: str | Path, reports_root: str | Path) -> None:
    """Raise FolderConflict when the runs and reports roots are equal or one holds the other
    (after resolving symlinks): replacing a report folder would then delete runs."""
    runs, reports = Path(runs_root).resolve(), Path(reports_root).resolve()
    if runs == reports or runs.is_relative_to(reports) or reports.is_relative_to(runs):
        how = "are the same folder" if runs == reports else (
            "is inside the reports root" if runs.is_relative_to(reports)
            else "holds the reports root")
        raise FolderConflict(
            f"the runs root {runs} {how} {reports}: a report swap there would delete finished "
            "runs; pass --runs-root and --reports-root that are side by side (e.g. runs and "
            "reports)")


def is_report_folder(folder: str | Path) -> bool:
    """True when the folder carries the study's report marker (made by publish_report or by
    the runner's records)."""
    marker = Path(folder) / MARKER_FILE
    try:
        return isinstance(json.loads(marker.read_text()), dict)
    except (OSError, ValueError):
        return False


def check_replaceable(folder: str | Path) -> None:
    """Raise FolderConflict unless `folder` is absent, an empty folder or one of our reports."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink():
        if is_report_folder(folder) or not any(folder.iterdir()):
            return
    raise FolderConflict(
        f"{folder} exists and is not a report of this study (no {MARKER_FILE}); it is left "
        "as it is: move or rename it, or choose another --reports-root")


def mark_report(folder: str | Path, run_name: str, params_hash: str) -> None:
    """Write the marker that makes `folder` replaceable by the next report."""
    from .artifacts import write_json

    write_json({"run_name": run_name, "params_hash": params_hash}, Path(folder) / MARKER_FILE)


def _pid_of(path: Path) -> int | None:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _swap(new: Path, target: Path) -> None:
    """Rename new to target, replacing target (a folder) as a whole."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    had_old = target.exists()
    if had_old:
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if had_old and not target.exists():
            os.rename(old, target)  # put the old report back: never leave none
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def recover(report_dir: str | Path) -> None:
    """Undo what a killed publish left: restore a report renamed aside, drop half-built ones."""
    report_dir = Path(report_dir)
    parent, name = report_dir.parent, report_dir.name
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not report_dir.exists() and not pid_alive(_pid_of(olds[-1])):
        os.rename(olds.pop(), report_dir)
    for left in [*olds, *parent.glob(f".{name}.tmp-*")]:
        if not pid_alive(_pid_of(left)):
            shutil.rmtree(left, ignore_errors=True)


def publish_report(results: ExperimentResults, report_dir: str | Path,
                   continuations: pd.DataFrame | None = None) -> Path:
    """Write results, figures and report.html (and continuations.parquet with the browser, when
    given the continuations table) to a fresh folder and swap it in; the html path."""
    from .report import REPORT_FILE, write_report
    from .results import write_results

    report_dir = Path(report_dir)
    report_dir.parent.mkdir(parents=True, exist_ok=True)
    recover(report_dir)
    check_replaceable(report_dir)  # a user's folder at reports/<run>/ is never deleted
    build = report_dir.with_name(f".{report_dir.name}.tmp-{os.getpid()}")
    if build.exists():
        shutil.rmtree(build)
    try:
        write_results(results, build)
        write_report(results, build, continuations)
        mark_report(build, results.manifest.run_name, results.manifest.params_hash)
        _swap(build, report_dir)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return report_dir / REPORT_FILE


def report_params_hash(report_dir: str | Path) -> str | None:
    """The params hash of the report in report_dir, or None when it holds no results."""
    path = Path(report_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["manifest"]["params_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"


def set_aside_stale(report_dir: str | Path, params_hash: str) -> Path | None:
    """Move a report made under other params to <run>.stale-<its hash>/; its new path, or None."""
    report_dir = Path(report_dir)
    recover(report_dir)
    check_replaceable(report_dir)
    old_hash = report_params_hash(report_dir)
    if old_hash is None or old_hash == params_hash:
        return None
    aside = report_dir.with_name(f"{report_dir.name}{STALE_SUFFIX}{old_hash}")
    check_replaceable(aside)
    if aside.exists():  # an older copy of the same params' report
        shutil.rmtree(aside)
    os.rename(report_dir, aside)
    return aside


def attach_notebooks(report_dir: str | Path, notebooks: dict[str, Path]) -> Path:
    """Copy executed notebooks ({file name: source}) into report_dir/notebooks/, whole."""
    report_dir = Path(report_dir)
    build = report_dir / f".{NOTEBOOKS_DIR}.tmp-{os.getpid()}"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    for name, source in notebooks.items():
        shutil.copy2(source, build / name)
    _swap(build, report_dir / NOTEBOOKS_DIR)
    return report_dir / NOTEBOOKS_DIR


def write_record(report_dir: str | Path, name: str, record: dict) -> Path:
    """A failure or partial-run record beside the report (atomic); marks a folder it creates as
    the run's report folder, and never writes into a folder that is not one."""
    from .artifacts import write_json

    report_dir = Path(report_dir)
    check_replaceable(report_dir)
    if not is_report_folder(report_dir):
        report_dir.mkdir(parents=True, exist_ok=True)
        mark_report(report_dir, record.get("run_name", "?"), record.get("params_hash", "?"))
    return write_json(record, report_dir / name)


def clear_records(report_dir: str | Path) -> None:
    """Remove failure and partial-run records: the run they describe has since succeeded."""
    for name in (FAILED_FILE, PARTIAL_FILE):
        (Path(report_dir) / name).unlink(missing_ok=True)
