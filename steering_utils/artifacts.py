"""Run folders keyed by what made them, atomic writes and completion markers.

A stage writes only its own folder, `runs/<run_name>/<NN_stage>/<key>/`, where the
key hashes the params fields the stage reads (`stages.STAGES`), the keys of the
stages it reads, the contents of user files it reads and the artifact version. So
an artifact made under other params is never read back: other params mean another
folder. Nothing is deleted when a stage opens; a stage becomes complete when its
`done.json` marker (written last) exists in its keyed folder. Files are written
under a temporary name and renamed, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .params import StudyParams, run_path
from .stages import ARTIFACT_VERSION, EXECUTION_ONLY, SHARDS_FILE, STAGE_NAMES, STAGES, producer

DONE_FILE = "done.json"
SHARDS_DIR = "shards"  # runs/<run_name>/shards/: content-keyed generation shards
_OPEN_STAGES: list[StageDir] = []  # stages opened in this process and not yet finished


def digest(value) -> str:
    """Short sha256 of a JSON-able value (sorted keys): the one hash used for keys."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _field(dumped: dict, dotted: str):
    value = dumped
    for part in dotted.split("."):
        value = value[part]
    return value


def params_fields(params: StudyParams, fields: tuple[str, ...]) -> dict:
    """{field: value} of dotted params fields, less the execution-only ones (batch sizes)."""
    dumped = params.model_dump(mode="json")
    for dotted in EXECUTION_ONLY:
        section, _, name = dotted.partition(".")
        if isinstance(dumped.get(section), dict):
            dumped[section].pop(name, None)
    return {dotted: _field(dumped, dotted) for dotted in fields}


def file_fingerprint(path: str | Path) -> str:
    """Content hash of a file, or of a folder's file names, sizes and mtimes (models, data)."""
    path = Path(path)
    if path.is_file():
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        return sha.hexdigest()[:16]
    if path.is_dir():
        entries = sorted((str(p.relative_to(path)), p.stat().st_size, int(p.stat().st_mtime))
                         for p in path.rglob("*") if p.is_file())
        return digest(entries)
    return "missing"


def _external_inputs(params: StudyParams, stage: str) -> dict:
    """Fingerprints of local files a stage reads that params name only by path."""
    found = {}
    reads = STAGES[stage].reads
    if "data" in reads:
        for subset in ("challenging", "benign"):
            spec = getattr(params.data, subset)
            if spec.path:
                found[f"data.{subset}.path"] = file_fingerprint(spec.path)
        if Path(params.data.rtp_dataset).is_absolute():
            found["data.rtp_dataset"] = file_fingerprint(params.data.rtp_dataset)
    for section in ("model", "scorer"):
        path = getattr(params, section).path
        if section in reads and path and Path(path).is_absolute():
            found[f"{section}.path"] = file_fingerprint(path)
    return found


