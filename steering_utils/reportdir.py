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
    from .results import ExperimentResults

FAILED_FILE = "failed_experiment_results.json"
PARTIAL_FILE = "partial_experiment_results.json"
NOTEBOOKS_DIR = "notebooks"


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


def publish_report(results: ExperimentResults, report_dir: str | Path) -> Path:
    """Write results, figures and report.html to a fresh folder and swap it in; the html path."""
    from .report import REPORT_FILE, write_report
    from .results import write_results

    report_dir = Path(report_dir)
    report_dir.parent.mkdir(parents=True, exist_ok=True)
    recover(report_dir)
    build = report_dir.with_name(f".{report_dir.name}.tmp-{os.getpid()}")
    if build.exists():
        shutil.rmtree(build)
    try:
        write_results(results, build)
        write_report(results, build)
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
    old_hash = report_params_hash(report_dir)
    if old_hash is None or old_hash == params_hash:
        return None
    aside = report_dir.with_name(f"{report_dir.name}{STALE_SUFFIX}{old_hash}")
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
    """A failure or partial-run record beside the report (atomic)."""
    from .artifacts import write_json

    return write_json(record, Path(report_dir) / name)


def clear_records(report_dir: str | Path) -> None:
    """Remove failure and partial-run records: the run they describe has since succeeded."""
    for name in (FAILED_FILE, PARTIAL_FILE):
        (Path(report_dir) / name).unlink(missing_ok=True)
