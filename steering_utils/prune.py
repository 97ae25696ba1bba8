"""Free disk: remove what no kept params version reaches (`make prune`).

`python -m steering_utils.prune [--params FILE ...] [--dry-run]`. The kept params are
every params file under params/, or the files given. In `runs/<run_name>/`, a kept
params version reaches the stage folders whose key is `artifacts.stage_key(params,
stage)`, the shards those folders' shard records (`shards.json`, 02 and 05) list, and its
executed notebooks (`notebooks/<stage>-<key>.ipynb`). Prune removes every other stage
folder, shard and executed notebook, unfinished stage folders (failed or interrupted: a
shard an unfinished folder of a kept version recorded stays, since its resume reuses it),
partial files left by dead processes, and the stale reports
(`reports/<run>.stale-<hash>/`) of versions not kept. It holds each run's lock while it
works: a run a live runner holds is refused, with nothing deleted. A finished 02 or 05
folder without a shard record (made before records existed) keeps every shard of its run.
`--force` in the runner uses `remove_version` here: this version's folders, and only the
shards no other version's folder records.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import SHARDS_DIR, is_complete, shards_record, stage_folder, stage_key
from .params import STALE_SUFFIX, ParamsError, StudyParams, load_params, run_path
from .reportdir import is_report_folder, report_params_hash
from .runlock import RunLock, RunLocked, pid_alive
from .stages import STAGE_NAMES

EXECUTED_DIR = "notebooks"  # runs/<run>/notebooks/<stage>-<key>.ipynb (the runner's)
_PARTIAL = re.compile(r"^\..+\.(\d+)\.partial$")  # artifacts.atomic_path's temporary names


@dataclass
class Plan:
    """What a prune removes, by kind, and why some things stay."""

    remove: dict[str, list[Path]] = field(default_factory=lambda: {
        "stage folders": [], "shards": [], "notebooks": [], "stale reports": [],
        "partial files": []})
    notes: list[str] = field(default_factory=list)

    def paths(self) -> list[Path]:
        return [path for paths in self.remove.values() for path in paths]


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (links not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_version(runs_root: str | Path, params: StudyParams) -> str:
    """Remove this params version's stage folders and the shards only it recorded (`--force`);
    a line saying what went and how many shards stay for other versions."""
    folders, shards, shared = version_artifacts(runs_root, params)
    for path in (*folders, *shards):
        _remove(path)
    return (f"--force: removed {len(folders)} stage folder(s) and {len(shards)} shard(s) of "
            f"these params; {shared} shard(s) that other params versions use are kept")


def version_artifacts(runs_root: str | Path, params: StudyParams
                      ) -> tuple[list[Path], list[Path], int]:
    """(this params version's stage folders, the shards only it recorded, the number of its
    shards another version's stage folder records too): what `--force` removes and keeps."""
    run = run_path(runs_root, params.run_name)
    mine = {stage_folder(runs_root, params, stage).resolve() for stage in STAGE_NAMES}
    my_shards: set[str] = set()
    for folder in mine:
        my_shards |= shards_record(folder) or set()
    others: set[str] = set()
    for folder in _stage_folders(run):
        if folder.resolve() in mine:
            continue
        record = shards_record(folder)
        if record is None:  # another version's folder that cannot say what it uses
            others = set(my_shards)
            break
        others |= record
    shards = [run / SHARDS_DIR / f"{key}.parquet" for key in sorted(my_shards - others)]
    folders = [folder for folder in sorted(mine) if folder.exists()]
    return folders, [path for path in shards if path.exists()], len(my_shards & others)


def _stage_folders(run: Path) -> list[Path]:
    return sorted(folder for stage in STAGE_NAMES if (run / stage).is_dir()
                  for folder in (run / stage).iterdir()
                  if folder.is_dir() and not folder.name.startswith("."))


def plan_prune(runs_root: str | Path, reports_root: str | Path,
               kept: list[StudyParams]) -> Plan:
    """What no kept params version reaches, in every run of runs_root and its stale reports."""
    runs_root, reports_root = Path(runs_root), Path(reports_root)
    plan = Plan()
    runs = sorted(p for p in runs_root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if runs_root.is_dir() else []
    for run in runs:
        _plan_run(run, [p for p in kept if p.run_name == run.name], plan)
    if reports_root.is_dir():
        for folder in sorted(reports_root.glob(f"*{STALE_SUFFIX}*")):
            name, _, old_hash = folder.name.rpartition(STALE_SUFFIX)
            if old_hash in {p.params_hash for p in kept if p.run_name == name}:
                continue
            if folder.is_dir() and (is_report_folder(folder) or report_params_hash(folder)):
                plan.remove["stale reports"].append(folder)
            else:
                plan.notes.append(f"{folder} is not a report of this study: left as it is")
    return plan


def _plan_run(run: Path, versions: list[StudyParams], plan: Plan) -> None:
    keys = {stage: {stage_key(p, stage, run.parent) for p in versions} for stage in STAGE_NAMES}
    kept_shards: set[str] = set()
    unknown = []
    for folder in _stage_folders(run):
        stage = folder.parent.name
        finished = is_complete(folder, folder.name)
        reached = folder.name in keys[stage]
        if reached:  # a kept version's: its shards stay, and the folder if it has finished
            record = shards_record(folder)
            if record is None and finished:
                unknown.append(folder)
            kept_shards |= record or set()
        if not (reached and finished):
            plan.remove["stage folders"].append(folder)
    shard_dir = run / SHARDS_DIR
    if unknown:
        plan.notes.append(f"every shard of {run.name} is kept: {unknown[0]} has no shard record "
                          "(made before records existed)")
    elif shard_dir.is_dir():
        plan.remove["shards"] += [p for p in sorted(shard_dir.glob("*.parquet"))
                                  if p.stem not in kept_shards]
    for notebook in sorted((run / EXECUTED_DIR).glob("*-*.ipynb")):
        stage, _, key = notebook.stem.rpartition("-")
        if stage in keys and key not in keys[stage]:
            plan.remove["notebooks"].append(notebook)
    removed = set(plan.paths())
    for path in sorted(run.rglob(".*.partial")):
        match = _PARTIAL.match(path.name)
        if match and not pid_alive(int(match.group(1))) \
                and not any(parent in removed for parent in path.parents):
            plan.remove["partial files"].append(path)


def prune(runs_root: str | Path, reports_root: str | Path, kept: list[StudyParams],
          dry_run: bool = False, echo=print) -> int:
    """Remove (or, dry, list) what no kept version reaches, holding each run's lock; the bytes
    freed (or that would be). Raises RunLocked, deleting nothing, when a runner holds a run."""
    runs_root = Path(runs_root)
    with ExitStack() as locks:
        if runs_root.is_dir():
            for run in sorted(runs_root.iterdir()):
                if run.is_dir() and not run.name.startswith("."):
                    locks.enter_context(RunLock(run, echo=echo))  # RunLocked: nothing deleted
        plan = plan_prune(runs_root, reports_root, kept)
        freed = 0
        verb = "would remove" if dry_run else "removed"
        for path in plan.paths():
            size = size_of(path)
            freed += size
            echo(f"  {verb} {path} ({size / 1e6:.2f} MB)")
            if not dry_run:
                _remove(path)
        for note in plan.notes:
            echo(f"  note: {note}")
    counts = ", ".join(f"{len(paths)} {kind}" for kind, paths in plan.remove.items())
    echo(f"prune: {verb} {counts}; {freed / 1e6:.1f} MB ({freed} bytes) "
         f"{'would be freed' if dry_run else 'freed'}")
    return freed


def kept_params(files: list[str | Path] | None, params_dir: str | Path = "params"
                ) -> list[StudyParams]:
    """The params versions to keep: the files given, or every *.yaml/*.yml under params_dir.
    Raises ParamsError naming a file that does not load (pruning on a guess would lose work)."""
    if not files:
        files = sorted(p for p in Path(params_dir).rglob("*") if p.suffix in (".yaml", ".yml"))
        if not files:
            raise ParamsError(f"no params files under {params_dir}: pass --params FILE ...")
    kept = []
    for file in files:
        try:
            kept.append(load_params(file))
        except ParamsError as err:
            raise ParamsError(f"{file}: {err} (fix it, or name the kept files with --params)"
                              ) from None
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", nargs="*", help="the params files to keep (default: every "
                                                    "*.yaml under params/)")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--reports-root", default="reports")
    parser.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    args = parser.parse_args(argv)
    try:
        kept = kept_params(args.params)
        echo = print
        echo(f"prune: keeping what {len(kept)} params file(s) reach")
        prune(args.runs_root, args.reports_root, kept, dry_run=args.dry_run, echo=echo)
    except ParamsError as err:
        print(f"params error: {err}", file=sys.stderr)
        return 2
    except RunLocked as err:
        print(f"not pruned (nothing deleted): {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