def stage_key(params: StudyParams, stage: str, _memo: dict | None = None) -> str:
    """Key of a stage's folder: its params fields, its inputs' keys, local files, the code."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
    memo = {} if _memo is None else _memo
    if stage not in memo:
        spec = STAGES[stage]
        memo[stage] = digest({
            "version": ARTIFACT_VERSION,
            "params": params_fields(params, spec.reads),
            "inputs": {name: stage_key(params, name, memo) for name in spec.inputs},
            "files": _external_inputs(params, stage),
        })
    return memo[stage]


def stage_folder(runs_root: str | Path, params: StudyParams, stage: str) -> Path:
    """runs/<run_name>/<stage>/<key>/ for these params."""
    return Path(runs_root) / params.run_name / stage / stage_key(params, stage)


class StageDir:
    """The keyed folder of one stage of one run, and the artifacts it may read."""

    def __init__(self, runs_root: str | Path, params: StudyParams, stage: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
        self.runs_root = Path(runs_root)
        self.run = run_path(runs_root, params.run_name)  # never outside runs_root
        self.name = stage
        self.spec = STAGES[stage]
        self.params = params
        self.hash = stage_key(params, stage)
        self.path = self.run / stage / self.hash
        self.started = time.time()
        # Opening a stage deletes nothing: other params write other folders, and
        # finished work of later stages stays valid until their inputs change.
        self.path.mkdir(parents=True, exist_ok=True)
        self.shards_used: set[str] = set()
        _OPEN_STAGES.append(self)

    def __repr__(self) -> str:  # what a notebook shows after opening its stage
        return f"run {self.params.run_name}, {self.name} key {self.hash} -> {self.path}"

    @property
    def complete(self) -> bool:
        return is_complete(self.path, self.hash)

    @property
    def shards(self) -> Path:
        """The run's content-keyed shard store, shared by every stage and params version."""
        return self.run / SHARDS_DIR

    def out(self, artifact: str) -> Path:
        """Path of one of this stage's own outputs, by artifact name."""
        if artifact not in self.spec.outputs:
            raise KeyError(f"{self.name} does not write {artifact!r}; it writes "
                           f"{', '.join(self.spec.outputs)}")
        return self.path / self.spec.outputs[artifact]

    def input(self, artifact: str) -> Path:
        """Path of an earlier stage's artifact; raises if that stage has not finished."""
        stage = producer(artifact)
        if stage.name not in self.spec.inputs:
            raise ValueError(f"{self.name} does not read {stage.name} (artifact {artifact!r}); "
                             f"its inputs are {', '.join(self.spec.inputs) or 'none'}")
        folder = stage_folder(self.runs_root, self.params, stage.name)
        if not is_complete(folder, folder.name):
            raise RuntimeError(
                f"{stage.name} has not finished for these params (run_name "
                f"{self.params.run_name!r}, key {folder.name}); run notebooks/{stage.notebook} "
                "first, or `make report PARAMS=...`"
            )
        return folder / stage.outputs[artifact]

    def finish(self, extra: dict | None = None) -> None:
        """Write the manifest and the done marker (last: its presence means complete); let go
        of the stage's Ray workers, if it had any."""
        from .cluster import shutdown
        from .manifest import build_manifest

        # Ray stops in the cell, not at kernel exit, where a slow stop would be cut short.
        shutdown()

        seconds = round(time.time() - self.started, 2)
        manifest = build_manifest(self.params, timings={self.name: seconds})
        manifest["stage"] = {"name": self.name, "key": self.hash,
                             "reads": list(self.spec.reads), "inputs": {
                                 name: stage_key(self.params, name) for name in self.spec.inputs}}
        write_json(manifest, self.path / "manifest.json")
        if SHARDS_FILE in self.spec.outputs.values():
            _write_shards_record(self)
        if self in _OPEN_STAGES:
            _OPEN_STAGES.remove(self)
        write_json({"stage": self.name, "hash": self.hash, "seconds": seconds,
                    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **(extra or {})}, self.path / DONE_FILE)


def record_shards(shard_dir: str | Path, keys: list[str]) -> None:
    """Note shard keys as used by each open stage of this process over `shard_dir` (run_jobs
    calls it as it plans, so an interrupted stage's record is whole too)."""
    shard_dir = Path(shard_dir).resolve()
    for stage in _OPEN_STAGES:
        if stage.shards.resolve() == shard_dir and SHARDS_FILE in stage.spec.outputs.values() \
                and not stage.complete:
            stage.shards_used.update(keys)
            _write_shards_record(stage)


def _write_shards_record(stage: StageDir) -> None:
    write_json({"shards": sorted(stage.shards_used)}, stage.path / SHARDS_FILE)


def shards_record(folder: str | Path) -> set[str] | None:
    """Shard keys a stage folder recorded using; None when its stage uses shards but the folder
    has no record (made before records existed), an empty set for a stage that uses none."""
    folder = Path(folder)
    spec = STAGES.get(folder.parent.name)
    if spec is None or SHARDS_FILE not in spec.outputs.values():
        return set()
    try:
        return set(read_json(folder / SHARDS_FILE)["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_stage(params_file: str | Path, runs_root: str | Path, stage: str) -> StageDir:
    """Load and validate params, apply their environment (offline mode), open the stage."""
    from .params import apply_environment, load_params

    params = load_params(params_file)
    apply_environment(params)
    return StageDir(runs_root, params, stage)


def is_complete(folder: Path, expected_hash: str) -> bool:
    """True when the folder's done marker carries this key."""
    marker = Path(folder) / DONE_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("hash") == expected_hash
    except json.JSONDecodeError:
        return False


def done_record(folder: Path) -> dict | None:
    """The done marker of a finished stage folder (None when unfinished)."""
    marker = Path(folder) / DONE_FILE
    try:
        return json.loads(marker.read_text()) if marker.is_file() else None
    except json.JSONDecodeError:
        return None


def stage_seconds(folder: Path) -> float | None:
    """Seconds the stage took, from its done marker."""
    record = done_record(folder)
    return None if record is None else record.get("seconds")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write (a file or a new folder), renamed onto `path`
    when the block ends without error: a reader finds all of it or none of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    _remove(partial)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        _remove(partial)  # left only when the block failed


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """Parquet, written atomically."""
    with atomic_path(path) as partial:
        table.to_parquet(partial, index=False)
    return Path(path)


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def write_json(data, path: Path) -> Path:
    """JSON (NaN written as null), written atomically."""
    text = json.dumps(_nan_to_none(data), indent=2, sort_keys=False, default=str)
    with atomic_path(path) as partial:
        partial.write_text(text + "\n")
    return Path(path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value
