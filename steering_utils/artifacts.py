"""Run folders, atomic writes and completion markers.

A stage reads earlier stages' folders and writes only its own,
`runs/<run_name>/<NN_stage>/`. Files are written under a temporary name and
renamed, so an interrupted run never leaves a half-written artifact; a `done.json`
marker holding the stage's params hash makes "complete" one file check.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from .params import StudyParams, run_path

# Each stage's hash covers the params sections it reads, plus everything upstream.
STAGES: dict[str, tuple[str, ...]] = {
    "01_data": ("seed", "data"),
    "02_baseline": ("model", "generation", "scorer", "evaluation"),
    "03_activations": ("activations",),
    "04_vectors": ("vectors",),
    "05_sweep": ("sweep",),
    "06_report": ("report",),
}


def stage_hash(params: StudyParams, stage: str) -> str:
    """Hash of the params sections this stage and every earlier stage read."""
    names = list(STAGES)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(names)}")
    sections = [s for name in names[: names.index(stage) + 1] for s in STAGES[name]]
    return params.section_hash(*sections)


class StageDir:
    """The folder of one stage of one run, and the folders it may read."""

    def __init__(self, runs_root: str | Path, params: StudyParams, stage: str):
        self.run = run_path(runs_root, params.run_name)  # never outside runs_root
        self.name = stage
        self.params = params
        self.path = self.run / stage
        self.hash = stage_hash(params, stage)
        self.started = time.time()
        self.path.mkdir(parents=True, exist_ok=True)
        # Running a stage invalidates it and everything downstream until each finishes again.
        for later in list(STAGES)[list(STAGES).index(stage):]:
            (self.run / later / "done.json").unlink(missing_ok=True)

    @property
    def complete(self) -> bool:
        return is_complete(self.path, self.hash)

    def input(self, stage: str) -> Path:
        """An earlier stage's folder; raises if that stage has not finished with these params."""
        if list(STAGES).index(stage) >= list(STAGES).index(self.name):
            raise ValueError(f"{self.name} may only read earlier stages, not {stage}")
        folder = self.run / stage
        if not is_complete(folder, stage_hash(self.params, stage)):
            raise RuntimeError(
                f"{stage} has not finished for these params (run_name {self.params.run_name!r}); "
                f"run notebooks/{stage}.ipynb first, or `make report PARAMS=...`"
            )
        return folder

    def finish(self, extra: dict | None = None) -> None:
        """Write the manifest and the done marker (last: its presence means complete)."""
        from .manifest import build_manifest

        seconds = round(time.time() - self.started, 2)
        manifest = build_manifest(self.params, timings={self.name: seconds})
        write_json(manifest, self.path / "manifest.json")
        write_json({"stage": self.name, "hash": self.hash, "seconds": seconds,
                    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **(extra or {})}, self.path / "done.json")


def open_stage(params_file: str | Path, runs_root: str | Path, stage: str) -> StageDir:
    """Load and validate params, apply their environment (offline mode), open the stage."""
    from .params import apply_environment, load_params

    params = load_params(params_file)
    apply_environment(params)
    return StageDir(runs_root, params, stage)


def is_complete(folder: Path, expected_hash: str) -> bool:
    """True when the folder's done marker carries this hash."""
    marker = Path(folder) / "done.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("hash") == expected_hash
    except json.JSONDecodeError:
        return False


def stage_seconds(folder: Path) -> float | None:
    """Seconds the stage took, from its done marker."""
    marker = Path(folder) / "done.json"
    return json.loads(marker.read_text()).get("seconds") if marker.is_file() else None


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    os.replace(partial, path)
    return path


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """Parquet, written atomically."""
    return _atomic(path, lambda p: table.to_parquet(p, index=False))


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def write_json(data, path: Path) -> Path:
    """JSON (NaN written as null), written atomically."""
    text = json.dumps(_nan_to_none(data), indent=2, sort_keys=False, default=str)
    return _atomic(path, lambda p: p.write_text(text + "\n"))


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value
